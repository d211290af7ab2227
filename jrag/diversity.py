"""Maximal marginal relevance: k results that differ from each other, not k near-duplicates.

MMR picks, one at a time, the candidate with the best ``lambda * relevance - (1 - lambda) *
redundancy``, where relevance is its cosine similarity to the query and redundancy its highest
cosine similarity to a candidate already picked (Carbonell and Goldstein, 1998). ``lambda=1``
is plain relevance order; lower values favour diversity.

A document's vector is the mean of its whole-document window vectors (its only one, below the
model's limit), or of its rows of the best kind it has (late chunks, then naive chunks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from jrag.errors import InputError

if TYPE_CHECKING:  # the CLI reads DEFAULT_MMR_LAMBDA without loading pymilvus
    from jrag.store import DocumentState, MilvusStore

DEFAULT_MMR_LAMBDA = 0.5
# Candidates MMR chooses from: this many, or 4 k if more.
MMR_DEPTH = 20
_KIND_ORDER = ("doc", "late", "chunk")


def check_lambda(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InputError(f"mmr_lambda must be a number from 0 to 1, not {value!r}")


def maximal_marginal_relevance(
    query: np.ndarray, candidates: np.ndarray, k: int, lambda_: float = DEFAULT_MMR_LAMBDA
) -> list[int]:
    """The indices of ``k`` rows of ``candidates`` (vectors, any norm) in MMR order."""
    if len(candidates) == 0 or k <= 0:
        return []
    vectors = _unit(np.asarray(candidates, dtype=np.float64).reshape(len(candidates), -1))
    relevance = vectors @ _unit(np.asarray(query, dtype=np.float64).reshape(1, -1))[0]
    similarity = vectors @ vectors.T
    chosen = [int(np.argmax(relevance))]
    redundancy = similarity[chosen[0]].copy()
    while len(chosen) < min(k, len(candidates)):
        score = lambda_ * relevance - (1 - lambda_) * redundancy
        score[chosen] = -np.inf
        pick = int(np.argmax(score))
        chosen.append(pick)
        redundancy = np.maximum(redundancy, similarity[pick])
    return chosen


def document_vectors(store: MilvusStore, states: Sequence[DocumentState]) -> dict[str, np.ndarray]:
    """Each committed document's vector (see the module docstring), read by primary key."""
    from jrag.store.rows import version_ids

    wanted: dict[str, list[str]] = {}
    for state in states:
        kind = next((k for k in _KIND_ORDER if k in state.kinds), None)
        if state.committed and kind is not None:
            counts = {kind: state.row_counts[kind]}
            wanted[state.doc_id] = version_ids(state.doc_id, state.content_hash, counts)
    ids = [row_id for row_ids in wanted.values() for row_id in row_ids]
    rows = {r["id"]: r["vector"] for r in store.fetch(ids, ["id", "vector"])}
    vectors = {}
    for doc_id, row_ids in wanted.items():
        found = [rows[i] for i in row_ids if i in rows]
        if found:
            vectors[doc_id] = np.mean(np.asarray(found, dtype=np.float64), axis=0)
    return vectors


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)
