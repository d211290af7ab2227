"""How a hybrid search fuses its dense and BM25 legs, on Milvus Lite (which has BM25), with real
parsing, MiniLM and real Milvus: each ranker ranks, a filter narrows every leg, the score
fusions are what they say, and one store serves many threads."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest

from jrag.embedding import identity_of, load_encoder
from jrag.errors import InputError
from jrag.evaluation.runner import VARIANTS
from jrag.loading import MINILM_ID
from jrag.pipeline import ingest
from jrag.retrieval import SearchOptions, build_query, embed_query, search
from jrag.store import RANKERS, MilvusStore, Query
from jrag.store.search import ADAPTIVE, FUSION_DEPTH, adaptive_weights, bm25_lead

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
    ends = {"full_text_kinds": ("doc",), "ranker": "relative"}
    only_dense = rank(store, vector, **ends, weights=(1.0, 0.0))
    only_text = rank(store, vector, **ends, weights=(0.0, 1.0))
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


def test_dbsf_maps_each_leg_by_its_mean_and_three_deviations(harbour) -> None:
    store, encoder = harbour
    vector = embed_query(encoder, QUESTION)
    fused = rank(store, vector, full_text_kinds=("doc",), ranker="dbsf")
    # Every document is a candidate of both legs here (6 documents, 20 candidates per leg), so
    # the fused score is the sum of each leg's score mapped by its own mean +- 3 deviations.
    expected: dict[str, float] = {}
    for leg in (rank(store, vector), rank(store, vector, kinds=(), full_text_kinds=("doc",))):
        scores = np.array([r.score for r in leg])
        if scores[0] < scores[-1]:  # Milvus Lite reports BM25 scores negated
            scores = -scores
        low, std = scores.mean() - 3 * scores.std(ddof=1), scores.std(ddof=1)
        for row, score in zip(leg, scores, strict=True):
            expected[row.doc_id] = expected.get(row.doc_id, 0.0) + (score - low) / (6 * std)
    assert len(fused) == len(NOTES)
    for row in fused:
        assert row.score == pytest.approx(expected[row.doc_id], abs=1e-6)
    assert names(store, fused)[0] == "north.txt"  # BM25's outlier keeps its lead


SECOND = ADAPTIVE["adaptive"]  # BM25's floor 0.2, its ceiling at a 20% lead over its second
MEDIAN = (0.0, (("median", 0.0, 0.85),))  # nothing, up to its ceiling at an 85% lead


def test_adaptive_weights_trust_bm25_as_far_as_its_first_score_leads_its_second() -> None:
    ceiling = (0.1, 0.9)
    assert SECOND == (0.2, (("second", 0.0, 0.2),))
    assert adaptive_weights(ceiling, [10.0, 10.0, 1.0], *SECOND) == pytest.approx((0.8, 0.2))
    assert adaptive_weights(ceiling, [10.0, 8.0, 1.0], *SECOND) == pytest.approx((0.1, 0.9))
    assert adaptive_weights(ceiling, [10.0, 9.0, 1.0], *SECOND) == pytest.approx((0.45, 0.55))
    assert adaptive_weights(ceiling, [10.0, 1.0], *SECOND) == pytest.approx((0.1, 0.9))  # capped
    assert adaptive_weights((1.0, 9.0), [10.0, 1.0], *SECOND) == pytest.approx((0.1, 0.9))
    assert adaptive_weights(ceiling, [10.0], *SECOND) == pytest.approx((0.8, 0.2))  # no lead
    assert adaptive_weights(ceiling, [0.0, 0.0], *SECOND) == pytest.approx((0.8, 0.2))


def test_adaptive_median_weights_trust_bm25_as_far_as_its_first_stands_out_of_its_median() -> None:
    ceiling = (0.0, 1.0)
    # Median 5: the first leads it by half its score; BM25 weighs 0.5 / 0.85 of the ceiling.
    field = [10.0, 9.0, *[5.0] * (FUSION_DEPTH - 2)]
    lead = adaptive_weights(ceiling, field, *MEDIAN)
    assert lead == pytest.approx((1 - 0.5 / 0.85, 0.5 / 0.85))
    # Its second close behind does not matter (unlike "second"), the field behind does.
    close = [10.0, 9.9, *[1.0] * (FUSION_DEPTH - 2)]
    assert adaptive_weights(ceiling, close, *MEDIAN) == (0, 1)
    assert adaptive_weights(ceiling, close, *SECOND)[1] == pytest.approx(0.24)
    level = [10.0] * FUSION_DEPTH
    assert adaptive_weights(ceiling, level, *MEDIAN) == (1, 0)
    # The field is the first FUSION_DEPTH candidates, those BM25 did not find counting as 0: a
    # word that one document alone holds leads by all its score, and k does not move the median.
    assert adaptive_weights(ceiling, [10.0], *MEDIAN) == (0, 1)
    assert adaptive_weights(ceiling, [10.0, 10.0], *MEDIAN, field=2) == (1, 0)
    many = [10.0, *[9.0] * (FUSION_DEPTH - 1), *[1.0] * 50]
    assert adaptive_weights(ceiling, many, *MEDIAN) == pytest.approx((1 - 0.1 / 0.85, 0.1 / 0.85))
    assert adaptive_weights(ceiling, [], *MEDIAN) == (1, 0)  # nothing found


def test_adaptive_max_trusts_bm25_as_far_as_the_further_of_its_two_leads() -> None:
    """The default: a needle among many documents that share its question's words stands out
    of its second but not of their median; among few it stands out of the median; a question in
    other words stands out of neither."""
    floor, leads = ADAPTIVE["adaptive-max"]
    ceiling, rest = (0.025, 0.975), [6.0] * (FUSION_DEPTH - 2)
    many_alike = [10.0, 7.0, *rest]  # second's lead 0.3, median's 0.4
    assert bm25_lead(many_alike, "second") == pytest.approx(0.3)
    assert bm25_lead(many_alike, "median") == pytest.approx(0.4)
    assert adaptive_weights(ceiling, many_alike, floor, leads) == pytest.approx(ceiling)
    few = [10.0, 9.5, 5.0, 4.0, *[0.0] * 4]  # second's lead 0.05; median 0 in a field of 20
    assert adaptive_weights(ceiling, few, floor, leads) == pytest.approx(ceiling)
    paraphrase = [10.0, 9.5, 9.0, *[5.5] * (FUSION_DEPTH - 3)]  # 0.05 and 0.45: the floor
    assert adaptive_weights(ceiling, paraphrase, floor, leads) == pytest.approx((0.9, 0.1))
    versus, start, full = leads[0]
    assert versus == "second"
    halfway = [10.0, 10.0 * (1 - (start + full) / 2), *rest]
    assert adaptive_weights(ceiling, halfway, floor, leads)[1] == pytest.approx(
        floor + (0.975 - floor) / 2
    )


@pytest.mark.parametrize("ranker", ["adaptive-max", "adaptive-median"])
def test_adaptive_fusion_is_relative_fusion_at_the_weights_of_the_bm25_legs_lead(
    harbour, ranker: str
) -> None:
    store, encoder = harbour
    weights, reached = (0.025, 0.975), {}
    for question in (QUESTION, "the crew painted the pier railings"):
        vector = embed_query(encoder, question)
        query = Query(vector, question, len(NOTES), ("doc", "late"), ("doc",), ranker, weights)
        fused = store.rank(query)[0]
        text = store.rank(replace(query, kinds=()))[0]
        scores = [abs(r.score) for r in text]  # Milvus Lite reports BM25 scores negated
        # BM25's field: the six notes, which the dense leg finds all of.
        assert len(store.rank(replace(query, full_text_kinds=()))[0]) == len(NOTES)
        reached[question] = adaptive_weights(weights, scores, *ADAPTIVE[ranker], len(NOTES))
        relative = store.rank(replace(query, ranker="relative", weights=reached[question]))[0]
        assert [(r.doc_id, r.score) for r in fused] == [(r.doc_id, r.score) for r in relative]
    # The rare name stands far out of BM25's field: the ceiling. Words every note shares do not.
    assert reached[QUESTION] == pytest.approx(weights)
    assert reached["the crew painted the pier railings"][1] < 0.5, reached


def test_a_query_is_frozen_and_eight_threads_searching_one_store_get_what_one_gets(
    harbour,
) -> None:
    store, encoder = harbour
    questions = [QUESTION, "granite setts on the quay", "sourdough and rye", "rack railway"]
    vectors = {q: embed_query(encoder, q) for q in questions}
    jobs = [(q, ranker) for q in questions for ranker in RANKERS]
    query = Query(vectors[QUESTION], QUESTION, 3, ("doc", "late"), ("doc",))
    with pytest.raises(FrozenInstanceError):
        query.k = 5  # type: ignore[misc]

    def ranked(job: tuple[str, str]) -> list[tuple[str, float]]:
        text, ranker = job
        q = Query(vectors[text], text, 4, ("doc", "late"), ("doc",), ranker=ranker)
        return [(r.doc_id, round(r.score, 6)) for r in store.rank(q)[0]]

    alone = {job: ranked(job) for job in jobs}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):  # bounded by count and time
            together = dict(zip(jobs, pool.map(ranked, jobs), strict=True))
            assert together == alone
            if time.monotonic() - started > 30:
                break


def test_eval_variants_are_search_options_and_hybrid_is_the_default_search(harbour) -> None:
    store, encoder = harbour
    assert VARIANTS["hybrid"] == SearchOptions()
    vector = embed_query(encoder, QUESTION)
    query = build_query(store, QUESTION, vector, VARIANTS["hybrid"])
    assert (set(query.kinds), query.full_text_kinds) == ({"doc", "late"}, ("doc",))
    rrf = build_query(store, QUESTION, vector, VARIANTS["hybrid-rrf-k2"])
    assert (rrf.ranker, rrf.rrf_k) == ("rrf", 2)
    with pytest.raises(InputError, match="rrf_k"):
        SearchOptions(rrf_k=0)


def test_a_bm25_variant_searches_the_bm25_leg_alone(harbour) -> None:
    store, encoder = harbour
    vector = embed_query(encoder, QUESTION)
    query = build_query(store, QUESTION, vector, VARIANTS["bm25"])
    assert (query.kinds, query.full_text_kinds) == ((), ("doc",))
    ranked, _ = store.rank(query)
    assert names(store, ranked)[0] == "north.txt"  # the only document with the rare name
    assert all(r.kind == "doc" for r in ranked)
    with pytest.raises(InputError, match="dense leg"):
        build_query(store, QUESTION, vector, SearchOptions(dense=False, hybrid=False))
