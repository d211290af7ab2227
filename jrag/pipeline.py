"""The ingest pipeline: discover → read and hash → parse → embed → store.

This is the one place that knows how a file becomes Milvus rows. Its core is four steps:
:func:`plan_files` reads and hashes each file once and carries its bytes, stored state and the
kinds to write (a :class:`Planned`); :meth:`Planned.parse` parses those very bytes;
:func:`embed_planned` turns a group into rows, tokenizing each document once; a :class:`Sink`
writes them. The local engine (:func:`ingest`, :func:`ingest_documents`), the Ray engine
(:mod:`jrag.distributed`) and the eval's indexer only decide where each step runs.
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from jrag.bulk import BulkLoader, UpsertLoader
from jrag.chunking import Span, SpanPooler, late_chunk_spans
from jrag.encoder import (
    DEFAULT_BATCH_TOKENS,
    MAX_WINDOW_OVERLAP,
    Encoder,
    ModelFacts,
    Tokens,
    TokenStates,
)
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
PLAN_BATCH = 512  # documents per state query while planning


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

    def for_kind(self, kind: str, encoder: Encoder | ModelFacts) -> dict[str, Any]:
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

    def overlap(self, encoder: Encoder | ModelFacts) -> int:
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
    # Naive chunks are non-overlapping windows of the same tokenization, cut at the budget.
    cuts = {
        "windows": {"overlap": options.overlap(encoder)},
        "chunks": {"max_length": min(options.naive_chunk_tokens, encoder.max_length), "overlap": 0},
    }
    small = [i for i, encoding in enumerate(encodings) if len(encoding) <= STREAM_TOKENS]

    def batched(indices: list[int], cut: dict[str, int]) -> dict[int, list[TokenStates]]:
        if not indices:
            return {}
        encoded = encoder.encode_windows(
            encodings=[encodings[i] for i in indices], batch_tokens=batch_tokens, **cut
        )
        return dict(zip(indices, encoded, strict=True))

    windows = batched([i for i in small if {"doc", "late"} & set(kinds[i])], cuts["windows"])
    chunks = batched([i for i in small if "chunk" in kinds[i]], cuts["chunks"])
    rows = []
    for i, doc in enumerate(documents):
        if i in small:
            doc_windows, doc_chunks = windows.get(i, []), chunks.get(i, [])
        else:  # streamed, each window pooled as it passes
            progress = partial(on_windows, doc.source) if on_windows else None
            doc_windows, doc_chunks = (
                encoder.iter_windows(
                    encoding=encodings[i], batch_tokens=batch_tokens, progress=progress, **cut
                )
                for cut in cuts.values()
            )
        rows.append(
            _document_rows(doc, encodings[i], doc_windows, doc_chunks, options, kinds[i], tenant)
        )
    return rows


def _document_rows(
    doc: ParsedDocument,
    encoding: Tokens,
    windows: Iterable[TokenStates],
    chunks: Iterable[TokenStates],
    options: IngestOptions,
    kinds: tuple[str, ...],
    tenant: str,
) -> list[Row]:
    """One document's rows from its overlapping ``windows`` and its naive ``chunks``: lists, or
    streams whose windows are pooled as they pass (memory holds one batch of them)."""
    rows: list[Row] = []
    if {"doc", "late"} & set(kinds):
        spans, vectors = [], []
        late_spans = _late_spans(doc, encoding, options) if "late" in kinds else []
        pooler = SpanPooler(late_spans) if "late" in kinds else None
        for window in windows:
            if "doc" in kinds:
                spans.append(window.span)
                vectors.append(window.pooled())
            if pooler is not None:
                pooler.add(window)
        if "doc" in kinds:
            rows += kind_rows(doc, "doc", spans, vectors, tenant)
        if pooler is not None:
            late, kept = pooler.result()
            rows += kind_rows(doc, "late", [late_spans[i] for i in kept], list(late), tenant)
    if "chunk" in kinds:
        pairs = [(w.span, w.pooled()) for w in chunks]
        rows += kind_rows(doc, "chunk", [p[0] for p in pairs], [p[1] for p in pairs], tenant)
    return rows


def _late_spans(doc: ParsedDocument, encoding: Tokens, options: IngestOptions) -> list[Span]:
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    return late_chunk_spans(
        doc.text, offsets, chunk_tokens=options.late_chunk_tokens, strategy=options.late_strategy
    )


def kind_rows(
    doc: ParsedDocument,
    kind: str,
    spans: Sequence[tuple[int, int]],
    vectors: Sequence[np.ndarray],
    tenant: str,
) -> list[Row]:
    """One row of ``kind`` per span of ``doc``, with its vector."""
    doc_id = document_id(doc.source, tenant)
    base = _facts(doc)
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
            **_facts(doc),
            "page_starts": list(doc.page_starts),
            "tokens": tokens,
            "length": len(doc.text),
        },
    )


def _facts(doc: ParsedDocument) -> dict[str, Any]:
    """What the document's state and each of its rows record of it: on every row, so that a
    user filter (``metadata["doc_type"] == "pdf"``) works. The document's own metadata sits
    under its key, apart from jrag's (see jrag.store.metadata)."""
    facts = {"doc_type": doc.doc_type, "size": doc.size, "mtime": doc.mtime,
             "page_count": doc.page_count}  # fmt: skip
    return {**facts, USER_KEY: doc.metadata} if doc.metadata else facts


# -- the ingest core: plan → parse → embed → write --------------------------------------------


def _ignore(*_: object) -> None:
    """A notification nobody listens to."""


@dataclass
class Planned:
    """A document the plan says needs work: the bytes it hashed (or the document in hand), its
    stored state, and the kinds to write. It crosses processes as plain data (Ray)."""

    source: str
    doc_id: str
    content_hash: str
    kinds: tuple[str, ...]
    outcome: str  # added / updated / extended
    committed: DocumentState | None
    data: bytes | None = None
    document: ParsedDocument | None = None
    size: int = 0  # the planned file's bytes
    changed_kinds: tuple[str, ...] = ()  # what to write if the file has changed by its parse
    metadata: dict[str, Any] = field(default_factory=dict)  # the run's, under the file's own

    def parse(self, limits: ParseLimits) -> ParsedDocument:
        """The document, parsed from the bytes the plan hashed, or, where the plan let them go
        (a Ray driver keeps no corpus in memory), from the file read again: a file rewritten
        since its plan is re-planned as new content, never stored as a partial version."""
        if self.document is None:
            data = self.data
            if data is None:
                data, file_hash = read_file(self.source, limits)
                if (hashed := content_hash(file_hash, self.metadata)) != self.content_hash:
                    self.content_hash, self.kinds = hashed, self.changed_kinds
                    held = self.committed is not None and self.committed.committed
                    self.outcome = "updated" if held else "added"
            document = parse_file(
                self.source, data=data, content_hash=self.content_hash, limits=limits
            )
            if self.metadata:
                document = replace(document, metadata={**self.metadata, **document.metadata})
            self.document, self.data = document, None
        return self.document


@dataclass
class Embedded:
    """A planned document's rows, ready for a sink, or why it failed."""

    planned: Planned
    version: DocumentVersion | None = None
    rows: list[Row] = field(default_factory=list)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> how it was built
    tokens: int = 0
    error: str | None = None


def plan_files(
    sources: Sequence[str],
    store: MilvusStore,
    wanted: dict[str, dict[str, Any]],
    *,
    tenant: str,
    limits: ParseLimits,
    report: IngestReport,
    notify: Callable[[str, str], None],
    leftovers: list[str],
    metadata: dict[str, Any] | None = None,
    records: RecordFormat | None = None,
) -> Iterator[Planned]:
    """Read and hash each file once, and plan it against its stored state (read in batches);
    skipped and unreadable files go to ``report``, unchanged ones with garbage to
    ``leftovers``. A JSON Lines file is a document per line, read as ``records`` says (a bad
    line fails alone, as ``file:line``); ``metadata`` (the run's) is part of each content hash,
    so changing it re-writes the documents."""
    record_files: dict[str, str] = {}  # JSON Lines ids seen in this run -> their file
    for first in range(0, len(sources), PLAN_BATCH):
        batch = sources[first : first + PLAN_BATCH]
        ids = [document_id(s, tenant) for s in batch]
        states = store.states(ids)
        for source, doc_id in zip(batch, ids, strict=True):
            tick = time.perf_counter()
            if source.lower().endswith(".jsonl"):
                documents = _records(source, records, limits, metadata, record_files, report,
                                     notify)  # fmt: skip
                report.stage_seconds["parse"] += time.perf_counter() - tick
                yield from plan_documents(documents, store, wanted, tenant=tenant, report=report,
                                          notify=notify)  # fmt: skip
                continue
            try:
                data, file_hash = read_file(source, limits)
            except (ParseError, OSError) as err:
                report.failed.append((source, failure_message(err, source)))
                notify(source, "failed")
                continue
            finally:
                report.stage_seconds["parse"] += time.perf_counter() - tick
            hashed = content_hash(file_hash, metadata)
            planned = _plan_one(source, doc_id, hashed, states.get(doc_id), wanted, report,
                                notify, leftovers)  # fmt: skip
            if planned is not None:
                planned.data, planned.size, planned.metadata = data, len(data), metadata or {}
                yield planned


def _records(
    source: str,
    records: RecordFormat | None,
    limits: ParseLimits,
    metadata: dict[str, Any] | None,
    seen: dict[str, str],
    report: IngestReport,
    notify: Callable[[str, str], None],
) -> list[ParsedDocument]:
    """A JSON Lines file's documents; its bad lines, and ids an earlier file of the run holds,
    fail alone."""
    try:
        documents, failed = read_jsonl(source, records or RecordFormat(), limits, metadata)
    except ParseError as err:
        documents, failed = [], [(source, failure_message(err, source))]
    fresh = []
    for document in documents:
        if document.source in seen:
            where = f"{display_path(source)}: id {document.source!r}"
            failed.append((where, f"{where} is also in {seen[document.source]}"))
        else:
            seen[document.source] = display_path(source)
            fresh.append(document)
    for where, message in failed:
        report.failed.append((where, message))
        notify(where, "failed")
    return fresh


def plan_documents(
    documents: Sequence[ParsedDocument],
    store: MilvusStore,
    wanted: dict[str, dict[str, Any]],
    *,
    tenant: str,
    report: IngestReport,
    notify: Callable[[str, str], None] = _ignore,
) -> list[Planned]:
    """Plan documents already in hand, as :func:`plan_files` plans files; their ids must
    differ."""
    doc_ids = [document_id(d.source, tenant) for d in documents]
    if len(set(doc_ids)) != len(doc_ids):
        seen = {d.source for i, d in enumerate(documents) if doc_ids.index(doc_ids[i]) != i}
        raise InputError(f"documents repeat the id {sorted(seen)[0]!r} in one batch")
    states = store.states(doc_ids) if documents else {}
    planned = []
    for doc, doc_id in zip(documents, doc_ids, strict=True):
        item = _plan_one(doc.source, doc_id, doc.content_hash, states.get(doc_id), wanted, report,
                         notify, [])  # fmt: skip
        if item is not None:
            item.document = doc
            planned.append(item)
    return planned


def _plan_one(
    source: str,
    doc_id: str,
    content_hash: str,
    committed: DocumentState | None,
    wanted: dict[str, dict[str, Any]],
    report: IngestReport,
    notify: Callable[[str, str], None],
    leftovers: list[str],
) -> Planned | None:
    plan = plan_file(committed, content_hash, wanted)
    if plan is None:
        if committed is not None and committed.garbage:
            leftovers.append(doc_id)
        report.skipped.append(source)
        notify(source, "skipped")
        return None
    kinds, outcome = plan
    changed = plan_file(committed, "", wanted)  # "" is no content's hash: the plan if it changes
    changed_kinds = changed[0] if changed else kinds
    return Planned(source, doc_id, content_hash, kinds, outcome, committed,
                   changed_kinds=changed_kinds)  # fmt: skip


def embed_planned(
    items: Sequence[Planned],
    encoder: Encoder,
    options: IngestOptions,
    *,
    tenant: str = "",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    on_windows: Callable[[str, int, int], None] | None = None,
) -> list[Embedded]:
    """Rows for a group of parsed, planned documents, sharing forward batches; each document is
    tokenized once. A document that cannot be embedded fails alone."""
    documents = [item.parse(options.limits) for item in items]
    tokens = encoder.tokenize([doc.text for doc in documents])  # once: windows, chunks, counts

    def embed(docs: list[ParsedDocument], doc_kinds: list, doc_tokens: list) -> list[list[Row]]:
        return embed_documents(
            docs, encoder, options, doc_kinds, tenant=tenant, tokens=doc_tokens,
            batch_tokens=batch_tokens, on_windows=on_windows,
        )  # fmt: skip

    out = [Embedded(item) for item in items]
    try:
        rows = embed(documents, [item.kinds for item in items], tokens)
        for result, doc_rows in zip(out, rows, strict=True):
            result.rows = doc_rows
    except JragError:
        # One bad document must not sink its group: one by one, to find it.
        for result, doc, doc_tokens in zip(out, documents, tokens, strict=True):
            try:
                result.rows = embed([doc], [result.planned.kinds], [doc_tokens])[0]
            except JragError as err:
                result.error = failure_message(err, doc.source)
    for result, doc, doc_tokens in zip(out, documents, tokens, strict=True):
        if result.error is None:
            result.tokens = len(doc_tokens) + encoder.special_token_count
            result.version = document_version(doc, tenant, result.tokens)
            result.options = wanted_kinds(options, encoder, result.planned.kinds)
    return out


class Sink:
    """Where embedded documents go: the store's versioned protocol, or bulk import. Keeps the
    run's outcomes in ``report``."""

    def __init__(
        self,
        store: MilvusStore,
        report: IngestReport,
        notify: Callable[[str, str], None] = _ignore,
        *,
        bulk: bool = False,
    ) -> None:
        self.store = store
        self.report = report
        self.notify = notify
        self.loader = BulkLoader.for_store(store) if bulk else UpsertLoader(store)

    def write(self, result: Embedded) -> str:
        """Write (or record the failure of) one document; returns its outcome."""
        planned, report = result.planned, self.report
        if result.error is not None or result.version is None:
            report.failed.append((planned.source, result.error or "not embedded"))
            self.notify(planned.source, "failed")
            return "failed"
        tick = time.perf_counter()
        self.loader.add(result.version, result.rows, result.options, planned.committed)
        report.stage_seconds["store"] += time.perf_counter() - tick
        logger.debug("stored %s (%d rows)", planned.source, len(result.rows))
        report.tokens += result.tokens
        if planned.outcome == "extended":
            report.extended.append((planned.source, list(planned.kinds)))
        else:
            getattr(report, planned.outcome).append(planned.source)
        self.notify(planned.source, planned.outcome)
        return planned.outcome

    def finish(self) -> None:
        tick = time.perf_counter()
        self.loader.finish()
        self.report.stage_seconds["store"] += time.perf_counter() - tick


def run_groups(
    planned: Iterable[Planned],
    sink: Sink,
    encoder: Encoder,
    options: IngestOptions,
    *,
    tenant: str = "",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    on_windows: Callable[[str, int, int], None] | None = None,
) -> None:
    """The local engine: parse each planned document here, embed them in groups of about
    ``_EMBED_GROUP_TOKENS`` tokens, and write each group under one hold of the write lease."""
    report = sink.report
    group: list[Planned] = []
    group_tokens = 0

    def flush() -> None:
        nonlocal group, group_tokens
        if group:
            tick = time.perf_counter()
            results = embed_planned(group, encoder, options, tenant=tenant,
                                    batch_tokens=batch_tokens, on_windows=on_windows)  # fmt: skip
            report.stage_seconds["embed"] += time.perf_counter() - tick
            with sink.store.writing():  # the lease for this group; other writers go on between
                for result in results:
                    sink.write(result)
        group, group_tokens = [], 0

    for item in planned:
        tick = time.perf_counter()
        try:
            document = item.parse(options.limits)
        except (ParseError, OSError) as err:
            sink.write(Embedded(item, error=failure_message(err, item.source)))
            continue
        finally:
            report.stage_seconds["parse"] += time.perf_counter() - tick
        group.append(item)
        group_tokens += len(document.text) // 4  # a cheap estimate is enough for grouping
        if group_tokens >= _EMBED_GROUP_TOKENS:
            flush()
    flush()
    sink.finish()


def wanted_kinds(
    options: IngestOptions, encoder: Encoder | ModelFacts, kinds: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The options each kind to write is built with (default: the mode's kinds)."""
    return {
        kind: options.for_kind(kind, encoder)
        for kind in (options.kinds if kinds is None else kinds)
    }


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
    check_batch_tokens(batch_tokens)
    metadata = check_metadata(metadata, "--metadata")
    report = IngestReport()
    started = time.perf_counter()
    if discovery is None:
        discovery = discover_files(paths, glob, follow_links=follow_links)
    report.refused = list(discovery.skipped)
    sources = [str(path) for path in discovery.files]
    notify = on_file or _ignore
    leftovers: list[str] = []  # unchanged documents whose state still lists garbage
    planned = plan_files(sources, store, wanted_kinds(options, encoder), tenant=tenant,
                         limits=options.limits, report=report, notify=notify,
                         leftovers=leftovers, metadata=metadata, records=records)  # fmt: skip
    run_groups(planned, Sink(store, report, notify), encoder, options, tenant=tenant,
               batch_tokens=batch_tokens, on_windows=on_windows)  # fmt: skip
    if leftovers:
        store.collect_garbage(leftovers)
    if prune:
        report.pruned = prune_missing(paths, sources, glob, store, tenant, report.refused)
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
    kinds: Sequence[str] | None = None,
) -> IngestReport:
    """Store documents already in hand (texts sent by id, uploads parsed by the caller), planned,
    embedded and written as :func:`ingest` does: the same content is skipped, a changed one
    replaces its old version at once. ``kinds`` (default: the mode's) are the kinds to write."""
    options = options or IngestOptions()
    report = IngestReport()
    started = time.perf_counter()
    wanted = wanted_kinds(options, encoder, kinds)
    planned = plan_documents(documents, store, wanted, tenant=tenant, report=report)
    if planned:
        run_groups(planned, Sink(store, report), encoder, options, tenant=tenant,
                   batch_tokens=batch_tokens)  # fmt: skip
        store.flush()
    report.seconds = time.perf_counter() - started
    return report


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


def check_batch_tokens(batch_tokens: int) -> None:
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise InputError(f"batch_tokens must be a positive whole number, not {batch_tokens!r}")


def prune_missing(
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


def failure_message(err: Exception, source: str) -> str:
    """``err`` as one line that names ``source``."""
    text, shown = str(err), display_path(source)
    return text if shown in text else f"{shown}: {text}"
