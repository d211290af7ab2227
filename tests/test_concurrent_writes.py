"""Several processes writing one collection: they take turns under its write lease, a kill -9
of any of them at any moment loses nothing, and ``jrag repair`` removes what older writers left.

The stress test (three writers over overlapping folders, edits during the runs, kill -9 of a
random writer, a reader searching every file throughout) runs a few rounds here on both
backends; ``benchmarks/bench_concurrent_writes.py`` runs as many as asked.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from jrag.cli import app
from jrag.embedding import identity_of, load_encoder
from jrag.errors import StoreError
from jrag.pipeline import IngestOptions, ingest
from jrag.serve import start_server
from jrag.store import MilvusStore, Query, Row, document_id
from jrag.store.lease import WriteLease
from jrag.store.rows import vector_entity
from jrag.store.writes import DocumentVersion
from tests.concurrent_writers import run_stress
from tests.test_serve import MINILM, audit

STRESS_ROUNDS = 3
STRESS_FILES = 9
STRESS_SECONDS = 40.0  # no round starts after this; each adds ~10-20 s on a loaded 2-core box
DIM = 8


def check_stress(uri: str, root: Path, collection: str, files: int = STRESS_FILES) -> None:
    figures, problems, leftovers = run_stress(
        uri, root, collection=collection, files=files, rounds=STRESS_ROUNDS,
        max_seconds=STRESS_SECONDS,
    )  # fmt: skip
    print("concurrent writers:", json.dumps(figures.summary()))
    assert figures.rounds >= 2 and figures.kills >= 1
    assert figures.writer_errors == []
    assert figures.searches > 0 and figures.misses == []
    assert problems == []
    assert leftovers == {"documents": files, "orphan_rows": 0, "unfinished_documents": 0}


def test_three_writers_with_kills_on_served_lite_lose_and_leave_nothing(tmp_path: Path) -> None:
    with start_server(tmp_path / "s.db") as served:
        check_stress(served.uri, tmp_path / "docs", "c")


@pytest.mark.server
def test_three_writers_with_kills_on_milvus_server_lose_and_leave_nothing(
    tmp_path: Path, milvus_server_uri: str
) -> None:
    # Each write costs the server several round trips: fewer files keep it near a minute.
    check_stress(milvus_server_uri, tmp_path / "docs", "stress_writers", files=6)


@pytest.mark.server
def test_a_version_another_writer_already_stored_stays_searchable_while_written_again(
    milvus_server_uri: str,
) -> None:
    """Two writers that embedded the same edit: the second finds it stored under the lease and
    leaves it alone. Writing it again would replace its committed rows in place, which on Milvus
    2.3.5 is a delete then an insert, and a reader searching in between finds nothing."""
    rng = np.random.default_rng(17)
    with (
        MilvusStore(milvus_server_uri, "stored_twice", model="m", dim=DIM) as first,
        MilvusStore(milvus_server_uri, "stored_twice", model="m", dim=DIM) as second,
        MilvusStore(milvus_server_uri, "stored_twice", model="m", dim=DIM) as reader,
    ):
        v = _text_version("/shared.txt", 0)
        first.write_document(v, _rows(v, rng), {"doc": {}})
        misses, searches, stop = [], [0], threading.Event()
        query = Query(rng.normal(size=DIM), "", 1, ("doc",), filter='source == "/shared.txt"')

        def search_all_the_time() -> None:
            while not stop.is_set():
                ranked, _ = reader.rank(query)
                searches[0] += 1
                if not ranked:
                    misses.append(searches[0])

        written: list[str] = []  # what the second writer wrote or deleted, beyond state rows

        def counted(step: str):
            real = getattr(second.writer, step)

            def call(items):
                if items:
                    written.append(f"{step}: {len(items)} rows")
                return real(items)

            return call

        for step in ("_upsert_batch", "delete_ids"):
            setattr(second.writer, step, counted(step))
        thread = threading.Thread(target=search_all_the_time, daemon=True)
        thread.start()
        try:
            for edition in range(1, 5):
                planned = second.states([v.doc_id])[v.doc_id]  # both plan from one state
                v = _text_version("/shared.txt", edition)
                rows = _rows(v, rng)
                stored = first.write_document(v, rows, {"doc": {}})
                again = second.write_document(v, rows, {"doc": {}}, planned)
                assert again.content_hash == stored.content_hash == v.content_hash
        finally:
            stop.set()
            thread.join(timeout=60)
        assert written == []
        assert searches[0] > 4 and misses == []
        assert audit(reader) == []


def test_a_search_that_spans_two_writes_still_finds_the_document(tmp_path):
    """A slow search reads a document's state after its first round, and a writer commits two
    versions meanwhile: the rows of the newest version, found in the next round, are judged by
    the state read again, not by the copy read before that search (which named a version whose
    rows are gone by then)."""
    rng = np.random.default_rng(5)
    versions = [_text_version("/slow.txt", edition) for edition in range(3)]
    with MilvusStore(str(tmp_path / "s.db"), "slow", model="m", dim=DIM) as store:
        store.write_document(versions[0], _rows(versions[0], rng), {"doc": {}})
        read_states = store.ranker.states
        reads: list[str] = []

        def states_while_writing(doc_ids):
            # 1st read: version 1 is committed just before it; after the 2nd, version 2.
            if len(reads) == 0:
                store.write_document(versions[1], _rows(versions[1], rng), {"doc": {}})
            found = read_states(doc_ids)
            reads.append(next(iter(found.values())).content_hash)
            if len(reads) == 2:
                store.write_document(versions[2], _rows(versions[2], rng), {"doc": {}})
            return found

        store.ranker.states = states_while_writing
        query = Query(rng.normal(size=DIM), "", 1, ("doc",), filter='source == "/slow.txt"')
        ranked, states = store.rank(query)
        assert reads[:2] == [versions[1].content_hash] * 2  # the race happened as staged
        assert [r.content_hash for r in ranked] == [versions[2].content_hash], reads
        assert states[ranked[0].doc_id].content_hash == versions[2].content_hash


def _text_version(source: str, edition: int) -> DocumentVersion:
    text = f"Edition {edition} of {source}. " * 30
    digest = hashlib.sha256(text.encode()).hexdigest()
    return DocumentVersion(source, document_id(source), digest, text, source)


def _rows(v: DocumentVersion, rng: np.random.Generator, count: int = 4) -> list[Row]:
    step = len(v.text) // count
    return [
        Row(v.doc_id, "doc", i, count, i * step, (i + 1) * step, v.text[i * step : (i + 1) * step],
            v.source, v.title, {}, v.content_hash, rng.normal(size=DIM).astype(np.float32))
        for i in range(count)
    ]  # fmt: skip


def test_two_first_ingests_into_a_new_collection_both_succeed(tmp_path: Path) -> None:
    with start_server(tmp_path / "s.db") as served:
        for attempt in range(10):
            name = f"new_{attempt}"
            barrier = threading.Barrier(2)
            outcomes: list[object] = []

            def open_new(
                name: str = name, barrier: threading.Barrier = barrier, outcomes: list = outcomes
            ) -> None:
                barrier.wait()
                try:
                    with MilvusStore(served.uri, name, model="m", dim=8) as store:
                        outcomes.append(store.manifest.identity.dim)
                except Exception as err:  # reported below
                    outcomes.append(err)

            threads = [threading.Thread(target=open_new) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert outcomes == [8, 8], f"attempt {attempt}: {outcomes}"


def test_a_second_writer_waits_for_the_lease_and_takes_over_an_expired_one(
    tmp_path: Path,
) -> None:
    with (
        start_server(tmp_path / "s.db") as served,
        MilvusStore(served.uri, "c", model="m", dim=8) as a,
        MilvusStore(served.uri, "c", model="m", dim=8) as b,
    ):
        first = WriteLease(a.conn, "c", 8, seconds=2.0, wait_s=0.5)
        second = WriteLease(b.conn, "c", 8, seconds=2.0, wait_s=0.5)
        assert first.hold() is False  # taken anew
        assert first.hold() is True  # renewed: still ours
        with pytest.raises(StoreError, match="being written by"):
            second.hold()
        first.release()
        assert second.hold() is False
        # A holder that goes silent (killed) keeps it only until it expires.
        waiting = WriteLease(a.conn, "c", 8, seconds=2.0, wait_s=10)
        assert waiting.hold() is False
        with pytest.raises(StoreError, match="being written by"):
            second.hold()  # its claim expired and another took it over
        waiting.release()
        assert second.hold() is False  # taken anew: a write in progress starts over
        second.release()
        # A holder on this host whose process is gone (kill -9) is not waited out.
        gone = WriteLease(a.conn, "c", 8, seconds=600.0)
        gone.owner = f"{socket.gethostname()}:{_reaped_pid()}:x"
        gone._claim()
        started = time.monotonic()
        assert second.hold() is False and time.monotonic() - started < 5


def _reaped_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_repair_deletes_rows_no_state_accounts_for(tmp_path: Path) -> None:
    encoder = load_encoder(MINILM)
    folder = tmp_path / "docs"
    folder.mkdir()
    for n in range(3):
        (folder / f"d{n}.txt").write_text(f"Document {n} about the granite orchard.")
    uri = str(tmp_path / "r.db")
    with MilvusStore(uri, "c", identity=identity_of(encoder)) as store:
        ingest([folder], store, encoder, options=IngestOptions(mode="whole"))
        # What a writer of an older jrag could leave: rows of a version no state records, and
        # rows of a document with no state at all.
        stray = [
            Row(doc, "doc", 0, 1, 0, 4, "lost", "x.txt", "", {}, "f" * 64, [0.1] * store.dim)
            for doc in (document_id(str(folder / "d0.txt")), "1" * 40)
        ]
        store.writer.upsert([vector_entity(_version(r), r, store.dim) for r in stray])
        store.flush()
        assert len(audit(store)) == 2
    runner = CliRunner()
    found = runner.invoke(app, ["repair", "--uri", uri, "-c", "c", "--dry-run"])
    assert found.exit_code == 0, found.output
    assert "found 2 orphan rows" in found.output
    done = runner.invoke(app, ["repair", "--uri", uri, "-c", "c"])
    assert "deleted 2 orphan rows" in done.output
    with MilvusStore(uri, "c", identity=identity_of(encoder)) as store:
        assert audit(store) == []
        assert store.stats()["documents"] == 3


def _version(row: Row) -> DocumentVersion:
    return DocumentVersion(row.source, row.doc_id, row.content_hash, row.text, "")
