"""The LlamaIndex adapters: our equivalent of a standard suite (LlamaIndex ships none), interop
with its Milvus vector store, and retrieval of the right long document over the samples."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.embeddings.jrag import JragEmbedding
from llama_index.retrievers.jrag import JragRetriever
from llama_index.vector_stores.milvus import MilvusVectorStore

from jrag.embedding import load_encoder
from jrag.errors import InputError, ModelLoadError, StoreError
from tests.adapters import (
    MODEL,
    SampleCollection,
    check_accuracy,
    load_questions,
    measure,
    sample_collection,
)

DOWN_SERVER = "http://127.0.0.1:1"  # nothing listens on port 1
TEXTS = [
    "The brass foghorn at Gull Point was recast in 1911.",
    "Sourdough loaves were proofed overnight at the cooperative bakery.",
    "The telescope dome rotated slowly while comets were tracked.",
    "Tunnel seven on the alpine line was sealed after a rockfall in 1987.",
]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> SampleCollection:
    return sample_collection(tmp_path_factory)


@pytest.fixture(scope="module")
def embed_model() -> JragEmbedding:
    return JragEmbedding(model=MODEL, embed_batch_size=3)


# -- embedding -----------------------------------------------------------------------------------


def test_embedding_is_a_llama_index_embedding_named_after_its_model(embed_model):
    assert isinstance(embed_model, BaseEmbedding)
    assert embed_model.model_name == MODEL and embed_model.class_name() == "JragEmbedding"
    assert embed_model.max_length == 8192 and embed_model.normalize


def test_sync_embeddings_equal_the_encoder_vectors_single_and_batched(embed_model):
    expected = load_encoder(MODEL).encode(TEXTS)
    # embed_batch_size=3 splits these four texts into two batches. In bfloat16 (the default on
    # this CPU) a text packed with others rounds a little differently than alone: measured
    # max |Δ| 5.4e-5, cosine 0.9999999. float32 stays within 1e-6 (tests/test_encoder.py).
    batched = embed_model.get_text_embedding_batch(TEXTS)
    assert np.asarray(batched).shape == (4, 384)
    assert np.allclose(batched, expected, atol=2e-4)
    singles = [embed_model.get_text_embedding(text) for text in TEXTS]
    assert np.allclose(singles, expected, atol=2e-4)
    assert np.allclose(embed_model.get_query_embedding(TEXTS[2]), expected[2], atol=2e-4)


@pytest.mark.asyncio
async def test_async_embeddings_match_sync_inside_a_running_loop(embed_model):
    expected = load_encoder(MODEL).encode(TEXTS)
    query = await embed_model.aget_query_embedding(TEXTS[0])
    single = await embed_model.aget_text_embedding(TEXTS[1])
    batched = await embed_model.aget_text_embedding_batch(TEXTS)
    assert np.allclose(query, expected[0], atol=2e-4)
    assert np.allclose(single, expected[1], atol=2e-4)
    assert np.allclose(batched, expected, atol=2e-4)


def test_max_length_is_clamped_to_the_model_limit(embed_model):
    long_text = " ".join(f"Entry {i} of the long ledger." for i in range(400))
    encoder = load_encoder(MODEL)
    vector = embed_model.get_text_embedding(long_text)
    assert np.allclose(vector, encoder.encode(long_text, max_length=256), atol=1e-5)
    short = JragEmbedding(model=MODEL, max_length=16).get_text_embedding(long_text)
    assert np.allclose(short, encoder.encode(long_text, max_length=16), atol=1e-5)


def test_empty_text_and_a_missing_model_fail_with_jrag_errors(embed_model, tmp_path):
    with pytest.raises(InputError, match="empty"):
        embed_model.get_text_embedding(" ")
    lazy = JragEmbedding(model=str(tmp_path / "no-such-model"))  # nothing loads yet
    with pytest.raises(ModelLoadError, match="no-such-model"):
        lazy.get_query_embedding("hello")


def test_embedding_serves_as_the_embed_model_of_a_milvus_vector_store_index(embed_model, tmp_path):
    vector_store = MilvusVectorStore(
        uri=str(tmp_path / "li.db"),
        collection_name="interop",
        dim=384,
        overwrite=True,
        similarity_metric="COSINE",
        use_async_client=False,
    )
    index = VectorStoreIndex.from_documents(
        [Document(text=text, metadata={"n": i}) for i, text in enumerate(TEXTS)],
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=embed_model,
    )
    hits = index.as_retriever(similarity_top_k=1).retrieve("Which railway tunnel was closed?")
    assert [hit.node.get_content() for hit in hits] == [TEXTS[3]]
    hits = index.as_retriever(similarity_top_k=2).retrieve("When was the foghorn recast?")
    assert hits[0].node.metadata["n"] == 0 and hits[0].score > hits[1].score


# -- retriever -----------------------------------------------------------------------------------


def test_retriever_returns_scored_nodes_with_the_document_metadata(samples):
    retriever = JragRetriever(uri=samples.uri, collection=samples.collection, k=3)
    hits = retriever.retrieve("What code phrase does the shift supervisor say?")
    assert len(hits) == 3 and all(isinstance(hit, NodeWithScore) for hit in hits)
    top = hits[0]
    assert isinstance(top.node, TextNode)
    meta = top.node.metadata
    assert meta["source"] == samples.sources["linden-reach-operations-handbook.docx"]
    assert {"source", "title", "score", "start", "end", "passage_start", "passage_end", "page",
            "doc_id", "kind"} == set(meta)  # fmt: skip
    assert meta["score"] == top.score and meta["kind"] in ("doc", "late")  # auto: fused
    assert (top.node.start_char_idx, top.node.end_char_idx) == (meta["start"], meta["end"])
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    # The LLM sees where the text came from, not the bookkeeping.
    llm_view = top.node.get_content(metadata_mode=MetadataMode.LLM)
    assert meta["source"] in llm_view and "doc_id" not in llm_view
    retriever.close()


def test_retriever_honours_mode_and_filter(samples):
    pdf = samples.sources["stonegate-bakers-annual-report.pdf"]
    retriever = JragRetriever(
        uri=samples.uri, collection=samples.collection, k=5, mode="late",
        filter='metadata["doc_type"] == "pdf"',
    )  # fmt: skip
    hits = retriever.retrieve("How many loaves does the deck oven hold?")
    assert [hit.node.metadata["source"] for hit in hits] == [pdf]
    assert hits[0].node.metadata["kind"] == "late"
    assert isinstance(hits[0].node.metadata["page"], int)
    retriever.close()


def test_bad_settings_fail_at_construction_with_input_errors():
    with pytest.raises(InputError, match="unknown mode 'sparse'"):
        JragRetriever(uri="./x.db", mode="sparse")
    with pytest.raises(InputError, match="k must be"):
        JragRetriever(uri="./x.db", k=0)
    with pytest.raises(InputError, match="unknown ranker"):
        JragRetriever(uri="./x.db", ranker="borda")
    with pytest.raises(InputError, match="weights"):
        JragRetriever(uri="./x.db", weights=(0.0, 0.0))


def test_retriever_connects_on_first_query_only():
    started = time.perf_counter()
    retriever = JragRetriever(uri=DOWN_SERVER, collection="jrag", connect_timeout=1)
    assert time.perf_counter() - started < 0.5
    with pytest.raises(StoreError, match="cannot connect to Milvus"):
        retriever.retrieve("anything")


@pytest.mark.asyncio
async def test_async_retrieval_inside_a_running_loop(samples):
    retriever = JragRetriever(uri=samples.uri, collection=samples.collection, k=2)
    questions = [q["question"] for q in load_questions()[-3:]]
    results = await asyncio.gather(*(retriever.aretrieve(q) for q in questions))
    assert [len(hits) for hits in results] == [2, 2, 2]
    for hits in results:
        assert hits[0].node.metadata["source"].endswith("linden-reach-operations-handbook.docx")
    retriever.close()
    down = JragRetriever(uri=DOWN_SERVER, collection="jrag", connect_timeout=1)
    with pytest.raises(StoreError, match="cannot connect"):
        await down.aretrieve("anything")


def test_query_engine_over_the_retriever_cites_its_source_nodes(samples):
    retriever = JragRetriever(uri=samples.uri, collection=samples.collection, k=2)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=8))
    response = engine.query("How large is the initial stack of a Marrow fiber?")
    assert str(response)  # MockLLM answers with placeholder text
    sources = [node.node.metadata["source"] for node in response.source_nodes]
    assert sources[0] == samples.sources["marrow-language-manual.md"] and len(sources) == 2
    retriever.close()


@pytest.mark.parametrize("mode", ["whole", "late"])
def test_retriever_finds_the_document_for_questions_answered_past_token_512(samples, mode):
    retriever = JragRetriever(uri=samples.uri, collection=samples.collection, k=3, mode=mode)

    def rank(question: str) -> list[tuple[str, str]]:
        return [
            (h.node.metadata["source"], h.node.get_content()) for h in retriever.retrieve(question)
        ]

    accuracy = measure(
        rank,
        samples,
        f"llama-index {mode}",
    )
    retriever.close()
    check_accuracy(accuracy, mode)
