"""Connecting to Milvus: Milvus Lite's lifecycle and locking, servers, and what each can do.

Milvus Lite (a local ``.db`` directory) runs in-process and allows one process per directory.
Several processes share one ``.db`` through ``jrag serve``, which serves it on 127.0.0.1; every
jrag entry point then takes that server's URI. A Milvus server is reached by URI and token.

Rules this module keeps:
- reading commands never create a store: a mistyped ``.db`` path is an error, not a new folder;
- a ``.db`` locked by another process is reported with the holder's pid and ``jrag serve``;
- jrag releases only the Lite servers it started, never one another client in this process
  (such as ``langchain_milvus.Milvus``) opened on the same file;
- the token never appears in messages.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from jrag.errors import CollectionNotFound, StoreError
from jrag.logs import quiet_milvus_logs

CONNECT_TIMEOUT_S = 10.0
IMPORT_POLL_S = 1.0
# What a Milvus Lite 3 folder holds from its first open on.
LITE_MARKERS = ("LOCK", "collections", "databases")
SERVER_SCHEMES = ("http", "https", "tcp", "grpc", "unix")
# What pymilvus raises for a failed call: its own exceptions and raw gRPC errors. Python's
# TypeError and ValueError are programming errors and pass through.
MILVUS_ERRORS = (MilvusException, grpc.RpcError, ConnectionError)
SERVER_RETRIES = 10  # backoff 0.01 s ×3 up to 3 s: about 12 s before a dead server is reported
_BOUNDED_RETRIES = {"query", "search", "hybrid_search", "insert", "upsert", "delete", "flush"}

T = TypeVar("T")


@dataclass(frozen=True)
class Capabilities:
    """What the backend supports, from its version: Lite 3.x has everything."""

    version: str
    group_by: bool
    bm25: bool
    # Before 2.4, upsert routed rows by the wrong field, so that a partition-key filter
    # (``tenant == "a"``) missed them (milvus-io/milvus#30607): write with delete + insert.
    upsert_by_partition_key: bool = True
    # Filter templating (values passed apart from the expression): servers from 2.5 on; Milvus
    # Lite 3's parser refuses ``{name}`` placeholders (measured), so values are quoted there.
    filter_params: bool = False

    @classmethod
    def from_version(cls, version: str) -> Capabilities:
        if version.startswith("milvus_lite"):
            return cls(version, group_by=True, bm25=True)
        match = re.search(r"(\d+)\.(\d+)", version)
        if match is None:  # unknown: assume only what every supported server has
            return cls(version, group_by=False, bm25=False, upsert_by_partition_key=False)
        release = (int(match.group(1)), int(match.group(2)))
        return cls(
            version,
            group_by=release >= (2, 4),
            bm25=release >= (2, 5),
            upsert_by_partition_key=release >= (2, 4),
            filter_params=release >= (2, 5),
        )


def display_uri(uri: str) -> str:
    """``uri`` without user:password@ and without a query string (either may carry secrets)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in SERVER_SCHEMES:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def exc_message(exc: BaseException) -> str:
    """One line: a Milvus error's message, whitespace collapsed."""
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return re.sub(r"\s+", " ", str(msg)).strip()


# Milvus Lite's servers are process-wide (one per data directory). Count our open connections
# per directory, and remember which servers jrag itself started. Re-entrant: garbage collection
# may run a forgotten Connection's __del__ (which closes it) inside a thread holding this lock.
_LITE_LOCK = threading.RLock()
_LITE_USERS: dict[str, int] = {}
_LITE_STARTED_BY_JRAG: set[str] = set()


class Connection:
    """One ``MilvusClient`` to Milvus Lite or a server, with jrag's error handling around it."""

    def __init__(
        self,
        uri: str = "./jrag.db",
        *,
        token: str | None = None,
        create: bool = True,
        timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.uri = str(uri)
        self._token = token or ""
        self.is_lite = urlsplit(self.uri).scheme.lower() not in SERVER_SCHEMES
        self._lite_path: str | None = None
        self._client: Any = None
        if self.is_lite:
            self._connect_lite(create, timeout)
        else:
            self._connect_server(timeout)
        try:
            version = self.call("ask the server version", self._client.get_server_version)
        except StoreError:
            self.close()
            raise
        self.capabilities = Capabilities.from_version(str(version))

    # -- messages ------------------------------------------------------------------------------

    @property
    def display(self) -> str:
        """The URI without credentials."""
        return display_uri(self.uri)

    def scrub(self, text: str) -> str:
        """Remove the token and any URI credentials from a message."""
        for secret in (self._token, urlsplit(self.uri).password or ""):
            if secret:
                text = text.replace(secret, "***")
        return text

    def error(self, what: str, exc: BaseException) -> StoreError:
        """``what`` failed, and Milvus' reason why, with secrets scrubbed from both."""
        return StoreError(self.scrub(f"{what}: {exc_message(exc)}"))

    # -- calls ---------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The underlying ``MilvusClient`` (raises StoreError once closed)."""
        if self._client is None:
            raise StoreError(f"the connection to {self.display} is closed")
        return self._client

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with Milvus' log noise silenced and its errors as one line."""
        if self._lite_path is not None and not os.path.isdir(self._lite_path):
            # Lite's server keeps its open files, so it would go on answering from a ghost.
            raise StoreError(
                f"cannot {what}: the Milvus Lite database {self._lite_path} was deleted or moved"
            )
        if not self.is_lite and getattr(fn, "__name__", "") in _BOUNDED_RETRIES:
            # pymilvus retries an unreachable server 75 times (3.5 minutes): give up sooner.
            kwargs.setdefault("retry_times", SERVER_RETRIES)
        try:
            with quiet_milvus_logs():
                return fn(*args, **kwargs)
        except MILVUS_ERRORS as e:
            raise self.error(f"cannot {what} at {self.display}", e) from None

    # -- opening and closing ---------------------------------------------------------------------

    def import_files(self, collection: str, files: list[str], timeout_s: float) -> None:
        """Run a server-side bulk import of row files into ``collection`` and wait for it.

        pymilvus offers the Import call only through its ORM ``utility``, which needs a named
        connection: one is opened for the import and closed after."""
        from pymilvus import connections, utility

        what = f"bulk import into '{collection}'"
        alias = f"jrag-import-{uuid.uuid4().hex}"
        self.call(what, connections.connect, alias, uri=self.uri, token=self._token)
        try:
            task = self.call(what, utility.do_bulk_insert, collection, files, using=alias)
            deadline = time.monotonic() + timeout_s
            while True:
                state = self.call(what, utility.get_bulk_insert_state, task, using=alias)
                if state.state_name == "Completed":
                    return
                if state.state_name == "Failed":
                    raise StoreError(f"{what} failed: {self.scrub(str(state.failed_reason))}")
                if time.monotonic() > deadline:
                    raise StoreError(f"{what} timed out ({state.state_name})")
                time.sleep(IMPORT_POLL_S)
        finally:
            connections.disconnect(alias)

    def _connect_server(self, timeout: float) -> None:
        kwargs = {"alias": f"jrag-{uuid.uuid4().hex}", "timeout": timeout}
        try:
            with quiet_milvus_logs():
                self._client = MilvusClient(uri=self.uri, token=self._token, **kwargs)
        except MILVUS_ERRORS as e:
            raise self.error(
                f"cannot connect to Milvus at {self.display} (waited up to {timeout:.0f} s)", e
            ) from None

    def _connect_lite(self, create: bool, timeout: float) -> None:
        path = Path(self.uri).expanduser()
        if path.suffix != ".db":
            raise StoreError(
                f"Milvus Lite path {self.uri} must end with .db "
                "(or pass a server URI such as http://localhost:19530)"
            )
        path = path.resolve()
        if not create and not path.exists():
            raise CollectionNotFound(
                f"there is no Milvus Lite database at {path}; check --uri (or run `jrag ingest` "
                "first)"
            )
        if path.exists() and not path.is_dir():
            raise StoreError(
                f"{path} is a file, not a Milvus Lite database: Milvus Lite 3 keeps a .db as a "
                "folder (a file is from an older Milvus Lite, or not Milvus at all)"
            )
        if not create and not any((path / name).exists() for name in LITE_MARKERS):
            raise StoreError(
                f"{path} is a folder but not a Milvus Lite database (it holds none of "
                f"{', '.join(LITE_MARKERS)}); check --uri"
            )
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the folder for Milvus Lite at {path}: {e}") from e
        check_lite_writable(path)
        with _LITE_LOCK:
            # Reuse this process's server for the folder under the key it was started with
            # (another client may have named it through a symlink or a relative path).
            running = _running_lite_key(path)
            key = running or str(path)
            try:
                with quiet_milvus_logs():
                    self._client = MilvusClient(
                        uri=key, alias=f"jrag-{uuid.uuid4().hex}", timeout=timeout
                    )
            except (*MILVUS_ERRORS, OSError, RuntimeError) as e:
                holder = lite_lock_holder(path)
                if holder is not None:
                    raise StoreError(locked_message(path, holder)) from None
                raise self.error(f"cannot open Milvus Lite database {path}", e) from None
            if running is None:
                _LITE_STARTED_BY_JRAG.add(key)
            self._lite_path = key
            _LITE_USERS[key] = _LITE_USERS.get(key, 0) + 1

    def close(self) -> None:
        """Close the client; for Lite, release the directory if jrag started its server and this
        was jrag's last connection to it."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        path, self._lite_path = self._lite_path, None
        if path is None:
            return
        with _LITE_LOCK:
            left = _LITE_USERS.get(path, 1) - 1
            if left > 0:
                _LITE_USERS[path] = left
                return
            _LITE_USERS.pop(path, None)
            if path not in _LITE_STARTED_BY_JRAG or _other_clients_of(path):
                # Not ours, or another client (a framework's store) in this process still uses
                # it: leave it running; Milvus Lite stops it at exit.
                return
            _LITE_STARTED_BY_JRAG.discard(path)
            from milvus_lite.server_manager import server_manager_instance

            with contextlib.suppress(Exception):
                server_manager_instance.release_server(path)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _running_lite_key(path: Path) -> str | None:
    """The key of this process's Milvus Lite server for the folder ``path``, if one runs."""
    from milvus_lite.server_manager import server_manager_instance

    for key in list(getattr(server_manager_instance, "_servers", {})):
        if os.path.realpath(key) == str(path):
            return key
    return None


def _other_clients_of(key: str) -> bool:
    """True if a pymilvus connection in this process still points at ``key``'s Lite server."""
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import connections

    entry = getattr(server_manager_instance, "_servers", {}).get(key)
    if entry is None:
        return False
    address = f"127.0.0.1:{entry[2]}"
    return any(
        handler is not None and connections.get_connection_addr(alias).get("address") == address
        for alias, handler in connections.list_connections()
    )


def locked_message(path: Path, holder: int) -> str:
    """Why ``path`` cannot be opened: the holder's pid, and how to share the .db."""
    pid = f" (pid {holder})" if holder > 0 else ""
    if holder > 0 and _is_jrag_serve(holder):
        return (
            f"Milvus Lite database {path} is served by `jrag serve`{pid}: pass the URI it "
            "printed (--uri http://127.0.0.1:PORT) instead of the .db path"
        )
    return (
        f"Milvus Lite database {path} is in use by another process{pid}. Milvus Lite allows "
        f"one process per .db: share it with `jrag serve --db {path}` and pass its URI to every "
        "command, or use another --uri"
    )


def _is_jrag_serve(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [a.decode(errors="replace") for a in argv]
    launched = any(w.endswith("/jrag") or w in ("jrag", "jrag.cli") for w in words)
    return "jrag.serve" in words or ("serve" in words and launched)


def check_lite_writable(path: Path) -> None:
    """Milvus Lite writes a lock and its log even to read; name a read-only .db plainly."""
    target = path if path.exists() else path.parent
    blocked = [p for p in (target, *target.glob("*")) if not os.access(p, os.W_OK)]
    if blocked:
        raise StoreError(
            f"Milvus Lite database {path} is not writable ({blocked[0]} is read-only); Milvus "
            "Lite needs write access even to search. Copy it somewhere writable, or serve it "
            "with `jrag serve` as a user who can write it"
        )


def lite_lock_holder(path: Path) -> int | None:
    """The pid holding Milvus Lite's lock on ``path``: None if unlocked, 0 if held by an unknown
    process (the lock is taken, but /proc/locks does not say by whom)."""
    lock = path / "LOCK"
    if not lock.exists():
        return None
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
    else:
        return None  # it was free (closing the descriptor below gives our lock back)
    finally:
        os.close(fd)
    return _pid_from_proc_locks(lock) or 0


def _pid_from_proc_locks(lock: Path) -> int | None:
    try:
        inode = lock.stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 12345 fd:01:1234567 0 EOF"
        fields = line.split()
        if len(fields) >= 6 and fields[5].rsplit(":", 1)[-1] == str(inode):
            with contextlib.suppress(ValueError):
                pid = int(fields[4])
                if pid != os.getpid():
                    return pid
    return None
