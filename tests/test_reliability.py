"""kill -9 of the Milvus server in the middle of an ingest, then a restart and a re-run: every
document ends up stored once and complete (served Milvus Lite, and a real Milvus 2.3.5 server).

The ingest runs in a child process and reports each document it has stored; after a dozen, the
server (not the ingest) is killed with SIGKILL. Documents reported stored before the kill must
survive it: an acknowledged write is durable.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jrag.embedding import identity_of, load_encoder
from jrag.pipeline import IngestOptions, ingest
from jrag.retrieval import search
from jrag.serve import start_server
from jrag.store import MilvusStore, document_id
from tests.milvus_server import MilvusServerProcess, server_binary
from tests.test_serve import MINILM, REPO_ROOT, audit, child_env

DOCUMENTS = 30
KILL_AFTER = 12
WORDS = ("harbour", "granite", "lantern", "orchard", "ferry", "comet", "rye", "switchback")


def write_corpus(folder: Path) -> list[str]:
    """``DOCUMENTS`` generated text files of a few hundred tokens each."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for doc in range(DOCUMENTS):
        sentences = [
            f"Ledger {doc} line {i}: the {WORDS[(doc + i) % len(WORDS)]} was checked at "
            f"{(doc * 37 + i * 11) % 24:02}:00 and logged as item {doc * 100 + i}."
            for i in range(20 + doc % 9)
        ]
        path = folder / f"ledger-{doc:02}.txt"
        path.write_text(" ".join(sentences), encoding="utf-8")
        paths.append(str(path))
    return paths


def ingest_main(uri: str, folder: str) -> None:
    """Ingest ``folder`` into collection ``c`` at ``uri``, printing each document stored."""
    encoder = load_encoder(MINILM)
    with MilvusStore(uri, "c", identity=identity_of(encoder)) as store:
        print("open", flush=True)
        ingest([folder], store, encoder, options=IngestOptions(mode="late"),
               on_file=lambda path, outcome: print(outcome, path, flush=True))  # fmt: skip


def ingest_and_kill_server(uri: str, folder: Path, kill: Callable[[], None]) -> list[str]:
    """Run the ingest in a child; kill the server after ``KILL_AFTER`` documents are stored.
    Returns the documents the child reported stored before the kill."""
    call = f"from tests.test_reliability import ingest_main; ingest_main({uri!r}, {str(folder)!r})"
    child = subprocess.Popen(
        [sys.executable, "-c", call], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(), cwd=REPO_ROOT,
    )  # fmt: skip
    stored: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            outcome, _, path = line.strip().partition(" ")
            if outcome == "added":
                stored.append(path)
            if len(stored) == KILL_AFTER:
                kill()
                break
        # Without its server the ingest fails (pymilvus retries for a while first).
        killed_at = time.monotonic()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        print(
            f"ingest exited {time.monotonic() - killed_at:.1f} s after the kill, rc "
            f"{child.returncode}: {(child.stderr.read() or '').strip().splitlines()[-1:]}"
        )
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert len(stored) == KILL_AFTER, f"the ingest ended before the kill: {child.stderr.read()}"
    return stored


def rerun_and_check(uri: str, folder: Path, sources: list[str], stored: list[str]) -> dict:
    """Re-run the ingest and check every document is stored once; returns the figures."""
    encoder = load_encoder(MINILM)
    with MilvusStore(uri, "c", identity=identity_of(encoder)) as store:
        states = store.states([document_id(s) for s in sources]).values()
        before = {s.source for s in states if s.committed}
        assert set(stored) <= before, f"acknowledged documents lost: {set(stored) - before}"
        # Rows of the write the kill interrupted have no state row yet, or a first write's
        # placeholder (the re-run rewrites them); every committed document must be whole.
        cut_short = tuple(f" of {s.source}" for s in states if not s.committed)
        committed_problems = [
            p for p in audit(store) if not p.endswith(("has no state row", *cut_short))
        ]
        assert committed_problems == [], committed_problems
        started = time.monotonic()
        report = ingest([folder], store, encoder, options=IngestOptions(mode="late"))
        rerun_s = time.monotonic() - started
        assert report.failed == []
        assert sorted(report.skipped) == sorted(before)
        assert len(report.added) == DOCUMENTS - len(before)
        assert audit(store, sources) == []
        figures = {"acknowledged": len(stored), "stored_after_kill": len(before),
                   "after_rerun": DOCUMENTS, "rerun_s": round(rerun_s, 1)}  # fmt: skip
        print(f"{store.capabilities.version}, kill -9 mid-ingest: {json.dumps(figures)}")
        found = search("When was the lantern checked?", store, encoder, k=5)
        assert all(Path(r.source).read_text()[r.start : r.end] == r.text for r in found)
        if len(found) < 5 and not store.capabilities.group_by:
            # Known: on Milvus 2.3.5 a filter ``tenant == X`` on the partition key matches no
            # row that upsert wrote, so jrag's search restriction finds nothing there.
            pytest.xfail(f"search found {len(found)} of 5 documents on Milvus 2.3.5")
        assert len(found) == 5
    return figures


def test_kill_9_of_the_served_lite_server_mid_ingest_then_rerun(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    sources = write_corpus(folder)
    db = tmp_path / "served.db"
    started = time.monotonic()
    served = start_server(db)
    try:
        stored = ingest_and_kill_server(served.uri, folder, served.kill)
        assert served.proc.returncode == -signal.SIGKILL
    finally:
        served.kill()
    with start_server(db) as restarted:
        figures = rerun_and_check(restarted.uri, folder, sources, stored)
    figures["total_s"] = round(time.monotonic() - started, 1)
    print("served Lite, kill -9 mid-ingest:", json.dumps(figures))


@pytest.mark.server
def test_kill_9_of_the_milvus_server_mid_ingest_then_rerun(tmp_path: Path) -> None:
    if not server_binary().exists():
        pytest.fail(f"Milvus server binary not found at {server_binary()}", pytrace=False)
    folder = tmp_path / "docs"
    sources = write_corpus(folder)
    started = time.monotonic()
    with MilvusServerProcess(tmp_path / "milvus") as server:
        stored = ingest_and_kill_server(server.uri, folder, server.kill)
        assert server.proc is None
        server.start()
        figures = rerun_and_check(server.uri, folder, sources, stored)
    figures["total_s"] = round(time.monotonic() - started, 1)
    print("Milvus 2.3.5, kill -9 mid-ingest:", json.dumps(figures))
