"""The versioned write protocol: a document's new version becomes visible all at once, or not.

Every row carries its document's ``content_hash`` and has a deterministic id, and each document
has one ``state`` row naming its committed version and the kinds that version holds. Writing a
version goes, in this order:

1. upsert the version's rows (vector rows and the exact-text pieces);
2. delete this version's leftovers of the same kinds (rows an interrupted earlier write left
   beyond the new row counts);
3. flush (Milvus Lite);
4. upsert the state row: **the commit**. Readers only count rows whose version and kind the
   state row names, so before this point they see the old version, after it the new one;
5. delete the rows of every other version.

A crash anywhere leaves the last committed version intact and visible; re-running rewrites the
same ids (upsert, so two writers never duplicate a row) and commits. Adding a kind to the
committed version (another ``--mode``) keeps the kinds it already holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jrag.errors import StoreError
from jrag.store.connection import Connection
from jrag.store.filters import all_of, one_of
from jrag.store.manifest import placeholder_vector
from jrag.store.rows import (
    MAX_SOURCE,
    MAX_TEXT,
    MAX_TITLE,
    STATE_KIND,
    TEXT_KIND,
    VECTOR_KINDS,
    DocumentState,
    Row,
    json_metadata,
    quote,
    state_id,
    text_pieces,
    truncate_utf8,
)

QUERY_PAGE = 4096  # rows per page when listing; Milvus caps offset+limit at 16384
WRITE_BATCH_ROWS = 1000
WRITE_BATCH_BYTES = 16 * 1024 * 1024  # stay well below gRPC's message size limit
DELETE_BATCH = 4096
STATE_FIELDS = ["doc_id", "tenant", "source", "title", "content_hash", "metadata"]


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


class Writer:
    """Writes document versions into one collection with the protocol above."""

    def __init__(
        self, conn: Connection, collection: str, dim: int, *, flush_each_write: bool
    ) -> None:
        self.conn = conn
        self.collection = collection
        self.dim = dim
        self.flush_each_write = flush_each_write

    # -- reading what is committed ---------------------------------------------------------------

    def iter_rows(self, expr: str, fields: list[str]) -> Iterator[dict]:
        """All rows matching ``expr``, read with Strong consistency, page by page past 4096."""
        client = self.conn.client
        what = f"query collection '{self.collection}'"
        rows = self.conn.call(
            what, client.query, self.collection, filter=expr, output_fields=fields,
            limit=QUERY_PAGE, consistency_level="Strong",
        )  # fmt: skip
        if len(rows) < QUERY_PAGE:
            yield from rows
            return
        iterator = self.conn.call(
            what, client.query_iterator, self.collection, batch_size=QUERY_PAGE, filter=expr,
            output_fields=fields, consistency_level="Strong",
        )  # fmt: skip
        try:
            while page := self.conn.call(what, iterator.next):
                yield from page
        finally:
            iterator.close()

    def states(self, doc_ids: Sequence[str]) -> dict[str, DocumentState]:
        """The committed state of each of ``doc_ids`` that has one (one query per 512 ids)."""
        ids = list(dict.fromkeys(doc_ids))
        found: dict[str, DocumentState] = {}
        for i in range(0, len(ids), 512):
            expr = one_of("id", [state_id(d) for d in ids[i : i + 512]])
            for r in self.iter_rows(expr, STATE_FIELDS):
                found[r["doc_id"]] = _state(r)
        return found

    def all_states(self, tenant: str) -> Iterator[DocumentState]:
        """Every document of ``tenant`` (a scan of state rows: one per document, for prune)."""
        expr = all_of(f"kind == {quote(STATE_KIND)}", f"tenant == {quote(tenant)}")
        for r in self.iter_rows(expr, STATE_FIELDS):
            yield _state(r)

    # -- writing ---------------------------------------------------------------------------------

    def write(
        self,
        version: DocumentVersion,
        rows: Sequence[Row],
        options: dict[str, dict[str, Any]],
        committed: DocumentState | None,
    ) -> DocumentState:
        """Write ``rows`` (vector rows) of ``version`` and commit; returns the new state.

        ``options[kind]`` records how each written kind was built. ``committed`` is the
        document's state before this write (from :meth:`states`), or None.
        """
        entities, counts = self.entities(version, rows, committed)
        self._upsert(entities)  # 1
        return self.commit(version, [e["id"] for e in entities], counts, options, committed)

    def entities(
        self, version: DocumentVersion, rows: Sequence[Row], committed: DocumentState | None
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The entities step 1 writes for ``rows`` of ``version`` (with its text pieces unless
        the committed version already has them), and the row count of each kind written."""
        for r in rows:
            if r.doc_id != version.doc_id or r.content_hash != version.content_hash:
                raise StoreError(
                    f"row {r.id} belongs to {r.source} ({r.content_hash[:16]}), "
                    f"not to {version.source} ({version.content_hash[:16]})"
                )
            if r.kind not in VECTOR_KINDS:
                raise StoreError(f"row {r.id}: {r.kind!r} is not a vector row kind")
        if len(version.source.encode("utf-8")) > MAX_SOURCE:
            raise StoreError(
                f"source path longer than {MAX_SOURCE} bytes: {version.source[:200]}..."
            )
        same_version = committed is not None and committed.content_hash == version.content_hash
        new_rows = [self._entity(version, r) for r in rows]
        counts = _count_kinds(rows)
        if not (same_version and committed is not None and TEXT_KIND in committed.kinds):
            pieces = self._text_rows(version)
            new_rows += pieces
            counts[TEXT_KIND] = len(pieces)
        ids = [e["id"] for e in new_rows]
        if len(set(ids)) != len(ids):
            raise StoreError(f"duplicate (kind, chunk_index) rows for {version.source}")
        return new_rows, counts

    def commit(
        self,
        version: DocumentVersion,
        ids: Sequence[str],
        counts: dict[str, int],
        options: dict[str, dict[str, Any]],
        committed: DocumentState | None,
    ) -> DocumentState:
        """Steps 2–5 once the entities ``ids`` of ``version`` are written; returns the state."""
        same_version = committed is not None and committed.content_hash == version.content_hash
        kinds: dict[str, dict[str, Any]] = (
            dict(committed.kinds) if same_version and committed is not None else {}
        )
        written = sorted(counts)
        self._delete_where(  # 2
            all_of(
                f"doc_id == {quote(version.doc_id)}",
                f"content_hash == {quote(version.content_hash)}",
                one_of("kind", written),
            ),
            keep=set(ids),
        )
        if self.flush_each_write:  # 3
            self.flush()
        for kind in written:
            kinds[kind] = {"rows": counts[kind], "options": options.get(kind, {})}
        state = DocumentState(
            doc_id=version.doc_id,
            source=version.source,
            title=version.title,
            content_hash=version.content_hash,
            tenant=version.tenant,
            kinds=kinds,
            metadata=dict(version.metadata),
        )
        self._upsert([self._state_entity(state)])  # 4: the commit
        self._delete_where(  # 5
            all_of(
                f"doc_id == {quote(version.doc_id)}",
                f"content_hash != {quote(version.content_hash)}",
                f"kind != {quote(STATE_KIND)}",
            )
        )
        return state

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Delete documents: their state rows first (they vanish at once), then their rows."""
        ids = list(dict.fromkeys(doc_ids))
        deleted = 0
        for i in range(0, len(ids), 256):
            part = ids[i : i + 256]
            deleted += self._delete_where(one_of("id", [state_id(d) for d in part]))
            deleted += self._delete_where(one_of("doc_id", part))
        if deleted and self.flush_each_write:
            self.flush()
        return deleted

    def flush(self) -> None:
        """Seal written data (Lite searches ~20x faster after a flush)."""
        self.conn.call(f"flush '{self.collection}'", self.conn.client.flush, self.collection)

    # -- rows ------------------------------------------------------------------------------------

    def _vector(self, vector: Any) -> list[float]:
        arr = np.asarray(vector, dtype=np.float32).reshape(-1)
        if arr.shape[0] != self.dim:
            raise StoreError(
                f"vector has {arr.shape[0]} dimensions; collection '{self.collection}' holds "
                f"dim {self.dim}"
            )
        if not np.all(np.isfinite(arr)):
            raise StoreError("vector contains NaN or infinite values")
        return arr.tolist()

    def _base(self, version: DocumentVersion) -> dict[str, Any]:
        return {
            "doc_id": version.doc_id,
            "tenant": version.tenant,
            "source": version.source,
            "title": truncate_utf8(version.title or "", MAX_TITLE),
            "content_hash": version.content_hash,
        }

    def _entity(self, version: DocumentVersion, row: Row) -> dict[str, Any]:
        text = row.text or ""
        clipped = truncate_utf8(text, MAX_TEXT)
        metadata = dict(row.metadata or {})
        if len(clipped) < len(text):
            # Full-text search sees the first 64 KB; passages come from the text pieces.
            metadata["text_clipped"] = True
        return {
            **self._base(version),
            "id": row.id,
            "kind": row.kind,
            "chunk_index": int(row.chunk_index),
            "chunk_count": int(row.chunk_count),
            "start": int(row.start),
            "end": int(row.end),
            "text": clipped,
            "metadata": _plain_json(metadata),
            "vector": self._vector(row.vector),
        }

    def _text_rows(self, version: DocumentVersion) -> list[dict[str, Any]]:
        spans = text_pieces(version.text)
        base = self._base(version)
        return [
            {
                **base,
                "id": Row(version.doc_id, TEXT_KIND, i, len(spans), s, e, "", "", "", {},
                          version.content_hash).id,
                "kind": TEXT_KIND,
                "chunk_index": i,
                "chunk_count": len(spans),
                "start": s,
                "end": e,
                "text": version.text[s:e],
                "metadata": {},
                "vector": placeholder_vector(self.dim),
            }
            for i, (s, e) in enumerate(spans)
        ]  # fmt: skip

    def _state_entity(self, state: DocumentState) -> dict[str, Any]:
        return {
            "id": state_id(state.doc_id),
            "doc_id": state.doc_id,
            "tenant": state.tenant,
            "kind": STATE_KIND,
            "chunk_index": 0,
            "chunk_count": 0,
            "start": 0,
            "end": 0,
            "text": "",
            "source": state.source,
            "title": truncate_utf8(state.title or "", MAX_TITLE),
            "metadata": _plain_json({"kinds": state.kinds, **state.metadata}),
            "content_hash": state.content_hash,
            "vector": placeholder_vector(self.dim),
        }

    def _upsert(self, entities: list[dict[str, Any]]) -> None:
        batch: list[dict[str, Any]] = []
        size = 0
        for entity in entities:
            estimate = len(entity["text"].encode("utf-8")) + 4 * self.dim + 1024
            if batch and (len(batch) >= WRITE_BATCH_ROWS or size + estimate > WRITE_BATCH_BYTES):
                self._upsert_batch(batch)
                batch, size = [], 0
            batch.append(entity)
            size += estimate
        if batch:
            self._upsert_batch(batch)

    def _upsert_batch(self, batch: list[dict[str, Any]]) -> None:
        what = f"write to collection '{self.collection}'"
        client = self.conn.client
        if self.conn.capabilities.upsert_by_partition_key:
            self.conn.call(what, client.upsert, self.collection, batch)
            return
        # This server's upsert puts rows where tenant filters miss them: delete, then insert.
        ids = [entity["id"] for entity in batch]
        self.conn.call(what, client.delete, self.collection, ids=ids)
        self.conn.call(what, client.insert, self.collection, batch)

    def _delete_where(self, expr: str, keep: set[str] | None = None) -> int:
        """Delete every row matching ``expr`` except the ids in ``keep``; returns how many.

        The ids are queried first (Strong), then deleted by key: this counts exactly and does
        not depend on how a server version resolves delete expressions.
        """
        ids = [r["id"] for r in self.iter_rows(expr, ["id"]) if not keep or r["id"] not in keep]
        for i in range(0, len(ids), DELETE_BATCH):
            self.conn.call(
                f"delete from collection '{self.collection}'",
                self.conn.client.delete,
                self.collection,
                ids=ids[i : i + DELETE_BATCH],
            )
        return len(ids)


def _state(r: dict) -> DocumentState:
    meta = json_metadata(r.get("metadata"))
    kinds = meta.pop("kinds", {}) or {}
    return DocumentState(
        doc_id=r["doc_id"],
        source=r["source"],
        title=r.get("title", ""),
        content_hash=r["content_hash"],
        tenant=r.get("tenant", ""),
        kinds=kinds,
        metadata=meta,
    )


def _count_kinds(rows: Sequence[Row]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return counts


def _plain_json(value: dict) -> dict:
    return json.loads(json.dumps(value, default=str))
