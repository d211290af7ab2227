"""The documents API: any text in, with its own metadata, kept by id.

A file is one source of documents among others; the texts handed over here go through the
same code (:func:`jrag.pipeline.ingest_documents`): each text is one document, embedded whole
(in overlapping windows past the model's limit) with late chunks and BM25 where the
collection has them, and written by the versioned write protocol, so a document is always
seen whole in its old or its new version, and a killed run can simply be re-run.

A document's id is its key (its ``source`` in the store; a file's id is its path):

- adding an id with changed text or metadata replaces the document;
- adding it with the same text and metadata skips it (nothing is embedded);
- without ids, ids are derived from the text (:func:`jrag.records.content_id`), so adding
  the same text twice stores it once (with the metadata it was last added with).

User metadata is stored apart from jrag's own fields and filtered by structured filters (see
:mod:`jrag.store.metadata`)::

    from jrag.documents import add_texts, list_documents

    ids = add_texts(store, encoder, ["The barn owl hunts at night."],
                    metadatas=[{"author": "ann", "year": 2021}], ids=["owl"])
    list_documents(store, {"year": {"$gte": 2020}})   # [StoredDocument(id="owl", ...)]

Every function takes ``tenant``: a tenant's documents are apart from every other's, even under
the same id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jrag.encoder import Encoder
from jrag.errors import InputError
from jrag.parse import ParsedDocument
from jrag.pipeline import (
    Embedded,
    IngestOptions,
    IngestReport,
    Sink,
    document_version,
    ingest_documents,
    kind_rows,
    plan_documents,
)
from jrag.records import text_document
from jrag.store import DocumentState, MilvusStore, document_id
from jrag.store.metadata import USER_KEY, compile_where
from jrag.store.rows import TEXT_KIND, version_ids

__all__ = [
    "StoredDocument",
    "add_documents",
    "add_embedded",
    "add_texts",
    "delete",
    "get_by_ids",
    "list_documents",
]


@dataclass
class StoredDocument:
    """A committed document as read back: its id, exact text, user metadata, source, title."""

    id: str
    text: str
    metadata: dict = field(default_factory=dict)
    source: str = ""
    title: str = ""


def add_texts(
    store: MilvusStore,
    encoder: Encoder,
    texts: Iterable[str],
    metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ids: Sequence[str | None] | None = None,
    *,
    tenant: str = "",
    options: IngestOptions | None = None,
    titles: Sequence[str | None] | None = None,
) -> list[str]:
    """Store each text as one document; returns their ids, in order.

    ``metadatas[i]`` is text i's own metadata (JSON data; any key names), ``ids[i]`` its key
    (None, or no ``ids``: derived from the content). The whole batch is checked before anything
    is written (an InputError names the bad entry); a text that then fails to embed is reported
    by an InputError after the others are stored.
    """
    documents = _documents(list(texts), metadatas, ids, titles)
    unique = _unique(documents)
    report = ingest_documents(unique, store, encoder, options=options, tenant=tenant)
    if report.failed:
        failed = "; ".join(message for _, message in report.failed[:5])
        raise InputError(f"{len(report.failed)} of {len(unique)} documents failed: {failed}")
    return [d.source for d in documents]


# How a whole-document row embedded elsewhere is recorded in its state (compared on re-add).
EXTERNAL_OPTIONS = {"embedding": "external"}


def add_embedded(
    store: MilvusStore,
    texts: Iterable[str],
    vectors: Sequence[Sequence[float]] | np.ndarray,
    metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ids: Sequence[str | None] | None = None,
    *,
    tenant: str = "",
    titles: Sequence[str | None] | None = None,
) -> list[str]:
    """Store texts whose vectors were computed elsewhere (any embedding model, one vector per
    whole text): one ``doc`` row each, with its text, metadata and BM25 where the collection
    has it, written by the same versioned protocol and keyed by id as :func:`add_texts`. Late
    chunks need jrag's own encoder, so there are none. Returns the ids."""
    documents = _documents(list(texts), metadatas, ids, titles)
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or len(matrix) != len(documents) or matrix.shape[1] != store.dim:
        raise InputError(
            f"vectors must be {len(documents)} rows of {store.dim} numbers (the collection's "
            f"dimension), not an array of shape {matrix.shape}"
        )
    if not np.isfinite(matrix).all():
        raise InputError("vectors hold NaN or infinite numbers")
    by_id = {d.source: i for i, d in enumerate(documents)}
    wanted = {"doc": EXTERNAL_OPTIONS}
    sink = Sink(store, IngestReport())
    planned = plan_documents(_unique(documents), store, wanted, tenant=tenant, report=sink.report)
    with store.writing():
        for item in planned:  # the same text and metadata, from the same embedding, is skipped
            doc, vector = item.document, matrix[by_id[item.source]]
            rows = kind_rows(doc, "doc", [(0, len(doc.text))], [vector], tenant)
            sink.write(Embedded(item, document_version(doc, tenant), rows, wanted))
    store.flush()
    return [d.source for d in documents]


def add_documents(
    store: MilvusStore,
    encoder: Encoder,
    documents: Sequence[StoredDocument | tuple[str, Mapping[str, Any] | None]],
    ids: Sequence[str | None] | None = None,
    *,
    tenant: str = "",
    options: IngestOptions | None = None,
) -> list[str]:
    """:func:`add_texts` for ``(text, metadata)`` pairs or :class:`StoredDocument` values (whose
    ``id``, if not empty, is their key unless ``ids`` gives one)."""
    texts, metadatas, keys, titles = [], [], [], []
    for i, document in enumerate(documents):
        if isinstance(document, StoredDocument):
            texts.append(document.text)
            metadatas.append(document.metadata)
            keys.append(document.id or None)
            titles.append(document.title or None)
        elif isinstance(document, tuple) and len(document) == 2:
            texts.append(document[0])
            metadatas.append(document[1])
            keys.append(None)
            titles.append(None)
        else:
            raise InputError(
                f"documents[{i}] must be a StoredDocument or a (text, metadata) pair, "
                f"not {type(document).__name__}"
            )
    if ids is not None:
        given = _per_text(ids, len(texts), "ids")
        keys = [key or own for key, own in zip(given, keys, strict=True)]
    return add_texts(store, encoder, texts, metadatas, keys, tenant=tenant, options=options,
                     titles=titles)  # fmt: skip


def delete(store: MilvusStore, ids: Iterable[str], *, tenant: str = "") -> int:
    """Delete the documents with these ids (all their rows); returns how many existed."""
    doc_ids = [document_id(_key(key), tenant) for key in ids]
    return store.delete_documents(doc_ids) if doc_ids else 0


def get_by_ids(store: MilvusStore, ids: Iterable[str], *, tenant: str = "") -> list[StoredDocument]:
    """The committed documents with these ids, in the order given; missing ones are skipped."""
    keys = list(dict.fromkeys(_key(key) for key in ids))
    states = store.states([document_id(key, tenant) for key in keys]) if keys else {}
    found = [states.get(document_id(key, tenant)) for key in keys]
    committed = [s for s in found if s is not None and s.committed and s.tenant == tenant]
    return _stored_documents(store, committed)


def list_documents(
    store: MilvusStore,
    filter: Mapping[str, Any] | None = None,
    *,
    tenant: str = "",
    limit: int | None = None,
) -> list[StoredDocument]:
    """The committed documents of ``tenant`` whose metadata matches ``filter`` (a structured
    filter, see :mod:`jrag.store.metadata`; None: all), ordered by id, at most ``limit``."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InputError(f"limit must be a whole number ≥ 0, not {limit!r}")
    where, _ = compile_where(filter, params=False)  # a scan of state rows: values quoted
    states = sorted(store.all_states(tenant, where=where), key=lambda s: s.source)
    return _stored_documents(store, states[:limit])


def _stored_documents(store: MilvusStore, states: Sequence[DocumentState]) -> list[StoredDocument]:
    """The documents of ``states`` with their exact text, read in batches by primary key (a
    version replaced meanwhile is read alone, as it now is)."""
    wanted = {
        state.doc_id: version_ids(
            state.doc_id, state.content_hash, {TEXT_KIND: state.row_counts.get(TEXT_KIND, 0)}
        )
        for state in states
    }
    pieces = {
        r["id"]: r["text"]
        for r in store.fetch([i for ids in wanted.values() for i in ids], ["id", "text"])
    }
    documents = []
    for state in states:
        ids = wanted[state.doc_id]
        if all(i in pieces for i in ids):
            text = "".join(pieces[i] for i in ids)  # ids run in piece order
        else:
            text = store.document_text(state)
        documents.append(StoredDocument(
            id=state.source, text=text, metadata=dict(state.metadata.get(USER_KEY) or {}),
            source=state.source, title=state.title,
        ))  # fmt: skip
    return documents


def _key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip():
        raise InputError(f"a document id must be a non-empty string, not {key!r:.80}")
    return key


def _documents(
    texts: list[str],
    metadatas: Sequence[Mapping[str, Any] | None] | None,
    ids: Sequence[str | None] | None,
    titles: Sequence[str | None] | None,
) -> list[ParsedDocument]:
    metadatas = _per_text(metadatas, len(texts), "metadatas")
    ids = _per_text(ids, len(texts), "ids")
    titles = _per_text(titles, len(texts), "titles")
    for i, key in enumerate(ids):
        if key is not None and not isinstance(key, str):
            raise InputError(f"ids[{i}] must be a string, not {type(key).__name__}")
    return [
        text_document(key, text, title, metadata)
        for key, text, title, metadata in zip(ids, texts, titles, metadatas, strict=True)
    ]


def _unique(documents: list[ParsedDocument]) -> list[ParsedDocument]:
    """Each id once: the same document twice is stored once; other content is an error."""
    unique: dict[str, ParsedDocument] = {}
    for document in documents:
        first = unique.setdefault(document.source, document)
        if first.content_hash != document.content_hash:
            raise InputError(f"documents repeat the id {document.source!r} with other content")
    return list(unique.values())


def _per_text(values: Sequence[Any] | None, count: int, name: str) -> list[Any]:
    if values is None:
        return [None] * count
    values = list(values)
    if len(values) != count:
        raise InputError(f"{name} has {len(values)} entries for {count} texts")
    return values
