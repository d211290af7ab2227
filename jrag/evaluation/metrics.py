"""Retrieval metrics, computed by ``ranx`` (a maintained, tested IR metrics library)."""

from __future__ import annotations

import warnings

# Metric names as tables and JSON show them → ranx's names. Acc@1 (LongEmbed's synthetic-task
# metric) is ranx's hit rate at 1: the share of queries whose first result is relevant.
METRICS = {
    "Acc@1": "hit_rate@1",
    "nDCG@10": "ndcg@10",
    "Recall@10": "recall@10",
    "MRR@10": "mrr@10",
}
SYNTHETIC_METRICS = ("Acc@1",)
DATASET_METRICS = ("nDCG@10", "Recall@10", "MRR@10")


def evaluate(
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    metrics: tuple[str, ...] = DATASET_METRICS,
) -> dict[str, float]:
    """Mean of each metric over every query in ``qrels``; a query missing from ``run`` scores 0.

    ``qrels`` maps query id → {doc id: relevance grade > 0}; ``run`` maps query id →
    {doc id: score}, higher is better.
    """
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; use {', '.join(METRICS)}")
    if not qrels:
        raise ValueError("no queries to evaluate")
    with warnings.catch_warnings():
        # numba warns about an internal uint64 → int64 cast inside ranx's nDCG kernel.
        warnings.simplefilter("ignore")
        scores = ranx_evaluate(
            Qrels(qrels),
            Run({qid: run.get(qid, {}) for qid in qrels}),
            [METRICS[m] for m in metrics],
            make_comparable=True,
        )
    if len(metrics) == 1:  # ranx returns a bare number for one metric
        scores = {METRICS[metrics[0]]: scores}
    return {m: float(scores[METRICS[m]]) for m in metrics}
