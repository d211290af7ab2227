"""The ingest and search pipeline: discover → parse → embed → store, and query → ranked documents.

This is the one place that knows how a document becomes Milvus rows. The CLI, the LangChain and
LlamaIndex adapters and the eval all call into it.

Modes (what ``ingest`` writes, and what ``search`` looks at):
- ``whole``: one vector per document (or per overlapping macro-window of a document longer than
  the model's limit) — row kind ``doc``;
- ``late``: ``doc`` rows plus late-chunk rows (kind ``late``) pooled from the same pass;
- ``chunked``: naive independent chunks of at most 512 tokens (kind ``chunk``), the baseline.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jrag.chunking import late_chunk_spans, pool_spans
from jrag.encoder import Encoder, TokenStates
from jrag.errors import InputError, JragError, ParseError
from jrag.parse import ParsedDocument, discover, file_sha256, parse_file
from jrag.store import Hit, MilvusStore, Row, StoredDocument

logger = logging.getLogger(__name__)

MODES: dict[str, tuple[str, ...]] = {
    "whole": ("doc",),
    "late": ("doc", "late"),
    "chunked": ("chunk",),
}
SEARCH_KIND = {"whole": "doc", "late": "late", "chunked": "chunk"}
NAIVE_CHUNK_TOKENS = 512
# Documents are embedded together until their tokens reach this, for batching across files.
_EMBED_GROUP_TOKENS = 65536


@dataclass
class IngestOptions:
    """How documents become vectors."""

    mode: str = "whole"
    late_chunk_tokens: int = 256
    late_strategy: str = "sentence"
    naive_chunk_tokens: int = NAIVE_CHUNK_TOKENS
    window_overlap: int | None = None  # tokens; None: the encoder's default

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")


@dataclass
class IngestReport:
    """What an ingest run did, file by file."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    pruned: list[str] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: {"parse": 0.0, "embed": 0.0, "store": 0.0}
    )


@dataclass
class SearchResult:
    """One retrieved document, with the span that matched best."""

    doc_id: str
    source: str
    title: str
    score: float
    kind: str
    start: int
    end: int
    text: str
    metadata: dict

    @property
    def page(self) -> int | None:
        return self.metadata.get("page")


def document_id(source: str) -> str:
    """A document's stable id: the SHA-1 of its absolute path."""
    return hashlib.sha1(source.encode("utf-8")).hexdigest()


# -- embedding: one document's text → rows -----------------------------------------------------


def embed_documents(
    documents: Sequence[ParsedDocument], encoder: Encoder, options: IngestOptions
) -> list[list[Row]]:
    """Rows for each document, embedded in shared batches. Never truncates: long documents get
    overlapping windows (``doc`` rows) or as many chunks as they need."""
    if options.mode == "chunked":
        return _naive_chunk_rows(documents, encoder, options)
    windows_per_doc = encoder.encode_windows(
        [doc.text for doc in documents], overlap=options.window_overlap
    )
    rows = []
    for doc, windows in zip(documents, windows_per_doc, strict=True):
        doc_rows = _rows(doc, "doc", [w.span for w in windows], [w.pooled() for w in windows])
        if options.mode == "late":
            doc_rows += _late_chunk_rows(doc, windows, encoder, options)
        rows.append(doc_rows)
    return rows


def _late_chunk_rows(
    doc: ParsedDocument, windows: list[TokenStates], encoder: Encoder, options: IngestOptions
) -> list[Row]:
    offsets = _token_offsets(encoder, doc.text)
    spans = late_chunk_spans(
        doc.text, offsets, chunk_tokens=options.late_chunk_tokens, strategy=options.late_strategy
    )
    vectors, kept = pool_spans(windows, spans)
    return _rows(doc, "late", [spans[i] for i in kept], list(vectors))


def _naive_chunk_rows(
    documents: Sequence[ParsedDocument], encoder: Encoder, options: IngestOptions
) -> list[list[Row]]:
    # Non-overlapping windows of one tokenization, each run through the model on its own: the
    # naive chunks, cut exactly at the token budget.
    max_length = min(options.naive_chunk_tokens, encoder.max_length)
    windows_per_doc = encoder.encode_windows(
        [doc.text for doc in documents], max_length=max_length, overlap=0
    )
    return [
        _rows(doc, "chunk", [w.span for w in windows], [w.pooled() for w in windows])
        for doc, windows in zip(documents, windows_per_doc, strict=True)
    ]


def _token_offsets(encoder: Encoder, text: str) -> np.ndarray:
    encoding = encoder.tokenizer.encode(text, add_special_tokens=False)
    return np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)


def _rows(doc: ParsedDocument, kind: str, spans: Sequence[tuple[int, int]], vectors) -> list[Row]:
    doc_id = document_id(doc.source)
    base = {
        "doc_type": doc.doc_type,
        "size": doc.size,
        "mtime": doc.mtime,
        "page_count": doc.page_count,
    }
    return [
        Row(
            doc_id=doc_id,
            kind=kind,
            chunk_index=index,
            chunk_count=len(spans),
            start=start,
            end=end,
            text=doc.text[start:end],
            source=doc.source,
            title=doc.title,
            metadata={**base, "page": doc.page_at(start), "page_end": doc.page_at(end)},
            content_hash=doc.content_hash,
            vector=vector,
        )
        for index, ((start, end), vector) in enumerate(zip(spans, vectors, strict=True))
    ]


# -- ingest: files → store ---------------------------------------------------------------------


def ingest(
    paths: Sequence[str | Path],
    store: MilvusStore,
    encoder: Encoder,
    *,
    options: IngestOptions | None = None,
    glob: str | None = None,
    prune: bool = False,
    on_file: Callable[[str, str], None] | None = None,
) -> IngestReport:
    """Bring the store up to date with the files under ``paths``.

    Unchanged files (same path and content hash, fully stored for this mode) are skipped; changed
    ones replace their rows; a file that fails is reported and the rest goes on. Each document is
    written crash-safely (see ``MilvusStore.write_document``), so a killed run can simply be
    re-run. ``on_file(path, outcome)`` is called once per file, for progress display.
    """
    options = options or IngestOptions()
    report = IngestReport()
    started = time.perf_counter()
    files = discover(paths, glob)
    stored = store.documents()
    needed = set(MODES[options.mode])
    pending: list[tuple[ParsedDocument, str]] = []
    pending_tokens = 0

    def notify(path: str, outcome: str) -> None:
        if on_file:
            on_file(path, outcome)

    def flush_pending() -> None:
        nonlocal pending, pending_tokens
        if pending:
            _embed_and_store(pending, store, encoder, options, report, notify)
        pending, pending_tokens = [], 0

    for path in files:
        source = str(path)
        tick = time.perf_counter()
        try:
            content_hash = file_sha256(path)
            versions = stored.get(source, [])
            current = _complete_version(versions, content_hash, needed)
            if current is not None:
                if len(versions) > 1:  # leftovers of an interrupted earlier run
                    store.delete_stale_versions(source, content_hash)
                report.skipped.append(source)
                notify(source, "skipped")
                continue
            document = parse_file(path)
        except (ParseError, OSError) as err:
            report.failed.append((source, _message(err, source)))
            notify(source, "failed")
            continue
        finally:
            report.stage_seconds["parse"] += time.perf_counter() - tick
        outcome = "updated" if stored.get(source) else "added"
        pending.append((document, outcome))
        pending_tokens += len(document.text) // 4  # a cheap estimate is enough for grouping
        if pending_tokens >= _EMBED_GROUP_TOKENS:
            flush_pending()
    flush_pending()

    if prune:
        report.pruned = _prune(paths, files, stored, store)
    store.flush()
    report.seconds = time.perf_counter() - started
    return report


def _complete_version(
    versions: list[StoredDocument], content_hash: str, needed: set[str]
) -> StoredDocument | None:
    for version in versions:
        if (
            version.content_hash == content_hash
            and version.complete
            and needed <= set(version.kinds)
        ):
            return version
    return None


def _embed_and_store(
    pending: list[tuple[ParsedDocument, str]],
    store: MilvusStore,
    encoder: Encoder,
    options: IngestOptions,
    report: IngestReport,
    notify: Callable[[str, str], None],
) -> None:
    documents = [doc for doc, _ in pending]
    tick = time.perf_counter()
    try:
        rows_per_doc = embed_documents(documents, encoder, options)
    except JragError:
        # One bad document must not sink its batch: retry one by one to find it.
        rows_per_doc = []
        for doc in documents:
            try:
                rows_per_doc.append(embed_documents([doc], encoder, options)[0])
            except JragError as err:
                rows_per_doc.append(None)
                report.failed.append((doc.source, _message(err, doc.source)))
                notify(doc.source, "failed")
    report.stage_seconds["embed"] += time.perf_counter() - tick
    for (doc, outcome), rows in zip(pending, rows_per_doc, strict=True):
        if rows is None:
            continue
        tick = time.perf_counter()
        store.write_document(doc.source, doc.content_hash, rows)
        report.stage_seconds["store"] += time.perf_counter() - tick
        logger.debug("stored %s (%d rows)", doc.source, len(rows))
        report.tokens += encoder.count_tokens([doc.text])[0]
        getattr(report, outcome).append(doc.source)
        notify(doc.source, outcome)


def _prune(
    roots: Sequence[str | Path],
    files: list[Path],
    stored: dict[str, list[StoredDocument]],
    store: MilvusStore,
) -> list[str]:
    """Delete documents stored from under ``roots`` whose files are no longer there."""
    present = {str(f) for f in files}
    resolved_roots = [Path(r).expanduser().resolve() for r in roots]
    gone = [
        source
        for source in stored
        if source not in present
        and any(Path(source) == root or root in Path(source).parents for root in resolved_roots)
    ]
    if gone:
        store.delete_sources(gone)
    return sorted(gone)


def _message(err: Exception, source: str) -> str:
    text = str(err)
    return text if source in text else f"{source}: {text}"


# -- search: query → documents -----------------------------------------------------------------


def search(
    query: str,
    store: MilvusStore,
    encoder: Encoder,
    *,
    k: int = 5,
    mode: str = "whole",
    filter: str | None = None,
) -> list[SearchResult]:
    """The ``k`` best documents for ``query``; each document scores as its best row of the mode."""
    if mode not in SEARCH_KIND:
        raise InputError(f"unknown mode {mode!r}; use one of {', '.join(SEARCH_KIND)}")
    if not isinstance(query, str) or not query.strip():
        raise InputError("the query is empty")
    vector = encoder.encode([query])[0]
    # Several rows may belong to one document: over-fetch, then keep each document's best row.
    hits = store.search(
        vector, k=min(max(k * 20, 50), 16384), kind=SEARCH_KIND[mode], filter=filter
    )
    return best_per_document(hits, k)


def best_per_document(hits: Iterable[Hit], k: int) -> list[SearchResult]:
    """Keep each document's highest-scoring hit, best first, at most ``k`` documents."""
    best: dict[str, Hit] = {}
    for hit in hits:
        if hit.doc_id not in best or hit.score > best[hit.doc_id].score:
            best[hit.doc_id] = hit
    ranked = sorted(best.values(), key=lambda hit: -hit.score)[:k]
    return [
        SearchResult(
            doc_id=h.doc_id,
            source=h.source,
            title=h.title,
            score=h.score,
            kind=h.kind,
            start=h.start,
            end=h.end,
            text=h.text,
            metadata=h.metadata,
        )
        for h in ranked
    ]
