"""The Milvus store: one collection holding doc, late-chunk and naive-chunk vectors.

Works against Milvus Lite (a local ``.db`` directory, in-process) and a Milvus server
(``http(s)://host:port``), through pymilvus ``MilvusClient`` only.

Design notes:

* Each collection records the embedding model and its dimension in its description (JSON),
  and every row carries ``model`` and ``dim`` too. Opening a collection checks both the
  description and the vector field's real ``dim`` against the model in use.
* Index: HNSW (M=16, efConstruction=200) on a server, where collections can grow large;
  FLAT (exact numpy brute force) on Milvus Lite, which is meant for local corpora of up to
  some tens of thousands of rows, needs no faiss, and builds no index on flush.
* Writes are crash-safe replaces keyed on ``(source, content_hash)`` with deterministic primary
  keys, so a killed run leaves either the old complete version, the new complete version, or an
  incomplete new version (``StoredDocument.complete`` is False) — never duplicates.
* Deletes first query the primary keys with Strong consistency and then delete by key: this
  counts exactly and does not depend on how a server version resolves delete expressions.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from jrag.errors import StoreError

KINDS = ("doc", "late", "chunk")

SCHEMA_VERSION = 1
CONNECT_TIMEOUT_S = 10.0
QUERY_PAGE = 4096  # rows per page when listing; Milvus caps offset+limit at 16384
INSERT_BATCH_ROWS = 1000
INSERT_BATCH_BYTES = 16 * 1024 * 1024  # stay well below gRPC's message size limit
DELETE_BATCH = 4096

# VARCHAR limits, in UTF-8 bytes.
MAX_ID = 512
MAX_DOC_ID = 128
MAX_KIND = 16
MAX_TEXT = 65535
MAX_SOURCE = 4096
MAX_TITLE = 2048
MAX_HASH = 128
MAX_MODEL = 512

# What pymilvus raises: its own exceptions, raw gRPC errors, and (Lite) Python errors.
_MILVUS_ERRORS = (MilvusException, grpc.RpcError, OSError, ValueError, TypeError, RuntimeError)
_SERVER_SCHEMES = ("http", "https", "tcp", "grpc", "unix")
_ROW_FIELDS = [
    "id", "doc_id", "kind", "chunk_index", "chunk_count", "start", "end", "text", "source",
    "title", "metadata", "content_hash",
]  # fmt: skip


@dataclass
class Row:
    """One vector row to write. ``id`` is deterministic, so rewriting a row never duplicates it."""

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
    vector: Sequence[float] | np.ndarray

    @property
    def id(self) -> str:
        """Primary key: ``doc_id:content_hash[:16]:kind:chunk_index``."""
        return f"{self.doc_id}:{self.content_hash[:16]}:{self.kind}:{self.chunk_index}"


@dataclass
class Hit:
    """One search (or get_rows) result; ``score`` is cosine similarity, higher is better."""

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
    score: float


@dataclass
class StoredDocument:
    """One version (content_hash) of one source as found in the store."""

    source: str
    doc_id: str
    content_hash: str
    complete: bool
    kinds: dict[str, int] = field(default_factory=dict)


def truncate_utf8(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes, never in the middle of a character."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore")


def quote(value: str) -> str:
    """A Milvus expression string literal for ``value`` (double quotes, backslash escapes)."""
    return json.dumps(value, ensure_ascii=False)


def _display_uri(uri: str) -> str:
    """``uri`` without user:password@ (and without query strings, which may carry tokens)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in _SERVER_SCHEMES:
        return uri
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# Milvus Lite serves one in-process server per data directory, and holds its lock until that
# server is released. Count our open stores per path so close() releases it when the last goes.
_LITE_LOCK = threading.Lock()
_LITE_USERS: dict[str, int] = {}


def _lite_locked_elsewhere(path: Path) -> bool:
    """True if another process holds Milvus Lite's advisory lock on ``path``."""
    lock = path / "LOCK"
    if not lock.exists():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class MilvusStore:
    """Vectors and spans of documents in one Milvus collection (Lite or server)."""

    def __init__(
        self,
        uri: str = "./jrag.db",
        collection: str = "jrag",
        *,
        token: str | None = None,
        model: str | None = None,
        dim: int | None = None,
        create: bool = True,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        flush_each_write: bool | None = None,
    ) -> None:
        if (model is None) != (dim is None):
            raise StoreError("MilvusStore needs both model= and dim=, or neither")
        if model is None and create:
            raise StoreError(
                "MilvusStore needs the embedding model's name and dim to create a collection"
            )
        if dim is not None and int(dim) <= 0:
            raise StoreError(f"MilvusStore needs a positive vector dimension, got dim={dim}")
        # Without model/dim, an existing collection opens as it was built (see check_model).
        self.model = model
        self.dim = int(dim) if dim is not None else 0
        self.collection = collection
        self._token = token or ""
        self._uri = str(uri)
        self.is_lite = urlsplit(self._uri).scheme.lower() not in _SERVER_SCHEMES
        # Lite: a flush is cheap (~40 ms) and makes searches ~20x faster. Server: a flush costs
        # ~3 s and is not needed for safety (an acknowledged insert is already in the WAL), so
        # callers flush once at the end of a run.
        self.flush_each_write = self.is_lite if flush_each_write is None else flush_each_write
        self._lite_path: str | None = None
        self._client: Any = None
        self._connect(connect_timeout)
        try:
            self._open_collection(create)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ connection

    @property
    def uri_for_display(self) -> str:
        """The URI without credentials."""
        return _display_uri(self._uri)

    def _scrub(self, text: str) -> str:
        """Remove the token and any URI credentials from a message."""
        for secret in (self._token, urlsplit(self._uri).password or ""):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _error(self, what: str, exc: BaseException | None = None) -> StoreError:
        detail = f": {self._scrub(_exc_message(exc))}" if exc is not None else ""
        return StoreError(self._scrub(what) + detail)

    def _connect(self, timeout: float) -> None:
        kwargs: dict[str, Any] = {"alias": f"jrag-{uuid.uuid4().hex}", "timeout": timeout}
        if self.is_lite:
            path = Path(self._uri).expanduser()
            if path.suffix != ".db":
                raise StoreError(
                    f"Milvus Lite path {self._uri} must end with .db "
                    "(or pass a server URI such as http://localhost:19530)"
                )
            path = path.resolve()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the folder for Milvus Lite at {path}: {e}") from e
            with _LITE_LOCK:
                try:
                    with _quiet_lite_errors():
                        self._client = MilvusClient(uri=str(path), **kwargs)
                except _MILVUS_ERRORS as e:
                    if _lite_locked_elsewhere(path):
                        raise StoreError(
                            f"Milvus Lite database {path} is in use by another process; "
                            "stop that process or use another --uri"
                        ) from None
                    raise self._error(f"cannot open Milvus Lite database {path}", e) from None
                self._lite_path = str(path)
                _LITE_USERS[self._lite_path] = _LITE_USERS.get(self._lite_path, 0) + 1
        else:
            try:
                self._client = MilvusClient(uri=self._uri, token=self._token, **kwargs)
            except _MILVUS_ERRORS as e:
                raise self._error(
                    f"cannot connect to Milvus at {self.uri_for_display} "
                    f"(waited up to {timeout:.0f} s)",
                    e,
                ) from None

    def close(self) -> None:
        """Close the connection; for Lite, release the data directory's lock if we were last."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        path, self._lite_path = self._lite_path, None
        if path is not None:
            with _LITE_LOCK:
                left = _LITE_USERS.get(path, 1) - 1
                if left > 0:
                    _LITE_USERS[path] = left
                else:
                    _LITE_USERS.pop(path, None)
                    from milvus_lite.server_manager import server_manager_instance

                    with contextlib.suppress(Exception):
                        server_manager_instance.release_server(path)

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def client(self) -> Any:
        """The underlying ``MilvusClient`` (raises StoreError once closed)."""
        if self._client is None:
            raise StoreError(f"the store for {self.uri_for_display} is closed")
        return self._client

    # ------------------------------------------------------------------ collection

    def _where(self) -> str:
        return f"collection '{self.collection}' at {self.uri_for_display}"

    def _open_collection(self, create: bool) -> None:
        try:
            exists = self.client.has_collection(self.collection)
        except _MILVUS_ERRORS as e:
            raise self._error(f"cannot list collections at {self.uri_for_display}", e) from None
        if not exists:
            if not create:
                raise StoreError(
                    f"{self._where()} does not exist; run `jrag ingest` first or pass another "
                    "--collection"
                )
            self._create_collection()
        else:
            self._validate_collection()
        try:
            self.client.load_collection(self.collection)
        except _MILVUS_ERRORS as e:
            raise self._error(f"cannot load {self._where()}", e) from None

    def _description(self) -> str:
        return json.dumps(
            {"jrag_schema": SCHEMA_VERSION, "model": self.model, "dim": self.dim},
            ensure_ascii=False,
        )

    def _create_collection(self) -> None:
        schema = MilvusClient.create_schema(
            auto_id=False, enable_dynamic_field=False, description=self._description()
        )
        v = DataType.VARCHAR
        schema.add_field("id", v, is_primary=True, max_length=MAX_ID)
        schema.add_field("doc_id", v, max_length=MAX_DOC_ID)
        schema.add_field("kind", v, max_length=MAX_KIND)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("chunk_count", DataType.INT64)
        schema.add_field("start", DataType.INT64)
        schema.add_field("end", DataType.INT64)
        schema.add_field("text", v, max_length=MAX_TEXT)
        schema.add_field("source", v, max_length=MAX_SOURCE)
        schema.add_field("title", v, max_length=MAX_TITLE)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("content_hash", v, max_length=MAX_HASH)
        schema.add_field("model", v, max_length=MAX_MODEL)
        schema.add_field("dim", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)

        index_params = MilvusClient.prepare_index_params()
        if self.is_lite:
            index_params.add_index("vector", index_type="FLAT", metric_type="COSINE")
        else:
            index_params.add_index(
                "vector",
                index_type="HNSW",
                metric_type="COSINE",
                params={"M": 16, "efConstruction": 200},
            )
        try:
            self.client.create_collection(
                self.collection,
                schema=schema,
                index_params=index_params,
                consistency_level="Strong",
                properties={
                    "jrag.schema": str(SCHEMA_VERSION),
                    "jrag.model": self.model,
                    "jrag.dim": str(self.dim),
                },
            )
        except _MILVUS_ERRORS as e:
            raise self._error(f"cannot create {self._where()}", e) from None

    def _validate_collection(self) -> None:
        rec_model, rec_dim = self._recorded_model()
        if self.model is None:
            self.model, self.dim = rec_model, rec_dim
        self.check_model(self.model, self.dim)

    def _recorded_model(self) -> tuple[str, int]:
        """The model name and dim recorded at creation (the vector field's real dim)."""
        try:
            info = self.client.describe_collection(self.collection)
        except _MILVUS_ERRORS as e:
            raise self._error(f"cannot describe {self._where()}", e) from None
        props = info.get("properties") or {}
        try:
            if "jrag.model" in props:  # Milvus Lite keeps properties but not the description
                rec_model, rec_dim = str(props["jrag.model"]), int(props["jrag.dim"])
            else:
                recorded = json.loads(info.get("description") or "")
                rec_model, rec_dim = str(recorded["model"]), int(recorded["dim"])
        except (ValueError, TypeError, KeyError):
            raise StoreError(
                f"{self._where()} was not created by jrag (no model recorded in its "
                "description). Use another --collection or `jrag drop`."
            ) from None
        vec = [f for f in info.get("fields", []) if f.get("name") == "vector"]
        field_dim = int((vec[0].get("params") or {}).get("dim", -1)) if vec else -1
        return rec_model, field_dim if field_dim > 0 else rec_dim

    def check_model(self, model: str, dim: int) -> None:
        """Refuse to mix vectors of two models in one collection."""
        rec_model, rec_dim = self._recorded_model()
        if rec_model != model or rec_dim != dim:
            raise StoreError(
                f"{self._where()} was built with model {rec_model} (dim {rec_dim}); "
                f"this run uses model {model} (dim {dim}). "
                "Use another --collection or `jrag drop`."
            )

    def flush(self) -> None:
        """Seal written data (Lite searches ~20x faster after a flush)."""
        try:
            self.client.flush(self.collection)
        except _MILVUS_ERRORS as e:
            raise self._error(f"cannot flush {self._where()}", e) from None

    def drop(self) -> None:
        """Drop the whole collection (all documents, all kinds)."""
        try:
            self.client.drop_collection(self.collection)
        except _MILVUS_ERRORS as e:
            raise self._error(f"cannot drop {self._where()}", e) from None

    # ------------------------------------------------------------------ reading

    def _iter_rows(self, filter: str, fields: list[str]) -> Iterator[dict]:
        """All rows matching ``filter``, read with Strong consistency.

        One plain query answers the common case; when it comes back full, the rows are read
        again page by page with a query iterator (Milvus caps a query at 16384 rows).
        """
        try:
            rows = self.client.query(
                self.collection,
                filter=filter,
                output_fields=fields,
                limit=QUERY_PAGE,
                consistency_level="Strong",
            )
        except _MILVUS_ERRORS as e:
            raise self._error(f"query {filter!r} failed on {self._where()}", e) from None
        if len(rows) < QUERY_PAGE:
            yield from rows
            return
        try:
            it = self.client.query_iterator(
                self.collection,
                batch_size=QUERY_PAGE,
                filter=filter,
                output_fields=fields,
                consistency_level="Strong",
            )
        except _MILVUS_ERRORS as e:
            raise self._error(f"query {filter!r} failed on {self._where()}", e) from None
        try:
            while True:
                try:
                    page = it.next()
                except _MILVUS_ERRORS as e:
                    raise self._error(f"query {filter!r} failed on {self._where()}", e) from None
                if not page:
                    break
                yield from page
        finally:
            with contextlib.suppress(Exception):
                it.close()

    def documents(self) -> dict[str, list[StoredDocument]]:
        """Stored document versions by source; complete versions first, then by content_hash.

        A source has more than one version only if a write was interrupted.
        """
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for r in self._iter_rows(
            'id != ""', ["source", "doc_id", "content_hash", "kind", "chunk_count"]
        ):
            g = groups.setdefault(
                (r["source"], r["content_hash"]),
                {"doc_id": r["doc_id"], "rows": defaultdict(int), "counts": defaultdict(set)},
            )
            g["rows"][r["kind"]] += 1
            g["counts"][r["kind"]].add(int(r["chunk_count"]))
        out: dict[str, list[StoredDocument]] = defaultdict(list)
        for (source, content_hash), g in groups.items():
            complete = all(
                len(g["counts"][kind]) == 1 and next(iter(g["counts"][kind])) == n
                for kind, n in g["rows"].items()
            )
            out[source].append(
                StoredDocument(source, g["doc_id"], content_hash, complete, dict(g["rows"]))
            )
        for versions in out.values():
            versions.sort(key=lambda d: (not d.complete, d.content_hash))
        return dict(out)

    def _hit(self, r: dict, score: float) -> Hit:
        meta = r.get("metadata")
        if isinstance(meta, str):  # some versions hand JSON back as text
            meta = json.loads(meta)
        return Hit(
            id=r["id"],
            doc_id=r["doc_id"],
            kind=r["kind"],
            chunk_index=int(r["chunk_index"]),
            start=int(r["start"]),
            end=int(r["end"]),
            text=r["text"],
            source=r["source"],
            title=r["title"],
            metadata=meta or {},
            content_hash=r["content_hash"],
            score=float(score),
        )

    def search(
        self,
        vector: Sequence[float] | np.ndarray,
        k: int = 5,
        *,
        kind: str = "doc",
        filter: str | None = None,
    ) -> list[Hit]:
        """The ``k`` rows of ``kind`` nearest to ``vector`` by cosine, best first.

        ``filter`` is a Milvus boolean expression (``title like "Intro%"``,
        ``metadata["doc_type"] == "pdf"``), AND-ed with the kind.
        """
        _check_kind(kind)
        if k <= 0:
            return []
        vec = self._vector(vector)
        expr = f"kind == {quote(kind)}"
        if filter and filter.strip():
            expr = f"({expr}) and ({filter})"
        params: dict[str, Any] = {"metric_type": "COSINE", "params": {}}
        if not self.is_lite:
            params["params"]["ef"] = max(64, k)
        try:
            res = self.client.search(
                self.collection,
                data=[vec],
                filter=expr,
                limit=k,
                output_fields=_ROW_FIELDS,
                search_params=params,
                anns_field="vector",
                consistency_level="Strong",
            )
        except _MILVUS_ERRORS as e:
            if filter:
                raise self._error(
                    f"bad filter expression {filter!r} for {self._where()}", e
                ) from None
            raise self._error(f"search failed on {self._where()}", e) from None
        hits = []
        for h in res[0] if res else []:
            entity = h.get("entity") or {}
            row = {**entity, "id": h.get("id", entity.get("id"))}
            hits.append(self._hit(row, h.get("distance", 0.0)))
        return hits

    def get_rows(self, doc_ids: Sequence[str], kind: str) -> list[Hit]:
        """All rows of ``kind`` for ``doc_ids`` (score 0.0), ordered by (doc_id, chunk_index)."""
        _check_kind(kind)
        ids = list(dict.fromkeys(doc_ids))
        if not ids:
            return []
        hits: list[Hit] = []
        for i in range(0, len(ids), 512):
            expr = (
                f"doc_id in [{', '.join(quote(d) for d in ids[i : i + 512])}] "
                f"and kind == {quote(kind)}"
            )
            hits.extend(self._hit(r, 0.0) for r in self._iter_rows(expr, _ROW_FIELDS))
        hits.sort(key=lambda h: (h.doc_id, h.chunk_index, h.content_hash))
        return hits

    def stats(self) -> dict:
        """Counts and identity of the collection (never the token)."""
        rows: dict[str, int] = dict.fromkeys(KINDS, 0)
        sources: set[str] = set()
        for r in self._iter_rows('id != ""', ["kind", "source"]):
            rows[r["kind"]] = rows.get(r["kind"], 0) + 1
            sources.add(r["source"])
        return {
            "documents": len(sources),
            "rows": rows,
            "total_rows": sum(rows.values()),
            "model": self.model,
            "dim": self.dim,
            "uri": self.uri_for_display,
            "collection": self.collection,
            "backend": "milvus-lite" if self.is_lite else "milvus-server",
            "index": "FLAT" if self.is_lite else "HNSW",
        }

    # ------------------------------------------------------------------ writing

    def _vector(self, vector: Sequence[float] | np.ndarray) -> list[float]:
        arr = np.asarray(vector, dtype=np.float32).reshape(-1)
        if arr.shape[0] != self.dim:
            raise StoreError(
                f"vector has {arr.shape[0]} dimensions; {self._where()} holds dim {self.dim} "
                f"({self.model})"
            )
        if not np.all(np.isfinite(arr)):
            raise StoreError("vector contains NaN or infinite values")
        return arr.tolist()

    def _entity(self, row: Row) -> dict[str, Any]:
        _check_kind(row.kind)
        source = row.source
        if len(source.encode("utf-8")) > MAX_SOURCE:
            raise StoreError(f"source path longer than {MAX_SOURCE} bytes: {source[:200]}...")
        return {
            "id": row.id,
            "doc_id": row.doc_id,
            "kind": row.kind,
            "chunk_index": int(row.chunk_index),
            "chunk_count": int(row.chunk_count),
            "start": int(row.start),
            "end": int(row.end),
            "text": truncate_utf8(row.text or "", MAX_TEXT),
            "source": source,
            "title": truncate_utf8(row.title or "", MAX_TITLE),
            "metadata": json.loads(json.dumps(row.metadata or {}, default=str)),
            "content_hash": row.content_hash,
            "model": truncate_utf8(self.model, MAX_MODEL),
            "dim": self.dim,
            "vector": self._vector(row.vector),
        }

    def _insert(self, entities: list[dict[str, Any]]) -> None:
        batch: list[dict[str, Any]] = []
        size = 0
        for ent in entities:
            est = len(ent["text"].encode("utf-8")) + 4 * self.dim + 1024
            if batch and (len(batch) >= INSERT_BATCH_ROWS or size + est > INSERT_BATCH_BYTES):
                self._insert_batch(batch)
                batch, size = [], 0
            batch.append(ent)
            size += est
        if batch:
            self._insert_batch(batch)

    def _insert_batch(self, batch: list[dict[str, Any]]) -> None:
        try:
            self.client.insert(self.collection, batch)
        except _MILVUS_ERRORS as e:
            raise self._error(f"insert into {self._where()} failed", e) from None

    def _delete_where(self, expr: str) -> int:
        """Delete every row matching ``expr``; returns how many."""
        ids = [r["id"] for r in self._iter_rows(expr, ["id"])]
        for i in range(0, len(ids), DELETE_BATCH):
            try:
                self.client.delete(self.collection, ids=ids[i : i + DELETE_BATCH])
            except _MILVUS_ERRORS as e:
                raise self._error(f"delete from {self._where()} failed", e) from None
        return len(ids)

    def write_document(self, source: str, content_hash: str, rows: list[Row]) -> None:
        """Replace all rows of ``source`` with ``rows`` (all of version ``content_hash``).

        Order: drop leftovers of an interrupted write of this very version, insert, flush, and
        only then drop the other versions — so a crash never loses the last complete version.
        """
        for r in rows:
            if r.source != source or r.content_hash != content_hash:
                raise StoreError(
                    f"row {r.id} belongs to {r.source} ({r.content_hash[:16]}), "
                    f"not to {source} ({content_hash[:16]})"
                )
        entities = [self._entity(r) for r in _first_of_each_kind_first(rows)]
        ids = [e["id"] for e in entities]
        if len(set(ids)) != len(ids):
            raise StoreError(f"duplicate (kind, chunk_index) rows for {source}")
        src = quote(source)
        self._delete_where(f"source == {src} and content_hash == {quote(content_hash)}")
        self._insert(entities)
        if self.flush_each_write:
            self.flush()
        self.delete_stale_versions(source, content_hash)

    def delete_stale_versions(self, source: str, content_hash: str) -> int:
        """Delete the rows of ``source`` whose content hash is not ``content_hash``."""
        deleted = self._delete_where(
            f"source == {quote(source)} and content_hash != {quote(content_hash)}"
        )
        if deleted and self.flush_each_write:
            self.flush()
        return deleted

    def delete_sources(self, sources: Iterable[str]) -> int:
        """Delete every row of these sources (all versions); returns the number of rows."""
        srcs = list(dict.fromkeys(sources))
        deleted = 0
        for i in range(0, len(srcs), 256):
            deleted += self._delete_where(
                f"source in [{', '.join(quote(s) for s in srcs[i : i + 256])}]"
            )
        if deleted and self.flush_each_write:
            self.flush()
        return deleted


class _DropLiteOpenTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to start MilvusLite server")


@contextlib.contextmanager
def _quiet_lite_errors() -> Iterator[None]:
    """Hide milvus_lite's logged traceback when opening fails; we raise a clear error instead."""
    log = logging.getLogger("milvus_lite.server_manager")
    flt = _DropLiteOpenTraceback()
    log.addFilter(flt)
    try:
        yield
    finally:
        log.removeFilter(flt)


class _DropMvccWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


# Milvus Lite and Milvus 2.3 report no MVCC timestamp to query iterators; pymilvus then warns
# on every page although it falls back correctly.
logging.getLogger("pymilvus.orm.iterator").addFilter(_DropMvccWarning())


class _DropLiteUnimplemented(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], NotImplementedError))


# Milvus Lite's in-process gRPC server does not implement every RPC that pymilvus probes (such
# as AllocTimestamp); pymilvus falls back, but grpc logs the server-side traceback as an ERROR.
logging.getLogger("grpc._server").addFilter(_DropLiteUnimplemented())


def _first_of_each_kind_first(rows: list[Row]) -> list[Row]:
    """Reorder so that the first insert batch holds one row of every kind.

    Completeness is judged per kind present (rows == chunk_count). If a run dies after some
    batches landed, every kind of the version is then present, so a missing tail always shows
    as an incomplete kind, never as a silently absent one.
    """
    firsts: dict[str, int] = {}
    for i, r in enumerate(rows):
        firsts.setdefault(r.kind, i)
    lead = sorted(firsts.values())
    taken = set(lead)
    return [rows[i] for i in lead] + [r for i, r in enumerate(rows) if i not in taken]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise StoreError(f"unknown row kind {kind!r}; expected one of {', '.join(KINDS)}")


def _exc_message(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return re.sub(r"\s+", " ", str(msg)).strip()
