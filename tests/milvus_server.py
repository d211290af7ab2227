"""Start and stop a real Milvus 2.3.5 standalone server for tests, reachable only via loopback.

``milvus-server`` (PyPI ``milvus==2.3.5``, installed by ``scripts/install_milvus_server.sh``)
listens on all interfaces whatever its settings, so it runs inside a fresh network namespace
(``unshare -n``) whose only interface is ``lo``. Connections reach it over a two-part bridge:

    test process                       |  private netns (same host, own network stack)
    127.0.0.1:<free port>  --TCP-->    |
      forwarder thread  --Unix socket (in tmp; Unix sockets cross netns boundaries)-->
                                       |  supervisor: Unix socket -> 127.0.0.1:19530 (Milvus)

Nothing listens outside loopback. The supervisor (this file run as a script inside the netns)
starts ``milvus-server``, waits for ``/healthz``, writes a ready file, pumps connections, and
on SIGINT/SIGTERM stops Milvus with SIGINT. ``MilvusServerProcess.stop`` always kills the whole
process group as a last resort, so no server outlives the test session.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SERVER_BIN = REPO_ROOT / ".venv-milvus" / "bin" / "milvus-server"
SERVER_ENV = "JRAG_MILVUS_SERVER"
SKIP_ENV = "JRAG_SKIP_SERVER_TESTS"
MILVUS_PORT = 19530
HEALTH_PORT = 9091
STARTUP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
# A Strong read waits for the proxy's next time tick: 200 ms by default, so each read of a
# state or of the write lease costs ~0.2 s. At 20 ms a Strong read after a write takes ~38 ms
# (measured on the 2-core machine), which cuts the time of every server test that writes.
SERVER_CONFIG = {"proxy.timeTickInterval": 20}


class MilvusServerError(RuntimeError):
    """The test server could not be found, started or reached."""


def server_binary() -> Path:
    """Path of ``milvus-server``: ``$JRAG_MILVUS_SERVER`` or ``<repo>/.venv-milvus/bin/...``."""
    return Path(os.environ.get(SERVER_ENV) or DEFAULT_SERVER_BIN)


# --------------------------------------------------------------------------- byte pumping


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes src -> dst until EOF, then half-close dst so the peer sees EOF too."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _bridge(a: socket.socket, b: socket.socket) -> None:
    """Pump both directions between two connected sockets, then close both."""
    t = threading.Thread(target=_pump, args=(b, a), daemon=True)
    t.start()
    _pump(a, b)
    t.join()
    a.close()
    b.close()


def _serve_forever(listener: socket.socket, connect, stop: threading.Event) -> None:
    """Accept on ``listener``; bridge each connection to a fresh ``connect()`` socket."""
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    while not stop.is_set():
        if not sel.select(timeout=0.2):
            continue
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        try:
            upstream = connect()
        except OSError:
            conn.close()
            continue
        threading.Thread(target=_bridge, args=(conn, upstream), daemon=True).start()
    sel.close()


class TcpToUnixForwarder:
    """In the test process: listen on 127.0.0.1:<free port>, forward to a Unix socket."""

    def __init__(self, unix_path: Path) -> None:
        self.unix_path = str(unix_path)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_serve_forever,
            args=(self._listener, self._connect, self._stop),
            daemon=True,
        )
        self._thread.start()

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.unix_path)
        return s

    def close(self) -> None:
        """Stop accepting; open bridges die with their peers."""
        self._stop.set()
        self._thread.join(timeout=2)
        self._listener.close()


# --------------------------------------------------------------------------- the server


class MilvusServerProcess:
    """A Milvus 2.3.5 standalone server in a private netns, reachable at ``self.uri``."""

    def __init__(self, workdir: Path, binary: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.binary = Path(binary) if binary else server_binary()
        self.data_dir = self.workdir / "data"
        # AF_UNIX paths are limited to ~107 bytes; tmp_path_factory paths can be long.
        self.socket_path = Path(f"/tmp/jrag-milvus-{os.getpid()}-{id(self):x}.sock")
        self.ready_file = self.workdir / "ready"
        self.log_file = self.workdir / "supervisor.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.forwarder: TcpToUnixForwarder | None = None
        self.startup_s: float | None = None

    @property
    def uri(self) -> str:
        """``http://127.0.0.1:<port>`` of the loopback forwarder."""
        if self.forwarder is None:
            raise MilvusServerError("Milvus test server is not running")
        return f"http://127.0.0.1:{self.forwarder.port}"

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> MilvusServerProcess:
        """Start the server and wait until it is healthy; on any failure, clean up and raise."""
        if not self.binary.exists():
            raise MilvusServerError(
                f"Milvus server binary not found at {self.binary}. Run `make install` "
                f"(or scripts/install_milvus_server.sh), set {SERVER_ENV} to a milvus-server "
                f"binary, or set {SKIP_ENV}=1 to skip the server tests."
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)
        t0 = time.monotonic()
        cmd = [
            "unshare", "-n", "--", sys.executable, str(Path(__file__).resolve()), "supervise",
            str(self.binary), str(self.data_dir), str(self.socket_path), str(self.ready_file),
        ]  # fmt: skip
        try:
            with open(self.log_file, "wb") as log:
                self.proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )  # fmt: skip
            self._wait_ready(timeout)
            self.forwarder = TcpToUnixForwarder(self.socket_path)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.ready_file.exists() and self.socket_path.exists():
                return
            if self.proc.poll() is not None:
                raise MilvusServerError(
                    f"Milvus test server exited early (rc={self.proc.returncode}).\n"
                    + self.log_tail()
                )
            time.sleep(0.2)
        raise MilvusServerError(
            f"Milvus test server not healthy within {timeout:.0f} s.\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the supervisor log and of Milvus's own stdout/stderr logs."""
        parts = []
        for path in (
            self.log_file,
            self.data_dir / "logs" / "milvus-stdout.log",
            self.data_dir / "logs" / "milvus-stderr.log",
        ):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no server logs)"

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGINT the supervisor (it SIGINTs Milvus), then SIGKILL the group if need be."""
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout)
            # The group id is the supervisor's pid (start_new_session); kill any stragglers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.socket_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL Milvus and its supervisor at once, as a crash would; the data dir stays, so
        :meth:`start` restarts the server on it."""
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> MilvusServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- supervisor


def _healthy(port: int = HEALTH_PORT) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return b"OK" in resp.read()
    except (OSError, urllib.error.URLError):
        return False


def _supervise(binary: str, data_dir: str, socket_path: str, ready_file: str) -> int:
    """Run inside the private netns: bring up lo, start Milvus, bridge Unix socket -> TCP."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    ifaces = sorted(name for _, name in socket.if_nameindex())
    if ifaces != ["lo"]:
        print(
            f"refusing to start: netns has interfaces {ifaces}, expected only lo",
            flush=True,
        )
        return 2
    parent = os.getppid()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server = subprocess.Popen(
        [
            binary,
            "--data",
            data_dir,
            "--proxy-port",
            str(MILVUS_PORT),
            *(arg for k, v in SERVER_CONFIG.items() for arg in ("--extra-config", f"{k}={v}")),
        ],
        stdin=subprocess.DEVNULL,
    )
    print(f"milvus-server pid {server.pid}", flush=True)
    try:
        while not stop.is_set() and not _healthy():
            if server.poll() is not None:
                print(f"milvus-server exited with rc={server.returncode}", flush=True)
                return 1
            stop.wait(0.25)
        if stop.is_set():
            return 0
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(socket_path)
        listener.listen(64)

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", MILVUS_PORT), timeout=10)

        pump = threading.Thread(target=_serve_forever, args=(listener, connect, stop), daemon=True)
        pump.start()
        Path(ready_file).write_text(str(server.pid))
        print("milvus-server healthy", flush=True)
        while not stop.is_set():
            if server.poll() is not None:
                print(f"milvus-server exited with rc={server.returncode}", flush=True)
                return 1
            if os.getppid() != parent:
                print("test process is gone; stopping", flush=True)
                return 0
            stop.wait(0.5)
        return 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=STOP_TIMEOUT_S - 7)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        with contextlib.suppress(OSError):
            os.unlink(socket_path)
        print("milvus-server stopped", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "supervise":
        sys.exit(_supervise(*sys.argv[2:]))
    if len(sys.argv) == 2 and sys.argv[1] == "smoke":
        import tempfile

        with (
            tempfile.TemporaryDirectory() as tmp,
            MilvusServerProcess(Path(tmp)) as srv,
        ):
            print(f"healthy at {srv.uri} after {srv.startup_s:.1f} s")
        sys.exit(0)
    print(f"usage: {sys.argv[0]} smoke", file=sys.stderr)
    sys.exit(2)
