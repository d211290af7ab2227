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

With full-text search, a search has a dense leg and a BM25 leg, fused by one of :data:`RANKERS`:

- ``relative`` (the default, by measurement): each leg is searched on its own, its scores are
  scaled to [0, 1] over its candidates (best 1, worst 0), and the weighted sums rank. A BM25
  score that stands far above the rest keeps that lead, which is what finds a rare word deep
  inside a long document;
- ``rrf`` and ``weighted``: one ``hybrid_search`` fused by Milvus (``RRFRanker``, or
  ``WeightedRanker``, which squashes BM25 scores through arctan). Both keep only ranks or
  near-equal scores of BM25 and lose that lead.

Text is not fetched here: callers fetch it for the winners only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
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

logger = logging.getLogger(__name__)

RANKERS = ("relative", "rrf", "weighted")
RRF_K = 60
# Candidates per leg of a ``relative`` search (documents when grouped). Measured on git-doc:
# 50 gave nDCG@10 0.814 at 51 ms/query, 20 gives 0.820 at 40 ms (docs/retrieval-variants.md).
RELATIVE_DEPTH = 20
HIT_FIELDS = ["doc_id", "tenant", "kind", "chunk_index", "start", "end", "content_hash"]
MAX_LIMIT = 16384  # Milvus caps a search's limit (and offset + limit) here
MAX_ROUNDS = 16


@dataclass
class Query:
    """What to rank: a query's vector (and words, for BM25), and where to look."""

    vector: np.ndarray
    text: str
    k: int
    kinds: tuple[str, ...]  # dense leg: these vector row kinds
    full_text_kinds: tuple[str, ...] = ()  # BM25 leg: these kinds; empty = dense only
    ranker: str = DEFAULT_RANKER
    weights: tuple[float, float] = DEFAULT_WEIGHTS  # dense, BM25 (relative or weighted)
    filter: str | None = None
    tenant: str = ""


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


class DocumentRanker:
    """Ranks the documents of one collection (see the module docstring)."""

    def __init__(
        self,
        conn: Connection,
        collection: str,
        states: Callable[[Sequence[str]], dict[str, DocumentState]],
        *,
        check_versions: bool = True,
    ) -> None:
        self.conn = conn
        self.collection = collection
        self.states = states
        self.check_versions = check_versions

    def rank(self, query: Query) -> tuple[list[RankedRow], dict[str, DocumentState]]:
        """The ``query.k`` best documents' best rows, best first, with their states."""
        if query.k <= 0 or not (query.kinds or query.full_text_kinds):
            return [], {}
        if query.ranker not in RANKERS:
            raise InputError(f"unknown ranker {query.ranker!r}; use one of {', '.join(RANKERS)}")
        user = check_user_filter(query.filter)
        self._excluded: list[tuple[str, str, str]] = []  # (doc_id, hash, kind) not visible
        states: dict[str, DocumentState] = {}
        ranked: dict[str, RankedRow] = {}
        if self.conn.capabilities.group_by:
            ranked = self._grouped(query, user, states)
        if len(ranked) < query.k:
            # No grouping here, or the grouped candidates ran short: the exact loop fills up.
            self._loop(query, user, states, ranked)
        best = list(ranked.values())[: query.k]  # in search order (Lite's BM25 scores are negative)
        return best, {r.doc_id: states[r.doc_id] for r in best if r.doc_id in states}

    def _grouped(
        self, query: Query, user: str | None, states: dict[str, DocumentState]
    ) -> dict[str, RankedRow]:
        """One grouped search; repeated only while it returns rows that are not visible."""
        ranked: dict[str, RankedRow] = {}
        for _ in range(MAX_ROUNDS):
            ranked = {}
            rows = self._search(query, user, _exclusion(self._excluded), query.k, group=True)
            if not self._take(rows, query, states, ranked):
                break
        return ranked

    def _loop(
        self,
        query: Query,
        user: str | None,
        states: dict[str, DocumentState],
        ranked: dict[str, RankedRow],
    ) -> None:
        """Search, keep each new document's first visible row, exclude the documents found,
        and search again until ``k`` documents or no more rows."""
        limit = min(MAX_LIMIT, max(4 * query.k, 50))
        for _ in range(MAX_ROUNDS * 4):
            exclusions = all_of(_exclusion(self._excluded), none_of("doc_id", ranked))
            rows = self._search(query, user, exclusions, limit, group=False)
            invisible = self._take(rows, query, states, ranked)
            if len(ranked) >= query.k or (len(rows) < limit and not invisible):
                return

    def _take(
        self,
        rows: Sequence[RankedRow],
        query: Query,
        states: dict[str, DocumentState],
        ranked: dict[str, RankedRow],
    ) -> bool:
        """Add each new document's first visible row; True if some rows were not visible."""
        states.update(self._states_of(rows, states))
        invisible = False
        for row in rows:
            self._check_restriction(row, query)
            if row.doc_id in ranked:
                continue
            if not self._visible(row, states.get(row.doc_id)):
                self._excluded.append((row.doc_id, row.content_hash, row.kind))
                invisible = True
                continue
            if len(ranked) < query.k:
                ranked[row.doc_id] = row
        return invisible

    def top_rows(self, query: Query, limit: int) -> list[RankedRow]:
        """The ``limit`` best visible rows, best first, several per document allowed."""
        user = check_user_filter(query.filter)
        self._excluded = []
        states: dict[str, DocumentState] = {}
        for _ in range(MAX_ROUNDS):
            rows = self._search(query, user, _exclusion(self._excluded), limit, group=False)
            states.update(self._states_of(rows, states))
            kept = []
            for row in rows:
                self._check_restriction(row, query)
                if self._visible(row, states.get(row.doc_id)):
                    kept.append(row)
                else:
                    self._excluded.append((row.doc_id, row.content_hash, row.kind))
            if len(kept) == len(rows):
                return kept
        return kept

    # -- one search ------------------------------------------------------------------------------

    def _search(
        self, query: Query, user: str | None, exclusions: str | None, limit: int, *, group: bool
    ) -> list[RankedRow]:
        tenant = query.tenant if self.check_versions else None  # older schemas had no tenant
        dense_expr = all_of(restriction(query.kinds, tenant), user, exclusions)
        text_expr = all_of(restriction(query.full_text_kinds, tenant), user, exclusions)
        try:
            with quiet_milvus_logs():
                if not query.full_text_kinds:
                    return self._leg(query, "vector", dense_expr, limit, group)
                if not query.kinds:  # full-text search alone
                    return self._leg(query, BM25_FIELD, text_expr, limit, group)
                if query.ranker == "relative":
                    depth = max(limit, RELATIVE_DEPTH)
                    # The two legs run at once: Milvus serves them in parallel.
                    with ThreadPoolExecutor(max_workers=1) as pool:
                        leg = pool.submit(self._leg, query, "vector", dense_expr, depth, group)
                        text = self._leg(query, BM25_FIELD, text_expr, depth, group)
                        dense = leg.result()
                    return _relative_fusion(dense, text, query.weights, limit, group)
                return self._hybrid(query, dense_expr, text_expr, limit, group)
        except MILVUS_ERRORS as e:
            raise self._search_error(e, user) from None

    def _leg(
        self, query: Query, field: str, expr: str | None, limit: int, group: bool
    ) -> list[RankedRow]:
        """One plain search: dense (``field="vector"``) or BM25 over the query's words."""
        data = [self._vector(query)] if field == "vector" else [query.text]
        params = self._dense_params(limit, group) if field == "vector" else {"metric_type": "BM25"}
        result = self.conn.client.search(
            self.collection, data=data, filter=expr, limit=limit, output_fields=self._fields(),
            search_params=params, anns_field=field, consistency_level="Strong",
            **_grouping(group),
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
                expr=dense_expr,
            ),
            AnnSearchRequest(
                [query.text], BM25_FIELD, {"metric_type": "BM25"}, leg_limit, expr=text_expr
            ),
        ]  # fmt: skip
        ranker = (
            RRFRanker(RRF_K)
            if query.ranker == "rrf"
            else WeightedRanker(*query.weights, norm_score=True)
        )
        result = self.conn.client.hybrid_search(
            self.collection, legs, ranker, limit=limit, output_fields=self._fields(),
            consistency_level="Strong", **_grouping(group),
        )  # fmt: skip
        return _ranked_rows(result)

    def _fields(self) -> list[str]:
        return HIT_FIELDS if self.check_versions else [f for f in HIT_FIELDS if f != "tenant"]

    def _dense_params(self, limit: int, group: bool) -> dict[str, Any]:
        params: dict[str, Any] = {"metric_type": "COSINE", "params": {}}
        if not self.conn.is_lite:
            params["params"]["ef"] = max(64, limit * (10 if group else 1))
        return params

    @staticmethod
    def _vector(query: Query) -> list[float]:
        return np.asarray(query.vector, dtype=np.float32).reshape(-1).tolist()

    def _search_error(self, exc: BaseException, user: str | None) -> StoreError:
        message = exc_message(exc)
        if user and _is_parse_error(message):
            return self.conn.error(f"bad filter expression {user!r}", exc)
        return self.conn.error(f"search failed on collection '{self.collection}'", exc)

    # -- visibility ------------------------------------------------------------------------------

    def _states_of(
        self, rows: Sequence[RankedRow], known: dict[str, DocumentState]
    ) -> dict[str, DocumentState]:
        if not self.check_versions:
            return {}
        missing = [r.doc_id for r in rows if r.doc_id not in known]
        return self.states(missing) if missing else {}

    def _visible(self, row: RankedRow, state: DocumentState | None) -> bool:
        if not self.check_versions:
            return True
        return (
            state is not None and state.content_hash == row.content_hash and row.kind in state.kinds
        )

    @staticmethod
    def _check_restriction(row: RankedRow, query: Query) -> None:
        allowed = set(query.kinds) | set(query.full_text_kinds)
        wrong_tenant = row.tenant is not None and row.tenant != query.tenant
        if row.kind not in allowed or wrong_tenant:
            raise InputError(
                f"the filter {query.filter!r} widened the search beyond jrag's restriction "
                "(kinds and tenant); a filter can only narrow a search"
            )


def _ranked_rows(result: Any) -> list[RankedRow]:
    """The hits of a one-query search result, as rows."""
    return [_ranked_row(h) for h in (result[0] if result else [])]


def _ranked_row(hit: dict) -> RankedRow:
    entity = hit.get("entity") or {}
    return _Row(
        id=hit.get("id", entity.get("id")),
        doc_id=entity["doc_id"],
        tenant=entity.get("tenant"),
        kind=entity["kind"],
        chunk_index=int(entity["chunk_index"]),
        start=int(entity["start"]),
        end=int(entity["end"]),
        content_hash=entity["content_hash"],
        score=float(hit.get("distance", 0.0)),
    )


@dataclass
class _Row(RankedRow):
    tenant: str | None = None  # None: the older schema has no tenant field


def _grouping(group: bool) -> dict[str, Any]:
    return {"group_by_field": "doc_id"} if group else {}


def _relative_fusion(
    dense: Sequence[RankedRow],
    text: Sequence[RankedRow],
    weights: tuple[float, float],
    limit: int,
    group: bool,
) -> list[RankedRow]:
    """Relative score fusion: each leg's scores scaled to [0, 1] over its own candidates (its
    best 1, its last 0; a leg that misses a candidate gives it 0), summed with ``weights``.

    Candidates are documents for a grouped search and rows otherwise. A candidate keeps the
    row of the leg that gave it more; the fused score replaces the row's score.
    """
    fused: dict[str, float] = {}
    best: dict[str, tuple[float, RankedRow]] = {}
    for rows, weight in ((dense, weights[0]), (text, weights[1])):
        for row, scaled in zip(rows, _scaled(rows), strict=True):
            key = row.doc_id if group else row.id
            share = weight * scaled
            fused[key] = fused.get(key, 0.0) + share
            if key not in best or share > best[key][0]:
                best[key] = (share, row)
    order = sorted(fused, key=fused.__getitem__, reverse=True)[:limit]
    return [replace(best[key][1], score=fused[key]) for key in order]


def _scaled(rows: Sequence[RankedRow]) -> list[float]:
    """Scores scaled to [0, 1] in the search's own order (best first), whatever their sign:
    Milvus Lite reports BM25 scores negated."""
    if not rows:
        return []
    first, last = rows[0].score, rows[-1].score
    if first == last:
        return [1.0] * len(rows)
    return [(row.score - last) / (first - last) for row in rows]


def _exclusion(excluded: Sequence[tuple[str, str, str]]) -> str | None:
    if not excluded:
        return None
    terms = [
        f"(doc_id == {quote(d)} and content_hash == {quote(h)} and kind == {quote(k)})"
        for d, h, k in dict.fromkeys(excluded)
    ]
    return f"not ({' or '.join(terms)})"


def _is_parse_error(message: str) -> bool:
    lowered = message.lower()
    return any(
        marker in lowered
        for marker in (
            "parse expr",
            "query plan",
            "syntax",
            "invalid expr",
            "not exist",
            "unknown field",
            "unexpected token",  # Milvus Lite 2.5's parser
            "unexpected end of expression",
            "unknown escape sequence",
            "cannot parse",
        )
    )
