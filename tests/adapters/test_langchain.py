"""The LangChain adapters: the framework's standard suites, interop with its Milvus vector store,
and retrieval of the right long document over the ingested samples (real model, Milvus Lite)."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_jrag import JragEmbeddings, JragRetriever
from langchain_milvus import Milvus
from langchain_tests.integration_tests import (
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
)
from langchain_tests.unit_tests import EmbeddingsUnitTests
from pydantic import ValidationError

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


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> SampleCollection:
    return sample_collection(tmp_path_factory)


@pytest.fixture(scope="module")
def embeddings() -> JragEmbeddings:
    return JragEmbeddings(model=MODEL)


# -- the framework's standard suites -------------------------------------------------------------


class TestJragEmbeddingsStandardUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[JragEmbeddings]:
        return JragEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": MODEL}


def async_suite(cls: type) -> type:
    """Run a standard suite's unmarked async tests under pytest-asyncio (strict mode here).

    The suites forbid overriding their tests, so the class is marked instead; the marker's
    warning for the suite's sync tests is expected and silenced.
    """
    cls = pytest.mark.asyncio(cls)
    return pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")(cls)


@async_suite
class TestJragEmbeddingsStandardIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[JragEmbeddings]:
        return JragEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": MODEL}


@async_suite
class TestJragRetrieverStandardIntegration(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _collection(self, request: pytest.FixtureRequest, samples: SampleCollection) -> None:
        request.cls.samples = samples  # the standard suite reads params from a property

    @property
    def retriever_constructor(self) -> type[JragRetriever]:
        return JragRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"uri": self.samples.uri, "collection": self.samples.collection, "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "How large is the initial stack of a Marrow fiber?"


# -- embeddings ----------------------------------------------------------------------------------


def test_embeddings_equal_the_encoder_vectors(embeddings):
    texts = ["The lighthouse keeper logged ships.", "A rack railway climbs the pass."]
    expected = load_encoder(MODEL).encode(texts)
    assert np.allclose(embeddings.embed_documents(texts), expected, atol=1e-5)
    assert np.allclose(embeddings.embed_query(texts[1]), expected[1], atol=1e-5)
    assert np.linalg.norm(embeddings.embed_query(texts[0])) == pytest.approx(1.0, abs=1e-5)


def test_unnormalized_embeddings_keep_their_length():
    raw = JragEmbeddings(model=MODEL, normalize=False).embed_query("lighthouse")
    assert np.linalg.norm(raw) > 1.5  # MiniLM's raw mean-pooled vectors are far from unit length


def test_max_length_is_clamped_to_the_model_limit_and_long_text_truncates_with_a_warning(
    embeddings, caplog
):
    long_text = " ".join(f"Entry {i} of the long ledger." for i in range(400))
    encoder = load_encoder(MODEL)
    # MiniLM's sentence-transformers config states max_seq_length 256 (its positions go to 512).
    assert embeddings.max_length == 8192 and encoder.max_length == 256
    with caplog.at_level(logging.WARNING, logger="jrag.encoder"):
        vector = embeddings.embed_query(long_text)
    assert "truncated" in caplog.text
    assert np.allclose(vector, encoder.encode(long_text, max_length=256), atol=1e-5)
    short = JragEmbeddings(model=MODEL, max_length=16).embed_query(long_text)
    assert np.allclose(short, encoder.encode(long_text, max_length=16), atol=1e-5)


def test_empty_text_raises_input_error_naming_its_index(embeddings):
    with pytest.raises(InputError, match=r"texts\[1\] is empty"):
        embeddings.embed_documents(["fine", "  "])


def test_construction_loads_nothing_and_a_bad_model_fails_on_first_use(tmp_path):
    missing = str(tmp_path / "no-such-model")
    lazy = JragEmbeddings(model=missing)  # no error yet: nothing is loaded
    with pytest.raises(ModelLoadError, match="no-such-model"):
        lazy.embed_query("hello")


@pytest.mark.asyncio
async def test_async_embeddings_match_sync_and_leave_the_loop_free(embeddings):
    texts = [f"Sentence number {i} about migrating moths and orchard walls." for i in range(64)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        vectors = await embeddings.aembed_documents(texts)
        query = await embeddings.aembed_query(texts[0])
    finally:
        task.cancel()
    assert ticks > 0  # the loop kept running while the model worked in a thread
    assert np.allclose(vectors, embeddings.embed_documents(texts), atol=1e-5)
    assert np.allclose(query, vectors[0], atol=1e-5)


def test_embeddings_serve_as_the_embedding_of_langchain_milvus(embeddings, tmp_path):
    texts = [
        "The brass foghorn at Gull Point was recast in 1911.",
        "Sourdough loaves were proofed overnight at the cooperative bakery.",
        "The telescope dome rotated slowly while comets were tracked.",
    ]
    store = Milvus.from_texts(
        texts,
        embeddings,
        metadatas=[{"topic": t} for t in ("lighthouse", "bakery", "observatory")],
        connection_args={"uri": str(tmp_path / "lc.db")},
        collection_name="interop",
        drop_old=True,
    )
    tunnel = Document(
        "Tunnel seven on the alpine line was sealed in 1987.", metadata={"topic": "railway"}
    )
    store.add_documents([tunnel])
    hits = store.similarity_search("When was the Gull Point foghorn recast?", k=1)
    assert [h.page_content for h in hits] == [texts[0]]
    assert hits[0].metadata["topic"] == "lighthouse"
    hits = store.similarity_search("Which railway tunnel was closed?", k=1)
    assert hits[0].page_content.startswith("Tunnel seven")


# -- retriever -----------------------------------------------------------------------------------


def test_retriever_returns_the_best_span_of_each_document_with_its_metadata(samples):
    retriever = JragRetriever(uri=samples.uri, collection=samples.collection, k=3)
    docs = retriever.invoke("What code phrase does the shift supervisor say?")
    assert len(docs) == 3 and len({d.metadata["source"] for d in docs}) == 3
    top = docs[0]
    assert top.metadata["source"] == samples.sources["linden-reach-operations-handbook.docx"]
    assert set(top.metadata) == {"source", "title", "score", "start", "end", "passage_start",
                                 "passage_end", "page", "doc_id", "kind"}  # fmt: skip
    assert top.metadata["start"] <= top.metadata["passage_start"] < top.metadata["passage_end"]
    assert (
        top.metadata["kind"] in ("doc", "late") and 0 <= top.metadata["start"] < top.metadata["end"]
    )
    assert len(top.page_content) == top.metadata["end"] - top.metadata["start"]
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)
    # The same store and model serve the next query.
    searcher = retriever._searcher
    opened = searcher._opened
    retriever.invoke("Marrow fiber stack")
    assert searcher._opened is opened
    retriever.close()


def test_retriever_reports_pdf_pages_and_honours_k_filter_and_mode(samples):
    pdf = samples.sources["stonegate-bakers-annual-report.pdf"]
    retriever = JragRetriever(
        uri=samples.uri, collection=samples.collection, k=5, mode="late",
        filter='metadata["doc_type"] == "pdf"',
    )  # fmt: skip
    docs = retriever.invoke("How many loaves does the deck oven hold?")
    assert [d.metadata["source"] for d in docs] == [pdf]  # the filter leaves one document
    assert docs[0].metadata["kind"] == "late" and isinstance(docs[0].metadata["page"], int)
    assert len(retriever.invoke("bread", k=1, filter="")) == 1  # per-call overrides


def test_retriever_passes_its_ranker_and_weights_on(samples):
    question = "What code phrase does the shift supervisor say?"
    handbook = samples.sources["linden-reach-operations-handbook.docx"]
    scores = {}
    for ranker in ("relative", "rrf", "weighted"):
        retriever = JragRetriever(
            uri=samples.uri, collection=samples.collection, k=2, ranker=ranker, weights=(0.3, 0.7)
        )
        docs = retriever.invoke(question)
        assert docs[0].metadata["source"] == handbook, ranker
        scores[ranker] = docs[0].metadata["score"]
        retriever.close()
    # RRF scores are sums of 1/(60 + rank) over two legs (at most 2/60); relative ones reach 1.
    assert scores["rrf"] <= 2 / 60 < scores["relative"] <= 1.0
    with pytest.raises(ValidationError):
        JragRetriever(uri=samples.uri, ranker="borda")


def test_retriever_with_the_wrong_model_names_the_collection_model(samples, tmp_path):
    from jrag.checkpoints import jina_v2_config, write_random_checkpoint

    other = tmp_path / "random-jina"
    write_random_checkpoint(other, jina_v2_config("small", num_hidden_layers=1))
    retriever = JragRetriever(uri=samples.uri, collection=samples.collection, model=str(other))
    with pytest.raises(StoreError, match=re.escape(MODEL)):
        retriever.invoke("anything")


def test_retriever_connects_on_first_query_only_and_fails_with_a_store_error():
    started = time.perf_counter()
    retriever = JragRetriever(uri=DOWN_SERVER, collection="jrag", token="secret-token",
                              connect_timeout=1)  # fmt: skip
    assert time.perf_counter() - started < 0.5
    expected = re.escape(f"cannot connect to Milvus at {DOWN_SERVER}")
    with pytest.raises(StoreError, match=expected) as err:
        retriever.invoke("anything")
    assert "secret-token" not in str(err.value)


@pytest.mark.asyncio
async def test_async_retriever_works_inside_a_running_loop(samples):
    retriever = JragRetriever(uri=samples.uri, collection=samples.collection, k=2)
    questions = [q["question"] for q in load_questions()[:4]]
    results = await asyncio.gather(*(retriever.ainvoke(q) for q in questions))
    assert [len(docs) for docs in results] == [2, 2, 2, 2]
    assert results[0][0].metadata["source"].endswith("harrowmere-lighthouse-society.md")
    assert results[3][0].metadata["source"].endswith("marrow-language-manual.md")
    retriever.close()


@pytest.mark.asyncio
async def test_async_retriever_against_a_down_server_fails_only_when_queried():
    retriever = JragRetriever(uri=DOWN_SERVER, collection="jrag", connect_timeout=1)
    with pytest.raises(StoreError, match="cannot connect"):
        await retriever.ainvoke("anything")


@pytest.mark.parametrize("mode", ["whole", "late"])
def test_retriever_finds_the_document_for_questions_answered_past_token_512(samples, mode):
    retriever = JragRetriever(uri=samples.uri, collection=samples.collection, k=3, mode=mode)
    accuracy = measure(
        lambda q: [(d.metadata["source"], d.page_content) for d in retriever.invoke(q)],
        samples,
        f"langchain {mode}",
    )
    retriever.close()
    check_accuracy(accuracy, mode)
