"""Several processes, one Milvus Lite ``.db``: ``jrag serve``, locking, and readers that never
see half a version while a writer re-ingests (real Milvus Lite, real MiniLM forward passes)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pymilvus import MilvusClient

from jrag.errors import StoreError
from jrag.serve import serve, start_server
from jrag.store import Identity, MilvusStore
from jrag.store.filters import one_of
from jrag.store.rows import STATE_FIELDS, STATE_KIND, TEXT_KIND, VECTOR_KINDS, quote
from jrag.store.rows import read_state as state_of

REPO_ROOT = Path(__file__).resolve().parents[1]
DIM = 8
NOBODY = 65534


def identity() -> Identity:
    return Identity(model="test-model", dim=DIM)


def python(code: str) -> list[str]:
    """A command running ``code`` in a fresh interpreter that imports this worktree's jrag."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def child_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def audit(store: MilvusStore, sources: list[str] | None = None) -> list[str]:
    """Every way the stored documents break "each document once, complete": [] when sound.

    One state row per document (and per source in ``sources``); each document's rows are those
    of its committed version only, one per chunk index, as many as the state records.
    """
    problems: list[str] = []
    # Every state row, of every tenant (not ``all_states``: on Milvus 2.3.5 a filter on the
    # partition key ``tenant == ""`` matches nothing).
    state_rows = list(store.scan(f"kind == {quote(STATE_KIND)}", STATE_FIELDS))
    states = {r["doc_id"]: state_of(r) for r in state_rows}
    if sources is not None and sorted(s.source for s in states.values()) != sorted(sources):
        problems.append(f"{len(states)} state rows for {len(sources)} files")
    fields = ["id", "doc_id", "kind", "content_hash", "chunk_index"]
    rows = list(store.scan(one_of("kind", [*VECTOR_KINDS, TEXT_KIND]), fields))
    duplicated = [i for i, n in Counter(r["id"] for r in rows).items() if n > 1]
    if duplicated:
        problems.append(f"{len(duplicated)} ids stored twice, e.g. {duplicated[0]}")
    per_doc: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        state = states.get(r["doc_id"])
        if state is None:
            problems.append(f"row {r['id']} has no state row")
        elif r["content_hash"] != state.content_hash:
            problems.append(f"row {r['id']} is of an old version of {state.source}")
        else:
            per_doc.setdefault((r["doc_id"], r["kind"]), []).append(r)
    for state in states.values():
        for kind, entry in state.kinds.items():
            found = sorted(r["chunk_index"] for r in per_doc.get((state.doc_id, kind), []))
            if found != list(range(int(entry["rows"]))):
                problems.append(
                    f"{state.source} {kind}: rows {found[:5]}… ({len(found)}), state says "
                    f"{entry['rows']}"
                )
    return problems


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on ``port`` (IPv4-mapped IPv6 as IPv4)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            if packed[:12] == bytes(10) + b"\xff\xff":
                packed = packed[12:]
            found.add(".".join(map(str, packed)) if len(packed) == 4 else packed.hex())
    return found


# -- jrag serve ------------------------------------------------------------------------------------


def test_served_db_is_shared_by_processes_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    with start_server(db) as served:
        assert served.uri.startswith("http://127.0.0.1:")
        with MilvusStore(served.uri, "c", identity=identity()) as store:
            assert store.dim == DIM
        other = subprocess.run(
            python(f"""
                from jrag.store import MilvusStore
                with MilvusStore({served.uri!r}, "c", create=False) as store:
                    print(store.dim)
            """),
            capture_output=True, text=True, env=child_env(), timeout=60,
        )  # fmt: skip
        assert other.stdout.strip() == str(DIM), other.stderr
        assert served.stop() == 0
        assert "released" in served.log_text()
    # The lock is free again: the .db opens in-process.
    with MilvusStore(str(db), "c", create=False) as store:
        assert store.dim == DIM


def test_serve_binds_loopback_only_and_names_a_busy_port(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"binds 127\.0\.0\.1 only, not 0\.0\.0\.0"):
        serve(tmp_path / "a.db", host="0.0.0.0")
    with pytest.raises(StoreError, match=r"binds 127\.0\.0\.1 only"):
        serve(tmp_path / "a.db", host="localhost")
    with start_server(tmp_path / "b.db") as served:
        port = int(served.uri.rsplit(":", 1)[1])
        with pytest.raises(StoreError, match=rf"port {port} on 127\.0\.0\.1 is in use"):
            serve(tmp_path / "c.db", port)
        assert listening_addresses(port) == {"127.0.0.1"}
    assert not (tmp_path / "a.db").exists() and not (tmp_path / "c.db").exists()


def test_serving_a_db_that_another_process_holds_names_its_pid(tmp_path: Path) -> None:
    db = tmp_path / "held.db"
    with start_server(db) as served:
        with pytest.raises(StoreError, match=rf"served by `jrag serve` \(pid {served.pid}\)"):
            serve(db, 0)
        with pytest.raises(StoreError, match=rf"served by `jrag serve` \(pid {served.pid}\)"):
            MilvusStore(str(db), "c", identity=identity())


# -- connection: locking, other clients, typos, permissions --------------------------------------


def test_a_db_locked_by_another_process_names_its_pid_and_jrag_serve(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    holder = subprocess.Popen(
        python(f"""
            import sys
            from pymilvus import MilvusClient
            client = MilvusClient({str(db)!r})
            print("open", flush=True)
            sys.stdin.read()
        """),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        for create in (True, False):
            with pytest.raises(StoreError) as caught:
                MilvusStore(str(db), "c", identity=identity(), create=create)
            message = str(caught.value)
            assert f"in use by another process (pid {holder.pid})" in message
            assert f"jrag serve --db {db}" in message
            assert "Open local milvus failed" not in message
    finally:
        holder.communicate("", timeout=30)
    with MilvusStore(str(db), "c", identity=identity()) as store:  # free once it exits
        assert store.dim == DIM


def test_closing_a_store_keeps_other_clients_on_the_same_db_working(tmp_path: Path) -> None:
    db = str(tmp_path / "both.db")
    rng = np.random.default_rng(0)
    # jrag opens first (so jrag starts the in-process Lite server), then a plain client joins.
    store = MilvusStore(db, "jrag_c", identity=identity())
    client = MilvusClient(db)
    client.create_collection("plain", dimension=DIM)
    store.close()
    # Short timeouts: on a released server pymilvus would retry for minutes.
    client.insert("plain", [{"id": 1, "vector": rng.normal(size=DIM).tolist()}], timeout=10)
    assert client.query("plain", filter="id == 1", output_fields=["id"], timeout=10)[0]["id"] == 1
    # And the other way round: the plain client first, jrag opens and closes twice.
    for _ in range(2):
        with MilvusStore(db, "jrag_c", create=False) as again:
            assert again.dim == DIM
        assert client.has_collection("plain", timeout=10)
    client.close()
    # With every client gone, jrag's close released the folder: another process can open it.
    with MilvusStore(db, "jrag_c", create=False):
        pass
    other = subprocess.run(
        python(f"from pymilvus import MilvusClient as C; print(C({db!r}).has_collection('plain'))"),
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert other.stdout.strip() == "True", other.stderr


def test_a_langchain_store_on_the_same_db_survives_a_jrag_store_closing(tmp_path: Path) -> None:
    langchain_milvus = pytest.importorskip("langchain_milvus")
    from langchain_core.embeddings import DeterministicFakeEmbedding

    db = str(tmp_path / "lc.db")
    store = MilvusStore(db, "jrag_c", identity=identity())
    vectors = langchain_milvus.Milvus(
        embedding_function=DeterministicFakeEmbedding(size=DIM),
        connection_args={"uri": db},
        collection_name="lc",
        auto_id=True,
    )
    vectors.add_texts(["the lamp at Gull Point", "the bakery's rye loaves"])
    store.close()
    with MilvusStore(db, "jrag_c", create=False):
        pass
    found = vectors.similarity_search("the lamp at Gull Point", k=1)
    assert [d.page_content for d in found] == ["the lamp at Gull Point"]
    vectors.add_texts(["a third text after jrag closed"])
    assert len(vectors.similarity_search("third", k=3)) == 3


def test_reading_a_mistyped_db_path_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    with MilvusStore(str(tmp_path / "real.db"), "c", identity=identity()):
        pass
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for typo in ("reel.db", "missing/real.db"):
        with pytest.raises(StoreError, match=r"there is no Milvus Lite database at .*check --uri"):
            MilvusStore(str(tmp_path / typo), "c", create=False)
    (tmp_path / "old.db").write_text("an older Milvus Lite's single file")
    with pytest.raises(StoreError, match=r"old\.db is a file, not a Milvus Lite database"):
        MilvusStore(str(tmp_path / "old.db"), "c", create=False)
    (tmp_path / "empty.db").mkdir()
    with pytest.raises(StoreError, match=r"empty\.db is a folder but not a Milvus Lite database"):
        MilvusStore(str(tmp_path / "empty.db"), "c", create=False)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == sorted([*before, Path("old.db"), Path("empty.db")])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to uid nobody")
def test_a_read_only_db_names_the_cause(tmp_path: Path) -> None:
    # Outside tmp_path (0700 root): nobody must be able to reach the folder, not write it.
    base = Path(tempfile.mkdtemp(prefix="jrag-ro-"))
    try:
        base.chmod(0o755)
        db = base / "ro.db"
        with MilvusStore(str(db), "c", identity=identity()):
            pass
        for p in (db, *db.rglob("*")):
            p.chmod(0o755 if p.is_dir() else 0o644)
        result = subprocess.run(
            python(f"""
                import os
                import milvus_lite.server_manager  # import as root: the venv may be private
                from jrag.errors import StoreError
                from jrag.store import Identity, MilvusStore
                os.setgid({NOBODY}); os.setuid({NOBODY})
                for path, create in (({str(db)!r}, False), ({str(base / "new.db")!r}, True)):
                    try:
                        MilvusStore(path, "c", identity=Identity("m", {DIM}), create=create)
                    except StoreError as e:
                        print(e)
            """),
            capture_output=True, text=True, env=child_env(), timeout=60, cwd="/",
        )  # fmt: skip
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 2, result.stdout + result.stderr
        assert f"{db} is not writable" in lines[0] and "needs write access" in lines[0]
        assert "not writable" in lines[1] and str(base) in lines[1]
        assert "Open local milvus failed" not in result.stdout
        assert not (base / "new.db").exists()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


# -- a reader and a writer on one served .db -------------------------------------------------------

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TOPICS = (
    "lighthouse keepers trimming lamp wicks",
    "a bakery cooperative proofing rye",
    "an alpine railway boring tunnels",
    "migratory moths over orchard walls",
    "an observatory tracking comets",
    "a river ferry crossing at dawn",
)
QUERIES = (
    "Who trimmed the lamp at the lighthouse?",
    "When was the rye bread proofed?",
    "Which tunnel did the railway bore?",
    "Where did the moths gather?",
    "What did the telescope track?",
    "How did the ferry cross the river?",
)


def version_text(doc: int, version: str) -> str:
    """Document ``doc``'s text in ``version``: every sentence differs between versions."""
    topic = TOPICS[doc % len(TOPICS)]
    return " ".join(
        f"Record {doc}.{i} of version {version} on {topic}: entry {i * 7 + ord(version)}."
        for i in range(12)
    )


def write_versions(folder: Path, documents: int, version: str) -> list[str]:
    """Write every document's ``version``; returns the files' paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"doc-{doc:03}.txt" for doc in range(documents)]
    for doc, path in enumerate(paths):
        path.write_text(version_text(doc, version), encoding="utf-8")
    return [str(p) for p in paths]


STALE = "stale:"


def check_result(result, versions: dict[str, dict[str, str]]) -> str | None:
    """None if ``result`` is one whole version of its document, else what is wrong."""
    texts = versions.get(result.source)
    if texts is None:
        return f"unknown source {result.source}"
    if len(result.text) != result.end - result.start:
        return f"{STALE} {result.source}: {len(result.text)} of {result.end - result.start} chars"
    for name, text in texts.items():
        if result.text == text[result.start : result.end]:
            return None if (result.start, result.end) == (0, len(text)) else f"part of {name}"
    return f"{result.source}: text matches no version: {result.text[:80]!r}"


def writer_main(uri: str, folder: str, documents: int, rounds: int, ready: str) -> None:
    """Ingest version A, then B, A, … (``rounds`` in all); touch ``ready`` after the first."""
    from jrag.embedding import identity_of, load_encoder
    from jrag.pipeline import IngestOptions, ingest

    encoder = load_encoder(MINILM)
    started = time.monotonic()
    with MilvusStore(uri, "c", identity=identity_of(encoder)) as store:
        for r in range(rounds):
            write_versions(Path(folder), documents, "AB"[r % 2])
            report = ingest([folder], store, encoder, options=IngestOptions(mode="late"))
            assert len(report.updated) + len(report.added) == documents, report
            if r == 0:
                Path(ready).touch()
    print(json.dumps({"seconds": time.monotonic() - started}))


def reader_main(uri: str, folder: str, documents: int, ready: str, done: str) -> None:
    """Search until ``done`` exists (bounded); print JSON with what every result held."""
    from jrag.embedding import load_encoder
    from jrag.retrieval import search

    encoder = load_encoder(MINILM)
    vectors = [encoder.encode([q])[0] for q in QUERIES]
    versions = {
        str(Path(folder) / f"doc-{d:03}.txt"): {v: version_text(d, v) for v in "AB"}
        for d in range(documents)
    }
    deadline = time.monotonic() + 50
    while not Path(ready).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen: Counter[str] = Counter()
    bad: list[str] = []
    queries = 0
    with MilvusStore(uri, "c", create=False) as store:
        while time.monotonic() < deadline and queries < 5000:
            finished = Path(done).exists()  # one last round after the writer is done
            q = queries % len(QUERIES)
            results = search(QUERIES[q], store, encoder, vector=vectors[q], k=documents,
                             content="document")  # fmt: skip
            queries += 1
            if len({r.doc_id for r in results}) != len(results):
                bad.append(f"a document twice in one result list: {[r.source for r in results]}")
            for r in results:
                problem = check_result(r, versions)
                if problem:
                    bad.append(problem)
                else:
                    seen[r.text.split(" of version ", 1)[1][0]] += 1
            if finished:
                break
    stale = [b for b in bad if b.startswith(STALE)]
    bad = [b for b in bad if not b.startswith(STALE)]
    print(json.dumps({"queries": queries, "seen": seen, "bad": bad[:10], "stale": len(stale)}))


def run_role(role: str, *args: object) -> subprocess.Popen[str]:
    """``role_main(*args)`` of this module in a child process (stdout: its JSON)."""
    plain = tuple(str(a) if isinstance(a, Path) else a for a in args)
    call = f"from tests.test_serve import {role}_main; {role}_main{plain!r}"
    return subprocess.Popen(
        [sys.executable, "-c", call], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(), cwd=REPO_ROOT,
    )  # fmt: skip


def test_readers_see_each_document_whole_in_one_version_while_a_writer_reingests(
    tmp_path: Path,
) -> None:
    documents, rounds = 6, 6
    folder, ready, done = tmp_path / "docs", tmp_path / "ready", tmp_path / "done"
    started = time.monotonic()
    with start_server(tmp_path / "shared.db") as served:
        writer = run_role("writer", served.uri, folder, documents, rounds, ready)
        reader = run_role("reader", served.uri, folder, documents, ready, done)
        try:
            _, writer_err = writer.communicate(timeout=50)
            done.touch()
            reader_out, reader_err = reader.communicate(timeout=30)
        finally:
            for child in (writer, reader):
                if child.poll() is None:
                    child.kill()
        assert writer.returncode == 0, writer_err[-3000:]
        assert reader.returncode == 0, reader_err[-3000:]
        read = json.loads(reader_out.strip().splitlines()[-1])
        assert read["bad"] == [], read["bad"]
        # The reads overlapped the writes: both versions were seen, many times.
        assert read["seen"].get("A", 0) > 0 and read["seen"].get("B", 0) > 0, read
        assert read["queries"] >= 10, read

        with MilvusStore(served.uri, "c", create=False) as store:
            sources = [str(folder / f"doc-{d:03}.txt") for d in range(documents)]
            assert audit(store, sources) == []
            last = "AB"[(rounds - 1) % 2]
            states = store.states([s.doc_id for s in store.all_states()])
            assert {s.source: s.content_hash for s in states.values()} == {
                src: hashlib.sha256(version_text(d, last).encode()).hexdigest()
                for d, src in enumerate(sources)
            }
    assert time.monotonic() - started < 60
    # Search ranks again when a winner's text was deleted by a commit after ranking.
    assert read["stale"] == 0, read
