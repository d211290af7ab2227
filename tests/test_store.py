"""MilvusStore against real Milvus: Milvus Lite and a Milvus 2.3.5 server (no mocks)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import jrag.store
from jrag.errors import StoreError
from jrag.store import (
    KINDS,
    MAX_TEXT,
    MilvusStore,
    Row,
    StoredDocument,
    _display_uri,
    truncate_utf8,
)

DIM = 16
MODEL = "test-model-a"
REPO_ROOT = Path(__file__).resolve().parents[1]


def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def make_rows(
    source: str,
    content_hash: str,
    rng: np.random.Generator,
    *,
    title: str = "A title",
    metadata: dict | None = None,
    n_chunks: int = 3,
    n_late: int = 2,
) -> list[Row]:
    """One doc row, ``n_late`` late-chunk rows and ``n_chunks`` naive chunk rows."""
    doc_id = hashlib.sha1(source.encode()).hexdigest()
    meta = metadata if metadata is not None else {"doc_type": "txt", "size": 123}
    rows = []
    for kind, count in (("doc", 1), ("late", n_late), ("chunk", n_chunks)):
        for i in range(count):
            rows.append(
                Row(
                    doc_id=doc_id,
                    kind=kind,
                    chunk_index=i,
                    chunk_count=count,
                    start=i * 10,
                    end=i * 10 + 10,
                    text=f"{kind} {i} of {source}",
                    source=source,
                    title=title,
                    metadata=meta,
                    content_hash=content_hash,
                    vector=unit(rng),
                )
            )
    return rows


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


@pytest.fixture
def collection() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


# On the server, creating and loading a collection costs ~3 s, so store tests share one
# collection per server and empty it afterwards; Lite gets a fresh path per test anyway.
_SHARED_COLLECTIONS: dict[str, str] = {}


@pytest.fixture
def store(store_uri: str, collection: str) -> Iterator[MilvusStore]:
    if store_uri.startswith("http"):
        collection = _SHARED_COLLECTIONS.setdefault(store_uri, f"shared_{uuid.uuid4().hex[:12]}")
    s = MilvusStore(store_uri, collection, model=MODEL, dim=DIM)
    assert s.stats()["total_rows"] == 0
    yield s
    if s.is_lite:
        s.drop()
    else:
        s.delete_sources(s.documents())
    s.close()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def total_rows(store: MilvusStore) -> int:
    return store.stats()["total_rows"]


# --------------------------------------------------------------------------- both backends


def test_write_and_search_finds_own_vector(store: MilvusStore, rng: np.random.Generator) -> None:
    docs = {}
    for n in range(5):
        source = f'/docs/dir {n}/naïve "quoted" {n}.txt'
        rows = make_rows(source, sha(source), rng)
        store.write_document(source, sha(source), rows)
        docs[source] = rows
    store.flush()
    for source, rows in docs.items():
        doc_row = rows[0]
        hits = store.search(doc_row.vector, k=3)
        assert hits[0].source == source
        assert hits[0].id == doc_row.id
        assert hits[0].kind == "doc"
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert hits[0].score > hits[1].score
        assert hits[0].metadata == {"doc_type": "txt", "size": 123}
        assert hits[0].text == doc_row.text
        assert (hits[0].start, hits[0].end) == (0, 10)
        # kind selects which vectors are searched
        chunk = rows[-1]
        chunk_hits = store.search(chunk.vector, k=2, kind="chunk")
        assert chunk_hits[0].id == chunk.id
        assert all(h.kind == "chunk" for h in chunk_hits)
    assert len(store.search(docs[source][0].vector, k=50)) == 5  # only the 5 doc rows


def test_filters_on_json_metadata_and_title(store: MilvusStore, rng: np.random.Generator) -> None:
    specs = [
        ("/a.pdf", "Introduction to RAG", {"doc_type": "pdf", "page_count": 3}),
        ("/b.md", "Intro notes", {"doc_type": "md"}),
        ("/c.pdf", "Appendix", {"doc_type": "pdf", "page_count": 9}),
    ]
    for source, title, meta in specs:
        store.write_document(
            source, sha(source), make_rows(source, sha(source), rng, title=title, metadata=meta)
        )
    query = unit(rng)
    pdfs = store.search(query, k=10, filter='metadata["doc_type"] == "pdf"')
    assert sorted(h.source for h in pdfs) == ["/a.pdf", "/c.pdf"]
    intros = store.search(query, k=10, filter='title like "Intro%"')
    assert sorted(h.source for h in intros) == ["/a.pdf", "/b.md"]
    both = store.search(query, k=10, kind="late", filter='metadata["page_count"] > 5')
    assert {h.source for h in both} == {"/c.pdf"} and {h.kind for h in both} == {"late"}


def test_bad_filter_expression_raises(store: MilvusStore, rng: np.random.Generator) -> None:
    store.write_document("/a", sha("a"), make_rows("/a", sha("a"), rng))
    with pytest.raises(StoreError, match="title ==== 3"):
        store.search(unit(rng), filter="title ==== 3")
    with pytest.raises(StoreError, match="unknown row kind"):
        store.search(unit(rng), kind="paragraph")


def test_rewrite_same_version_makes_no_duplicates(
    store: MilvusStore, rng: np.random.Generator
) -> None:
    rows = make_rows("/a.txt", sha("v1"), rng)
    store.write_document("/a.txt", sha("v1"), rows)
    store.write_document("/a.txt", sha("v1"), rows)
    assert total_rows(store) == len(rows) == 6
    docs = store.documents()
    assert docs == {
        "/a.txt": [
            StoredDocument(
                source="/a.txt",
                doc_id=rows[0].doc_id,
                content_hash=sha("v1"),
                complete=True,
                kinds={"doc": 1, "late": 2, "chunk": 3},
            )
        ]
    }


def test_new_content_hash_replaces_old_rows(store: MilvusStore, rng: np.random.Generator) -> None:
    store.write_document("/a.txt", sha("v1"), make_rows("/a.txt", sha("v1"), rng, n_chunks=5))
    store.write_document("/b.txt", sha("b"), make_rows("/b.txt", sha("b"), rng))
    new = make_rows("/a.txt", sha("v2"), rng, n_chunks=2)
    store.write_document("/a.txt", sha("v2"), new)
    docs = store.documents()
    assert [d.content_hash for d in docs["/a.txt"]] == [sha("v2")]
    assert docs["/a.txt"][0].kinds == {"doc": 1, "late": 2, "chunk": 2}
    assert docs["/b.txt"][0].complete
    chunks = store.get_rows([new[0].doc_id], "chunk")
    assert [h.chunk_index for h in chunks] == [0, 1]
    assert {h.content_hash for h in chunks} == {sha("v2")}
    assert all(h.score == 0.0 for h in chunks)


def test_half_written_document_is_incomplete_then_repaired(
    store: MilvusStore, rng: np.random.Generator
) -> None:
    old = make_rows("/a.txt", sha("v1"), rng)
    store.write_document("/a.txt", sha("v1"), old)
    # Simulate a run killed mid-insert: only the first batch of the new version landed.
    # write_document puts one row of every kind into its first batch, so every kind shows up.
    new = make_rows("/a.txt", sha("v2"), rng, n_chunks=4)
    landed = [new[0], new[1], new[3], new[4]]  # doc 0, late 0, chunk 0, chunk 1
    store.client.insert(store.collection, [store._entity(r) for r in landed])
    docs = store.documents()["/a.txt"]
    assert [(d.content_hash, d.complete) for d in docs] == [(sha("v1"), True), (sha("v2"), False)]
    assert docs[1].kinds == {"doc": 1, "late": 1, "chunk": 2}
    # The next run rewrites the new version: one complete version, no duplicates.
    store.write_document("/a.txt", sha("v2"), new)
    docs = store.documents()["/a.txt"]
    assert [(d.content_hash, d.complete) for d in docs] == [(sha("v2"), True)]
    assert total_rows(store) == len(new)


def test_delete_sources(store: MilvusStore, rng: np.random.Generator) -> None:
    for s in ("/a", "/b", "/c"):
        store.write_document(s, sha(s), make_rows(s, sha(s), rng))
    assert store.delete_sources(["/a", "/c", "/missing"]) == 12
    assert set(store.documents()) == {"/b"}
    assert store.delete_sources([]) == 0
    assert total_rows(store) == 6


def test_get_rows_ordered(store: MilvusStore, rng: np.random.Generator) -> None:
    a = make_rows("/a", sha("a"), rng, n_chunks=12)
    b = make_rows("/b", sha("b"), rng, n_chunks=3)
    store.write_document("/b", sha("b"), b)
    store.write_document("/a", sha("a"), a)
    hits = store.get_rows([b[0].doc_id, a[0].doc_id], "chunk")
    got = [(h.doc_id, h.chunk_index) for h in hits]
    assert got == sorted(got) and len(got) == 15
    assert store.get_rows([], "chunk") == []


def test_listing_pages_past_one_query(
    store: MilvusStore, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jrag.store, "QUERY_PAGE", 6)  # force the query-iterator path
    rows = make_rows("/big", sha("big"), rng, n_chunks=10)
    store.write_document("/big", sha("big"), rows)
    store.write_document("/big", sha("big"), rows)
    docs = store.documents()
    assert docs["/big"][0].kinds == {"doc": 1, "late": 2, "chunk": 10}
    assert docs["/big"][0].complete
    assert len(store.get_rows([rows[0].doc_id], "chunk")) == 10


def test_long_text_is_truncated_by_utf8_bytes(store: MilvusStore, rng: np.random.Generator) -> None:
    rows = make_rows("/long", sha("long"), rng, n_chunks=1, n_late=1)
    rows[0].text = "é" * 40000  # 80,000 UTF-8 bytes
    rows[0].title = "T" * 5000
    store.write_document("/long", sha("long"), rows)
    hit = store.get_rows([rows[0].doc_id], "doc")[0]
    assert hit.text == "é" * (MAX_TEXT // 2)
    assert len(hit.title) < 5000


def test_stats(store: MilvusStore, rng: np.random.Generator, store_uri: str) -> None:
    store.write_document("/a", sha("a"), make_rows("/a", sha("a"), rng))
    store.write_document("/b", sha("b"), make_rows("/b", sha("b"), rng, n_chunks=1))
    st = store.stats()
    assert st["documents"] == 2
    assert st["rows"] == {"doc": 2, "late": 4, "chunk": 4}
    assert st["total_rows"] == 10
    assert (st["model"], st["dim"], st["collection"]) == (MODEL, DIM, store.collection)
    assert st["uri"] == store.uri_for_display
    assert set(st["rows"]) == set(KINDS)


def test_reopen_persists_and_checks_model(
    store_uri: str, collection: str, rng: np.random.Generator
) -> None:
    rows = make_rows("/a", sha("a"), rng)
    with MilvusStore(store_uri, collection, model=MODEL, dim=DIM) as s:
        s.write_document("/a", sha("a"), rows)
        before = s.documents()
    try:
        with MilvusStore(store_uri, collection, model=MODEL, dim=DIM, create=False) as s:
            assert s.documents() == before
            assert s.search(rows[0].vector, k=1)[0].id == rows[0].id
        with pytest.raises(StoreError) as err:
            MilvusStore(store_uri, collection, model="other-model-b", dim=32)
        msg = str(err.value)
        assert f"collection '{collection}'" in msg
        assert f"built with model {MODEL} (dim {DIM})" in msg
        assert "this run uses model other-model-b (dim 32)" in msg
        with pytest.raises(StoreError, match=f"model {MODEL} \\(dim {DIM}\\).*model {MODEL}"):
            MilvusStore(store_uri, collection, model=MODEL, dim=DIM * 2)
    finally:
        with MilvusStore(store_uri, collection, model=MODEL, dim=DIM) as s:
            s.drop()


def test_missing_collection_with_create_false(store_uri: str, collection: str) -> None:
    with pytest.raises(StoreError) as err:
        MilvusStore(store_uri, collection, model=MODEL, dim=DIM, create=False)
    assert collection in str(err.value)
    assert _display_uri(store_uri).split("://")[-1] in str(err.value)


def test_drop(store_uri: str, collection: str, rng: np.random.Generator) -> None:
    with MilvusStore(store_uri, collection, model=MODEL, dim=DIM) as s:
        s.write_document("/a", sha("a"), make_rows("/a", sha("a"), rng))
        s.drop()
        assert not s.client.has_collection(collection)
    with pytest.raises(StoreError, match="does not exist"):
        MilvusStore(store_uri, collection, model=MODEL, dim=DIM, create=False)


# --------------------------------------------------------------------------- one backend


def test_unreachable_server_fails_fast_without_token() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = "root:s3cret-T0ken"
    uri = f"http://127.0.0.1:{port}"
    assert jrag.store.CONNECT_TIMEOUT_S <= 10  # the default; a shorter one keeps this test quick
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        MilvusStore(uri, "jrag", token=token, model=MODEL, dim=DIM, connect_timeout=2)
    assert time.monotonic() - t0 < 8
    assert uri in str(err.value)
    assert "s3cret" not in str(err.value) and "s3cret" not in repr(err.value)


def test_display_uri_drops_credentials() -> None:
    assert _display_uri("https://user:pw@host.example:19530/x?token=abc") == (
        "https://host.example:19530/x"
    )
    assert _display_uri("./local/jrag.db") == "./local/jrag.db"


def test_truncate_utf8_never_splits_a_character() -> None:
    assert truncate_utf8("aé€𝄞", 100) == "aé€𝄞"
    assert truncate_utf8("aé€𝄞", 3) == "aé"
    assert truncate_utf8("aé€𝄞", 5) == "aé"
    assert truncate_utf8("aé€𝄞", 6) == "aé€"


def test_lite_lock_between_processes(milvus_lite_uri: str, rng: np.random.Generator) -> None:
    """close() releases the Lite lock; a path held by another process gives a clear error."""
    with MilvusStore(milvus_lite_uri, "jrag", model=MODEL, dim=DIM) as s:
        s.write_document("/a", sha("a"), make_rows("/a", sha("a"), rng))
    holder = textwrap.dedent(
        f"""
        import sys
        from jrag.store import MilvusStore
        s = MilvusStore({milvus_lite_uri!r}, "jrag", model={MODEL!r}, dim={DIM}, create=False)
        print(sorted(s.documents()), flush=True)
        sys.stdin.read()
        s.close()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # the other process opened it: lock released
        assert line == "['/a']", proc.stderr.read() if proc.stderr else line
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="is in use by another process") as err:
            MilvusStore(milvus_lite_uri, "jrag", model=MODEL, dim=DIM)
        assert time.monotonic() - t0 < 5
        assert str(Path(milvus_lite_uri).resolve()) in str(err.value)
    finally:
        proc.communicate(input="", timeout=30)
    assert proc.returncode == 0
    with MilvusStore(milvus_lite_uri, "jrag", model=MODEL, dim=DIM, create=False) as s:
        assert set(s.documents()) == {"/a"}


def test_lite_path_must_end_with_db(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"must end with \.db"):
        MilvusStore(str(tmp_path / "store"), model=MODEL, dim=DIM)
