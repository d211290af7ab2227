"""Index each corpus, rank documents for every query in every variant, score the ranking.

Every variant goes through the same code as ``jrag ingest`` / ``jrag search``: rows come from
:func:`jrag.pipeline.ingest_documents` (the ingest core, with its versioned writes) into one
collection per corpus and ingest mode the variants need; documents are ranked by
:meth:`jrag.store.MilvusStore.rank`, the primitive behind ``jrag search`` and the retrievers.
A variant is a named :class:`jrag.retrieval.SearchOptions` (see :data:`VARIANTS`), turned into
the store's query by :func:`jrag.retrieval.build_query`, as ``jrag search`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from jrag.embedding import identity_of
from jrag.encoder import Encoder
from jrag.errors import InputError, StoreError
from jrag.evaluation.corpus import Corpus, EvalDocument
from jrag.evaluation.metrics import evaluate
from jrag.modes import DEFAULT_INGEST_MODE, INGEST_MODES, full_text_kinds
from jrag.parse import ParsedDocument
from jrag.pipeline import IngestOptions, ingest_documents
from jrag.retrieval import SearchOptions, build_query
from jrag.store import VECTOR_KINDS, MilvusStore

_BOTH = INGEST_MODES[DEFAULT_INGEST_MODE]  # doc and late rows
_TEXT = full_text_kinds(_BOTH)  # the BM25 leg `jrag search` picks there: whole windows
# Each variant is the options of one `jrag search`, run on a collection ingested as
# `jrag ingest` does by default (late: doc and late rows), or with --mode chunked for the
# variants that read naive chunks. "hybrid" is `jrag search` with every option at its default.
VARIANTS: dict[str, SearchOptions] = {
    # dense only
    "whole": SearchOptions(mode="whole", hybrid=False),
    "late": SearchOptions(mode="late", hybrid=False),
    "chunked": SearchOptions(mode="chunked", hybrid=False),
    "auto-dense": SearchOptions(hybrid=False),
    # BM25 only, over document windows, late passages, or both
    "bm25": SearchOptions(dense=False, full_text_kinds=_TEXT),
    "bm25-late": SearchOptions(dense=False, full_text_kinds=("late",)),
    "bm25-both": SearchOptions(dense=False, full_text_kinds=_BOTH),
    # hybrid: the default, and other BM25 rows, rankers and weights
    "hybrid": SearchOptions(),
    "hybrid-late": SearchOptions(full_text_kinds=("late",)),
    "hybrid-both": SearchOptions(full_text_kinds=_BOTH),
    "hybrid-adaptive": SearchOptions(ranker="adaptive", weights=(0.1, 0.9)),
    "hybrid-adaptive-w28": SearchOptions(ranker="adaptive", weights=(0.2, 0.8)),
    "hybrid-adaptive-median": SearchOptions(ranker="adaptive-median"),
    # The median's lead at the old adaptive ceiling: loses a needle 4k question.
    "hybrid-adaptive-median-w19": SearchOptions(ranker="adaptive-median", weights=(0.1, 0.9)),
    "hybrid-dbsf": SearchOptions(ranker="dbsf"),
    "hybrid-w19": SearchOptions(ranker="relative", weights=(0.1, 0.9)),
    "hybrid-w28": SearchOptions(ranker="relative", weights=(0.2, 0.8)),
    "hybrid-w37": SearchOptions(ranker="relative", weights=(0.3, 0.7)),
    "hybrid-w55": SearchOptions(ranker="relative", weights=(0.5, 0.5)),
    "hybrid-w73": SearchOptions(ranker="relative", weights=(0.7, 0.3)),
    "hybrid-rrf": SearchOptions(ranker="rrf"),
    "hybrid-rrf-k10": SearchOptions(ranker="rrf", rrf_k=10),
    "hybrid-rrf-k2": SearchOptions(ranker="rrf", rrf_k=2),
    "hybrid-rrf-late": SearchOptions(ranker="rrf", full_text_kinds=("late",)),
    "hybrid-weighted": SearchOptions(ranker="weighted", weights=(0.2, 0.8)),
    "chunked-hybrid": SearchOptions(mode="chunked"),
}


def ingest_mode(variant: SearchOptions) -> str:
    """The ingest mode of the collection a variant searches."""
    return "chunked" if variant.mode == "chunked" else DEFAULT_INGEST_MODE


# The fusion comparison: dense and BM25 alone, and every way to fuse them.
FUSION_VARIANTS = (
    "whole", "late", "auto-dense", "bm25", "hybrid", "hybrid-adaptive", "hybrid-adaptive-w28",
    "hybrid-adaptive-median", "hybrid-adaptive-median-w19",
    "hybrid-dbsf", "hybrid-w19", "hybrid-w28", "hybrid-w37", "hybrid-w55", "hybrid-w73",
    "hybrid-rrf", "hybrid-rrf-k10", "hybrid-rrf-k2", "hybrid-weighted",
)  # fmt: skip
DEFAULT_VARIANTS = ("whole", "late", "chunked", "bm25", "hybrid")
MODES = tuple(VARIANTS)

Inspect = Callable[[MilvusStore, Corpus, np.ndarray], None]

DEPTH = 10  # documents ranked per query: enough for every @10 metric


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
    store: MilvusStore,
    corpus: Corpus,
    encoder: Encoder,
    kinds: Sequence[str],
    options: IngestOptions | None = None,
) -> dict[str, int]:
    """Embed and write every document of ``corpus`` with rows of ``kinds`` (the ingest core,
    as `jrag ingest` runs it, with ``options`` or its defaults); rows per kind."""
    wanted = [k for k in VECTOR_KINDS if k in kinds]
    documents = [as_parsed(doc) for doc in corpus.documents]
    options = options or IngestOptions()
    report = ingest_documents(documents, store, encoder, options=options, kinds=wanted)
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
    ingest_options: IngestOptions | None = None,
) -> EvalResult:
    """Score every corpus in every variant (``modes``). Each corpus is indexed once per ingest
    mode the variants need, in a fresh collection dropped afterwards; without ``uri`` it lives
    in a temporary Milvus Lite file. ``inspect`` is called with each indexed collection, its
    corpus and query vectors, after the variants ran and before the collection is dropped
    (benchmarks read more from it there). ``ingest_options`` sets how documents are indexed
    (late-chunk size and strategy; `jrag ingest`'s defaults without it)."""
    modes = check_modes(modes)
    result = EvalResult(task, encoder.name, modes, [c.label for c in corpora], metrics)
    workdir = None
    if uri is None:
        workdir = Path(tempfile.mkdtemp(prefix="jrag-eval-"))
        uri = str(workdir / "eval.db")
    by_ingest: dict[str, list[str]] = {}
    for mode in modes:
        by_ingest.setdefault(ingest_mode(VARIANTS[mode]), []).append(mode)
    try:
        for corpus in corpora:
            if on_step:
                on_step(f"{task} {corpus.label}: indexing")
            for ingest, variants in by_ingest.items():
                collection = _collection_name(task, ingest, corpus.label)
                _evaluate_corpus(
                    collection, corpus, encoder, ingest, variants, uri, token, result, inspect,
                    ingest_options,
                )  # fmt: skip
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _evaluate_corpus(
    collection: str,
    corpus: Corpus,
    encoder: Encoder,
    ingest: str,
    modes: Sequence[str],
    uri: str,
    token: str | None,
    result: EvalResult,
    inspect: Inspect | None = None,
    ingest_options: IngestOptions | None = None,
) -> None:
    """Index ``corpus`` as ``jrag ingest --mode ingest`` does, and score the variants ``modes``."""
    # A leftover of an earlier run at a user-given --uri.
    with (
        contextlib.suppress(StoreError),
        MilvusStore(uri, collection, token=token, create=False) as old,
    ):
        old.drop()
    with MilvusStore(uri, collection, token=token, identity=identity_of(encoder)) as store:
        try:
            started = time.perf_counter()
            written = index_corpus(store, corpus, encoder, INGEST_MODES[ingest], ingest_options)
            embedded = time.perf_counter()
            vectors = encoder.encode_query([q.text for q in corpus.queries])
            label = corpus.label
            for mode in modes:
                options = replace(VARIANTS[mode], k=DEPTH)
                tick = time.perf_counter()
                run, dense_kinds = {}, ()
                for query, vector in zip(corpus.queries, vectors, strict=True):
                    store_query = build_query(store, query.text, vector, options)
                    dense_kinds = store_query.kinds
                    ranked, states = store.rank(store_query)
                    # By rank, not score: BM25 scores from Milvus Lite are negative.
                    run[query.query_id] = {
                        states[r.doc_id].source: float(len(ranked) - i)
                        for i, r in enumerate(ranked)
                        if r.doc_id in states
                    }
                searched = time.perf_counter() - tick
                scores = evaluate(corpus.qrels(), run, result.metrics)
                result.scores.setdefault(mode, {})[label] = scores
                result.seconds.setdefault(mode, {})[label] = {
                    "embed": embedded - started,
                    "search": searched,
                    "per_query_ms": 1000 * searched / max(1, len(corpus.queries)),
                }
                rows = sum(written.get(kind, 0) for kind in dense_kinds)
                result.rows.setdefault(mode, {})[label] = rows
            if inspect is not None:
                inspect(store, corpus, vectors)
        finally:
            store.drop()
