"""The versioned write protocol: a document's new version becomes visible all at once, or not.

Every row carries its document's ``content_hash`` and has a deterministic id, and each document
has one ``state`` row naming its committed version, the kinds that version holds with their row
counts, and the versions whose rows may still exist (``garbage``). Writing a version goes, in
this order:

1. **begin**: delete the rows of the versions the state row lists as garbage, then record the
   new version as garbage in the state row (it is not committed yet);
2. upsert the version's rows (vector rows and the exact-text pieces);
3. delete this version's leftovers (rows of the committed version beyond the new row counts);
4. flush (Milvus Lite);
5. upsert the state row: **the commit**. Readers only count rows whose version and kind the
   state row names, so before this point they see the old version, after it the new one. The
   replaced version becomes the garbage;
6. delete the rows of the replaced version.

Writers of a shared collection take turns: each write happens under the collection's write
lease and starts from the document's state re-read under it (see :mod:`jrag.store.lease`), so
no writer commits over a state it has not seen. Before each state write (steps 1 and 5) and
each delete of rows of the committed version (step 3) the writer reads its claim back (for step
1 in the same read as the document's state); if the lease was lost (the writer stalled past its
expiry, or past Fischer's wait while taking it), the write starts over: another writer may
have deleted its rows as garbage meanwhile. A version that another writer has already stored,
with the same kinds and rows, is not written again: rewriting committed rows in place is, on
Milvus < 2.4, a delete then an insert, a moment in which the document cannot be found.

Every delete is by primary key, with ids derived from recorded row counts: no write scans the
collection, so its cost does not grow with the collection. A crash anywhere leaves the last
committed version intact and visible, and the garbage recorded for the next write (or
``--prune``) to delete. Re-running rewrites the same ids (upsert, so two writers never duplicate
a row) and commits. Adding a kind to the committed version (another ``--mode``) keeps the kinds
it already holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from jrag.errors import StoreError
from jrag.store.connection import Connection
from jrag.store.filters import all_of, ids_in, one_of
from jrag.store.lease import LEASE_ID, WriteLease
from jrag.store.rows import (
    MAX_SOURCE,
    STATE_FIELDS,
    STATE_KIND,
    TEXT_KIND,
    VECTOR_KINDS,
    DocumentState,
    DocumentVersion,
    Row,
    quote,
    read_state,
    state_entity,
    state_id,
    text_entities,
    vector_entity,
    version_ids,
)

QUERY_PAGE = 4096  # rows per page when listing; Milvus caps offset+limit at 16384
WRITE_BATCH_ROWS = 1000
WRITE_BATCH_BYTES = 16 * 1024 * 1024  # stay well below gRPC's message size limit
DELETE_BATCH = 4096
WRITE_ATTEMPTS = 3


class Writer:
    """Writes document versions into one collection with the protocol above."""

    def __init__(
        self,
        conn: Connection,
        collection: str,
        dim: int,
        *,
        flush_each_write: bool,
        lease: WriteLease | None = None,
    ) -> None:
        self.conn = conn
        self.collection = collection
        self.dim = dim
        self.flush_each_write = flush_each_write
        self.lease = lease  # None where only one process can write (a local Lite .db)

    def hold(self) -> bool:
        """Hold the write lease; False if it had to be taken anew (another writer may have
        written since this process last held it)."""
        return self.lease is None or self.lease.hold()

    def release(self) -> None:
        """Give the write lease back (writes take it again when they need it)."""
        if self.lease is not None:
            self.lease.release()

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

    def fetch(self, ids: Sequence[str], fields: list[str]) -> list[dict]:
        """The rows with these ids that exist (by primary key: never a scan)."""
        ids = list(dict.fromkeys(ids))
        found: list[dict] = []
        for i in range(0, len(ids), 512):
            found += self.conn.call(
                f"query collection '{self.collection}'", self.conn.client.query,
                self.collection, filter=ids_in(ids[i : i + 512]), output_fields=fields,
                consistency_level="Strong",
            )  # fmt: skip
        return found

    def states(self, doc_ids: Sequence[str]) -> dict[str, DocumentState]:
        """The state of each of ``doc_ids`` that has one, read by primary key.

        A document whose first write is under way has a placeholder state (``committed`` False).
        """
        rows = self.fetch([state_id(d) for d in doc_ids], STATE_FIELDS)
        return {r["doc_id"]: read_state(r) for r in rows}

    def all_states(
        self, tenant: str, *, pending: bool = False, where: str | None = None
    ) -> Iterator[DocumentState]:
        """:meth:`MilvusStore.all_states`: a scan of the state rows, one per document."""
        by_key = self.conn.capabilities.upsert_by_partition_key  # see _put_state
        of_tenant = f"tenant == {quote(tenant)}" if by_key else ""
        expr = all_of(f"kind == {quote(STATE_KIND)}", of_tenant, where)
        for r in self.iter_rows(expr, STATE_FIELDS):
            state = read_state(r)
            if (pending or state.committed) and state.tenant == tenant:
                yield state

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
        document's state the caller planned from (from :meth:`states`), or None. Under a lease
        the state is read again: a version another writer already stored as these rows is not
        written again, and rows embedded to extend a version that another writer has since
        replaced are dropped.
        """
        for _ in range(WRITE_ATTEMPTS):
            self.hold()
            try:
                current = committed if self.lease is None else self.state_for_write(version.doc_id)
                if _superseded(version, committed, current):
                    assert current is not None
                    return current
                entities, counts = self.entities(version, rows, current)
                if _already_stored(version, counts, options, current):
                    assert current is not None  # stored by another writer: see the module docstring
                    return current
                self.begin(version, counts, current)  # 1
                self.upsert(entities)  # 2
                if not self.hold():
                    continue  # lost the lease meanwhile: another writer may have deleted rows
                return self.commit(version, [e["id"] for e in entities], counts, options, current)
            except LeaseLost:
                continue  # another writer holds it now: start over from the state it leaves
        raise StoreError(
            f"could not keep the write lease of collection '{self.collection}' through one write "
            f"of {version.source}; is another writer stalling it? Re-run to retry"
        )

    def state_for_write(self, doc_id: str) -> DocumentState | None:
        """The document's state read again under the lease, together with the lease row in the
        same read: the check before step 1's state write costs no read of its own. Raises
        :class:`LeaseLost` if the lease is no longer ours."""
        if self.lease is None:
            return self.states([doc_id]).get(doc_id)
        rows = {r["doc_id"]: r for r in self.fetch([state_id(doc_id), LEASE_ID], STATE_FIELDS)}
        if not self.lease.owns(rows.pop(LEASE_ID, None)):
            raise self._lease_lost()
        return read_state(rows[doc_id]) if doc_id in rows else None

    def begin(
        self, version: DocumentVersion, counts: dict[str, int], committed: DocumentState | None
    ) -> None:
        """Step 1: clear the garbage ``committed`` lists, then record ``version`` as garbage
        until it is committed, so that a crash in between leaves nothing unaccounted for.
        Under a lease, ``committed`` comes from :meth:`state_for_write`, just read (and the
        lease checked with it)."""
        self.delete_ids(_garbage_ids(committed))
        intent = {"content_hash": version.content_hash, "rows": counts}
        if committed is not None and committed.committed:
            state = replace(committed, garbage=[intent])
        else:
            state = DocumentState.of(version, "", garbage=[intent])
        self._put_state(state)

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
        new_rows = [vector_entity(version, r, self.dim) for r in rows]
        counts = dict(Counter(r.kind for r in rows))
        same_version = _same_version(version, committed)
        if same_version is None or TEXT_KIND not in same_version.kinds:
            pieces = text_entities(version, self.dim)
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
        """Steps 3–6 once the entities ``ids`` of ``version`` are written; returns the state."""
        same_version = _same_version(version, committed)
        kinds = dict(same_version.kinds) if same_version else {}
        keep = set(ids)
        if same_version:  # 3: rows beyond the new counts
            old = {k: n for k, n in same_version.row_counts.items() if k in counts}
            beyond = [i for i in version_ids(version.doc_id, version.content_hash, old)
                      if i not in keep]  # fmt: skip
            if beyond:
                self._verify_lease()
                self.delete_ids(beyond)
        if self.flush_each_write:  # 4
            self.flush()
        for kind in sorted(counts):
            kinds[kind] = {"rows": counts[kind], "options": options.get(kind, {})}
        replaced = (
            [{"content_hash": committed.content_hash, "rows": committed.row_counts}]
            if committed is not None and committed.committed and not same_version
            else []
        )
        metadata = dict(version.metadata)
        state = DocumentState.of(
            version, version.content_hash, kinds=kinds, metadata=metadata, garbage=replaced
        )
        self._verify_lease()
        self._put_state(state)  # 5: the commit
        self.delete_ids(_garbage_ids(state))  # 6
        return state

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Delete documents: their state rows first (they vanish at once), then their rows."""
        self.hold()
        states = self.states(doc_ids)
        ids = [state_id(d) for d in states]
        for state in states.values():
            ids += _committed_ids(state) + _garbage_ids(state)
        deleted = self.delete_ids(ids)
        if deleted and self.flush_each_write:
            self.flush()
        return len(states)

    def collect_garbage(self, doc_ids: Sequence[str]) -> int:
        """Delete the rows that the states of ``doc_ids`` still list as garbage (left by a
        writer killed between its commit and its clean-up, or its first step and its commit);
        returns how many documents had some."""
        self.hold()
        states = [s for s in self.states(doc_ids).values() if s.garbage]
        for state in states:
            self.delete_ids(_garbage_ids(state))
            if state.committed:
                self._put_state(replace(state, garbage=[]))
        return len(states)

    def repair(self, *, dry_run: bool = False) -> dict[str, int]:
        """Find (and unless ``dry_run`` delete) rows that no committed version accounts for, and
        the placeholder states of first writes that never finished: one scan of the state rows,
        one of the other rows, under the write lease so that no write is under way."""
        self.hold()
        try:
            expr = f"kind == {quote(STATE_KIND)}"
            states = [read_state(r) for r in self.iter_rows(expr, STATE_FIELDS)]
            live = {i for state in states for i in _committed_ids(state)}
            expr = one_of("kind", [*VECTOR_KINDS, TEXT_KIND])
            orphans = [r["id"] for r in self.iter_rows(expr, ["id"]) if r["id"] not in live]
            unfinished = [state_id(s.doc_id) for s in states if not s.committed]
            if not dry_run and (orphans or unfinished):
                self.delete_ids(orphans + unfinished)
                self.flush()
        finally:
            self.release()
        return {
            "documents": len(states) - len(unfinished),
            "orphan_rows": len(orphans),
            "unfinished_documents": len(unfinished),
        }

    def flush(self) -> None:
        """Seal written data (Lite searches ~20x faster after a flush)."""
        self.conn.call(f"flush '{self.collection}'", self.conn.client.flush, self.collection)

    def upsert(self, entities: list[dict[str, Any]]) -> None:
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

    def _put_state(self, state: DocumentState) -> None:
        """Replace a state row in one step, on every backend: a delete then an insert would
        leave a moment (or, killed in between, for good) with no state, the document unseen.
        Where upsert misroutes partition keys, state rows are therefore never read through a
        tenant filter (see :meth:`all_states`)."""
        self.conn.call(
            f"write to collection '{self.collection}'", self.conn.client.upsert,
            self.collection, [state_entity(state, self.dim)],
        )  # fmt: skip

    def _upsert_batch(self, batch: list[dict[str, Any]]) -> None:
        what = f"write to collection '{self.collection}'"
        client = self.conn.client
        if self.conn.capabilities.upsert_by_partition_key:
            self.conn.call(what, client.upsert, self.collection, batch)
            return
        # This server's upsert puts rows where tenant filters miss them: delete, then insert.
        self.conn.call(what, client.delete, self.collection, ids=[e["id"] for e in batch])
        self.conn.call(what, client.insert, self.collection, batch)

    def _verify_lease(self) -> None:
        """Raise :class:`LeaseLost` unless this writer still holds the lease (read back)."""
        if self.lease is not None and not self.lease.verify():
            raise self._lease_lost()

    def _lease_lost(self) -> LeaseLost:
        return LeaseLost(
            f"lost the write lease of collection '{self.collection}' to another writer "
            "in the middle of a write; nothing of it was committed. Re-run to retry"
        )

    def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete rows by primary key (ids that do not exist are fine); returns how many ids."""
        what = f"delete from collection '{self.collection}'"
        for i in range(0, len(ids), DELETE_BATCH):
            batch = list(ids[i : i + DELETE_BATCH])
            self.conn.call(what, self.conn.client.delete, self.collection, ids=batch)
        return len(ids)


class LeaseLost(StoreError):
    """The write lease passed to another writer during a write (this one stalled)."""


def _already_stored(
    version: DocumentVersion,
    counts: dict[str, int],
    options: dict[str, dict[str, Any]],
    current: DocumentState | None,
) -> bool:
    """True if ``current`` is ``version`` with every kind to be written, in these row counts
    and built with these options: the write would change nothing."""
    return (
        current is not None
        and current.committed
        and current.content_hash == version.content_hash
        and all(
            current.row_counts.get(kind) == n and current.holds(kind, options.get(kind, {}))
            for kind, n in counts.items()
        )
    )


def _superseded(
    version: DocumentVersion, planned: DocumentState | None, current: DocumentState | None
) -> bool:
    """True if the rows were embedded to extend ``planned`` (the same content with more kinds)
    but another writer has since committed other content: written, they would replace it with
    a version that lacks the kinds it held."""
    if current is None or not current.committed or current.content_hash == version.content_hash:
        return False
    return planned is not None and planned.content_hash == version.content_hash


def _same_version(version: DocumentVersion, state: DocumentState | None) -> DocumentState | None:
    """``state`` if it records ``version``'s content, else None."""
    return state if state is not None and state.content_hash == version.content_hash else None


def _committed_ids(state: DocumentState | None) -> list[str]:
    if state is None or not state.committed:
        return []
    return version_ids(state.doc_id, state.content_hash, state.row_counts)


def _garbage_ids(state: DocumentState | None) -> list[str]:
    """The ids of the rows ``state`` lists as garbage, less those its committed version holds."""
    if state is None:
        return []
    keep = set(_committed_ids(state))
    ids: list[str] = []
    for entry in state.garbage:
        rows = {k: int(n) for k, n in entry.get("rows", {}).items()}
        ids += version_ids(state.doc_id, entry["content_hash"], rows)
    return [i for i in ids if i not in keep]
