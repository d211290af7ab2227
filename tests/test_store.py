"""MilvusStore against real Milvus: Milvus Lite and a Milvus 2.3.5 server (no mocks).

Rows are written with random unit vectors, so these tests pin down the store's own behaviour:
the versioned write protocol, exact document ranking, the manifest, filters and identities.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from jrag.errors import CollectionNotFound, InputError, StoreError
from jrag.store import (
    RANKERS,
    Identity,
    MilvusStore,
    Query,
    Row,
    display_uri,
    document_id,
    truncate_utf8,
)
from jrag.store.writes import DocumentVersion

DIM = 16
IDENTITY = Identity(model="test-model-a", dim=DIM, fingerprint="f" * 64)


def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def version(source: str, text: str = "", tenant: str = "") -> DocumentVersion:
    text = text or f"The text of {source}. " * 20
    return DocumentVersion(
        source=source,
        doc_id=document_id(source, tenant),
        content_hash=sha(text),
        text=text,
        title=f"title of {source}",
        tenant=tenant,
        metadata={"doc_type": "txt", "length": len(text)},
    )


def rows(v: DocumentVersion, rng: np.random.Generator, kinds: dict[str, int]) -> list[Row]:
    """``kinds[kind]`` rows of each kind, spans cutting the text evenly."""
    out = []
    for kind, count in kinds.items():
        step = max(1, len(v.text) // count)
        for i in range(count):
            start, end = i * step, min(len(v.text), (i + 1) * step)
            out.append(
                Row(v.doc_id, kind, i, count, start, end, v.text[start:end], v.source, v.title,
                    {"doc_type": "txt"}, v.content_hash, unit(rng), v.tenant)
            )  # fmt: skip
    return out


def write(store: MilvusStore, v: DocumentVersion, rs: list[Row]):
    return store.write_document(v, rs, {r.kind: {} for r in rs})


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def store(store_uri: str) -> Iterator[MilvusStore]:
    s = MilvusStore(store_uri, f"t_{uuid.uuid4().hex[:12]}", identity=IDENTITY)
    yield s
    s.drop()
    s.close()


def test_a_written_version_is_committed_once_and_rewriting_it_duplicates_nothing(store, rng):
    v = version("/a.txt")
    rs = rows(v, rng, {"doc": 2, "late": 5})
    write(store, v, rs)
    write(store, v, rs)  # upsert: the same ids again
    state = store.states([v.doc_id])[v.doc_id]
    assert state.content_hash == v.content_hash
    assert state.kinds["doc"]["rows"] == 2 and state.kinds["late"]["rows"] == 5
    assert store.count('kind == "late"') == 5 and store.count('kind == "doc"') == 2
    assert store.document_text(state) == v.text


def test_a_new_version_replaces_the_old_and_another_kind_is_added_beside_it(store, rng):
    old = version("/a.txt", "Old text. " * 30)
    write(store, old, rows(old, rng, {"doc": 1, "late": 4}))
    new = version("/a.txt", "New text. " * 30)
    write(store, new, rows(new, rng, {"doc": 1, "late": 3}))
    assert store.count(f'content_hash == "{old.content_hash}"') == 0
    state = write(store, new, rows(new, rng, {"chunk": 2}))  # same version, another mode
    assert set(state.kinds) == {"doc", "late", "chunk", "text"}
    assert store.count('kind == "late"') == 3 and store.count('kind == "chunk"') == 2
    assert set(store.manifest.vector_kinds) == {"doc", "late", "chunk"}


def test_rows_of_an_uncommitted_version_are_never_ranked(store, rng):
    committed = version("/a.txt", "Committed. " * 30)
    rs = rows(committed, rng, {"doc": 1})
    write(store, committed, rs)
    # A half-written new version: rows landed, the commit (state row) did not.
    pending = version("/a.txt", "Pending. " * 30)
    store.writer._upsert([store.writer._entity(pending, r) for r in rows(pending, rng, {"doc": 1})])
    ranked, states = store.rank(Query(rs[0].vector, "x", 5, ("doc",)))
    assert [r.content_hash for r in ranked] == [committed.content_hash]
    assert states[committed.doc_id].content_hash == committed.content_hash


def interrupted_write(store: MilvusStore, v: DocumentVersion, rs: list[Row]) -> None:
    """Steps 1-2 of the protocol (begin, rows land), then a crash before the commit."""
    store.writer.hold()  # as every writer of a shared collection does before its first step
    committed = store.states([v.doc_id]).get(v.doc_id)
    entities, counts = store.writer.entities(v, rs, committed)
    store.writer.begin(v, counts, committed)
    store.writer._upsert(entities)


def every_row_is_committed(store: MilvusStore) -> bool:
    states = list(store.all_states())
    committed = sum(sum(k["rows"] for k in s.kinds.values()) for s in states)
    return store.count('kind in ["doc", "late", "chunk", "text"]') == committed


def test_rows_of_interrupted_writes_are_deleted_by_the_next_write_without_a_scan(store, rng):
    old = version("/a.txt", "Old. " * 30)
    write(store, old, rows(old, rng, {"doc": 1, "late": 4}))
    cut = version("/a.txt", "Cut short. " * 30)
    interrupted_write(store, cut, rows(cut, rng, {"doc": 2, "late": 6}))
    assert store.states([old.doc_id])[old.doc_id].content_hash == old.content_hash
    assert not every_row_is_committed(store)  # the cut-short version's rows are there
    # A first write cut short leaves a placeholder that hides nothing and counts as no document.
    first = version("/b.txt", "First. " * 30)
    interrupted_write(store, first, rows(first, rng, {"doc": 1}))
    assert [s.source for s in store.all_states()] == ["/a.txt"]
    assert {s.source for s in store.all_states(pending=True)} == {"/a.txt", "/b.txt"}
    assert store.stats()["documents"] == 1

    new = version("/a.txt", "New. " * 30)
    write(store, new, rows(new, rng, {"doc": 1, "late": 3}))
    write(store, first, rows(first, rng, {"doc": 1}))
    assert every_row_is_committed(store)
    assert store.count(f'content_hash in ["{old.content_hash}", "{cut.content_hash}"]') == 0
    # The same version again with fewer rows of a kind: the extra rows go.
    write(store, new, rows(new, rng, {"late": 2}))
    assert store.count('kind == "late"') == 2 and every_row_is_committed(store)
    store.delete_documents([new.doc_id, first.doc_id])
    assert store.count('kind != "manifest"') == 0


def test_k_distinct_documents_come_back_when_one_document_owns_hundreds_of_rows(store, rng):
    big = version("/big.txt", "word " * 5000)
    big_rows = rows(big, rng, {"late": 300})
    write(store, big, big_rows)
    for i in range(6):
        v = version(f"/small{i}.txt")
        write(store, v, rows(v, rng, {"late": 2}))
    query = big_rows[0].vector  # near the big document's rows
    ranked, _ = store.rank(Query(query, "word", 5, ("late",)))
    assert len(ranked) == 5 and len({r.doc_id for r in ranked}) == 5
    assert ranked[0].doc_id == big.doc_id
    if store.full_text:  # hybrid, whatever the fusion: BM25 "word" matches the big one's rows
        for ranker in RANKERS:
            ranked, _ = store.rank(Query(query, "word", 5, ("late",), ("late",), ranker=ranker))
            assert len({r.doc_id for r in ranked}) == 5, ranker
            assert ranked[0].doc_id == big.doc_id, ranker


def test_a_filter_can_only_narrow_a_search(store, rng):
    v = version("/a.txt")
    write(store, v, rows(v, rng, {"doc": 1, "late": 3}))
    probe = unit(rng)
    for escape in ('true) or (kind == "late"', 'kind == "late") or (true', "((("):
        with pytest.raises(InputError, match="bad filter"):
            store.rank(Query(probe, "x", 5, ("doc",), filter=escape))
    # Always true (Milvus 2.3 has no `true` literal inside `and`): still only narrows.
    always = "chunk_index >= 0"
    ranked, _ = store.rank(Query(probe, "x", 5, ("doc",), filter=f'kind == "late" or {always}'))
    assert {r.kind for r in ranked} == {"doc"}
    with pytest.raises(StoreError, match="nosuchfield"):
        store.rank(Query(probe, "x", 5, ("doc",), filter="nosuchfield == 3"))


def test_a_tenant_sees_only_its_own_documents(store, rng):
    a, b = version("/same.txt", "Alpha text. " * 20, "a"), version("/same.txt", "Beta. " * 20, "b")
    write(store, a, rows(a, rng, {"doc": 1}))
    write(store, b, rows(b, rng, {"doc": 1}))
    probe = unit(rng)
    for tenant, expected in (("a", a.doc_id), ("b", b.doc_id)):
        query = Query(probe, "x", 5, ("doc",), tenant=tenant, filter="chunk_index >= 0")
        ranked, _ = store.rank(query)
        assert [r.doc_id for r in ranked] == [expected]
    assert store.rank(Query(probe, "x", 5, ("doc",), tenant="nobody"))[0] == []


def test_text_past_the_varchar_limit_is_kept_whole(store, rng):
    text = "ünïcödé 文字 " * 20000  # ~200k characters, well past 65,535 bytes
    v = version("/long.txt", text)
    rs = rows(v, rng, {"doc": 1})
    state = write(store, v, rs)
    assert len(rs[0].text.encode()) > 65535
    assert store.document_text(state) == text
    assert store.document_text(state, 70000, 150000) == text[70000:150000]


def test_the_manifest_records_identity_and_refuses_another_model(store_uri):
    name = f"t_{uuid.uuid4().hex[:12]}"
    with MilvusStore(store_uri, name, identity=IDENTITY) as s:
        assert s.manifest.identity.fingerprint == IDENTITY.fingerprint
    other = Identity(model=IDENTITY.model, dim=DIM, fingerprint="0" * 64)  # same name
    with pytest.raises(StoreError, match="fingerprint"):
        MilvusStore(store_uri, name, identity=other)
    with pytest.raises(StoreError, match="dim 8"):
        MilvusStore(store_uri, name, identity=Identity(model="m", dim=8))
    with MilvusStore(store_uri, name, create=False) as s:
        assert s.model == IDENTITY.model and s.dim == DIM
        s.drop()


def test_full_text_search_exists_where_the_backend_has_bm25(store, rng):
    assert store.full_text == store.conn.capabilities.bm25
    assert store.full_text == store.is_lite  # Lite has BM25; the 2.3.5 server has not
    if store.full_text:
        v = version(
            "/z.txt", "Nothing here. " * 10 + "The zanzibar quartz mine. " + "Filler. " * 10
        )
        write(store, v, rows(v, rng, {"late": 3}))
        w = version("/y.txt")
        write(store, w, rows(w, rng, {"late": 3}))
        ranked, _ = store.rank(Query(unit(rng), "zanzibar quartz", 1, (), ("late",)))
        assert ranked[0].doc_id == v.doc_id


def test_reading_a_missing_collection_or_database_creates_nothing(store_uri, tmp_path):
    with pytest.raises(CollectionNotFound):
        MilvusStore(store_uri, f"missing_{uuid.uuid4().hex[:8]}", create=False)
    path = tmp_path / "typo.db"
    with pytest.raises(CollectionNotFound, match="no Milvus Lite database"):
        MilvusStore(str(path), "c", create=False)
    assert not path.exists()


def test_a_foreign_collection_is_refused_on_open_and_can_still_be_dropped(milvus_lite_uri):
    from pymilvus import MilvusClient

    from jrag.store import Connection, drop_collection

    with MilvusStore(milvus_lite_uri, "jrag_seed", identity=IDENTITY):
        pass
    client = MilvusClient(milvus_lite_uri)
    client.create_collection("foreign", dimension=DIM)
    client.close()
    with pytest.raises(StoreError, match="not created by jrag"):
        MilvusStore(milvus_lite_uri, "foreign", create=False)
    with Connection(milvus_lite_uri, create=False) as conn:
        drop_collection(conn, "foreign")
        assert not conn.client.has_collection("foreign")


def test_a_collection_of_the_older_schema_opens_read_only_with_advice(milvus_lite_uri, rng):
    from pymilvus import DataType, MilvusClient

    Path(milvus_lite_uri).parent.mkdir(parents=True)
    client = MilvusClient(milvus_lite_uri)
    schema = MilvusClient.create_schema(auto_id=False)
    for name, kind in (("id", DataType.VARCHAR), ("doc_id", DataType.VARCHAR),
                       ("kind", DataType.VARCHAR), ("text", DataType.VARCHAR),
                       ("source", DataType.VARCHAR), ("title", DataType.VARCHAR),
                       ("content_hash", DataType.VARCHAR)):  # fmt: skip
        schema.add_field(name, kind, max_length=512, is_primary=name == "id")
    for name in ("chunk_index", "chunk_count", "start", "end"):
        schema.add_field(name, DataType.INT64)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = MilvusClient.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="COSINE")
    client.create_collection(
        "old", schema=schema, index_params=index,
        properties={"jrag.schema": "1", "jrag.model": "m", "jrag.dim": str(DIM)},
    )  # fmt: skip
    vec = unit(rng)
    row = {"id": "1", "doc_id": "d", "kind": "doc", "text": "hello", "source": "/s", "title": "t",
           "content_hash": "h", "chunk_index": 0, "chunk_count": 1, "start": 0, "end": 5,
           "metadata": {}, "vector": vec.tolist()}  # fmt: skip
    client.insert("old", [row])
    client.close()
    with MilvusStore(milvus_lite_uri, "old", create=False) as s:
        assert s.read_only and "jrag drop -c old" in s.legacy_notice()
        ranked, _ = s.rank(Query(vec, "hello", 3, s.manifest.vector_kinds))
        assert [r.doc_id for r in ranked] == ["d"]  # still searchable, never silently empty
        with pytest.raises(StoreError, match="older jrag"):
            s.write_document(version("/s"), [], {})


def test_unreachable_server_fails_fast_without_token() -> None:
    with pytest.raises(StoreError) as err:
        MilvusStore(
            "http://127.0.0.1:9", "c", token="root:s3cret", identity=IDENTITY, connect_timeout=2
        )
    assert "s3cret" not in str(err.value) and "127.0.0.1:9" in str(err.value)


def test_display_uri_drops_credentials() -> None:
    assert display_uri("http://user:pw@host:19530/x?token=abc") == "http://host:19530/x"
    assert display_uri("./jrag.db") == "./jrag.db"


def test_truncate_utf8_never_splits_a_character() -> None:
    assert truncate_utf8("aé", 2) == "a"
    assert truncate_utf8("abc", 10) == "abc"


def test_lite_path_must_end_with_db(tmp_path) -> None:
    with pytest.raises(StoreError, match=r"must end with \.db"):
        MilvusStore(str(tmp_path / "x.sqlite"), "c", identity=IDENTITY)
