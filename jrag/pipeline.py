"""The ingest pipeline: discover → read and hash → parse → embed → store.

This is the one place that knows how a file becomes Milvus rows; the CLI, the adapters and the
eval all call into it. Each file is read once and hashed once, each document tokenized once.
What each mode writes is in :mod:`jrag.modes`; how a version is written and committed is in
:mod:`jrag.store.writes`.

A document's stored state decides what happens to its file:
- same content, and every kind this run asks for is there (built with the same options):
  skipped without parsing;
- same content, some asked-for kind missing: those rows are *added*, the others kept;
- new content: every kind the document held, plus the asked-for ones, is re-embedded and
  replaces the old version at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from jrag.chunking import Span, SpanPooler, late_chunk_spans, pool_spans
from jrag.encoder import DEFAULT_BATCH_TOKENS, MAX_WINDOW_OVERLAP, Encoder, Tokens, TokenStates
from jrag.errors import InputError, JragError, ParseError
from jrag.modes import DEFAULT_INGEST_MODE, INGEST_MODES, check_ingest_mode
from jrag.parse import (
    BROKEN_LINK,
    DEFAULT_LIMITS,
    Discovery,
    ParsedDocument,
    ParseLimits,
    discover_files,
    display_path,
    parse_file,
    read_file,
    resolve_root,
)
from jrag.records import RecordFormat, content_hash, read_jsonl, text_document
from jrag.store import DocumentState, DocumentVersion, MilvusStore, Row, document_id
from jrag.store.metadata import USER_KEY, check_metadata
from jrag.store.rows import stored_name

__all__ = ["IngestOptions", "IngestReport", "ingest", "ingest_documents", "text_document"]

logger = logging.getLogger(__name__)

NAIVE_CHUNK_TOKENS = 512
LATE_STRATEGIES = ("sentence", "tokens")
# Documents are embedded together until their tokens reach this, for batching across files.
_EMBED_GROUP_TOKENS = 65536
# A document past this many tokens is embedded alone, its windows streamed (bounded memory).
STREAM_TOKENS = 32768


@dataclass
class IngestOptions:
    """How documents become vectors. Every field is checked on construction."""

    mode: str = DEFAULT_INGEST_MODE
    late_chunk_tokens: int = 256
    late_strategy: str = "sentence"
    naive_chunk_tokens: int = NAIVE_CHUNK_TOKENS
    window_overlap: int | None = None  # tokens; None: the encoder's default
    limits: ParseLimits = DEFAULT_LIMITS  # what one file may cost to read and parse

    def __post_init__(self) -> None:
        check_ingest_mode(self.mode)
        for name in ("late_chunk_tokens", "naive_chunk_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= 8192:
                raise InputError(f"{name} must be a whole number from 8 to 8192, not {value!r}")
        if self.late_strategy not in LATE_STRATEGIES:
            raise InputError(
                f"unknown late_strategy {self.late_strategy!r}; use one of "
                f"{', '.join(LATE_STRATEGIES)}"
            )
        overlap = self.window_overlap
        if overlap is not None and (
            isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0
        ):
            raise InputError(f"window_overlap must be a whole number ≥ 0, not {overlap!r}")

    @property
    def kinds(self) -> tuple[str, ...]:
        return INGEST_MODES[self.mode]

    def for_kind(self, kind: str, encoder: Encoder) -> dict[str, Any]:
        """The options that built rows of ``kind``: recorded, and compared on re-ingest."""
        window = {"window": encoder.max_length, "overlap": self.overlap(encoder)}
        if kind == "doc":
            return window
        if kind == "late":
            return {
                **window,
                "late_chunk_tokens": self.late_chunk_tokens,
                "late_strategy": self.late_strategy,
            }
        return {"naive_chunk_tokens": min(self.naive_chunk_tokens, encoder.max_length)}

    def overlap(self, encoder: Encoder) -> int:
        if self.window_overlap is not None:
            return self.window_overlap
        return min(MAX_WINDOW_OVERLAP, (encoder.max_length - encoder.special_token_count) // 8)


@dataclass
class IngestReport:
    """What an ingest run did, file by file."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    extended: list[tuple[str, list[str]]] = field(default_factory=list)  # (path, kinds added)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why discovery left it)
    pruned: list[str] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: {"parse": 0.0, "embed": 0.0, "store": 0.0}
    )

    @property
    def stored(self) -> int:
        return len(self.added) + len(self.updated) + len(self.extended)


@dataclass
class _Pending:
    document: ParsedDocument
    doc_id: str
    kinds: tuple[str, ...]
    outcome: str  # added / updated / extended
    committed: DocumentState | None


# -- embedding: documents → rows ---------------------------------------------------------------


def embed_documents(
    documents: Sequence[ParsedDocument],
    encoder: Encoder,
    options: IngestOptions,
    kinds: Sequence[tuple[str, ...]] | None = None,
    *,
    tenant: str = "",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    tokens: Sequence[Tokens] | None = None,
    on_windows: Callable[[str, int, int], None] | None = None,
) -> list[list[Row]]:
    """Rows of ``kinds[i]`` (default: the mode's kinds) for each document, in shared batches.

    Never truncates: long documents get overlapping windows (``doc`` rows) or as many chunks as
    they need. Each document is tokenized once; its windows and late chunks share that pass.
    ``batch_tokens`` bounds one forward batch (rows × longest row). A document past
    STREAM_TOKENS is embedded on its own, a batch of windows at a time, so memory stays bounded
    however long it is; ``on_windows(source, done, total)`` reports its progress.
    """
    kinds = list(kinds) if kinds is not None else [options.kinds] * len(documents)
    encodings = tokens if tokens is not None else encoder.tokenize([d.text for d in documents])
    rows: list[list[Row]] = [[] for _ in documents]
    huge = {i for i, encoding in enumerate(encodings) if len(encoding) > STREAM_TOKENS}
    for i in sorted(huge):
        rows[i] = _streamed_rows(
            documents[i], encodings[i], encoder, options, kinds[i], tenant, batch_tokens,
            on_windows,
        )  # fmt: skip
    windowed = [i for i, ks in enumerate(kinds) if {"doc", "late"} & set(ks) and i not in huge]
    if windowed:
        windows_per_doc = encoder.encode_windows(
            encodings=[encodings[i] for i in windowed],
            overlap=options.overlap(encoder),
            batch_tokens=batch_tokens,
        )
        for i, windows in zip(windowed, windows_per_doc, strict=True):
            doc = documents[i]
            if "doc" in kinds[i]:
                vectors = [w.pooled() for w in windows]
                rows[i] += _rows(doc, "doc", [w.span for w in windows], vectors, tenant)
            if "late" in kinds[i]:
                rows[i] += _late_chunk_rows(doc, encodings[i], windows, options, tenant)
    chunked = [i for i, ks in enumerate(kinds) if "chunk" in ks and i not in huge]
    if chunked:
        # Non-overlapping windows of one tokenization, each run through the model on its own:
        # the naive chunks, cut exactly at the token budget.
        max_length = min(options.naive_chunk_tokens, encoder.max_length)
        windows_per_doc = encoder.encode_windows(
            encodings=[encodings[i] for i in chunked],
            max_length=max_length,
            overlap=0,
            batch_tokens=batch_tokens,
        )
        for i, windows in zip(chunked, windows_per_doc, strict=True):
            spans = [w.span for w in windows]
            rows[i] += _rows(documents[i], "chunk", spans, [w.pooled() for w in windows], tenant)
    return rows


def _streamed_rows(
    doc: ParsedDocument,
    encoding: Tokens,
    encoder: Encoder,
    options: IngestOptions,
    kinds: tuple[str, ...],
    tenant: str,
    batch_tokens: int,
    on_windows: Callable[[str, int, int], None] | None,
) -> list[Row]:
    """The rows of one huge document, pooled from its windows as they stream past."""

    def progress(done: int, total: int) -> None:
        if on_windows:
            on_windows(doc.source, done, total)

    rows: list[Row] = []
    if {"doc", "late"} & set(kinds):
        spans, vectors = [], []
        late_spans = _late_spans(doc, encoding, options) if "late" in kinds else []
        pooler = SpanPooler(late_spans) if "late" in kinds else None
        for window in encoder.iter_windows(
            encoding=encoding, overlap=options.overlap(encoder), batch_tokens=batch_tokens,
            progress=progress,
        ):  # fmt: skip
            spans.append(window.span)
            vectors.append(window.pooled())
            if pooler is not None:
                pooler.add(window)
        if "doc" in kinds:
            rows += _rows(doc, "doc", spans, vectors, tenant)
        if pooler is not None:
            late, kept = pooler.result()
            rows += _rows(doc, "late", [late_spans[i] for i in kept], list(late), tenant)
    if "chunk" in kinds:
        windows = encoder.iter_windows(
            encoding=encoding, max_length=min(options.naive_chunk_tokens, encoder.max_length),
            overlap=0, batch_tokens=batch_tokens, progress=progress,
        )  # fmt: skip
        pairs = [(w.span, w.pooled()) for w in windows]
        rows += _rows(doc, "chunk", [p[0] for p in pairs], [p[1] for p in pairs], tenant)
    return rows


def _late_spans(doc: ParsedDocument, encoding: Tokens, options: IngestOptions) -> list[Span]:
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    return late_chunk_spans(
        doc.text, offsets, chunk_tokens=options.late_chunk_tokens, strategy=options.late_strategy
    )


def _late_chunk_rows(
    doc: ParsedDocument,
    encoding: Tokens,
    windows: list[TokenStates],
    options: IngestOptions,
    tenant: str,
) -> list[Row]:
    spans = _late_spans(doc, encoding, options)
    vectors, kept = pool_spans(windows, spans)
    return _rows(doc, "late", [spans[i] for i in kept], list(vectors), tenant)


def _rows(
    doc: ParsedDocument,
    kind: str,
    spans: Sequence[tuple[int, int]],
    vectors: Sequence[np.ndarray],
    tenant: str,
) -> list[Row]:
    doc_id = document_id(doc.source, tenant)
    # Document facts on every row, so that a user filter (metadata["doc_type"] == "pdf") works.
    base = {
        "doc_type": doc.doc_type,
        "size": doc.size,
        "mtime": doc.mtime,
        "page_count": doc.page_count,
        **_user(doc),
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
            tenant=tenant,
        )
        for index, ((start, end), vector) in enumerate(zip(spans, vectors, strict=True))
    ]


def document_version(doc: ParsedDocument, tenant: str = "", tokens: int = 0) -> DocumentVersion:
    """What the store records about a parsed document besides its rows."""
    return DocumentVersion(
        source=stored_name(doc.source),
        doc_id=document_id(doc.source, tenant),
        content_hash=doc.content_hash,
        text=doc.text,
        title=stored_name(doc.title),
        tenant=tenant,
        metadata={
            "doc_type": doc.doc_type,
            "size": doc.size,
            "mtime": doc.mtime,
            "page_count": doc.page_count,
            "page_starts": list(doc.page_starts),
            "tokens": tokens,
            "length": len(doc.text),
            **_user(doc),
        },
    )


def _user(doc: ParsedDocument) -> dict[str, Any]:
    """The document's own metadata, under its key apart from jrag's (see jrag.store.metadata)."""
    return {USER_KEY: doc.metadata} if doc.metadata else {}


# -- ingest: files → store ---------------------------------------------------------------------


def ingest(
    paths: Sequence[str | Path],
    store: MilvusStore,
    encoder: Encoder,
    *,
    options: IngestOptions | None = None,
    glob: str | None = None,
    prune: bool = False,
    tenant: str = "",
    follow_links: bool = False,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    discovery: Discovery | None = None,
    on_file: Callable[[str, str], None] | None = None,
    on_windows: Callable[[str, int, int], None] | None = None,
    metadata: dict[str, Any] | None = None,
    records: RecordFormat | None = None,
) -> IngestReport:
    """Bring the store up to date with the files under ``paths``.

    A JSON Lines file (``.jsonl``) holds a document per line, read as ``records`` says (a bad
    line fails alone, as ``file:line``). ``metadata`` adds fields to every document of the run
    (a document's own fields, from front matter or its record, win); it is part of a document's
    content hash, so changing it re-writes the documents.

    Symlinks that leave a folder are refused (listed in ``report.refused``) unless
    ``follow_links``. ``discovery`` is :func:`jrag.parse.discover_files`'s result when the caller
    already has it (the CLI does, for its progress bar). A file that fails is reported and the
    rest goes on; each document is written crash-safely, so a killed run can simply be re-run.
    ``on_file(path, outcome)`` is called once per file, and ``on_windows(path, done,
    total)`` as a huge file's windows are embedded. ``batch_tokens`` bounds one forward
    batch (rows × longest row).
    """
    options = options or IngestOptions()
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise InputError(f"batch_tokens must be a positive whole number, not {batch_tokens!r}")
    metadata = check_metadata(metadata, "--metadata")
    report = IngestReport()
    started = time.perf_counter()
    if discovery is None:
        discovery = discover_files(paths, glob, follow_links=follow_links)
    report.refused = list(discovery.skipped)
    sources = [str(path) for path in discovery.files]
    states = store.states([document_id(s, tenant) for s in sources])
    pending: list[_Pending] = []
    pending_tokens = 0
    leftovers: list[str] = []  # unchanged documents whose state still lists garbage

    def notify(path: str, outcome: str) -> None:
        if on_file:
            on_file(path, outcome)

    def flush_pending() -> None:
        nonlocal pending, pending_tokens
        if pending:
            _embed_and_store(
                pending, store, encoder, options, report, notify, tenant, batch_tokens, on_windows
            )
        pending, pending_tokens = [], 0

    wanted = {kind: options.for_kind(kind, encoder) for kind in options.kinds}
    record_files: dict[str, str] = {}  # JSON Lines ids seen in this run -> their file
    for source in sources:
        doc_id = document_id(source, tenant)
        tick = time.perf_counter()
        if source.lower().endswith(".jsonl"):
            try:
                documents, failed = read_jsonl(source, records or RecordFormat(), options.limits,
                                               metadata)  # fmt: skip
            except ParseError as err:
                documents, failed = [], [(source, _message(err, source))]
            fresh = []
            for document in documents:  # an id of an earlier file of this run fails here
                if document.source in record_files:
                    where = f"{display_path(source)}: id {document.source!r}"
                    failed.append((where, f"{where} is also in {record_files[document.source]}"))
                else:
                    record_files[document.source] = display_path(source)
                    fresh.append(document)
            documents = fresh
            for where, message in failed:
                report.failed.append((where, message))
                notify(where, "failed")
            report.stage_seconds["parse"] += time.perf_counter() - tick
            planned = _plan_documents(documents, store, wanted, tenant, report, notify)
            pending += planned
            pending_tokens += sum(len(p.document.text) // 4 for p in planned)
            if pending_tokens >= _EMBED_GROUP_TOKENS:
                flush_pending()
            continue
        try:
            data, file_hash = read_file(source, options.limits)
            hashed = content_hash(file_hash, metadata)
            committed = states.get(doc_id)
            plan = plan_file(committed, hashed, wanted)
            if plan is None:
                if committed is not None and committed.garbage:
                    leftovers.append(doc_id)
                report.skipped.append(source)
                notify(source, "skipped")
                continue
            kinds, outcome = plan
            document = parse_file(source, data=data, content_hash=hashed, limits=options.limits)
            if metadata:
                document = replace(document, metadata={**metadata, **document.metadata})
        except (ParseError, OSError) as err:
            report.failed.append((source, _message(err, source)))
            notify(source, "failed")
            continue
        finally:
            report.stage_seconds["parse"] += time.perf_counter() - tick
        pending.append(_Pending(document, doc_id, kinds, outcome, committed))
        pending_tokens += len(document.text) // 4  # a cheap estimate is enough for grouping
        if pending_tokens >= _EMBED_GROUP_TOKENS:
            flush_pending()
    flush_pending()
    if leftovers:
        store.collect_garbage(leftovers)

    if prune:
        report.pruned = _prune(paths, sources, glob, store, tenant, report.refused)
    store.flush()
    report.seconds = time.perf_counter() - started
    return report


def ingest_documents(
    documents: Sequence[ParsedDocument],
    store: MilvusStore,
    encoder: Encoder,
    *,
    options: IngestOptions | None = None,
    tenant: str = "",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> IngestReport:
    """Store documents already in hand (texts sent by id, uploads parsed by the caller), planned,
    embedded and written as :func:`ingest` does: the same content is skipped, a changed one
    replaces its old version at once."""
    options = options or IngestOptions()
    report = IngestReport()
    started = time.perf_counter()
    wanted = {kind: options.for_kind(kind, encoder) for kind in options.kinds}
    pending = _plan_documents(documents, store, wanted, tenant, report)
    if pending:
        _embed_and_store(pending, store, encoder, options, report, lambda *_: None, tenant,
                         batch_tokens)  # fmt: skip
        store.flush()
    report.seconds = time.perf_counter() - started
    return report


def _plan_documents(
    documents: Sequence[ParsedDocument],
    store: MilvusStore,
    wanted: dict[str, dict[str, Any]],
    tenant: str,
    report: IngestReport,
    notify: Callable[[str, str], None] | None = None,
) -> list[_Pending]:
    """The documents in hand that need writing (the others are reported skipped)."""
    doc_ids = [document_id(d.source, tenant) for d in documents]
    if len(set(doc_ids)) != len(doc_ids):
        seen = {d.source for i, d in enumerate(documents) if doc_ids.index(doc_ids[i]) != i}
        raise InputError(f"documents repeat the id {sorted(seen)[0]!r} in one batch")
    states = store.states(doc_ids) if documents else {}
    pending = []
    for document, doc_id in zip(documents, doc_ids, strict=True):
        plan = plan_file(states.get(doc_id), document.content_hash, wanted)
        if plan is None:
            report.skipped.append(document.source)
            if notify:
                notify(document.source, "skipped")
            continue
        pending.append(_Pending(document, doc_id, plan[0], plan[1], states.get(doc_id)))
    return pending


def plan_file(
    committed: DocumentState | None, content_hash: str, wanted: dict[str, dict[str, Any]]
) -> tuple[tuple[str, ...], str] | None:
    """(kinds to embed, outcome) for one file, or None when it is stored as asked."""
    if committed is None or not committed.committed:  # none, or a first write cut short
        return tuple(wanted), "added"
    if committed.content_hash == content_hash:
        missing = tuple(k for k, opts in wanted.items() if not committed.holds(k, opts))
        return (missing, "extended") if missing else None
    # New content: refresh every kind the document held, plus the ones asked for.
    held = [k for k in committed.kinds if k in ("doc", "late", "chunk")]
    return tuple(dict.fromkeys([*wanted, *held])), "updated"


def _embed_and_store(
    pending: list[_Pending],
    store: MilvusStore,
    encoder: Encoder,
    options: IngestOptions,
    report: IngestReport,
    notify: Callable[[str, str], None],
    tenant: str,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    on_windows: Callable[[str, int, int], None] | None = None,
) -> None:
    documents = [p.document for p in pending]
    kinds = [p.kinds for p in pending]
    tick = time.perf_counter()
    tokens = encoder.tokenize([doc.text for doc in documents])  # once: windows, chunks, counts

    def embed(docs: list[ParsedDocument], doc_kinds: list, doc_tokens: list) -> list[list[Row]]:
        return embed_documents(
            docs, encoder, options, doc_kinds, tenant=tenant, tokens=doc_tokens,
            batch_tokens=batch_tokens, on_windows=on_windows,
        )  # fmt: skip

    try:
        rows_per_doc: list[list[Row] | None] = list(embed(documents, kinds, tokens))
    except JragError:
        # One bad document must not sink its batch: retry one by one to find it.
        rows_per_doc = []
        for doc, doc_kinds, doc_tokens in zip(documents, kinds, tokens, strict=True):
            try:
                rows_per_doc.append(embed([doc], [doc_kinds], [doc_tokens])[0])
            except JragError as err:
                rows_per_doc.append(None)
                report.failed.append((doc.source, _message(err, doc.source)))
                notify(doc.source, "failed")
    report.stage_seconds["embed"] += time.perf_counter() - tick
    token_counts = [len(t) + encoder.special_token_count for t in tokens]
    with store.writing():  # the lease for this batch; other writers go on between batches
        _store_all(pending, rows_per_doc, token_counts, store, encoder, options, report, notify,
                   tenant)  # fmt: skip


def _store_all(
    pending: list[_Pending],
    rows_per_doc: list[list[Row] | None],
    token_counts: list[int],
    store: MilvusStore,
    encoder: Encoder,
    options: IngestOptions,
    report: IngestReport,
    notify: Callable[[str, str], None],
    tenant: str,
) -> None:
    for item, rows, tokens in zip(pending, rows_per_doc, token_counts, strict=True):
        if rows is None:
            continue
        doc = item.document
        tick = time.perf_counter()
        options_by_kind = {kind: options.for_kind(kind, encoder) for kind in item.kinds}
        store.write_document(
            document_version(doc, tenant, tokens), rows, options_by_kind, item.committed
        )
        report.stage_seconds["store"] += time.perf_counter() - tick
        logger.debug("stored %s (%d rows)", doc.source, len(rows))
        report.tokens += tokens
        if item.outcome == "extended":
            report.extended.append((doc.source, list(item.kinds)))
        else:
            getattr(report, item.outcome).append(doc.source)
        notify(doc.source, item.outcome)


def _prune(
    roots: Sequence[str | Path],
    present: Sequence[str],
    glob: str | None,
    store: MilvusStore,
    tenant: str,
    refused: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """Delete stored documents that this run would have ingested but whose files are gone.

    Only sources under ``roots`` count, and with ``glob`` only names it matches: a file the
    glob filtered out was never this run's to judge. Likewise a path discovery ``refused`` (a
    link the policy leaves out, an unreadable file) and anything under it is kept; only a
    broken link counts as gone.
    """
    here = {stored_name(p) for p in present}
    resolved_roots = [resolve_root(r) for r in roots]
    kept = [Path(path) for path, reason in refused if reason != BROKEN_LINK]
    gone = []
    for state in store.all_states(tenant, pending=True):
        source = Path(state.source)
        if state.source in here:
            continue
        if not any(source == root or root in source.parents for root in resolved_roots):
            continue
        if glob is not None and not (fnmatch(source.name, glob) or source.match(glob)):
            continue
        if any(source == path or path in source.parents for path in kept):
            continue
        gone.append(state)
    if gone:
        store.delete_documents([s.doc_id for s in gone])
    return sorted(s.source for s in gone)


def _message(err: Exception, source: str) -> str:
    text, shown = str(err), display_path(source)
    return text if shown in text else f"{shown}: {text}"
