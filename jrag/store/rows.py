"""What one jrag collection holds, row by row, and the plain data types that cross its boundary.

A collection is one Milvus collection with one schema (:data:`FIELDS`); every entity written
to it is built by a builder here (:func:`vector_entity`, :func:`text_entities`,
:func:`state_entity`, :func:`marker_entity`). Every row has a ``kind``:

- ``doc``, ``late``, ``chunk``: *vector rows*, the ones a search ranks. ``doc`` is a whole
  document (or one overlapping window of a document past the model's limit), ``late`` a late
  chunk pooled from the same pass, ``chunk`` a naive independent chunk.
- ``text``: the document's exact parsed text, in pieces of at most :data:`TEXT_PIECE_CHARS`
  characters. Vector rows keep their own text for full-text search and snippets, cut to Milvus'
  VARCHAR limit; passages and citations are always rebuilt from these pieces, so a quote equals
  ``parse_file(source).text[start:end]`` whatever the document holds.
- ``state``: one row per document, the commit record of the versioned write protocol (see
  :mod:`jrag.store.writes`). Its ``content_hash`` names the committed version and its metadata
  the kinds (with row counts and ingest options) that version holds.
- ``manifest``: the collection's identity and contents (see :mod:`jrag.store.manifest`).
- ``lease``: which process may write the collection now (see :mod:`jrag.store.lease`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jrag.errors import StoreError

VECTOR_KINDS = ("doc", "late", "chunk")
TEXT_KIND = "text"
STATE_KIND = "state"
MANIFEST_KIND = "manifest"
LEASE_KIND = "lease"
KINDS = (*VECTOR_KINDS, TEXT_KIND, STATE_KIND, MANIFEST_KIND, LEASE_KIND)

# VARCHAR limits, in UTF-8 bytes.
MAX_ID = 512
MAX_DOC_ID = 64
MAX_TENANT = 256
MAX_KIND = 16
MAX_TEXT = 65535
MAX_SOURCE = 4096
MAX_TITLE = 2048
MAX_HASH = 128
# A text piece of this many characters is at most 64,000 UTF-8 bytes, under MAX_TEXT.
TEXT_PIECE_CHARS = 16000

# The schema's fields, in order (``vector`` is FLOAT_VECTOR of the model's dim; see
# :func:`jrag.store.manifest.create_collection` for their types), and the subsets read back.
FIELDS = (
    "id", "doc_id", "tenant", "kind", "chunk_index", "chunk_count", "start", "end", "text",
    "source", "title", "metadata", "content_hash", "vector",
)  # fmt: skip
ROW_FIELDS = [f for f in FIELDS if f not in ("chunk_count", "vector")]
STATE_FIELDS = ["doc_id", "tenant", "source", "title", "content_hash", "metadata"]


@dataclass
class Row:
    """One row to write. ``id`` is deterministic, so rewriting a row never duplicates it."""

    doc_id: str
    kind: str
    chunk_index: int
    chunk_count: int
    start: int
    end: int
    text: str
    source: str
    title: str
    metadata: dict
    content_hash: str
    vector: Sequence[float] | np.ndarray | None = None
    tenant: str = ""

    @property
    def id(self) -> str:
        """Primary key: ``doc_id:content_hash[:16]:kind:chunk_index``."""
        return row_id(self.doc_id, self.content_hash, self.kind, self.chunk_index)


def row_id(doc_id: str, content_hash: str, kind: str, chunk_index: int) -> str:
    return f"{doc_id}:{content_hash[:16]}:{kind}:{chunk_index}"


def version_ids(doc_id: str, content_hash: str, rows: dict[str, int]) -> list[str]:
    """The ids of every row of one version, given its row count per kind."""
    return [
        row_id(doc_id, content_hash, kind, i) for kind, n in sorted(rows.items()) for i in range(n)
    ]


def state_id(doc_id: str) -> str:
    """The id of a document's one state row (not per version: its upsert is the commit)."""
    return f"{doc_id}:state"


def document_id(source: str, tenant: str = "") -> str:
    """A document's stable id: the SHA-1 of its path as the file system's bytes (a name that is
    not valid UTF-8 has its own id), and of its tenant when there is one."""
    key = os.fsencode(source)
    if tenant:
        key = tenant.encode("utf-8") + b"\x00" + key
    return hashlib.sha1(key).hexdigest()


def stored_name(name: str) -> str:
    """``name`` (a path from the file system) as valid UTF-8, which Milvus stores: the bytes of
    a name that is not valid UTF-8 are written ``\\xe9``; any other name is unchanged."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass
class DocumentVersion:
    """One version of one document, as the pipeline hands it to the store."""

    source: str
    doc_id: str
    content_hash: str
    text: str
    title: str
    tenant: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # doc_type, size, mtime, tokens …


@dataclass
class Hit:
    """One row as read back; ``score`` is the search score (higher is better), 0.0 when read."""

    id: str
    doc_id: str
    kind: str
    chunk_index: int
    start: int
    end: int
    text: str
    source: str
    title: str
    metadata: dict
    content_hash: str
    score: float = 0.0
    tenant: str = ""


@dataclass
class DocumentState:
    """A document's committed version, as its state row records it."""

    doc_id: str
    source: str
    title: str
    content_hash: str
    tenant: str = ""
    # kind -> {"rows": n, "options": {...}} for every kind the committed version holds.
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Versions whose rows may still exist and must go: {"content_hash": h, "rows": {kind: n}}.
    # Recorded before rows are written, so cleaning up never needs a scan of the collection.
    garbage: list[dict[str, Any]] = field(default_factory=list)

    @property
    def committed(self) -> bool:
        """False for the placeholder that records a first write in progress."""
        return bool(self.content_hash)

    @property
    def row_counts(self) -> dict[str, int]:
        return {kind: int(entry.get("rows", 0)) for kind, entry in self.kinds.items()}

    def holds(self, kind: str, options: dict[str, Any] | None = None) -> bool:
        """True if the committed version has ``kind`` rows (built with ``options``, if given)."""
        entry = self.kinds.get(kind)
        return entry is not None and (options is None or entry.get("options", {}) == options)

    @property
    def tokens(self) -> int:
        return int(self.metadata.get("tokens", 0))

    @classmethod
    def of(cls, version: DocumentVersion, content_hash: str, **fields: Any) -> DocumentState:
        """A state of ``version``'s document recording ``content_hash`` ("": a placeholder)."""
        return cls(
            version.doc_id, version.source, version.title, content_hash, version.tenant, **fields
        )


# -- row builders: every entity a collection stores is built here ------------------------------


def placeholder_vector(dim: int) -> list[float]:
    """The vector of rows that are never searched by vector (Milvus needs one on every row)."""
    return [1.0] + [0.0] * (dim - 1)


def marker_entity(
    row_id: str,
    doc_id: str,
    kind: str,
    dim: int,
    *,
    title: str = "",
    metadata: dict | None = None,
    tenant: str = "",
    source: str = "",
    content_hash: str = "",
) -> dict[str, Any]:
    """A row that is not searched (state, manifest, lease): the fields that matter, the rest
    zero."""
    return {
        "id": row_id, "doc_id": doc_id, "tenant": tenant, "kind": kind, "chunk_index": 0,
        "chunk_count": 0, "start": 0, "end": 0, "text": "", "source": source,
        "title": truncate_utf8(title or "", MAX_TITLE), "metadata": _plain_json(metadata or {}),
        "content_hash": content_hash, "vector": placeholder_vector(dim),
    }  # fmt: skip


def state_entity(state: DocumentState, dim: int) -> dict[str, Any]:
    """The state row of ``state`` (its upsert is a commit)."""
    return marker_entity(
        state_id(state.doc_id), state.doc_id, STATE_KIND, dim, title=state.title,
        metadata={"kinds": state.kinds, "garbage": state.garbage, **state.metadata},
        tenant=state.tenant, source=state.source, content_hash=state.content_hash,
    )  # fmt: skip


def read_state(r: dict) -> DocumentState:
    """A state row (read with :data:`STATE_FIELDS`) as a :class:`DocumentState`."""
    meta = json_metadata(r.get("metadata"))
    kinds = meta.pop("kinds", {}) or {}
    garbage = meta.pop("garbage", []) or []
    return DocumentState(
        doc_id=r["doc_id"], source=r["source"], title=r.get("title", ""),
        content_hash=r["content_hash"], tenant=r.get("tenant", ""), kinds=kinds, metadata=meta,
        garbage=garbage,
    )  # fmt: skip


def vector_entity(version: DocumentVersion, row: Row, dim: int) -> dict[str, Any]:
    """The entity of one vector row of ``version``."""
    text = row.text or ""
    clipped = truncate_utf8(text, MAX_TEXT)
    metadata = dict(row.metadata or {})
    if len(clipped) < len(text):
        # Full-text search sees the first 64 KB; passages come from the text pieces.
        metadata["text_clipped"] = True
    return {
        **_version_fields(version), "id": row.id, "kind": row.kind,
        "chunk_index": int(row.chunk_index), "chunk_count": int(row.chunk_count),
        "start": int(row.start), "end": int(row.end), "text": clipped,
        "metadata": _plain_json(metadata), "vector": checked_vector(row.vector, dim),
    }  # fmt: skip


def text_entities(version: DocumentVersion, dim: int) -> list[dict[str, Any]]:
    """The exact-text pieces of ``version``."""
    spans = text_pieces(version.text)
    base = _version_fields(version)
    return [
        {
            **base, "id": row_id(version.doc_id, version.content_hash, TEXT_KIND, i),
            "kind": TEXT_KIND, "chunk_index": i, "chunk_count": len(spans), "start": s, "end": e,
            "text": version.text[s:e], "metadata": {}, "vector": placeholder_vector(dim),
        }
        for i, (s, e) in enumerate(spans)
    ]  # fmt: skip


def checked_vector(vector: Any, dim: int) -> list[float]:
    """``vector`` as a list of ``dim`` finite floats, or a StoreError that says why not."""
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    if arr.shape[0] != dim:
        raise StoreError(f"vector has {arr.shape[0]} dimensions; the collection holds dim {dim}")
    if not np.all(np.isfinite(arr)):
        raise StoreError("vector contains NaN or infinite values")
    return arr.tolist()


def _version_fields(version: DocumentVersion) -> dict[str, Any]:
    return {
        "doc_id": version.doc_id,
        "tenant": version.tenant,
        "source": version.source,
        "title": truncate_utf8(version.title or "", MAX_TITLE),
        "content_hash": version.content_hash,
    }


def _plain_json(value: dict) -> dict:
    return json.loads(json.dumps(value, default=str))


def truncate_utf8(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes, never in the middle of a character."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore")


def text_pieces(text: str) -> list[tuple[int, int]]:
    """Spans that cut ``text`` into consecutive pieces of at most TEXT_PIECE_CHARS characters."""
    return [
        (i, min(i + TEXT_PIECE_CHARS, len(text))) for i in range(0, len(text), TEXT_PIECE_CHARS)
    ]


# Milvus' expression lexer knows only the simple escapes: a \u0001 or \x01 escape is an error
# ("unknown escape sequence"), while any other character may stand in a literal as it is.
_LITERAL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"}


def quote(value: str) -> str:
    """A Milvus expression string literal equal to ``value``, whatever it holds (control
    characters, ESC, bidi marks): the one quoting for tenants, sources and users' values."""
    return '"' + "".join(_LITERAL_ESCAPES.get(c, c) for c in value) + '"'


def json_metadata(value: Any) -> Any:
    """Metadata as Milvus' JSON field stores it (some versions hand it back as text)."""
    if isinstance(value, str):
        return json.loads(value) if value else {}
    return value or {}
