"""Ranking documents: the one primitive behind ``jrag search``, ``ask``, the retrievers and eval.

:meth:`DocumentRanker.rank` returns the ``k`` best *documents* for a query, each with the row that
matched best, exactly:

- where the backend groups results (``group_by_field="doc_id"``: Milvus Lite, servers ≥ 2.4),
  one grouped search returns each document's best row;
- elsewhere an exact loop searches, keeps the first row of each new document, and searches
  again with the documents it has excluded, until it has ``k`` or the rows run out.

Either way, a row counts only if its document's state row names its version and kind (see
:mod:`jrag.store.writes`), so a search running beside an ingest sees each document's old or new
version, never a mix; rows that don't count are excluded and the search repeats. Every row is
also checked against jrag's own restriction (kinds and tenant) before it counts.

With full-text search, a search has a dense leg and a BM25 leg, fused by one of :data:`RANKERS`
(the default is :data:`jrag.modes.DEFAULT_RANKER`, chosen by its worst case across benchmarks,
see docs/retrieval-variants.md):

- ``adaptive-max``, ``adaptive``, ``adaptive-median``: each leg scaled to [0, 1] over its
  candidates (as ``relative``), weighted by how clearly BM25's own winner stands out
  (:func:`adaptive_weights`, :data:`ADAPTIVE`): of its second (``adaptive``), of the median of
  its candidates (``adaptive-median``), or the further of the two (``adaptive-max``). A question
  in other words than the text shares its words with many documents, so BM25's first barely
  stands out and weighs little; a rare name or a heading's own words stand out, and BM25 weighs
  up to ``weights[1]``;
- ``relative``: each leg's scores scaled to [0, 1] over its candidates (best 1, worst 0), and
  the ``weights``-weighted sums rank;
- ``dbsf``: distribution-based score fusion, as Qdrant does it: each leg's scores mapped by
  the mean +- 3 (sample) standard deviations of its candidates onto [0, 1], then summed;
- ``rrf`` and ``weighted``: one ``hybrid_search`` fused by Milvus (``RRFRanker(rrf_k)``, or
  ``WeightedRanker``, which squashes BM25 scores through arctan).

The score fusions (the adaptive ones, ``relative``, ``dbsf``) search both legs at once, each for
its best rows (:data:`FUSION_ROWS` per candidate), keep each document's best row as a
candidate (:data:`FUSION_DEPTH` at most), and fuse them here. Each call keeps its state
local, so one ranker serves any number of threads.

Text is not fetched here: callers fetch it for the winners only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

from jrag.errors import InputError, StoreError
from jrag.logs import quiet_milvus_logs
from jrag.modes import DEFAULT_RANKER, DEFAULT_WEIGHTS
from jrag.store.connection import MILVUS_ERRORS, Connection, exc_message
from jrag.store.filters import all_of, check_user_filter, none_of, restriction
from jrag.store.manifest import BM25_FIELD
from jrag.store.rows import DocumentState, quote

RANKERS = ("adaptive-max", "adaptive", "adaptive-median", "relative", "dbsf", "rrf", "weighted")
SCORE_FUSIONS = ("adaptive-max", "adaptive", "adaptive-median", "relative", "dbsf")  # fused here
RRF_K = 60
# Candidates per leg of a score fusion (documents when grouped). Measured on git-doc with
# relative fusion: 50 gave nDCG@10 0.814 at 51 ms/query, 20 gave 0.820 at 40 ms.
FUSION_DEPTH = 20
# A lead: how far BM25's first score stands out of its "second" or of the "median" of its
# candidates, as a share of the first score; BM25 is trusted from ``start`` and fully at ``full``.
Lead = tuple[str, float, float]  # versus, start, full
# The adaptive fusions: ranker -> (BM25's floor, its leads; the furthest one counts), chosen by
# the worst case over the paraphrase, git-doc, samples and needle benchmarks, needle at 25, 50
# and 100 documents (benchmarks/fusion_sweep.py, docs/retrieval-variants.md). Neither lead
# alone holds: as a needle's corpus grows, more documents share its question's words and the
# median's lead falls to paraphrase's (0.5 at 100 documents, 0.47 on paraphrase), while the
# second's lead stays (median 0.27 against 0.13); at 25 documents the median's is clearer (0.87).
ADAPTIVE: dict[str, tuple[float, tuple[Lead, ...]]] = {
    "adaptive-max": (0.1, (("second", 0.05, 0.15), ("median", 0.6, 0.8))),
    "adaptive": (0.2, (("second", 0.0, 0.2),)),
    "adaptive-median": (0.0, (("median", 0.0, 0.85),)),
}
FUSION_ROWS = 3  # rows searched per candidate document: a document's rows often rank together
HIT_FIELDS = ["doc_id", "tenant", "kind", "chunk_index", "start", "end", "content_hash"]
MAX_LIMIT = 16384  # Milvus caps a search's limit (and offset + limit) here
MAX_ROUNDS = 16


@dataclass(frozen=True)
class Query:
    """What to rank: a query's vector (and words, for BM25), and where to look."""

    vector: np.ndarray
    text: str
    k: int
    kinds: tuple[str, ...]  # dense leg: these vector row kinds
    full_text_kinds: tuple[str, ...] = ()  # BM25 leg: these kinds; empty = dense only
    ranker: str = DEFAULT_RANKER
    weights: tuple[float, float] = DEFAULT_WEIGHTS  # dense, BM25 (see the module docstring)
    filter: str | None = None
    tenant: str = ""
    rrf_k: int = RRF_K  # the ``rrf`` ranker's constant
    # Values the filter names as ``{name}`` (Milvus filter templating, where the backend has it).
    filter_params: dict[str, Any] | None = None


@dataclass
class _Call:
    """One rank/top_rows call's own state: the rows found not visible, the states read."""

    user: str | None
    excluded: list[tuple[str, str, str]] = field(default_factory=list)  # (doc_id, hash, kind)
    states: dict[str, DocumentState] = field(default_factory=dict)
    reread: set[str] = field(default_factory=set)  # documents whose state was read twice


@dataclass
class RankedRow:
    """A document's best row for a query."""

    id: str
    doc_id: str
    kind: str
    chunk_index: int
    start: int
    end: int
    content_hash: str
    score: float
    tenant: str = ""  # checked against the query's, then only carried


class DocumentRanker:
    """Ranks the documents of one collection (see the module docstring)."""

    def __init__(
        self,
        conn: Connection,
        collection: str,
        states: Callable[[Sequence[str]], dict[str, DocumentState]],
    ) -> None:
        self.conn = conn
        self.collection = collection
        self.states = states

    def rank(self, query: Query) -> tuple[list[RankedRow], dict[str, DocumentState]]:
        """The ``query.k`` best documents' best rows, best first, with their states."""
        if query.k <= 0 or not (query.kinds or query.full_text_kinds):
            return [], {}
        if query.ranker not in RANKERS:
            raise InputError(f"unknown ranker {query.ranker!r}; use one of {', '.join(RANKERS)}")
        call = _Call(check_user_filter(query.filter))
        ranked = self._grouped(query, call) if self.conn.capabilities.group_by else {}
        if len(ranked) < query.k:
            # No grouping here, or the grouped candidates ran short: the exact loop fills up.
            self._loop(query, call, ranked)
        best = list(ranked.values())[: query.k]  # in search order (Lite's BM25 scores are negative)
        return best, {r.doc_id: call.states[r.doc_id] for r in best if r.doc_id in call.states}

    def _grouped(self, query: Query, call: _Call) -> dict[str, RankedRow]:
        """One grouped search; repeated only while it returns rows that are not visible."""
        ranked: dict[str, RankedRow] = {}
        for _ in range(MAX_ROUNDS):
            ranked = {}
            rows = self._search(query, call.user, _exclusion(call.excluded), query.k, group=True)
            if not self._take(rows, query, call, ranked):
                break
        return ranked

    def _loop(self, query: Query, call: _Call, ranked: dict[str, RankedRow]) -> None:
        """Search, keep each new document's first visible row, exclude the documents found,
        and search again until ``k`` documents or no more rows."""
        limit = min(MAX_LIMIT, max(4 * query.k, 50))
        for _ in range(MAX_ROUNDS * 4):
            exclusions = all_of(_exclusion(call.excluded), none_of("doc_id", ranked))
            rows = self._search(query, call.user, exclusions, limit, group=False)
            invisible = self._take(rows, query, call, ranked)
            if len(ranked) >= query.k or (len(rows) < limit and not invisible):
                return

    def _take(
        self, rows: Sequence[RankedRow], query: Query, call: _Call, ranked: dict[str, RankedRow]
    ) -> bool:
        """Add each new document's first visible row; True if some rows were not visible."""
        self._read_states(rows, call)
        invisible = False
        for row in rows:
            self._check_restriction(row, query)
            if row.doc_id in ranked:
                continue
            if not self._visible(row, call.states.get(row.doc_id)):
                call.excluded.append((row.doc_id, row.content_hash, row.kind))
                invisible = True
                continue
            if len(ranked) < query.k:
                ranked[row.doc_id] = row
        return invisible

    def top_rows(self, query: Query, limit: int) -> list[RankedRow]:
        """The ``limit`` best visible rows, best first, several per document allowed."""
        call = _Call(check_user_filter(query.filter))
        kept: list[RankedRow] = []
        for _ in range(MAX_ROUNDS):
            rows = self._search(query, call.user, _exclusion(call.excluded), limit, group=False)
            self._read_states(rows, call)
            kept = []
            for row in rows:
                self._check_restriction(row, query)
                if self._visible(row, call.states.get(row.doc_id)):
                    kept.append(row)
                else:
                    call.excluded.append((row.doc_id, row.content_hash, row.kind))
            if len(kept) == len(rows):
                return kept
        return kept

    # -- one search ------------------------------------------------------------------------------

    def _search(
        self, query: Query, user: str | None, exclusions: str | None, limit: int, *, group: bool
    ) -> list[RankedRow]:
        dense_expr = all_of(restriction(query.kinds, query.tenant), user, exclusions)
        text_expr = all_of(restriction(query.full_text_kinds, query.tenant), user, exclusions)
        try:
            with quiet_milvus_logs():
                if not query.full_text_kinds:
                    return self._leg(query, "vector", dense_expr, limit, group)
                if not query.kinds:  # full-text search alone
                    return self._leg(query, BM25_FIELD, text_expr, limit, group)
                if query.ranker in SCORE_FUSIONS:
                    dense, text = self._legs(query, dense_expr, text_expr, limit, group)
                    return _score_fusion(query, dense, text, limit, group)
                return self._hybrid(query, dense_expr, text_expr, limit, group)
        except MILVUS_ERRORS as e:
            raise self._search_error(e, user) from None

    def candidates(self, query: Query) -> tuple[list[RankedRow], list[RankedRow]]:
        """The dense and BM25 legs' candidate documents that a score fusion of ``query`` fuses
        (before any visibility check): for benchmarks that try fusions on the same legs."""
        user = check_user_filter(query.filter)
        dense_expr = all_of(restriction(query.kinds, query.tenant), user)
        text_expr = all_of(restriction(query.full_text_kinds, query.tenant), user)
        with quiet_milvus_logs():
            return self._legs(query, dense_expr, text_expr, query.k, group=True)

    def _legs(
        self, query: Query, dense_expr: str | None, text_expr: str | None, limit: int, group: bool
    ) -> tuple[list[RankedRow], list[RankedRow]]:
        """Both legs of a score fusion, searched at once. Each is a plain search for its best
        rows, grouped by document here: Milvus Lite's grouped search costs 1.5-2x a plain one
        (benchmarks/bench_search_latency.py)."""
        depth = max(limit, FUSION_DEPTH)
        rows = min(MAX_LIMIT, FUSION_ROWS * depth) if group else depth
        leg = _LEGS.submit(self._leg, query, "vector", dense_expr, rows, False)
        text = self._leg(query, BM25_FIELD, text_expr, rows, False)
        dense = leg.result()
        if group:
            return _best_per_document(dense, depth), _best_per_document(text, depth)
        return dense, text

    def _leg(
        self, query: Query, field: str, expr: str | None, limit: int, group: bool
    ) -> list[RankedRow]:
        """One plain search: dense (``field="vector"``) or BM25 over the query's words."""
        data = [self._vector(query)] if field == "vector" else [query.text]
        params = self._dense_params(limit, group) if field == "vector" else {"metric_type": "BM25"}
        result = self.conn.client.search(
            self.collection, data=data, filter=expr, limit=limit, output_fields=HIT_FIELDS,
            search_params=params, anns_field=field, consistency_level="Strong",
            **_grouping(group), **_templated(query),
        )  # fmt: skip
        return _ranked_rows(result)

    def _hybrid(
        self, query: Query, dense_expr: str | None, text_expr: str | None, limit: int, group: bool
    ) -> list[RankedRow]:
        """One ``hybrid_search`` fused by Milvus (``rrf`` or ``weighted``)."""
        # The legs fetch candidates beyond ``limit``, so that fusing, then grouping, still
        # finds ``limit`` documents when some own many rows.
        leg_limit = min(MAX_LIMIT, max(limit, 10 * limit if group else limit, 50))
        legs = [
            AnnSearchRequest(
                [self._vector(query)], "vector", self._dense_params(limit, group), leg_limit,
                expr=dense_expr, expr_params=query.filter_params or None,
            ),
            AnnSearchRequest(
                [query.text], BM25_FIELD, {"metric_type": "BM25"}, leg_limit, expr=text_expr,
                expr_params=query.filter_params or None,
            ),
        ]  # fmt: skip
        ranker = (
            RRFRanker(query.rrf_k)
            if query.ranker == "rrf"
            else WeightedRanker(*query.weights, norm_score=True)
        )
        result = self.conn.client.hybrid_search(
            self.collection, legs, ranker, limit=limit, output_fields=HIT_FIELDS,
            consistency_level="Strong", **_grouping(group),
        )  # fmt: skip
        return _ranked_rows(result)

    def _dense_params(self, limit: int, group: bool) -> dict[str, Any]:
        params: dict[str, Any] = {"metric_type": "COSINE", "params": {}}
        if not self.conn.is_lite:
            params["params"]["ef"] = max(64, limit * (10 if group else 1))
        return params

    @staticmethod
    def _vector(query: Query) -> list[float]:
        return np.asarray(query.vector, dtype=np.float32).reshape(-1).tolist()

    def _search_error(self, exc: BaseException, user: str | None) -> StoreError:
        if user and _PARSE_ERROR.search(exc_message(exc)):
            return self.conn.error(f"bad filter expression {user!r}", exc)
        return self.conn.error(f"search failed on collection '{self.collection}'", exc)

    # -- visibility ------------------------------------------------------------------------------

    def _read_states(self, rows: Sequence[RankedRow], call: _Call) -> None:
        """Read the states of the documents of ``rows`` not read yet in this call, and read
        again those that hide the very rows just found, so that a row is excluded only by a
        state read after the search that found it:

        - a state read in an earlier round may be older than these rows (the writer committed
          a newer version, and deleted the one that state names, in between: seen on a busy
          machine, where one call spanned two writes);
        - a state read just now is read again once per call: Milvus 2.3.5, amid writes, now and
          then answers a read by primary key with a state row's deleted copy (seen: its first
          write's placeholder, tens of seconds and several commits later).
        """
        found = list(dict.fromkeys(r.doc_id for r in rows))
        missing = [d for d in found if d not in call.states]
        if missing:
            call.states.update(self.states(missing))
        hiding = {r.doc_id for r in rows if not self._visible(r, call.states.get(r.doc_id))}
        again = [d for d in found if d in hiding and (d not in missing or d not in call.reread)]
        if again:
            call.reread.update(again)
            call.states.update(self.states(again))

    @staticmethod
    def _visible(row: RankedRow, state: DocumentState | None) -> bool:
        return (
            state is not None and state.content_hash == row.content_hash and row.kind in state.kinds
        )

    @staticmethod
    def _check_restriction(row: RankedRow, query: Query) -> None:
        allowed = set(query.kinds) | set(query.full_text_kinds)
        if row.kind not in allowed or row.tenant != query.tenant:
            raise InputError(
                f"the filter {query.filter!r} widened the search beyond jrag's restriction "
                "(kinds and tenant); a filter can only narrow a search"
            )


def _ranked_rows(result: Any) -> list[RankedRow]:
    """The hits of a one-query search result, as rows."""
    return [_ranked_row(h) for h in (result[0] if result else [])]


def _ranked_row(hit: dict) -> RankedRow:
    entity = hit.get("entity") or {}
    return RankedRow(
        id=hit.get("id", entity.get("id")),
        score=float(hit.get("distance", 0.0)),
        **{f: entity[f] for f in HIT_FIELDS},
    )


def _templated(query: Query) -> dict[str, Any]:
    return {"filter_params": query.filter_params} if query.filter_params else {}


def _grouping(group: bool) -> dict[str, Any]:
    return {"group_by_field": "doc_id"} if group else {}


def _score_fusion(
    query: Query, dense: Sequence[RankedRow], text: Sequence[RankedRow], limit: int, group: bool
) -> list[RankedRow]:
    """Fuse the legs' candidates by ``query.ranker`` (see the module docstring); a candidate
    that a leg did not return gets nothing from that leg.

    Candidates are documents for a grouped search and rows otherwise. A candidate keeps the
    row of the leg that gave it more; the fused score replaces the row's score.
    """
    if query.ranker == "dbsf":
        legs = [(dense, _dbsf(dense), 1.0), (text, _dbsf(text), 1.0)]
    else:
        weights = fusion_weights(query, dense, text)
        legs = [(dense, _scaled(dense), weights[0]), (text, _scaled(text), weights[1])]
    fused: dict[str, float] = {}
    best: dict[str, tuple[float, RankedRow]] = {}
    for rows, normalized, weight in legs:
        for row, value in zip(rows, normalized, strict=True):
            key = row.doc_id if group else row.id
            share = weight * value
            fused[key] = fused.get(key, 0.0) + share
            if key not in best or share > best[key][0]:
                best[key] = (share, row)
    order = sorted(fused, key=fused.__getitem__, reverse=True)[:limit]
    return [replace(best[key][1], score=fused[key]) for key in order]


def _best_per_document(rows: Sequence[RankedRow], depth: int) -> list[RankedRow]:
    """Each document's first (best) row, in order, for the first ``depth`` documents."""
    best: dict[str, RankedRow] = {}
    for row in rows:
        best.setdefault(row.doc_id, row)
    return list(best.values())[:depth]


def fusion_weights(
    query: Query,
    dense: Sequence[RankedRow],
    text: Sequence[RankedRow],
    shape: tuple[float, tuple[Lead, ...]] | None = None,
) -> tuple[float, float]:
    """The legs' weights when ``query`` fuses these candidates by scaled scores: its own, or
    an adaptive fusion's for this BM25 leg; ``shape`` (floor, leads) replaces the ranker's
    :data:`ADAPTIVE` shape (for benchmarks that sweep it)."""
    shape = shape or ADAPTIVE.get(query.ranker)
    if shape is None:
        return query.weights
    # BM25's field: the documents either leg found, up to a fixed depth whatever k.
    field = min(FUSION_DEPTH, max(len(dense), len(text)))
    return adaptive_weights(query.weights, _oriented(text).tolist(), *shape, field=field)


def adaptive_weights(
    ceiling: tuple[float, float],
    text_scores: Sequence[float],
    floor: float,
    leads: Sequence[Lead],
    field: int = FUSION_DEPTH,
) -> tuple[float, float]:
    """The legs' weights for one query from the BM25 leg's own scores (best first, higher
    better): BM25 weighs ``floor``, rising to ``ceiling`` (dense, BM25; normalized to sum 1) as
    far as the furthest of its ``leads`` goes (see :data:`Lead`)."""
    total = sum(ceiling) or 1.0
    top = ceiling[1] / total
    trust = max(
        min(1.0, max(0.0, (bm25_lead(text_scores, versus, field) - start) / (full - start)))
        for versus, start, full in leads
    )
    text_weight = floor + trust * (top - floor)
    return (1.0 - text_weight, text_weight)


def bm25_lead(text_scores: Sequence[float], versus: str, field: int = FUSION_DEPTH) -> float:
    """How far the first score stands out of the second, or of the median of the first
    ``field`` (those BM25 did not find counting as 0), as a share of the first score."""
    if not text_scores or text_scores[0] <= 0:
        return 0.0
    if versus == "median":  # a word found in one document alone leads by all its score
        scores = [*text_scores[:field], *[0.0] * (field - len(text_scores))]
        return (text_scores[0] - float(np.median(scores))) / text_scores[0]
    return (text_scores[0] - text_scores[1]) / text_scores[0] if len(text_scores) > 1 else 0.0


def _oriented(rows: Sequence[RankedRow]) -> np.ndarray:
    """The rows' scores, higher meaning better: Milvus Lite reports BM25 scores negated, so a
    leg whose first (best) score is below its last is flipped."""
    scores = np.array([row.score for row in rows], dtype=np.float64)
    return -scores if len(scores) > 1 and scores[0] < scores[-1] else scores


def _scaled(rows: Sequence[RankedRow]) -> list[float]:
    """Scores scaled to [0, 1] in the search's own order (its best 1, its last 0)."""
    if not rows:
        return []
    scores = _oriented(rows)
    low, high = scores.min(), scores.max()
    if high == low:
        return [1.0] * len(rows)
    return ((scores - low) / (high - low)).tolist()


def _dbsf(rows: Sequence[RankedRow]) -> list[float]:
    """Scores mapped by mean +- 3 sample standard deviations onto [0, 1], as Qdrant's DBSF
    (unclipped: a score beyond 3 deviations keeps its lead)."""
    if not rows:
        return []
    scores = _oriented(rows)
    std = scores.std(ddof=1) if len(scores) > 1 else 0.0
    if std == 0.0:
        return [0.5] * len(rows)
    low = scores.mean() - 3 * std
    return ((scores - low) / (6 * std)).tolist()


# The dense leg runs here while the calling thread runs BM25; shared by every ranker, so a
# search does not pay to start a thread.
_LEGS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="jrag-leg")


def _exclusion(excluded: Sequence[tuple[str, str, str]]) -> str | None:
    if not excluded:
        return None
    terms = [
        f"(doc_id == {quote(d)} and content_hash == {quote(h)} and kind == {quote(k)})"
        for d, h, k in dict.fromkeys(excluded)
    ]
    return f"not ({' or '.join(terms)})"


# What Milvus says of a filter it cannot parse ("unexpected token...": Milvus Lite 2.5's parser).
_PARSE_ERROR = re.compile(
    "parse expr|query plan|syntax|invalid expr|not exist|unknown field|unexpected token"
    "|unexpected end of expression|unknown escape sequence|cannot parse",
    re.IGNORECASE,
)
