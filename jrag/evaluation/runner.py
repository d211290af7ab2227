"""Index each corpus once, rank documents for every query in every variant, score the ranking.

Every variant goes through the same code as ``jrag ingest`` / ``jrag search``: rows come from
:func:`jrag.pipeline.ingest_documents` (the ingest core, with its versioned writes) into one
collection per corpus holding every row kind the variants need; documents are ranked by
:meth:`jrag.store.MilvusStore.rank`, the primitive behind ``jrag search`` and the retrievers.
A variant names the row kinds of its dense leg and of its BM25 leg (see :data:`VARIANTS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jrag.embedding import identity_of
from jrag.encoder import Encoder
from jrag.errors import InputError, StoreError
from jrag.evaluation.corpus import Corpus, EvalDocument
from jrag.evaluation.metrics import evaluate
from jrag.modes import DEFAULT_RANKER, DEFAULT_WEIGHTS, full_text_kinds
from jrag.parse import ParsedDocument
from jrag.pipeline import IngestOptions, ingest_documents
from jrag.store import VECTOR_KINDS, MilvusStore, Query
from jrag.store.search import RRF_K


@dataclass(frozen=True)
class Variant:
    """One way to search: the dense leg's row kinds, the BM25 leg's (empty: none), and how the
    two are fused (the product's defaults unless named)."""

    kinds: tuple[str, ...]
    full_text_kinds: tuple[str, ...] = ()
    ranker: str = DEFAULT_RANKER
    weights: tuple[float, float] = DEFAULT_WEIGHTS  # dense, BM25
    rrf_k: int = RRF_K

    @property
    def needs(self) -> set[str]:
        return set(self.kinds) | set(self.full_text_kinds)


_ALL = ("doc", "late")  # what a default (late) collection holds: auto mode reads both
_TEXT = full_text_kinds(_ALL)  # the BM25 leg `jrag search` picks there
VARIANTS: dict[str, Variant] = {
    # dense only
    "whole": Variant(("doc",)),
    "late": Variant(("late",)),
    "chunked": Variant(("chunk",)),
    "auto-dense": Variant(_ALL),
    # BM25 only, over document windows, late passages, or both
    "bm25": Variant((), ("doc",)),
    "bm25-late": Variant((), ("late",)),
    "bm25-both": Variant((), _ALL),
    # hybrid: "hybrid" is what `jrag search` does by default on a default collection (its
    # ranker and weights are jrag.modes' defaults); the others name theirs
    "hybrid": Variant(_ALL, _TEXT),
    "hybrid-late": Variant(_ALL, ("late",)),
    "hybrid-both": Variant(_ALL, _ALL),
    "hybrid-adaptive": Variant(_ALL, _TEXT, "adaptive", (0.1, 0.9)),
    "hybrid-adaptive-w28": Variant(_ALL, _TEXT, "adaptive", (0.2, 0.8)),
    "hybrid-dbsf": Variant(_ALL, _TEXT, "dbsf"),
    "hybrid-w19": Variant(_ALL, _TEXT, "relative", (0.1, 0.9)),
    "hybrid-w28": Variant(_ALL, _TEXT, "relative", (0.2, 0.8)),
    "hybrid-w37": Variant(_ALL, _TEXT, "relative", (0.3, 0.7)),
    "hybrid-w55": Variant(_ALL, _TEXT, "relative", (0.5, 0.5)),
    "hybrid-w73": Variant(_ALL, _TEXT, "relative", (0.7, 0.3)),
    "hybrid-rrf": Variant(_ALL, _TEXT, "rrf"),
    "hybrid-rrf-k10": Variant(_ALL, _TEXT, "rrf", rrf_k=10),
    "hybrid-rrf-k2": Variant(_ALL, _TEXT, "rrf", rrf_k=2),
    "hybrid-rrf-late": Variant(_ALL, ("late",), "rrf"),
    "hybrid-weighted": Variant(_ALL, _TEXT, "weighted", (0.2, 0.8)),
    "chunked-hybrid": Variant(("chunk",), ("chunk",)),
}
# The fusion comparison: dense and BM25 alone, and every way to fuse them.
FUSION_VARIANTS = (
    "whole", "late", "auto-dense", "bm25", "hybrid", "hybrid-adaptive", "hybrid-adaptive-w28",
    "hybrid-dbsf", "hybrid-w19", "hybrid-w28", "hybrid-w37", "hybrid-w55", "hybrid-w73",
    "hybrid-rrf", "hybrid-rrf-k10", "hybrid-rrf-k2", "hybrid-weighted",
)  # fmt: skip
DEFAULT_VARIANTS = ("whole", "late", "chunked", "bm25", "hybrid")
MODES = tuple(VARIANTS)

Inspect = Callable[[MilvusStore, Corpus, np.ndarray], None]

DEPTH = 10  # documents ranked per query: enough for every @10 metric
_MAX_SEARCH_ROWS = 16384  # Milvus's cap on one search's limit


@dataclass
class EvalResult:
    """Scores of one evaluation run: ``scores[mode][label][metric]``, plus timings and sizes."""

    task: str
    model: str
    modes: list[str]
    labels: list[str]
    metrics: tuple[str, ...]
    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    seconds: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def mean(self, mode: str, metric: str) -> float:
        """The unweighted mean of ``metric`` over the corpora (lengths) of ``mode``."""
        values = [self.scores[mode][label][metric] for label in self.labels]
        return sum(values) / len(values)

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "model": self.model,
            "modes": self.modes,
            "labels": self.labels,
            "metrics": list(self.metrics),
            "scores": self.scores,
            "mean": {m: {k: self.mean(m, k) for k in self.metrics} for m in self.modes},
            "seconds": self.seconds,
            "rows": self.rows,
            "info": self.info,
        }


def check_modes(modes: Sequence[str]) -> list[str]:
    """Variants in the given order, deduplicated; an unknown one is an InputError."""
    unknown = [m for m in modes if m not in VARIANTS]
    if unknown or not modes:
        raise InputError(f"unknown mode(s) {unknown or modes}; use {', '.join(VARIANTS)}")
    return list(dict.fromkeys(modes))


def as_parsed(doc: EvalDocument) -> ParsedDocument:
    """An evaluation document as the pipeline's input; its source is its id."""
    return ParsedDocument(
        source=doc.doc_id,
        text=doc.text,
        title=doc.title or doc.doc_id,
        doc_type="txt",
        size=len(doc.text.encode("utf-8")),
        mtime=0.0,
        content_hash=hashlib.sha256(doc.text.encode("utf-8")).hexdigest(),
        page_count=None,
        page_starts=(),
    )


def index_corpus(
    store: MilvusStore, corpus: Corpus, encoder: Encoder, kinds: set[str]
) -> dict[str, int]:
    """Embed and write every document of ``corpus`` with rows of ``kinds`` (the ingest core,
    as `jrag ingest` runs it); rows per kind."""
    wanted = [k for k in VECTOR_KINDS if k in kinds]
    documents = [as_parsed(doc) for doc in corpus.documents]
    report = ingest_documents(documents, store, encoder, options=IngestOptions(), kinds=wanted)
    if report.failed:
        raise InputError(f"{corpus.label}: {len(report.failed)} failed, {report.failed[0][1]}")
    return {kind: n for kind, n in store.stats()["rows"].items() if n}


def _collection_name(task: str, mode: str, label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", f"jrag_eval_{task}_{mode}_{label}")[:255]


def run_evaluation(
    task: str,
    corpora: Sequence[Corpus],
    encoder: Encoder,
    modes: Sequence[str],
    metrics: tuple[str, ...],
    *,
    uri: str | None = None,
    token: str | None = None,
    on_step: Callable[[str], None] | None = None,
    inspect: Inspect | None = None,
) -> EvalResult:
    """Score every corpus in every variant (``modes``). Each corpus is indexed once, in a fresh
    collection dropped afterwards; without ``uri`` it lives in a temporary Milvus Lite file.
    ``inspect`` is called with each indexed collection, its corpus and query vectors, after the
    variants ran and before the collection is dropped (benchmarks read more from it there)."""
    modes = check_modes(modes)
    result = EvalResult(task, encoder.name, modes, [c.label for c in corpora], metrics)
    workdir = None
    if uri is None:
        workdir = Path(tempfile.mkdtemp(prefix="jrag-eval-"))
        uri = str(workdir / "eval.db")
    kinds = set().union(*(VARIANTS[m].needs for m in modes))
    try:
        for corpus in corpora:
            if on_step:
                on_step(f"{task} {corpus.label}: indexing")
            _evaluate_corpus(
                task, corpus, encoder, modes, kinds, metrics, uri, token, result, inspect
            )
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _evaluate_corpus(
    task: str,
    corpus: Corpus,
    encoder: Encoder,
    modes: Sequence[str],
    kinds: set[str],
    metrics: tuple[str, ...],
    uri: str,
    token: str | None,
    result: EvalResult,
    inspect: Inspect | None = None,
) -> None:
    name = _collection_name(task, "all", corpus.label)
    # A leftover of an earlier run at a user-given --uri.
    with contextlib.suppress(StoreError), MilvusStore(uri, name, token=token, create=False) as old:
        old.drop()
    with MilvusStore(uri, name, token=token, identity=identity_of(encoder)) as store:
        try:
            started = time.perf_counter()
            written = index_corpus(store, corpus, encoder, kinds)
            embedded = time.perf_counter()
            vectors = encoder.encode_query([q.text for q in corpus.queries])
            for mode in modes:
                variant = VARIANTS[mode]
                full_text = variant.full_text_kinds if store.full_text else ()
                tick = time.perf_counter()
                run = {}
                for query, vector in zip(corpus.queries, vectors, strict=True):
                    ranked, states = store.rank(
                        Query(
                            vector,
                            query.text,
                            DEPTH,
                            variant.kinds,
                            full_text,
                            ranker=variant.ranker,
                            weights=variant.weights,
                            rrf_k=variant.rrf_k,
                        )
                    )
                    # By rank, not score: BM25 scores from Milvus Lite are negative.
                    run[query.query_id] = {
                        states[r.doc_id].source: float(len(ranked) - i)
                        for i, r in enumerate(ranked)
                        if r.doc_id in states
                    }
                searched = time.perf_counter() - tick
                label = corpus.label
                result.scores.setdefault(mode, {})[label] = evaluate(corpus.qrels(), run, metrics)
                result.seconds.setdefault(mode, {})[label] = {
                    "embed": embedded - started,
                    "search": searched,
                    "per_query_ms": 1000 * searched / max(1, len(corpus.queries)),
                }
                result.rows.setdefault(mode, {})[label] = sum(
                    written.get(k, 0) for k in variant.kinds
                )
            if inspect is not None:
                inspect(store, corpus, vectors)
        finally:
            store.drop()
