"""Bulk import: rows written as files with pymilvus' ``bulk_writer``, then imported by Milvus.

For millions of rows an import is much cheaper for the server than upserts: it builds whole
segments from files instead of growing them row by row. The files must be where the server
reads them, so jrag needs one of:

- ``JRAG_BULK_DIR``: a folder the Milvus server sees at the same path (a standalone server with
  ``storageType: local``, or a volume shared with it). Rows go there as JSON files
  (``LocalBulkWriter``); measured to work with Milvus 2.3.5.
- ``JRAG_BULK_S3_ENDPOINT`` (``host:port``), ``JRAG_BULK_S3_BUCKET`` (the server's own bucket),
  ``JRAG_BULK_S3_ACCESS_KEY``, ``JRAG_BULK_S3_SECRET_KEY`` and optionally
  ``JRAG_BULK_S3_SECURE=1`` and ``JRAG_BULK_S3_PREFIX``: rows go to that object store as Parquet
  (``RemoteBulkWriter``).

Either way the import is started with the server's Import call (``do_bulk_insert``, Milvus
≥ 2.3). Milvus Lite has no import, and a server without one of the settings above cannot read
our files: there :meth:`BulkLoader.for_store` logs one warning line and writes with upserts.

The versioned write protocol still holds (see :mod:`jrag.store.writes`): a batch's rows are
imported first, jrag waits until every imported row is visible to queries, and only then
writes each document's state row (the commit). An interrupted load leaves the committed
versions as they were; re-running deletes this version's leftovers by id before importing
again, so no row is ever stored twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jrag.errors import StoreError
from jrag.store import DocumentState, DocumentVersion, MilvusStore, Row, Staged
from jrag.store.filters import ids_in

logger = logging.getLogger(__name__)

BULK_DIR_ENV = "JRAG_BULK_DIR"
S3_ENV = {
    "endpoint": "JRAG_BULK_S3_ENDPOINT",
    "bucket_name": "JRAG_BULK_S3_BUCKET",
    "access_key": "JRAG_BULK_S3_ACCESS_KEY",
    "secret_key": "JRAG_BULK_S3_SECRET_KEY",
}
S3_SECURE_ENV = "JRAG_BULK_S3_SECURE"
S3_PREFIX_ENV = "JRAG_BULK_S3_PREFIX"
BATCH_ROWS = 200_000  # rows per import; documents are committed after each
IMPORT_TIMEOUT_S = 3600.0
VISIBLE_TIMEOUT_S = 600.0
POLL_S = 1.0
ID_CHUNK = 512


class BulkLoader:
    """Collects documents' rows, imports them in batches, then commits each document."""

    def __init__(self, store: MilvusStore, *, bulk_dir: str | None, s3: dict[str, Any] | None):
        self.store = store
        self.bulk_dir = bulk_dir
        self.s3 = s3
        self.pending: list[Staged] = []
        self.rows = 0
        self._writer: Any = None
        self._local: str | None = None

    @classmethod
    def for_store(cls, store: MilvusStore) -> BulkLoader | UpsertLoader:
        """A bulk loader where the backend can import our files, else (with one warning line)
        a loader that writes with the ordinary protocol."""
        reason = cannot_import_reason(store)
        if reason:
            logger.warning("bulk import unavailable: %s; writing rows with upsert instead", reason)
            return UpsertLoader(store)
        return cls(store, bulk_dir=os.environ.get(BULK_DIR_ENV) or None, s3=s3_settings())

    def add(
        self,
        version: DocumentVersion,
        rows: Sequence[Row],
        options: dict[str, dict[str, Any]],
        committed: DocumentState | None,
    ) -> None:
        """Queue one document; imports (and commits) when the batch is full. The write lease is
        held from the first document's first step to the batch's commits."""
        if not self.store.hold() and self.pending:
            raise _lost(self.store)
        staged = self.store.stage(version, rows, options, committed)
        if self._writer is None:
            self._writer = self._open_writer()
        for entity in staged.entities:  # the writer spills to files as it goes
            self._writer.append_row(entity)
        self.rows += len(staged.entities)
        self.pending.append(staged)
        if self.rows >= BATCH_ROWS:
            self._load()

    def finish(self) -> None:
        """Import and commit what is queued."""
        if self.pending:
            self._load()

    # -- one batch -------------------------------------------------------------------------------

    def _load(self) -> None:
        pending, writer, local = self.pending, self._writer, self._local
        self.pending, self.rows, self._writer, self._local = [], 0, None, None
        ids = [e["id"] for item in pending for e in item.entities]
        try:
            writer.commit()
            # Leftovers of an interrupted earlier load carry the same ids: imports only insert.
            self.store.delete_ids(ids)
            self.store.import_files(writer.batch_files, IMPORT_TIMEOUT_S)
        finally:
            if local is not None:
                shutil.rmtree(local, ignore_errors=True)
        self._wait_visible(ids)
        if not self.store.hold():
            raise _lost(self.store)
        for item in pending:
            self.store.commit(item)

    def _open_writer(self) -> Any:
        from pymilvus import CollectionSchema
        from pymilvus.bulk_writer import BulkFileType, LocalBulkWriter, RemoteBulkWriter

        schema = CollectionSchema.construct_from_dict(self.store.description())
        self._local = tempfile.mkdtemp(prefix="jrag-bulk-", dir=self.bulk_dir)
        if self.s3 is None:
            return LocalBulkWriter(
                schema=schema, local_path=self._local, file_type=BulkFileType.JSON
            )
        settings = dict(self.s3)
        prefix = settings.pop("prefix")
        return RemoteBulkWriter(
            schema=schema,
            remote_path=f"{prefix}/{uuid.uuid4().hex}",
            connect_param=RemoteBulkWriter.S3ConnectParam(**settings),
            file_type=BulkFileType.PARQUET,
        )

    def _wait_visible(self, ids: list[str]) -> None:
        """Block until every imported row answers a Strong query (commit only after that)."""
        waiting = [ids[i : i + ID_CHUNK] for i in range(0, len(ids), ID_CHUNK)]
        deadline = time.monotonic() + VISIBLE_TIMEOUT_S
        while waiting:
            waiting = [c for c in waiting if self.store.count(ids_in(c)) < len(c)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise StoreError(
                    f"imported rows did not become visible in '{self.store.collection}' within "
                    f"{VISIBLE_TIMEOUT_S:.0f} s; nothing was committed, re-run to retry"
                )
            time.sleep(POLL_S)


def _lost(store: MilvusStore) -> StoreError:
    """The lease ran out during a bulk batch: another writer may have cleaned its rows up."""
    return StoreError(
        f"lost the write lease of {store.where} during a bulk import (it outlived the lease); "
        "nothing of this batch was committed, re-run to retry"
    )


class UpsertLoader:
    """The fallback: the same interface, writing each document with the ordinary protocol."""

    def __init__(self, store: MilvusStore) -> None:
        self.store = store

    def add(
        self,
        version: DocumentVersion,
        rows: Sequence[Row],
        options: dict[str, dict[str, Any]],
        committed: DocumentState | None,
    ) -> None:
        self.store.write_document(version, rows, options, committed)

    def finish(self) -> None:
        """Nothing is queued."""


def s3_settings() -> dict[str, Any] | None:
    """The object store from the environment, or None when ``JRAG_BULK_S3_ENDPOINT`` is unset."""
    if not os.environ.get(S3_ENV["endpoint"]):
        return None
    missing = [name for name in S3_ENV.values() if not os.environ.get(name)]
    if missing:
        raise StoreError(f"bulk import to an object store needs {', '.join(missing)} as well")
    settings: dict[str, Any] = {key: os.environ[name] for key, name in S3_ENV.items()}
    settings["secure"] = os.environ.get(S3_SECURE_ENV, "") == "1"
    settings["prefix"] = os.environ.get(S3_PREFIX_ENV, "jrag-bulk").strip("/")
    return settings


def cannot_import_reason(store: MilvusStore) -> str | None:
    """Why ``store`` cannot take a bulk import of our files, or None if it can."""
    if store.is_lite:
        return "Milvus Lite has no bulk import"
    if s3_settings() is None and not os.environ.get(BULK_DIR_ENV):
        return (
            f"the server reads import files only from its own storage; set {BULK_DIR_ENV} (a "
            f"folder it sees at the same path) or {S3_ENV['endpoint']} and its companions"
        )
    bulk_dir = os.environ.get(BULK_DIR_ENV)
    if bulk_dir and not Path(bulk_dir).is_dir():
        return f"{BULK_DIR_ENV}={bulk_dir} is not a folder"
    return None
