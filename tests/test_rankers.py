"""How a hybrid search fuses its dense and BM25 legs, on Milvus Lite (which has BM25), with real
parsing, MiniLM and real Milvus: each ranker ranks, a filter narrows every leg, and the default
``relative`` fusion is a weighted sum of each leg's scores scaled to [0, 1]."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from jrag.embedding import identity_of, load_encoder
from jrag.errors import InputError
from jrag.loading import MINILM_ID
from jrag.pipeline import ingest
from jrag.retrieval import embed_query, search
from jrag.store import RANKERS, MilvusStore, Query

# Routine notes about harbours; one holds a rare name deep inside. Dense vectors see harbour
# talk everywhere, BM25 sees the name in one document only.
FILLER = "The harbour crew mended nets, painted the pier railings and logged the tides. "
NOTES = {
    "north.txt": FILLER * 30 + "The foghorn at Skerrivane was tuned by Ottoline Brask. " + FILLER,
    "south.txt": FILLER * 25 + "The south quay was resurfaced with granite setts. " + FILLER * 5,
    "east.txt": FILLER * 28 + "The east breakwater lost two capstones in a gale. " + FILLER * 3,
    "west.txt": FILLER * 31 + "Harbour dues at the west basin rose by a penny. " + FILLER,
    "bakery.txt": "The bakery proofed its sourdough overnight and sold rye at dawn. " * 40,
    "railway.txt": "The rack railway climbed the pass in three stages each morning. " * 40,
}
QUESTION = "Who tuned the foghorn at Skerrivane?"


@pytest.fixture(scope="module")
def harbour(milvus_lite_uri_module: str, tmp_path_factory: pytest.TempPathFactory):
    encoder = load_encoder(MINILM_ID)
    docs = tmp_path_factory.mktemp("harbour")
    for name, text in NOTES.items():
        (docs / name).write_text(text, encoding="utf-8")
    store = MilvusStore(
        milvus_lite_uri_module, f"r_{uuid.uuid4().hex[:10]}", identity=identity_of(encoder)
    )
    ingest([docs], store, encoder)
    assert store.full_text
    yield store, encoder
    store.drop()
    store.close()


@pytest.fixture(scope="module")
def milvus_lite_uri_module(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("lite") / "rankers.db")


def names(store: MilvusStore, ranked) -> list[str]:
    states = store.states([r.doc_id for r in ranked])
    return [Path(states[r.doc_id].source).name for r in ranked]


def rank(store: MilvusStore, vector, **fields) -> list:
    query = Query(vector, QUESTION, len(NOTES), **{"kinds": ("doc", "late"), **fields})
    return store.rank(query)[0]


def test_each_ranker_finds_the_rare_name_and_a_filter_narrows_every_leg(harbour) -> None:
    store, encoder = harbour
    for ranker in RANKERS:
        results = search(QUESTION, store, encoder, k=3, ranker=ranker)
        assert Path(results[0].source).name == "north.txt", ranker
        assert "Ottoline Brask" in results[0].text
        # The filter applies to the dense leg and the BM25 leg alike: the document that holds
        # the name is gone from both, whatever the ranker.
        away = 'not (source like "%north%")'
        narrowed = search(QUESTION, store, encoder, k=5, ranker=ranker, filter=away)
        assert "north.txt" not in {Path(r.source).name for r in narrowed}, ranker
        assert len(narrowed) == 5, ranker


def test_relative_fusion_scores_are_scaled_leg_scores_weighted(harbour) -> None:
    store, encoder = harbour
    vector = embed_query(encoder, QUESTION)
    fused = rank(store, vector, full_text_kinds=("doc",), ranker="relative")
    scores = [r.score for r in fused]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores), scores
    # At its extremes the fusion is one leg alone: weights (1, 0) rank as the dense leg does,
    # (0, 1) as the BM25 leg does (the leg's last candidate scales to 0, so compare the rest).
    dense = rank(store, vector)
    text = rank(store, vector, kinds=(), full_text_kinds=("doc",))
    only_dense = rank(store, vector, full_text_kinds=("doc",), weights=(1.0, 0.0))
    only_text = rank(store, vector, full_text_kinds=("doc",), weights=(0.0, 1.0))
    assert names(store, only_dense)[:-1] == names(store, dense)[:-1]
    assert names(store, only_text)[:-1] == names(store, text)[:-1]
    assert only_dense[0].score == only_text[0].score == 1.0  # each leg's best scales to 1
    # The BM25 leg is sure of the rare name; with the default weights it decides.
    assert names(store, fused)[0] == names(store, text)[0] == "north.txt"


def test_weights_are_checked(harbour) -> None:
    store, encoder = harbour
    for bad in ((0.0, 0.0), (-1.0, 2.0), (1.0,)):
        with pytest.raises(InputError, match="weights"):
            search(QUESTION, store, encoder, weights=bad)
    with pytest.raises(InputError, match="unknown ranker"):
        search(QUESTION, store, encoder, ranker="borda")
