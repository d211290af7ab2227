"""``jrag serve``: share one Milvus Lite ``.db`` between several processes.

Milvus Lite lets one process open a ``.db``. ``serve`` opens it once and serves it over gRPC on
127.0.0.1 (Milvus Lite's own server, the one ``milvus-lite server`` runs); every other process
then passes ``--uri http://127.0.0.1:PORT``. It binds loopback only and refuses any other host:
the server has no authentication.

:func:`start_server` runs ``serve`` in a child process of this interpreter, for tests and
benchmarks that need a served ``.db`` they can stop, or kill.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from jrag.errors import JragError, StoreError
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
        server, lite, bound_port = start_server_in_thread(str(path), host=HOST, port=bound_port)
    except DataDirLockedError:
        raise StoreError(locked_message(path, lite_lock_holder(path) or 0)) from None
    except RuntimeError as e:  # grpc could not bind
        raise StoreError(f"cannot serve on {HOST}:{bound_port}: {e}") from None

    stop = stop or threading.Event()
    previous = _on_signals(lambda *_: stop.set())
    try:
        uri = f"http://{HOST}:{bound_port}"
        print(f"Serving Milvus Lite database {path} on {HOST}:{bound_port}.", flush=True)
        print(f"Pass --uri {uri} to every jrag command. Stop with Ctrl-C.", flush=True)
        print(f"{URI_PREFIX}{uri}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        print("Stopping: finishing requests in flight …", flush=True)
        server.stop(grace=STOP_GRACE_S).wait(STOP_GRACE_S + 1)
        lite.close()
        _restore_signals(previous)
        print(f"Stopped; {path} is released.", flush=True)


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
