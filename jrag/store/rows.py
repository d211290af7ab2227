"""What one jrag collection holds, row by row, and the plain data types that cross its boundary.

A collection is one Milvus collection with one schema. Every row has a ``kind``:

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
        if entry is None:
            return False
        return options is None or entry.get("options", {}) == options

    @property
    def tokens(self) -> int:
        return int(self.metadata.get("tokens", 0))


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
