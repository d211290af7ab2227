"""The LangChain vector store: the framework's standard suite (sync and async) with its fake
embeddings, and jrag's own embeddings (late chunks, filters, MMR) with a real model, on Milvus
Lite."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_jrag import JragEmbeddings, JragVectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from jrag.errors import InputError, StoreError
from jrag.store import MilvusStore, document_id
from tests.adapters import MODEL


def async_suite(cls: type) -> type:
    """Run the suite's unmarked async tests under pytest-asyncio (strict mode here)."""
    cls = pytest.mark.asyncio(cls)
    return pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")(cls)


@async_suite
class TestJragVectorStoreStandard(VectorStoreIntegrationTests):
    """Any other Embeddings: whole-document rows with that model's vectors, and BM25."""

    @pytest.fixture
    def vectorstore(self, milvus_lite_uri: str) -> Iterator[JragVectorStore]:
        store = JragVectorStore(
            self.get_embeddings(), uri=milvus_lite_uri, collection=f"v_{uuid.uuid4().hex[:8]}"
        )
        try:
            yield store
        finally:
            store.drop()


class TestJragVectorStoreStandardWithJragEmbeddings(TestJragVectorStoreStandard):
    """jrag's own embeddings (whole documents, late chunks, BM25): the suite's sync tests."""

    @staticmethod
    def get_embeddings() -> JragEmbeddings:
        return JragEmbeddings(model=MODEL)

    @property
    def has_async(self) -> bool:
        return False


@pytest.fixture(scope="module")
def embeddings() -> JragEmbeddings:
    return JragEmbeddings(model=MODEL)


@pytest.fixture
def jrag_store(milvus_lite_uri: str, embeddings: JragEmbeddings) -> Iterator[JragVectorStore]:
    store = JragVectorStore(embeddings, uri=milvus_lite_uri, collection="notes")
    yield store
    store.drop()


BIRDS = [
    ("The barn owl hunts mice at night over open fields.", {"author": "ann", "year": 2019}),
    ("Grey herons stand still in shallow water to catch fish.", {"author": "bo", "year": 2021}),
    ("Robins sing at dawn from garden fences.", {"author": "ann", "year": 2023}),
]


def add_birds(store: JragVectorStore) -> list[str]:
    texts, metadatas = zip(*BIRDS, strict=True)
    return store.add_texts(list(texts), list(metadatas), ids=["owl", "heron", "robin"])


def test_jrag_embeddings_store_late_chunks_and_find_the_right_document(jrag_store, embeddings):
    add_birds(jrag_store)
    with MilvusStore(jrag_store.documents.uri, "notes", create=False) as raw:
        assert {"doc", "late"} <= set(raw.manifest.vector_kinds)
    found = jrag_store.similarity_search_with_score("which bird fishes in water?", k=2)
    assert found[0][0] == Document(id="heron", page_content=BIRDS[1][0], metadata=BIRDS[1][1])
    assert found[0][1] >= found[1][1]
    passage = jrag_store.similarity_search("fish in water", k=1, content="passage")[0]
    assert passage.id == "heron" and passage.page_content in BIRDS[1][0]


def test_structured_and_raw_filters_narrow_the_results(jrag_store):
    add_birds(jrag_store)
    recent = jrag_store.similarity_search("birds", k=3, filter={"year": {"$gte": 2021}})
    assert {d.id for d in recent} == {"heron", "robin"}
    either = {"$or": [{"author": "bo"}, {"year": {"$lt": 2020}}]}
    assert {d.id for d in jrag_store.similarity_search("birds", k=3, filter=either)} == {
        "owl",
        "heron",
    }
    raw = jrag_store.similarity_search("birds", k=3, filter='source == "robin"')
    assert [d.id for d in raw] == ["robin"]
    with pytest.raises(InputError, match="not a plain name"):
        jrag_store.similarity_search("birds", filter={'a"] or true or ["': 1})
    with pytest.raises(InputError, match=r"\$regex"):
        jrag_store.similarity_search("birds", filter={"author": {"$regex": "a.*"}})


def test_bad_metadata_fails_by_name_and_stores_nothing_of_the_batch(jrag_store):
    with pytest.raises(InputError, match="not plain JSON"):
        jrag_store.add_texts(["fine", "bad"], [{"a": 1}, {"when": object()}], ids=["f", "b"])
    with pytest.raises(InputError, match=r"NaN|not plain JSON"):
        jrag_store.add_texts(["nan"], [{"x": float("nan")}])
    assert jrag_store.get_by_ids(["f", "b"]) == []


def test_retriever_takes_search_kwargs_and_mmr_returns_k_distinct_documents(jrag_store):
    add_birds(jrag_store)
    retriever = jrag_store.as_retriever(
        search_kwargs={"k": 1, "filter": {"author": "ann"}, "hybrid": False, "mode": "whole"}
    )
    assert retriever.invoke("a bird that hunts at night")[0].id == "owl"
    diverse = jrag_store.max_marginal_relevance_search("birds", k=3, lambda_mult=0.3)
    assert sorted(d.id for d in diverse) == ["heron", "owl", "robin"]


def test_replace_skip_delete_by_id_and_delete_by_filter(jrag_store):
    add_birds(jrag_store)
    jrag_store.add_texts(["Owls swallow prey whole."], [{"author": "cy"}], ids=["owl"])
    assert jrag_store.get_by_ids(["owl"]) == [
        Document(id="owl", page_content="Owls swallow prey whole.", metadata={"author": "cy"})
    ]
    assert jrag_store.delete(filter={"author": "ann"})
    assert [d.id for d in jrag_store.get_by_ids(["owl", "heron", "robin"])] == ["owl", "heron"]
    with pytest.raises(InputError, match="needs ids or a filter"):
        jrag_store.delete()


def test_tenants_are_apart_under_the_same_id(milvus_lite_uri, embeddings):
    a = JragVectorStore(embeddings, uri=milvus_lite_uri, collection="t", tenant="a")
    a.add_texts(["alpha text"], ids=["x"])
    a.close()
    b = JragVectorStore(embeddings, uri=milvus_lite_uri, collection="t", tenant="b")
    assert b.get_by_ids(["x"]) == [] and b.similarity_search("alpha text") == []
    assert b.similarity_search("alpha text", tenant="a")[0].id == "x"
    b.drop()


@pytest.mark.asyncio
async def test_async_from_texts_and_search_inside_a_running_loop(milvus_lite_uri, embeddings):
    store = await JragVectorStore.afrom_texts(
        [t for t, _ in BIRDS], embeddings, [m for _, m in BIRDS], uri=milvus_lite_uri,
        collection="a",
    )  # fmt: skip
    found = await store.asimilarity_search("herons fishing", k=1)
    assert found[0].metadata == BIRDS[1][1]
    assert await store.adelete([found[0].id])
    assert await store.aget_by_ids([found[0].id]) == []
    store.drop()


def test_other_embeddings_warn_once_and_refuse_passages(milvus_lite_uri, caplog):
    fake = DeterministicFakeEmbedding(size=8)
    with caplog.at_level(logging.WARNING, logger="jrag"):
        store = JragVectorStore.from_documents(
            [Document(page_content="one", metadata={"n": 1})], fake, uri=milvus_lite_uri
        )
        JragVectorStore(fake, uri=milvus_lite_uri)
    assert sum("whole-document row" in r.message for r in caplog.records) <= 1
    assert store.similarity_search_by_vector(fake.embed_query("one"), k=1)[0].metadata == {"n": 1}
    with pytest.raises(InputError, match="needs JragEmbeddings"):
        store.similarity_search("one", content="passage")
    store.drop()


def test_other_embeddings_keep_one_version_per_id_and_filter_on_both_backends(store_uri):
    fake = DeterministicFakeEmbedding(size=16)
    store = JragVectorStore(fake, uri=store_uri, collection=f"b_{uuid.uuid4().hex[:8]}")
    try:
        texts, metadatas = zip(*BIRDS, strict=True)
        store.add_texts(list(texts), list(metadatas), ids=["owl", "heron", "robin"])
        store.add_texts(["Owls swallow prey whole."], [{"author": "cy"}], ids=["owl"])
        states = store.documents.store().states
        before = states([document_id("owl")])
        store.add_texts(["Owls swallow prey whole."], [{"author": "cy"}], ids=["owl"])
        assert states([document_id("owl")]) == before  # the same text and metadata: skipped
        vector = fake.embed_query("Owls swallow prey whole.")
        assert store.similarity_search("Owls swallow prey whole.", k=1)[0].id == "owl"
        assert store.similarity_search_by_vector(vector, k=3)[0].id == "owl"
        assert len(store.similarity_search_by_vector(vector, k=10)) == 3
        ann = store.similarity_search_by_vector(vector, k=3, filter={"author": {"$in": ["ann"]}})
        assert sorted(d.id for d in ann) == ["robin"]
        store.delete(["heron"])
        assert [d.id for d in store.get_by_ids(["owl", "heron", "robin"])] == ["owl", "robin"]
    finally:
        store.drop()


def test_filters_cannot_reach_another_tenant_or_mix_models(milvus_lite_uri):
    fake = DeterministicFakeEmbedding(size=8)
    a = JragVectorStore(fake, uri=milvus_lite_uri, collection="h", tenant="a")
    a.add_texts(["secret of a"], [{"k": "v"}], ids=["s"])
    b = JragVectorStore(fake, uri=milvus_lite_uri, collection="h", tenant="b")
    b.add_texts(["public of b"], [{"k": "v"}], ids=["p"])
    for hostile in ['tenant == "a" or true', "1 == 1"]:
        assert {d.id for d in b.similarity_search("secret of a", k=5, filter=hostile)} <= {"p"}
    with pytest.raises(InputError, match="unmatched"):
        b.similarity_search("secret", filter='true) or (tenant == "a"')
    escape = {"$or": [{"k": "v"}, {"k": {"$ne": 'x" or tenant == "a'}}]}
    assert [d.id for d in b.similarity_search("secret of a", k=5, filter=escape)] == ["p"]
    assert b.delete(filter={"k": "v"}) and a.get_by_ids(["s"])[0].page_content == "secret of a"
    b.close()
    with pytest.raises(StoreError):
        JragVectorStore(DeterministicFakeEmbedding(size=4), uri=milvus_lite_uri,
                        collection="h").add_texts(["x"])  # fmt: skip
    a.drop()
