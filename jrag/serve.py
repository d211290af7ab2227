"""``jrag serve``: one process holds the model and the collection and answers over HTTP.

:func:`serve_http` loads the collection's model once, opens the store, and serves the HTTP app
of :mod:`jrag.server.app` (embeddings, search, ask, documents, a web page) on 127.0.0.1, or on
another host only with an API key. For a Milvus Lite ``.db`` it also keeps serving the file
itself over gRPC on a second loopback port, which it prints, for processes that talk to Milvus
directly (``--uri http://127.0.0.1:PORT``).

:func:`serve` serves only the ``.db`` (Milvus Lite's own gRPC server): Milvus Lite lets one
process open a ``.db``, so every other process passes ``--uri``. It binds loopback only: that
server has no authentication. :func:`start_server` runs it in a child process of this
interpreter, for tests and benchmarks that need a served ``.db`` they can stop, or kill.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jrag.errors import CollectionNotFound, InputError, JragError, StoreError
from jrag.store.connection import check_lite_writable, lite_lock_holder, locked_message

HOST = "127.0.0.1"
DEFAULT_PORT = 19530
STOP_GRACE_S = 5.0
START_TIMEOUT_S = 60.0
URI_PREFIX = "jrag serve: uri "


def serve(
    db: Path,
    port: int | None = None,
    *,
    host: str = HOST,
    stop: threading.Event | None = None,
) -> None:
    """Serve the Milvus Lite ``db`` on ``host:port`` until SIGINT or SIGTERM (or ``stop``).

    ``port`` None takes 19530 if free, else a free port; 0 takes a free port. The ``.db`` is
    created if it does not exist (serving is how writers reach it).
    """
    if host != HOST:
        raise StoreError(
            f"jrag serve binds {HOST} only, not {host}: Milvus Lite's server has no "
            "authentication, so it must not be reachable from other machines"
        )
    lite = _LiteServer.start(db, port)
    stop = stop or threading.Event()
    previous = _on_signals(lambda *_: stop.set())
    try:
        print("Stop with Ctrl-C.", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        print("Stopping: finishing requests in flight …", flush=True)
        lite.stop()
        _restore_signals(previous)


class _LiteServer:
    """Milvus Lite's gRPC server for one ``.db``, in a thread of this process."""

    def __init__(self, path: Path, server: Any, lite: Any, port: int) -> None:
        self.path, self._server, self._lite, self.port = path, server, lite, port
        self.uri = f"http://{HOST}:{port}"

    @classmethod
    def start(cls, db: Path, port: int | None) -> _LiteServer:
        path = Path(db).expanduser()
        if path.suffix != ".db":
            raise StoreError(f"Milvus Lite path {db} must end with .db")
        path = path.resolve()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder for Milvus Lite at {path}: {e}") from e
        check_lite_writable(path)
        bound_port = _choose_port(port)

        from milvus_lite import DataDirLockedError
        from milvus_lite.adapter.grpc.server import start_server_in_thread

        try:
            server, lite, bound_port = start_server_in_thread(str(path), host=HOST,
                                                              port=bound_port)  # fmt: skip
        except DataDirLockedError:
            raise StoreError(locked_message(path, lite_lock_holder(path) or 0)) from None
        except RuntimeError as e:  # grpc could not bind
            raise StoreError(f"cannot serve on {HOST}:{bound_port}: {e}") from None
        served = cls(path, server, lite, bound_port)
        print(f"Serving Milvus Lite database {path} on {HOST}:{bound_port}.", flush=True)
        print(f"Pass --uri {served.uri} to every jrag command.", flush=True)
        print(f"{URI_PREFIX}{served.uri}", flush=True)
        return served

    def stop(self) -> None:
        self._server.stop(grace=STOP_GRACE_S).wait(STOP_GRACE_S + 1)
        self._lite.close()
        print(f"Stopped; {self.path} is released.", flush=True)


# -- the HTTP service ------------------------------------------------------------------------------

LOOPBACK = ("127.0.0.1", "localhost", "::1")
HTTP_PREFIX = "jrag serve: http "
DEFAULT_HTTP_PORT = 8000


@dataclass
class HttpSettings:
    """How ``jrag serve`` answers HTTP: where, with which key, within which limits."""

    host: str = HOST
    port: int = DEFAULT_HTTP_PORT
    api_key: str | None = None
    max_body: int = 32 * 1024 * 1024
    max_queue: int = 256

    def check(self) -> None:
        if self.host not in LOOPBACK and not self.api_key:
            raise InputError(
                f"--host {self.host} makes the server reachable from other machines: set an "
                "API key with --api-key or JRAG_API_KEY (clients send it as a Bearer token)"
            )
        if self.api_key is not None and len(self.api_key) < 16:
            raise InputError("the API key must be at least 16 characters")


def serve_http(
    *,
    db: Path | None,
    uri: str | None,
    collection: str,
    settings: HttpSettings,
    milvus_port: int | None = None,
    token: str | None = None,
    model: str | None = None,
    dtype: str | None = None,
) -> None:
    """Serve the HTTP app until SIGINT or SIGTERM; a Lite ``db`` is also served over gRPC."""
    import uvicorn

    from jrag.defaults import DEFAULT_MODEL
    from jrag.embedding import identity_of, load_encoder
    from jrag.llm import from_env
    from jrag.server.app import Service, create_app
    from jrag.store import MilvusStore

    settings.check()
    sock = bind_socket(settings.host, settings.port)  # a busy port fails before any loading
    # Milvus Lite's gRPC server logs, as errors, calls that it does not implement and that
    # pymilvus falls back from; they are not the user's concern. Restored on the way out.
    grpc_log = logging.getLogger("grpc._server")
    grpc_level = grpc_log.level
    grpc_log.setLevel(logging.CRITICAL)
    lite = store = service = None
    try:
        lite = _LiteServer.start(db, milvus_port) if uri is None else None
        target = lite.uri if lite is not None else str(uri)
        try:
            store = MilvusStore(target, collection, token=token, create=False)
        except CollectionNotFound:
            print(
                f"Collection {collection!r} does not exist yet: the first document written "
                f"creates it, with model {model or DEFAULT_MODEL}.",
                flush=True,
            )
        encoder = load_encoder(model or (store.model if store else DEFAULT_MODEL), dtype=dtype)
        if store is not None:
            store.check_model(identity_of(encoder))
        service = Service(encoder, collection, uri=target, token=token, store=store,
                          llm=from_env(), max_queue=settings.max_queue)  # fmt: skip
        app = create_app(service, api_key=settings.api_key, max_body=settings.max_body)
        host, port = sock.getsockname()[:2]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        print(f"Serving {collection!r} with {encoder.name} on {url} (web page {url}/, API "
              f"{url}/docs). Stop with Ctrl-C.", flush=True)  # fmt: skip
        print(f"{HTTP_PREFIX}{url}", flush=True)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=STOP_GRACE_S)
        _server_class()(config).run(sockets=[sock])
    finally:
        print("Stopping: finishing requests in flight …", flush=True)
        sock.close()
        if service is not None:
            service.close()
        elif store is not None:
            store.close()
        if lite is not None:
            lite.stop()
        grpc_log.setLevel(grpc_level)


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopping cleanly on SIGINT or SIGTERM (uvicorn itself raises the
        signal again once stopped, so the process would end as killed)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = _on_signals(lambda *_: setattr(self, "should_exit", True))
            try:
                yield
            finally:
                _restore_signals(previous)

    return Server


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port); StoreError if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise StoreError(
                f"port {port} on {host} is in use; pick another --port, or 0 for any"
            ) from None
        raise StoreError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    return sock


class RunningApp:
    """An ASGI app served by uvicorn in a thread on a free loopback port (tests, benchmarks)."""

    def __init__(self, app: Any, host: str = HOST) -> None:
        import uvicorn

        self._sock = bind_socket(host, 0)
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        daemon=True)  # fmt: skip

    def __enter__(self) -> RunningApp:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            raise StoreError("the HTTP server did not start within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()


def _choose_port(port: int | None) -> int:
    """``port`` if it is free (0 stays 0: grpc picks); None: 19530 if free, else 0."""
    if port is not None and not 0 <= port <= 65535:
        raise StoreError(f"port must be 0 to 65535, not {port}")
    if port == 0:
        return 0
    wanted = DEFAULT_PORT if port is None else port
    if _port_free(wanted):
        return wanted
    if port is None:
        return 0
    raise StoreError(f"port {port} on {HOST} is in use; pick another --port, or 0 for any")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _on_signals(handler) -> dict[int, object]:
    """Install ``handler`` for SIGINT and SIGTERM (main thread only); returns the old ones."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


# -- a served .db in a child process (tests, benchmarks) -------------------------------------------


class ServedLite:
    """A ``jrag serve`` child process: ``.uri`` to connect, ``.stop()`` or ``.kill()``."""

    def __init__(self, db: Path, proc: subprocess.Popen[bytes], log: Path, uri: str) -> None:
        self.db = Path(db)
        self.proc = proc
        self.log = log
        self.uri = uri

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for a clean stop (SIGKILL past ``timeout``); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the server dies mid-request, as on a crash or an OOM kill."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> ServedLite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self.log.unlink()


def start_server(db: Path, port: int | None = 0, timeout: float = START_TIMEOUT_S) -> ServedLite:
    """Serve ``db`` from a child process and return once a client can connect to it."""
    from pymilvus import MilvusClient

    fd, log_name = tempfile.mkstemp(prefix="jrag-serve-", suffix=".log")
    log = Path(log_name)
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "jrag.serve", "--db", str(db)]
    if port is not None:
        cmd += ["--port", str(port)]
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
    served = ServedLite(Path(db), proc, log, "")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StoreError(f"jrag serve exited with {proc.returncode}: {served.log_text()}")
            line = next((x for x in served.log_text().splitlines() if x.startswith(URI_PREFIX)), "")
            if line:
                served.uri = line[len(URI_PREFIX) :].strip()
                client = MilvusClient(served.uri, timeout=max(1.0, deadline - time.monotonic()))
                client.list_collections()
                client.close()
                return served
            time.sleep(0.1)
        raise StoreError(f"jrag serve did not start within {timeout:.0f} s: {served.log_text()}")
    except BaseException:
        served.kill()
        raise


def main(argv: list[str] | None = None) -> int:
    """``python -m jrag.serve --db PATH [--port P]``: the same as ``jrag serve``."""
    parser = argparse.ArgumentParser(prog="python -m jrag.serve", description=__doc__)
    parser.add_argument("--db", type=Path, default=Path("jrag.db"))
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        serve(args.db, args.port)
    except JragError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
