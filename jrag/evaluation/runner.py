"""Index each corpus once per mode in Milvus, rank documents for every query, score the ranking.

Every mode goes through the same code as ``jrag ingest`` / ``jrag search``: rows come from
:func:`jrag.pipeline.embed_documents`, live in one :class:`~jrag.store.MilvusStore` collection
per (mode, corpus), and a document scores as its best row of the mode's search kind
(:func:`jrag.pipeline.best_per_document`): its best macro-window in ``whole`` mode when it is
longer than the model, its best late chunk in ``late`` mode, its best 512-token chunk in
``chunked`` mode. Queries are embedded with ``encoder.encode``.
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

from jrag.encoder import Encoder
from jrag.errors import InputError, StoreError
from jrag.evaluation.corpus import Corpus, EvalDocument
from jrag.evaluation.metrics import evaluate
from jrag.parse import ParsedDocument
from jrag.pipeline import MODES, SEARCH_KIND, IngestOptions, SearchResult, best_per_document
from jrag.store import MilvusStore

DEPTH = 10  # documents ranked per query: enough for every @10 metric
# Documents embedded together, in tokens (estimated): bounds the token states held in memory.
_EMBED_GROUP_TOKENS = 65536
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
    """Modes in the given order, deduplicated; an unknown one is an InputError."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise InputError(f"unknown mode(s) {unknown or modes}; use {', '.join(MODES)}")
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
    store: MilvusStore, corpus: Corpus, encoder: Encoder, options: IngestOptions
) -> dict[str, int]:
    """Embed and write every document of ``corpus``; returns the rows written per kind."""
    from jrag.pipeline import embed_documents

    written: dict[str, int] = {}
    group: list[ParsedDocument] = []
    group_tokens = 0

    def flush_group() -> None:
        nonlocal group, group_tokens
        for doc, rows in zip(group, embed_documents(group, encoder, options), strict=True):
            store.write_document(doc.source, doc.content_hash, rows)
            for row in rows:
                written[row.kind] = written.get(row.kind, 0) + 1
        group, group_tokens = [], 0

    for doc in corpus.documents:
        group.append(as_parsed(doc))
        group_tokens += len(doc.text) // 4  # a cheap estimate is enough for grouping
        if group_tokens >= _EMBED_GROUP_TOKENS:
            flush_group()
    if group:
        flush_group()
    store.flush()
    return written


def rank_documents(
    store: MilvusStore, vector, kind: str, total_rows: int, depth: int = DEPTH
) -> list[SearchResult]:
    """The ``depth`` best documents, each scored by its best row of ``kind``; exact.

    Rows are over-fetched until ``depth`` distinct documents show up: a document absent from
    the top rows has every row below them, so it cannot outrank any document that is present.
    """
    limit = min(total_rows, max(depth * 20, 64), _MAX_SEARCH_ROWS)
    while True:
        ranked = best_per_document(store.search(vector, k=limit, kind=kind), depth)
        if len(ranked) >= depth or limit >= min(total_rows, _MAX_SEARCH_ROWS):
            return ranked
        limit = min(total_rows, limit * 4, _MAX_SEARCH_ROWS)


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
) -> EvalResult:
    """Score every corpus in every mode. Collections are created fresh and dropped afterwards;
    without ``uri`` they live in a Milvus Lite database in a temporary folder."""
    modes = check_modes(modes)
    result = EvalResult(task, encoder.name, modes, [c.label for c in corpora], metrics)
    workdir = None
    if uri is None:
        workdir = Path(tempfile.mkdtemp(prefix="jrag-eval-"))
        uri = str(workdir / "eval.db")
    try:
        for mode in modes:
            options = IngestOptions(mode=mode)
            for corpus in corpora:
                if on_step:
                    on_step(f"{task} {corpus.label}: {mode}")
                scores, seconds, rows = _evaluate_one(
                    task, corpus, encoder, options, metrics, uri, token
                )
                result.scores.setdefault(mode, {})[corpus.label] = scores
                result.seconds.setdefault(mode, {})[corpus.label] = seconds
                result.rows.setdefault(mode, {})[corpus.label] = rows
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _evaluate_one(
    task: str,
    corpus: Corpus,
    encoder: Encoder,
    options: IngestOptions,
    metrics: tuple[str, ...],
    uri: str,
    token: str | None,
) -> tuple[dict[str, float], dict[str, float], int]:
    name = _collection_name(task, options.mode, corpus.label)
    kind = SEARCH_KIND[options.mode]
    # A leftover of an earlier run at a user-given --uri.
    with contextlib.suppress(StoreError), MilvusStore(uri, name, token=token, create=False) as old:
        old.drop()
    with MilvusStore(uri, name, token=token, model=encoder.name, dim=encoder.dim) as store:
        try:
            started = time.perf_counter()
            total_rows = index_corpus(store, corpus, encoder, options).get(kind, 0)
            embedded = time.perf_counter()
            vectors = encoder.encode([q.text for q in corpus.queries])
            run = {}
            for query, vector in zip(corpus.queries, vectors, strict=True):
                ranked = rank_documents(store, vector, kind, total_rows)
                run[query.query_id] = {r.source: r.score for r in ranked}
            searched = time.perf_counter()
        finally:
            store.drop()
    seconds = {"embed": embedded - started, "search": searched - embedded}
    return evaluate(corpus.qrels(), run, metrics), seconds, total_rows
