"""The LlamaIndex vector store on Milvus Lite: an index built over it with a real embed model,
a query engine (the framework's mock LLM) answering from the right document, with filters,
hybrid and MMR modes, and nodes kept, read and deleted by id and by document."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.schema import NodeRelationship
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)
from llama_index.embeddings.jrag import JragEmbedding
from llama_index.vector_stores.jrag import JragVectorStore, to_where

from jrag.errors import InputError
from tests.adapters import MODEL

DOCS = [
    ("The brass foghorn at Gull Point was recast in 1911.", {"place": "gull", "year": 1911}),
    ("Sourdough loaves were proofed overnight at the bakery.", {"place": "town", "year": 1950}),
    ("The telescope dome rotated while comets were tracked.", {"place": "hill", "year": 1970}),
    ("Tunnel seven was sealed after a rockfall in 1987.", {"place": "alps", "year": 1987}),
]


@pytest.fixture(scope="module")
def embed_model() -> JragEmbedding:
    return JragEmbedding(model=MODEL)


@pytest.fixture
def store(milvus_lite_uri: str) -> Iterator[JragVectorStore]:
    vector_store = JragVectorStore(uri=milvus_lite_uri, collection="li")
    yield vector_store
    vector_store.clear()


@pytest.fixture
def index(store: JragVectorStore, embed_model: JragEmbedding) -> VectorStoreIndex:
    documents = [Document(text=t, metadata=m, id_=f"d{i}") for i, (t, m) in enumerate(DOCS)]
    return VectorStoreIndex.from_documents(
        documents,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model,
    )


def eq(key: str, value, operator: FilterOperator = FilterOperator.EQ) -> MetadataFilter:
    return MetadataFilter(key=key, value=value, operator=operator)


def test_query_engine_answers_from_the_right_document_with_and_without_filters(index):
    engine = index.as_query_engine(llm=MockLLM(max_tokens=8), similarity_top_k=1)
    response = engine.query("Which railway tunnel was closed by a rockfall?")
    assert str(response)  # MockLLM answers with placeholder text
    [source] = response.source_nodes
    assert source.node.get_content() == DOCS[3][0] and source.node.metadata == DOCS[3][1]
    assert source.node.ref_doc_id == "d3"
    older = MetadataFilters(filters=[eq("year", 1960, FilterOperator.LT)])
    engine = index.as_query_engine(llm=MockLLM(max_tokens=8), similarity_top_k=1, filters=older)
    [source] = engine.query("Which railway tunnel was closed by a rockfall?").source_nodes
    assert source.node.metadata["year"] < 1960


def test_hybrid_and_mmr_modes_and_nested_or_filters(index):
    either = MetadataFilters(
        filters=[
            eq("place", "hill"),
            MetadataFilters(filters=[eq("year", [1911, 1950], FilterOperator.IN)]),
        ],
        condition=FilterCondition.OR,
    )
    retriever = index.as_retriever(
        similarity_top_k=4, vector_store_query_mode="hybrid", filters=either
    )
    hits = retriever.retrieve("comets over the telescope dome")
    assert hits[0].node.metadata["place"] == "hill"
    assert {h.node.metadata["place"] for h in hits} == {"hill", "gull", "town"}
    diverse = index.as_retriever(similarity_top_k=4, vector_store_query_mode="mmr")
    assert len({h.node.node_id for h in diverse.retrieve("history")}) == 4


def test_nodes_are_read_replaced_and_deleted_by_id_and_by_document(index, store):
    [node] = store.get_nodes(filters=MetadataFilters(filters=[eq("place", "gull")]))
    assert node.get_content() == DOCS[0][0]
    assert node.relationships[NodeRelationship.SOURCE].node_id == "d0"
    assert store.get_nodes([node.node_id])[0].metadata == DOCS[0][1]
    node.metadata["year"] = 1912
    store.add([node.model_copy(update={"embedding": [0.1] * 384})])
    assert store.get_nodes([node.node_id])[0].metadata["year"] == 1912
    store.delete("d0")
    assert store.get_nodes([node.node_id]) == []
    store.delete_nodes(filters=MetadataFilters(filters=[eq("year", 1970, FilterOperator.GTE)]))
    left = store.get_nodes(filters=MetadataFilters(filters=[eq("year", 0, FilterOperator.GT)]))
    assert [n.metadata["place"] for n in left] == ["town"]


def test_unsupported_filters_and_modes_fail_by_name(store):
    with pytest.raises(InputError, match="'text_match' on 'place'"):
        to_where(MetadataFilters(filters=[eq("place", "x", FilterOperator.TEXT_MATCH)]))
    with pytest.raises(InputError, match="not a plain name"):
        store.get_nodes(filters=MetadataFilters(filters=[eq('a"] or 1==1 or ["', 1)]))
    with pytest.raises(InputError, match="'svm' is not supported"):
        store.query(VectorStoreQuery(query_embedding=[0.0] * 384, mode="svm"))
    empty = store.query(VectorStoreQuery(query_embedding=[0.1] * 384, similarity_top_k=2))
    assert empty.nodes == [] and empty.ids == []


def test_query_by_node_and_doc_ids_is_narrowed_and_ids_cannot_escape(index, store, embed_model):
    vector = embed_model.get_query_embedding("foghorn")
    [gull] = store.get_nodes(filters=MetadataFilters(filters=[eq("place", "gull")]))
    only = store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=4,
                                        node_ids=[gull.node_id]))  # fmt: skip
    assert only.ids == [gull.node_id]
    hostile = ['x" or source != "', "x' or true or '"]
    escaped = store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=4,
                                           node_ids=hostile))  # fmt: skip
    assert escaped.ids == []
    by_doc = store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=4,
                                          doc_ids=["d1", "d2"]))  # fmt: skip
    assert sorted(n.ref_doc_id for n in by_doc.nodes) == ["d1", "d2"]


@pytest.mark.asyncio
async def test_async_index_and_query_engine_inside_a_running_loop(store, embed_model):
    documents = [Document(text=t, metadata=m, id_=f"d{i}") for i, (t, m) in enumerate(DOCS)]
    index = VectorStoreIndex(
        [], storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model, use_async=True,
    )  # fmt: skip
    for document in documents:
        await index.ainsert(document)
    engine = index.as_query_engine(llm=MockLLM(max_tokens=8), similarity_top_k=1)
    response = await engine.aquery("When was the foghorn recast?")
    assert response.source_nodes[0].node.ref_doc_id == "d0"
    await store.adelete("d0")
    assert await store.aget_nodes(filters=MetadataFilters(filters=[eq("place", "gull")])) == []
