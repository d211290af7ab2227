"""Three writer processes on one shared collection, kill -9 on some, a reader throughout.

Used by ``tests/test_concurrent_writes.py`` (a few rounds) and
``benchmarks/bench_concurrent_writes.py`` (as many as asked). Files live in three folders; writer
``i`` ingests folders ``i`` and ``i+1`` (mod 3), so every folder has two writers. Each round
edits some files, starts all three writers, edits more files while they run, and in some rounds
kills one writer with SIGKILL at a random moment (it is started again for the next round). A
reader thread searches each file's own token, restricted to that file by ``--filter``, all the
time: a document that existed before a round began must be found by every search. After the
rounds, one quiet run by one writer, then the audit.

Each miss is reported with what its search ranked, the states it read, and the document's state,
rows and lease holder read right after; with ``JRAG_STRESS_TRACE=<file>`` every writer also logs
each of its deletes, inserts, state writes and lease claims there, timed, to set beside them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from jrag.embedding import identity_of, load_encoder
from jrag.retrieval import SearchOptions, search
from jrag.store import MilvusStore, document_id
from jrag.store.filters import quote
from tests.test_serve import MINILM, REPO_ROOT, audit, child_env

FOLDERS = 3
EDIT_BURSTS = 4
LEASE_S = 5
READER_PAUSE_S = 0.02  # between searches: the writers and the server need the CPU too
LINES = 20  # ~400 tokens a file: embedding a folder takes long enough for writers to overlap
WORDS = ("harbour", "granite", "lantern", "orchard", "ferry", "comet", "rye", "switchback")


@dataclass
class Figures:
    rounds: int = 0
    kills: int = 0
    searches: int = 0
    misses: list[str] = field(default_factory=list)
    edits: int = 0
    writer_runs: int = 0
    writer_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        return {
            "rounds": self.rounds, "kills": self.kills, "searches": self.searches,
            "misses": len(self.misses), "edits": self.edits, "writer_runs": self.writer_runs,
            "writer_errors": len(self.writer_errors), "seconds": round(self.seconds, 1),
        }  # fmt: skip


def token(n: int) -> str:
    return f"zebu{n:03d}quill"


def write_file(path: Path, n: int, edition: int) -> None:
    sentences = [
        f"Record {n} edition {edition}, line {i}: the {token(n)} ledger was checked at "
        f"{(n * 7 + i + edition) % 24:02}:00 by the {WORDS[(n + i) % len(WORDS)]} clerk."
        for i in range(LINES + (n + edition) % 5)
    ]  # fmt: skip
    path.write_text(" ".join(sentences), encoding="utf-8")


def make_corpus(root: Path, files: int) -> list[Path]:
    paths = []
    for n in range(files):
        folder = root / f"f{n % FOLDERS}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"doc-{n:03d}.txt"
        write_file(path, n, 0)
        paths.append(path)
    return paths


# -- the writer process ------------------------------------------------------------------------


def writer_main(uri: str, collection: str) -> None:
    """Read folder lists (JSON) from stdin; ingest each; answer ``done`` or ``error`` lines."""
    from jrag.errors import JragError
    from jrag.pipeline import IngestOptions, ingest

    encoder = load_encoder(MINILM)
    with MilvusStore(uri, collection, identity=identity_of(encoder)) as store:
        if os.environ.get(TRACE_ENV):
            _trace_writes(store, os.environ[TRACE_ENV])
        print("ready", flush=True)
        for line in sys.stdin:
            try:
                report = ingest(json.loads(line), store, encoder,
                                options=IngestOptions(mode="whole"))  # fmt: skip
                print("done", len(report.added) + len(report.updated), flush=True)
            except JragError as err:
                print("error", str(err).replace("\n", " "), flush=True)


TRACE_ENV = "JRAG_STRESS_TRACE"  # a file: writers append each store operation, timed


def _trace_writes(store: MilvusStore, path: str) -> None:
    """Log each delete, insert, upsert and state write of ``store``'s writer (diagnosis only)."""
    writer = store.writer
    pid = os.getpid()

    def log(op: str, detail: str) -> None:
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{time.time():.3f} {pid} {op} {detail}\n")

    def wrap(name: str, describe) -> None:
        inner = getattr(writer, name)

        def traced(*args, **kwargs):
            log(name + ">", describe(*args))
            result = inner(*args, **kwargs)
            log(name + "<", describe(*args))
            return result

        setattr(writer, name, traced)

    wrap("delete_ids", lambda ids: ",".join(i[:60] for i in ids))
    wrap("_upsert_batch", lambda batch: ",".join(e["id"][:60] for e in batch))
    wrap(
        "_put_state",
        lambda st: (
            f"{st.doc_id[:12]} hash={st.content_hash[:8]} "
            f"kinds={sorted(st.kinds)} garbage={[g['content_hash'][:8] for g in st.garbage]}"
        ),
    )
    lease = writer.lease
    if lease is not None:
        claim = lease._claim
        lease._claim = lambda: (claim(), log("claim", lease.owner))[0]


class WriterProcess:
    def __init__(self, uri: str, collection: str) -> None:
        call = (
            "from tests.concurrent_writers import writer_main; "
            f"writer_main({uri!r}, {collection!r})"
        )
        # A killed writer's lease frees itself after LEASE_S; a short one keeps the rounds short.
        env = {**child_env(), "JRAG_LEASE_S": str(LEASE_S)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", call], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO_ROOT,
        )  # fmt: skip

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"writer did not start: {line!r}"

    def start(self, folders: list[str]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(folders) + "\n")
        self.proc.stdin.flush()

    def result(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


# -- the reader --------------------------------------------------------------------------------


class Reader(threading.Thread):
    """Searches each expected file's token, restricted to that file, until stopped."""

    def __init__(self, uri: str, collection: str, paths: list[Path], figures: Figures) -> None:
        super().__init__(daemon=True)
        self.encoder = _Remembering(load_encoder(MINILM))
        self.store = MilvusStore(uri, collection, identity=identity_of(self.encoder))
        self.paths = paths
        self.figures = figures
        self.expected: set[Path] = set()  # documents committed before the round began
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._seen: list[str] = []  # what the last search ranked and which states it read
        ranker = self.store.ranker
        search_once, read_states = ranker._search, ranker.states

        def traced_search(*args, **kwargs):
            rows = search_once(*args, **kwargs)
            self._seen.append("ranked " + str([(r.kind, r.content_hash[:8]) for r in rows]))
            return rows

        def traced_states(doc_ids):
            states = read_states(doc_ids)
            self._seen.append("states " + str([s.content_hash[:8] for s in states.values()]))
            return states

        ranker._search, ranker.states = traced_search, traced_states

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for n, path in enumerate(self.paths):
                    if self.stop.is_set() or path not in self.expected:
                        continue
                    options = SearchOptions(k=1, mode="whole", hybrid=False,
                                            filter=f"source == {quote(str(path))}")  # fmt: skip
                    self._seen = []
                    found = search(token(n), self.store, self.encoder, options)
                    self.figures.searches += 1
                    time.sleep(READER_PAUSE_S)
                    if not found or found[0].source != str(path):
                        self.figures.misses.append(
                            f"round {self.figures.rounds}: {path.name} {self._diagnose(path)}"
                        )
        except BaseException as err:  # reported by the driver
            self.error = err
        finally:
            self.store.close()

    def _diagnose(self, path: Path) -> str:
        """What the store held just after a miss: the state row, the rows of each version, the
        lease holder (read at once, so a commit may have landed since)."""
        doc = document_id(str(path))
        writer = self.store.writer
        state = writer.states([doc]).get(doc)
        rows = writer.iter_rows(f"doc_id == {quote(doc)}", ["id", "kind", "content_hash"])
        versions: dict[str, list[str]] = {}
        for r in rows:
            versions.setdefault(r["content_hash"][:8], []).append(r["kind"])
        lease = writer.lease._read() if writer.lease is not None else {}
        said = (
            "no state" if state is None else
            f"state={state.content_hash[:8]} committed={state.committed} "
            f"kinds={sorted(state.kinds)} garbage={[g['content_hash'][:8] for g in state.garbage]}"
        )  # fmt: skip
        return (
            f"search: {'; '.join(self._seen)} | then at {time.time():.3f} doc={doc[:12]} {said} "
            f"rows={versions} "
            f"lease={lease.get('owner', '-')}"
        )


def _log(started: float, what: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {what}", file=sys.stderr, flush=True)


class _Remembering:
    """An encoder that embeds each query once: the reader asks the same ones over and over, and
    the writers need the CPU."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self._vectors: dict[tuple[str, ...], object] = {}

    def encode(self, texts, *args, **kwargs):
        key = tuple(texts)
        if key not in self._vectors:
            self._vectors[key] = self._encoder.encode(texts, *args, **kwargs)
        return self._vectors[key]

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)


# -- the driver --------------------------------------------------------------------------------


def run_stress(
    uri: str,
    root: Path,
    *,
    collection: str = "c",
    files: int = 24,
    rounds: int = 4,
    kill_every: int = 2,
    max_seconds: float = 80.0,
    seed: int = 17,
) -> tuple[Figures, list[str], dict]:
    """Run the rounds (at most ``rounds``, none started ``max_seconds`` after the first); one
    quiet run. Returns the figures, the audit's problems, and what ``repair`` finds."""
    rng = random.Random(seed)
    figures = Figures()
    started = time.monotonic()
    paths = make_corpus(root, files)
    editions = [0] * files
    folders = [str(root / f"f{i}") for i in range(FOLDERS)]
    writers = [WriterProcess(uri, collection) for _ in range(FOLDERS)]
    for w in writers:
        w.wait_ready()
    _log(started, "writers ready")
    writers[0].start(folders)  # the first ingest, alone
    first = writers[0].result()
    _log(started, "first ingest done")
    assert first.startswith("done"), first
    reader = Reader(uri, collection, paths, figures)
    reader.expected = set(paths)
    reader.start()
    rounds_started = time.monotonic()

    def edit(count: int) -> None:
        for n in rng.sample(range(files), count):
            editions[n] += 1
            write_file(paths[n], n, editions[n])
            figures.edits += 1

    try:
        for round_no in range(rounds):
            if time.monotonic() - rounds_started > max_seconds:
                break
            figures.rounds = round_no + 1
            edit(max(1, files // 4))
            for i, w in enumerate(writers):  # staggered: they read files before and after edits
                w.start([folders[i], folders[(i + 1) % FOLDERS]])
                time.sleep(rng.uniform(0.0, 0.5))
            victim = rng.randrange(FOLDERS) if round_no % kill_every == kill_every - 1 else None
            kill_at = rng.uniform(0.3, 3.0)
            waited = 0.0
            for _ in range(EDIT_BURSTS):  # edits while they run: some land between two writers
                pause = rng.uniform(0.2, 0.8)
                if victim is not None and waited < kill_at <= waited + pause:
                    time.sleep(kill_at - waited)
                    writers[victim].kill()
                    figures.kills += 1
                    pause -= kill_at - waited
                    waited = kill_at
                time.sleep(pause)
                waited += pause
                edit(max(1, files // 8))
            if victim is not None and writers[victim].proc.poll() is None:
                writers[victim].kill()
                figures.kills += 1
            for i, w in enumerate(writers):
                if i == victim:
                    continue
                line = w.result()
                figures.writer_runs += 1
                if not line.startswith("done"):
                    figures.writer_errors.append(line)
            _log(started, f"round {round_no + 1} done")
            if victim is not None:
                writers[victim] = WriterProcess(uri, collection)
                writers[victim].wait_ready()
        # The quiet run: one writer, nothing else changing.
        writers[0].start(folders)
        quiet = writers[0].result()
        _log(started, "quiet run done")
        assert quiet.startswith("done"), quiet
    finally:
        reader.stop.set()
        reader.join(timeout=60)
        for w in writers:
            w.close()
    if reader.error is not None:
        raise reader.error
    encoder = load_encoder(MINILM)
    with MilvusStore(uri, collection, identity=identity_of(encoder)) as store:
        problems = audit(store, [str(p) for p in paths])
        state_rows = store.count('kind == "state"')
        if state_rows != len(paths):  # audit keys states by document: count the rows too
            problems.append(f"{state_rows} state rows for {len(paths)} files")
        states = store.states([document_id(str(p)) for p in paths])
        for path in paths:
            state = states.get(document_id(str(path)))
            if state is None or state.metadata.get("size") != path.stat().st_size:
                problems.append(f"{path.name} is not stored in the version its file holds")
        leftovers = store.repair(dry_run=True)
    figures.seconds = time.monotonic() - started
    return figures, problems, leftovers
