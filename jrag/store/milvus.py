"""``MilvusStore``: one jrag collection in Milvus Lite or a Milvus server, joining the store's
parts (see :mod:`jrag.store`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from jrag.errors import CollectionNotFound, StoreError
from jrag.store.connection import CONNECT_TIMEOUT_S, Capabilities, Connection
from jrag.store.filters import all_of
from jrag.store.lease import WriteLease
from jrag.store.manifest import (
    Identity,
    Manifest,
    ManifestPending,
    create_collection,
    describe,
    finish_collection,
    read_manifest,
    write_manifest,
)
from jrag.store.rows import (
    ROW_FIELDS,
    STATE_KIND,
    TEXT_KIND,
    TEXT_PIECE_CHARS,
    VECTOR_KINDS,
    DocumentState,
    Hit,
    Row,
    json_metadata,
    quote,
    row_id,
    state_entity,
    version_ids,
)
from jrag.store.search import DocumentRanker, Query, RankedRow
from jrag.store.writes import DocumentVersion, Writer


class MilvusStore:
    """Documents' vectors, text and state in one Milvus collection (Lite or server).

    ``identity`` (the model that embeds for this store) is needed to create a collection and is
    checked against an existing one; without it, an existing collection opens with the model it
    was built with (``store.identity``).
    """

    def __init__(
        self,
        uri: str = "./jrag.db",
        collection: str = "jrag",
        *,
        token: str | None = None,
        identity: Identity | None = None,
        model: str | None = None,
        dim: int | None = None,
        create: bool = True,
        full_text: bool | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        flush_each_write: bool | None = None,
    ) -> None:
        if identity is None and model is not None and dim is not None:
            identity = Identity(model=model, dim=int(dim))  # a model known by name and dim only
        if identity is None and create:
            raise StoreError(
                "MilvusStore needs the embedding model's identity to create a collection"
            )
        if identity is not None and identity.dim <= 0:
            raise StoreError(f"MilvusStore needs a positive vector dimension, got {identity.dim}")
        self.collection = collection
        self._writing = 0  # depth of writing() blocks
        self.conn = Connection(uri, token=token, create=create, timeout=connect_timeout)
        # Lite: a flush is cheap (~40 ms) and makes searches ~20x faster. Server: a flush costs
        # ~3 s and is not needed for safety (an acknowledged write is in the WAL), so callers
        # flush once at the end of a run.
        self.flush_each_write = self.conn.is_lite if flush_each_write is None else flush_each_write
        try:
            self.manifest = self._open(identity, create, full_text)
            dim = self.manifest.identity.dim
            # A local Lite .db admits one process (its file lock); anything shared takes turns.
            lease = None if self.conn.is_lite else WriteLease(self.conn, collection, dim)
            self.writer = Writer(
                self.conn, collection, dim, flush_each_write=self.flush_each_write, lease=lease
            )
            self.ranker = DocumentRanker(self.conn, collection, self.writer.states)
        except BaseException:
            self.conn.close()
            raise

    # -- identity ------------------------------------------------------------------------------

    @property
    def identity(self) -> Identity:
        return self.manifest.identity

    @property
    def model(self) -> str:
        return self.manifest.identity.model

    @property
    def dim(self) -> int:
        return self.manifest.identity.dim

    @property
    def is_lite(self) -> bool:
        return self.conn.is_lite

    @property
    def uri(self) -> str:
        return self.conn.uri

    @property
    def capabilities(self) -> Capabilities:
        """What the backend supports (BM25, hybrid search, group-by …)."""
        return self.conn.capabilities

    @property
    def uri_for_display(self) -> str:
        return self.conn.display

    @property
    def where(self) -> str:
        return f"collection '{self.collection}' at {self.conn.display}"

    @property
    def full_text(self) -> bool:
        """Whether the collection has BM25 full-text search."""
        return self.manifest.bm25

    def _open(self, identity: Identity | None, create: bool, full_text: bool | None) -> Manifest:
        has = self.conn.client.has_collection
        if not self.conn.call("list collections", has, self.collection):
            if not create:
                raise CollectionNotFound(
                    f"{self.where} does not exist; run `jrag ingest` first or pass another "
                    "--collection"
                )
            assert identity is not None
            try:
                return create_collection(self.conn, self.collection, identity, bm25=full_text)
            except StoreError as err:
                if "exist" not in str(err).lower():
                    raise  # a failure of its own (a full disk), not a race with another creator
                deadline = time.monotonic() + NEW_COLLECTION_WAIT_S
                while not self.conn.call("list collections", has, self.collection):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
                # Another process created it at the same moment: open theirs once complete.
                try:
                    manifest = _read_new_manifest(self.conn, self.collection, identity)
                except ManifestPending:
                    raise err from None
        else:
            try:
                manifest = read_manifest(self.conn, self.collection)  # loads it, once jrag's
            except ManifestPending:
                manifest = _read_new_manifest(self.conn, self.collection, identity)
        if identity is not None:
            check_identity(self.where, manifest.identity, identity)
        return manifest

    def check_model(self, identity: Identity) -> None:
        """Refuse to mix two models' vectors in one collection (name, dim and fingerprint)."""
        check_identity(self.where, self.manifest.identity, identity)

    # -- documents -----------------------------------------------------------------------------

    def states(self, doc_ids: Sequence[str]) -> dict[str, DocumentState]:
        """Committed state of each document that has one: O(len(doc_ids)), never a scan."""
        return self.writer.states(doc_ids)

    def all_states(
        self, tenant: str = "", *, pending: bool = False, where: str | None = None
    ) -> Iterator[DocumentState]:
        """Every committed document of ``tenant`` (one row each); with ``pending``, also those
        whose first write was cut short (their rows are garbage to delete). ``where`` narrows
        by the state rows' fields (:func:`jrag.store.metadata.compile_where` builds one)."""
        return self.writer.all_states(tenant, pending=pending, where=where)

    def write_document(
        self,
        version: DocumentVersion,
        rows: Sequence[Row],
        options: dict[str, dict[str, Any]],
        committed: DocumentState | None = None,
    ) -> DocumentState:
        """Write and commit ``rows`` of ``version`` (see :mod:`jrag.store.writes`).

        ``committed`` is the document's state read before (pass it when known, to save a read).
        """
        with self.writing():
            if committed is None:
                committed = self.states([version.doc_id]).get(version.doc_id)
            self.record_kinds(rows, options)
            return self.writer.write(version, rows, options, committed)

    def record_kinds(self, rows: Sequence[Row], options: dict[str, dict[str, Any]]) -> None:
        """Record a new kind in the manifest before its first rows land, so it never misses
        one (bulk loads call this before they import rows)."""
        new_kinds = sorted({r.kind for r in rows} - set(self.manifest.kinds))
        if new_kinds:
            for kind in new_kinds:
                self.manifest.kinds[kind] = options.get(kind, {})
            write_manifest(self.conn, self.collection, self.manifest, new_kinds)

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Delete documents entirely (all versions and kinds); returns the rows deleted."""
        with self.writing():
            return self.writer.delete_documents(doc_ids)

    # -- the write protocol step by step, for rows written another way (bulk import) -----------

    def stage(
        self,
        version: DocumentVersion,
        rows: Sequence[Row],
        options: dict[str, dict[str, Any]],
        committed: DocumentState | None = None,
    ) -> Staged:
        """Step 1 of :mod:`jrag.store.writes` for ``rows`` of ``version``: record its kinds and
        the version as garbage-to-be; returns the entities the caller must write (all of
        :data:`~jrag.store.rows.FIELDS`) before :meth:`commit`. Call it holding the lease
        (inside :meth:`writing`); under a lease the state is read again."""
        self.writer.hold()
        if committed is None or self.writer.lease is not None:
            committed = self.writer.state_for_write(version.doc_id)
        entities, counts = self.writer.entities(version, rows, committed)
        self.writer.begin(version, counts, committed)
        self.record_kinds(rows, options)
        return Staged(version, entities, counts, options, committed)

    def commit(self, staged: Staged) -> DocumentState:
        """Commit a staged version once its entities are visible; returns the new state."""
        ids = [e["id"] for e in staged.entities]
        return self.writer.commit(staged.version, ids, staged.counts, staged.options,
                                  staged.committed)  # fmt: skip

    def hold(self) -> bool:
        """Hold the write lease; False if it had to be taken anew (another writer may have
        written meanwhile, and deleted staged rows as garbage)."""
        return self.writer.hold()

    def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete rows by primary key (ids that do not exist are fine)."""
        return self.writer.delete_ids(list(ids))

    def seed(self, documents: Sequence[tuple[DocumentVersion, Sequence[Row]]]) -> None:
        """Store new documents in large upserts, each committed as it lands, without the
        protocol's per-document steps: only for documents the collection does not hold yet
        (filling a collection for a benchmark)."""
        entities: list[dict[str, Any]] = []
        for version, rows in documents:
            new, counts = self.writer.entities(version, rows, None)
            kinds = {kind: {"rows": n, "options": {}} for kind, n in counts.items()}
            state = DocumentState.of(version, version.content_hash, kinds=kinds)
            entities += [*new, state_entity(state, self.dim)]
        with self.writing():
            self.writer.hold()
            self.writer.upsert(entities)

    def import_files(self, files: Sequence[Sequence[str]], timeout_s: float) -> None:
        """Have the server import row files (one import per inner list), waiting for each."""
        for batch in files:
            self.conn.import_files(self.collection, list(batch), timeout_s)

    def description(self) -> dict[str, Any]:
        """The collection as Milvus describes it (its schema, for writers of row files)."""
        return self.conn.call(f"describe {self.where}", self.conn.client.describe_collection,
                              self.collection)  # fmt: skip

    def scan(self, expr: str, fields: list[str]) -> Iterator[dict]:
        """Every row matching ``expr`` (Strong), page by page: for tools and tests, not search."""
        return self.writer.iter_rows(expr, fields)

    def candidates(self, query: Query) -> tuple[list[RankedRow], list[RankedRow]]:
        """The dense and full-text candidates a fusion ranks (for tuning a ranker)."""
        return self.ranker.candidates(query)

    # -- reading -------------------------------------------------------------------------------

    def rank(self, query: Query) -> tuple[list[RankedRow], dict[str, DocumentState]]:
        """The best documents for ``query`` (see :mod:`jrag.store.search`)."""
        return self.ranker.rank(query)

    def top_rows(self, query: Query, limit: int) -> list[RankedRow]:
        """The ``limit`` best rows for ``query``, several per document allowed."""
        return self.ranker.top_rows(query, limit)

    def rows(self, ids: Sequence[str]) -> list[Hit]:
        """Rows by id, with their text and metadata."""
        return [_hit(r) for r in self.writer.fetch(ids, ROW_FIELDS)]

    def fetch(self, ids: Sequence[str], fields: list[str]) -> list[dict]:
        """The named fields of the rows with these ids that exist (by primary key, Strong)."""
        return self.writer.fetch(ids, fields)

    def get_rows(self, doc_ids: Sequence[str], kind: str, *, tenant: str = "") -> list[Hit]:
        """The committed rows of ``kind`` for ``doc_ids``, ordered by (doc_id, chunk_index)."""
        if kind not in (*VECTOR_KINDS, TEXT_KIND):
            raise StoreError(
                f"unknown row kind {kind!r}; expected one of {', '.join(VECTOR_KINDS)}"
            )
        wanted = [
            i
            for state in self.states(doc_ids).values()
            if state.committed and kind in state.kinds
            for i in version_ids(state.doc_id, state.content_hash, {kind: state.row_counts[kind]})
        ]
        return sorted(self.rows(wanted), key=lambda h: (h.doc_id, h.chunk_index))

    def document_text(self, state: DocumentState, start: int = 0, end: int | None = None) -> str:
        """The exact parsed text of a committed document, or of ``[start, end)`` of it."""
        return self.document_texts([(state, start, end)])[0]

    def document_texts(self, spans: Sequence[tuple[DocumentState, int, int | None]]) -> list[str]:
        """:meth:`document_text` of each ``(state, start, end)``, read at once (one query per
        512 pieces): ``""`` where that version was replaced meanwhile (the caller ranks again)."""
        cuts = []  # (start, end, piece ids) per span
        for state, start, end in spans:
            pieces = state.row_counts.get(TEXT_KIND, 0)
            end = min(end if end is not None else 1 << 62, pieces * TEXT_PIECE_CHARS)
            # Pieces are consecutive TEXT_PIECE_CHARS-character cuts: the span names their ids.
            first, last = start // TEXT_PIECE_CHARS, (end - 1) // TEXT_PIECE_CHARS
            ids = [
                row_id(state.doc_id, state.content_hash, TEXT_KIND, i)
                for i in range(first, min(last, pieces - 1) + 1)
            ]
            cuts.append((start, end, ids if end > start else []))
        wanted = [i for _, _, ids in cuts for i in ids]
        found = {r["id"]: r for r in self.writer.fetch(wanted, ["start", "text"])} if wanted else {}
        texts = []
        for start, end, ids in cuts:
            if not ids or any(i not in found for i in ids):
                texts.append("")
                continue
            offset = int(found[ids[0]]["start"])
            text = "".join(found[i]["text"] for i in ids)
            texts.append(text[max(0, start - offset) : max(0, end - offset)])
        return texts

    def count(self, expr: str = "") -> int:
        rows = self.conn.call(
            f"count rows of {self.where}", self.conn.client.query, self.collection,
            filter=expr, output_fields=["count(*)"], consistency_level="Strong",
        )  # fmt: skip
        return int(rows[0]["count(*)"]) if rows else 0

    def stats(self) -> dict[str, Any]:
        """What the collection holds, from its manifest and count queries (never the token)."""
        rows = {kind: self.count(f"kind == {quote(kind)}") for kind in VECTOR_KINDS}
        committed = all_of(f"kind == {quote(STATE_KIND)}", 'content_hash != ""')
        return {
            "documents": self.count(committed),
            "rows": rows,
            "total_rows": sum(rows.values()),
            **describe(self.manifest),
            "uri": self.conn.display,
            "collection": self.collection,
            "backend": "milvus-lite" if self.conn.is_lite else "milvus-server",
            "server_version": self.conn.capabilities.version,
            "index": "FLAT" if self.conn.is_lite else "HNSW",
        }

    # -- lifecycle -----------------------------------------------------------------------------

    def flush(self) -> None:
        self.writer.flush()

    def drop(self) -> None:
        """Drop the whole collection (all documents, all kinds)."""
        drop_collection(self.conn, self.collection)

    def collect_garbage(self, doc_ids: Sequence[str]) -> int:
        """Delete what the states of ``doc_ids`` list as garbage (see :mod:`jrag.store.writes`)."""
        with self.writing():
            return self.writer.collect_garbage(doc_ids)

    def repair(self, *, dry_run: bool = False) -> dict[str, int]:
        """Delete rows no committed version accounts for (see :meth:`Writer.repair`)."""
        return self.writer.repair(dry_run=dry_run)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Keep the write lease from the first write inside the block to its end (one batch);
        a write outside any block gives it back when done, so that an open store never keeps
        other processes waiting."""
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1
            if not self._writing:
                self.writer.release()

    def close(self) -> None:
        with contextlib.suppress(StoreError):  # else the lease frees itself when it expires
            self.writer.release()
        self.conn.close()

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_identity(where: str, recorded: Identity, current: Identity) -> None:
    """Refuse another model (the fingerprint decides where both have one, else name and dim), or
    another document prompt: vectors embedded with and without one are not comparable."""
    fingerprints = recorded.fingerprint and current.fingerprint
    if recorded.dim != current.dim or (not fingerprints and recorded.model != current.model):
        raise StoreError(
            f"{where} was built with model {recorded.model} (dim {recorded.dim}); this run uses "
            f"model {current.model} (dim {current.dim}). Use another --collection or `jrag drop`."
        )
    if fingerprints and recorded.fingerprint != current.fingerprint:
        raise StoreError(
            f"{where} was built with model {recorded.model} (fingerprint "
            f"{recorded.fingerprint[:12]}); this run's model {current.model} has fingerprint "
            f"{current.fingerprint[:12]}: its weights, tokenizer or pooling differ. Use the "
            "same model, another --collection, or `jrag drop`."
        )
    if recorded.document_prompt != current.document_prompt:
        raise StoreError(
            f"{where} was built with document prompt {recorded.document_prompt!r}; this run's "
            f"is {current.document_prompt!r}. Pass --document-prompt "
            f"{recorded.document_prompt!r} (document_prompt= in Python), or re-ingest into "
            "another --collection."
        )


NEW_COLLECTION_WAIT_S = 20.0  # how long another process may take to finish creating one
FINISH_AFTER_S = 2.0  # then finish it ourselves (the same model's identical steps)


def _read_new_manifest(conn: Connection, collection: str, identity: Identity | None) -> Manifest:
    """The manifest of a collection another process is creating (it creates the collection,
    its index, loads it, then writes the manifest row): read again until all of that is done,
    and after a moment finish it ourselves, in case its creator stopped short."""
    started = time.monotonic()
    while True:
        try:
            return read_manifest(conn, collection)
        except ManifestPending:
            waited = time.monotonic() - started
            if waited > NEW_COLLECTION_WAIT_S:
                raise
            if identity is not None and waited > FINISH_AFTER_S:
                finish_collection(conn, collection, identity)
            time.sleep(0.2)


@dataclass
class Staged:
    """A version past step 1 of the write protocol: its entities, and what its commit needs."""

    version: DocumentVersion
    entities: list[dict[str, Any]]
    counts: dict[str, int]
    options: dict[str, dict[str, Any]]
    committed: DocumentState | None


def drop_collection(conn: Connection, collection: str) -> None:
    """Drop ``collection`` whatever created it, without loading it first."""
    conn.call(f"drop collection '{collection}'", conn.client.drop_collection, collection)


def _hit(r: dict) -> Hit:
    """A row read with :data:`~jrag.store.rows.ROW_FIELDS` as a :class:`Hit`."""
    return Hit(**{**{f: r[f] for f in ROW_FIELDS}, "metadata": json_metadata(r["metadata"])})
