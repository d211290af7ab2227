"""Reranking: cross-encoder parity (BERT with transformers, JinaBERT with the reference), and a
second search stage that reorders by the cross-encoder and keeps filters, tenants and k."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from jrag.checkpoints import bert_config, write_random_checkpoint
from jrag.embedding import identity_of, load_encoder
from jrag.errors import InputError, ModelLoadError
from jrag.loading import MINILM_ID
from jrag.pipeline import IngestOptions, ingest
from jrag.qa import ask
from jrag.rerank import Reranker
from jrag.retrieval import search
from jrag.store import MilvusStore
from tests.reference_bert import reference_score

MODELS = Path(__file__).parent / "models"
ONE_LABEL = {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
QUERY = "who regilded the copper weathervane on the granary"
PASSAGES = [
    "The copper weathervane on the granary was regilded by Tamsin Orlo in 1904.",
    "The observatory's brass orrery was rebuilt after the flood.",
    "Granary accounts for the autumn harvest, " + "wheat and barley ledgers " * 300,
    "",
]


@pytest.fixture(scope="module")
def bert_cross_encoder(tmp_path_factory) -> Path:
    config = bert_config(architectures=["BertForSequenceClassification"], **ONE_LABEL)
    return write_random_checkpoint(tmp_path_factory.mktemp("ms-marco"), config, seed=11,
                                   classifier=True)  # fmt: skip


@pytest.fixture(scope="module")
def jina_cross_encoder(tmp_path_factory) -> Path:
    config = json.loads((MODELS / "jina-embeddings-v2-base-en" / "config.json").read_text())
    config |= {"architectures": ["JinaBertForSequenceClassification"], "hidden_size": 96,
               "intermediate_size": 128, "num_hidden_layers": 2, **ONE_LABEL}  # fmt: skip
    skeleton = MODELS / "jina-embeddings-v2-base-en"
    return write_random_checkpoint(tmp_path_factory.mktemp("jina-reranker"), config, seed=12,
                                   classifier=True, tokenizer_from=skeleton)  # fmt: skip


def test_bert_cross_encoder_matches_transformers_sequence_classification(bert_cross_encoder):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    reranker = Reranker.from_pretrained(bert_cross_encoder, device="cpu", dtype="float32")
    scores = reranker.score(QUERY, PASSAGES)
    model = BertForSequenceClassification.from_pretrained(bert_cross_encoder).eval()
    tokenizer = AutoTokenizer.from_pretrained(bert_cross_encoder)
    inputs = tokenizer([QUERY] * len(PASSAGES), PASSAGES, padding=True, truncation=True,
                       max_length=512, return_tensors="pt")  # fmt: skip
    with torch.inference_mode():
        expected = model(**inputs).logits[:, 0].numpy()
    assert model.config.num_labels == 1
    assert np.abs(np.array(scores) - expected).max() <= 1e-4
    assert len(set(np.round(scores, 4))) == len(PASSAGES)  # the pairs really differ


def test_jina_cross_encoder_matches_the_reference_with_its_head(jina_cross_encoder):
    reranker = Reranker.from_pretrained(jina_cross_encoder, device="cpu", dtype="float32")
    passages = [*PASSAGES[:3], "harbour " * 1500]  # up to ~2k tokens per pair
    scores = reranker.score(QUERY, passages, batch_tokens=4096)
    for passage, score in zip(passages, scores, strict=True):
        encoding = reranker.tokenizer.encode(QUERY, passage)
        assert 1 in encoding.type_ids  # the passage is segment 1, as in training
        expected = reference_score(jina_cross_encoder, encoding.ids, encoding.type_ids)
        assert abs(score - expected) <= 1e-4


def test_scores_do_not_depend_on_batching(bert_cross_encoder):
    reranker = Reranker.from_pretrained(bert_cross_encoder, device="cpu", dtype="float32")
    together = reranker.score(QUERY, PASSAGES)
    alone = [reranker.score(QUERY, [p], batch_tokens=1)[0] for p in PASSAGES]
    assert np.abs(np.array(together) - np.array(alone)).max() <= 1e-5


def test_bad_reranker_input_and_multi_label_heads_are_refused(bert_cross_encoder, tmp_path):
    reranker = Reranker.from_pretrained(bert_cross_encoder, device="cpu")
    assert reranker.score(QUERY, []) == []
    with pytest.raises(InputError, match="query is empty"):
        reranker.score("  ", ["text"])
    with pytest.raises(InputError, match=r"passages\[1\] is int"):
        reranker.score(QUERY, ["text", 3])
    with pytest.raises(InputError, match="list of strings"):
        reranker.score(QUERY, "one string")
    config = bert_config(id2label={"0": "no", "1": "yes"})
    two = write_random_checkpoint(tmp_path / "two", config, classifier=True)
    with pytest.raises(ModelLoadError, match="id2label has 2 labels"):
        Reranker.from_pretrained(two, device="cpu")
    embedder = write_random_checkpoint(tmp_path / "embedder", bert_config(**ONE_LABEL))
    with pytest.raises(ModelLoadError, match=r"missing .*classifier\.weight"):
        Reranker.from_pretrained(embedder, device="cpu")


FACTS = [
    "The copper weathervane on the granary was regilded by Tamsin Orlo in 1904.",
    "The granary's oak doors were rehung after the storm of 1911.",
    "A weathervane shaped like a fox turns above the mill at Harrowmere.",
    "Copper sheeting on the chapel roof was replaced in 1920.",
    "The granary ledger records barley, wheat and rye for every autumn.",
    "Tamsin Orlo kept bees behind the lighthouse cottages.",
    "The observatory's brass orrery was rebuilt after the flood.",
    "Gilding a weathervane takes three coats of size and one of gold leaf.",
]


@pytest.fixture
def two_tenant_store(store_uri: str, tmp_path: Path):
    yield from _two_tenant_store(store_uri, tmp_path)


@pytest.fixture
def two_tenant_lite_store(milvus_lite_uri: str, tmp_path: Path):
    yield from _two_tenant_store(milvus_lite_uri, tmp_path)


def _two_tenant_store(store_uri: str, tmp_path: Path):
    """Tenants a and b ingest the same paths (rewritten between the runs), in kept/ and other/;
    yields the store, the encoder and a filter for kept/ (a prefix: Milvus 2.3.5 needs one)."""
    encoder = load_encoder(MINILM_ID, device="cpu")
    store = MilvusStore(store_uri, f"rerank_{uuid.uuid4().hex[:8]}", identity=identity_of(encoder))
    root = tmp_path / "shared"
    for tenant in ("a", "b"):
        for folder in ("kept", "other"):
            (root / folder).mkdir(parents=True, exist_ok=True)
            for index, fact in enumerate(FACTS):
                (root / folder / f"{index}.txt").write_text(
                    f"Tenant {tenant}, {folder} note {index}.\n\n{fact}\n", encoding="utf-8"
                )
        ingest([root], store, encoder, options=IngestOptions(mode="late"), tenant=tenant)
    yield store, encoder, f'source like "{root}/kept/%"'
    store.close()  # a test may have closed it already, to let another client in
    with MilvusStore(store_uri, store.collection, identity=identity_of(encoder)) as cleanup:
        cleanup.drop()


def test_reranking_reorders_by_the_cross_encoder_and_keeps_filters_tenants_and_k(
    two_tenant_store, bert_cross_encoder
):
    store, encoder, kept = two_tenant_store
    reranker = Reranker.from_pretrained(bert_cross_encoder, device="cpu", dtype="float32")
    where = {"filter": kept, "tenant": "a"}
    first = search(QUERY, store, encoder, k=6, **where)
    reranked = search(QUERY, store, encoder, k=3, rerank=reranker, rerank_depth=6, **where)
    # The expected order: the first stage's six, scored by the cross-encoder on the same text.
    scores = reranker.score(QUERY, [r.text for r in first])
    expected = sorted(zip(scores, [r.doc_id for r in first], strict=True), reverse=True)[:3]
    assert [r.doc_id for r in reranked] == [doc_id for _, doc_id in expected]
    assert np.allclose([r.score for r in reranked], [s for s, _ in expected], atol=1e-5)
    assert len(reranked) == 3
    assert all("/kept/" in r.source and r.text.startswith("Tenant a,") for r in reranked)
    assert [r.doc_id for r in reranked] != [r.doc_id for r in first[:3]]  # it did reorder
    # Off unless named: the default search is the first stage.
    assert [r.doc_id for r in search(QUERY, store, encoder, k=3, **where)] == [
        r.doc_id for r in first[:3]
    ]
    # ask reads the reranked documents.
    answer = ask(QUERY, store=store, encoder=encoder, k=2, passages=2, rerank=reranker,
                 rerank_depth=6, **where)  # fmt: skip
    assert {c.source for c in answer.citations} <= {r.source for r in reranked[:2]}


def test_both_retrievers_pass_rerank_on_by_model_name(two_tenant_lite_store, bert_cross_encoder):
    from langchain_jrag import JragRetriever as LangChainRetriever
    from llama_index.retrievers.jrag import JragRetriever as LlamaIndexRetriever

    store, encoder, kept = two_tenant_lite_store
    reranker = Reranker.from_pretrained(bert_cross_encoder, device="cpu")
    where = {"filter": kept, "tenant": "a"}
    expected = search(QUERY, store, encoder, k=2, rerank=reranker, rerank_depth=6, **where)
    store.close()  # Milvus Lite: one client per folder at a time
    common = {"uri": store.uri, "collection": store.collection, "k": 2,
              "rerank": str(bert_cross_encoder), "rerank_depth": 6, **where}  # fmt: skip
    langchain = LangChainRetriever(**common)
    try:
        docs = langchain.invoke(QUERY)
    finally:
        langchain.close()
    assert [d.metadata["source"] for d in docs] == [r.source for r in expected]
    assert np.allclose([d.metadata["score"] for d in docs], [r.score for r in expected], atol=1e-4)
    llama = LlamaIndexRetriever(**common)
    try:
        nodes = llama.retrieve(QUERY)
    finally:
        llama._searcher.close()
    assert [n.node.metadata["source"] for n in nodes] == [r.source for r in expected]


def test_jrag_search_rerank_flag_reorders_and_is_off_unless_named(
    two_tenant_lite_store, bert_cross_encoder
):
    from typer.testing import CliRunner

    from jrag.cli import app

    store, encoder, kept = two_tenant_lite_store
    reranker = Reranker.from_pretrained(bert_cross_encoder, device="cpu")
    where = {"filter": kept, "tenant": "a"}
    expected = search(QUERY, store, encoder, k=2, rerank=reranker, rerank_depth=6, **where)
    plain = search(QUERY, store, encoder, k=2, **where)
    store.close()
    args = ["search", QUERY, "-k", "2", "--json", "--uri", store.uri, "--collection",
            store.collection, "--tenant", "a", "--filter", kept]  # fmt: skip
    runner = CliRunner()
    reranked = runner.invoke(app, [*args, "--rerank", str(bert_cross_encoder),
                                   "--rerank-depth", "6"])  # fmt: skip
    assert reranked.exit_code == 0, reranked.output
    assert [r["source"] for r in json.loads(reranked.output)] == [r.source for r in expected]
    default = runner.invoke(app, args)
    assert [r["source"] for r in json.loads(default.output)] == [r.source for r in plain]
    missing = runner.invoke(app, [*args, "--rerank", str(bert_cross_encoder / "nowhere")])
    assert missing.exit_code != 0 and "nowhere" in missing.output


@pytest.mark.parametrize("depth", [0, -3, 1001, True, 2.5])
def test_a_bad_rerank_depth_is_refused_naming_it(depth):
    from jrag.retrieval import SearchOptions

    with pytest.raises(InputError, match="rerank_depth"):
        SearchOptions(rerank="any-model", rerank_depth=depth)


def test_a_missing_reranker_is_named_at_the_first_query(two_tenant_lite_store, tmp_path):
    store, encoder, _ = two_tenant_lite_store
    with pytest.raises(ModelLoadError, match="no-such-reranker"):
        search(QUERY, store, encoder, k=2, rerank=str(tmp_path / "no-such-reranker"))
