"""Search: a query → the best documents, each with its best passage and a character span.

The same function serves ``jrag search``, ``jrag ask``, both retrievers and the eval:

1. the query is embedded once (callers that already have its vector pass it in);
2. :meth:`MilvusStore.rank` ranks documents exactly (grouped search, or an exact loop), over
   every kind the collection holds (``mode="auto"``) or one mode's kinds, dense or hybrid
   (dense + BM25, fused by relative scores) where the collection has full-text search;
3. each winner's best passage is its best late chunk (or naive chunk); a whole-document hit in
   a collection with late chunks looks for its best late chunk inside that document;
4. only then is text read, for the winners alone: ``content="passage"`` gives the passage plus
   neighbouring context up to ``context_tokens``; ``content="document"`` gives the whole window.

With ``rerank`` (a cross-encoder, off by default), step 2 ranks ``rerank_depth`` documents, the
cross-encoder scores each on its best passage with context, and the ``k`` best by that score are
kept, in that order, scored by its logit. Filters and tenants apply in step 2 as always.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from jrag.diversity import (
    DEFAULT_MMR_LAMBDA,
    MMR_DEPTH,
    check_lambda,
    document_vectors,
    maximal_marginal_relevance,
)
from jrag.encoder import Encoder
from jrag.errors import InputError
from jrag.modes import (
    CONTENTS,
    DEFAULT_CONTENT,
    DEFAULT_K,
    DEFAULT_RANKER,
    DEFAULT_RERANK_DEPTH,
    DEFAULT_SEARCH_MODE,
    SEARCH_MODES,
    full_text_kinds,
    ranker_weights,
    search_kinds,
)
from jrag.rerank import Reranker, load_reranker
from jrag.store import RANKERS, DocumentState, MilvusStore, Query, RankedRow
from jrag.store.filters import all_of, check_user_filter, one_of
from jrag.store.metadata import compile_where
from jrag.store.search import RRF_K

logger = logging.getLogger("jrag")

DEFAULT_CONTEXT_TOKENS = 384
_NOTICES: set[tuple[str, str]] = set()
_NOTICES_LOCK = threading.Lock()
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


@dataclass
class SearchResult:
    """One retrieved document: its content span, and the passage that matched best.

    ``start``/``end``/``text`` are the content handed on (a passage with context, or the whole
    window); ``passage_start``/``passage_end`` the best passage inside it. Offsets index the
    document's parsed text, so ``parse_file(source).text[start:end] == text``.
    """

    doc_id: str
    source: str
    title: str
    score: float
    kind: str
    start: int
    end: int
    text: str
    passage_start: int
    passage_end: int
    metadata: dict = field(default_factory=dict)

    @property
    def page(self) -> int | None:
        return self.metadata.get("page")

    def to_dict(self) -> dict[str, Any]:
        """The fields and the page: a result as JSON (``jrag search --json``, ``POST /search``)."""
        return self.__dict__ | {"page": self.page}


@dataclass
class SearchOptions:
    """How to search; the defaults are what ``jrag search`` and the retrievers use.

    The one declaration of the search options: the CLI, both retrievers and ``ask`` build it
    with :meth:`pick` from their like-named arguments, so a new field reaches all of them.
    """

    k: int = DEFAULT_K
    mode: str = DEFAULT_SEARCH_MODE
    filter: str | None = None
    hybrid: bool = True
    dense: bool = True  # False: the BM25 leg alone (needs hybrid and a collection with BM25)
    ranker: str = DEFAULT_RANKER
    weights: tuple[float, float] | None = None  # None: the ranker's own (jrag.modes)
    rrf_k: int = RRF_K  # the rrf ranker's constant
    content: str = DEFAULT_CONTENT
    context_tokens: int = DEFAULT_CONTEXT_TOKENS
    tenant: str = ""
    full_text_kinds: tuple[str, ...] | None = None  # None: by measurement (jrag.modes)
    rerank: str | Reranker | None = None  # a cross-encoder (model name or loaded), off if None
    rerank_depth: int = DEFAULT_RERANK_DEPTH
    where: dict | None = None  # a structured metadata filter (jrag.store.metadata)
    mmr: bool = False  # re-rank the fused candidates by maximal marginal relevance
    mmr_lambda: float = DEFAULT_MMR_LAMBDA  # 1: relevance only; lower: more diversity

    @classmethod
    def pick(cls, source: Mapping[str, Any] | object, **overrides: Any) -> SearchOptions:
        """The options ``source`` names (a mapping such as a command's arguments, or an object
        such as a retriever, read by field name), then ``overrides`` that are not None; fields
        ``source`` lacks keep their defaults."""
        missing = object()
        values = {}
        for option in fields(cls):
            if isinstance(source, Mapping):
                value = source.get(option.name, missing)
            else:
                value = getattr(source, option.name, missing)
            if value is not missing:
                values[option.name] = value
        values.update({name: v for name, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InputError(f"k must be a positive number of documents, not {self.k!r}")
        if self.mode not in SEARCH_MODES:
            raise InputError(f"unknown mode {self.mode!r}; use one of {', '.join(SEARCH_MODES)}")
        if self.ranker not in RANKERS:
            raise InputError(f"unknown ranker {self.ranker!r}; use one of {', '.join(RANKERS)}")
        if self.weights is None:
            self.weights = ranker_weights(self.ranker)
        if self.content not in CONTENTS:
            raise InputError(f"unknown content {self.content!r}; use one of {', '.join(CONTENTS)}")
        if (
            not isinstance(self.weights, tuple | list)
            or len(self.weights) != 2
            or not all(isinstance(w, int | float) and math.isfinite(w) for w in self.weights)
            or any(w < 0 for w in self.weights)
            or sum(self.weights) <= 0
        ):
            raise InputError(
                f"weights must be two finite non-negative numbers, not both 0; got {self.weights!r}"
            )
        self.weights = tuple(self.weights)
        if isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, int) or self.rrf_k < 1:
            raise InputError(f"rrf_k must be a positive whole number, not {self.rrf_k!r}")
        depth = self.rerank_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 1000:
            raise InputError(f"rerank_depth must be between 1 and 1000, not {depth!r}")
        check_lambda(self.mmr_lambda)
        compile_where(self.where, params=False)  # a bad key or value fails here, by name


def embed_query(encoder: Encoder, query: str) -> np.ndarray:
    """The query's vector; an empty query is an InputError."""
    if not isinstance(query, str) or not query.strip():
        raise InputError("the query is empty")
    return encoder.encode_query([query])[0]


def build_query(
    store: MilvusStore, query: str, vector: np.ndarray, options: SearchOptions
) -> Query:
    """The store query for ``options``: kinds from the mode, BM25 where available."""
    held = search_kinds(options.mode, store.manifest.vector_kinds, store.where)
    kinds = held if options.dense else ()
    where, params = compile_where(options.where, params=store.capabilities.filter_params)
    text_kinds: tuple[str, ...] = ()
    if options.hybrid:
        if store.full_text:
            preferred = options.full_text_kinds
            text_kinds = full_text_kinds(held) if preferred is None else tuple(preferred)
        else:
            _notice_once(store, _no_full_text_reason(store))
    if not options.dense and not (options.hybrid and store.full_text):
        raise InputError(f"a search without its dense leg needs hybrid and BM25 in {store.where}")
    return Query(
        vector=vector,
        text=query,
        k=options.k,
        kinds=kinds,
        full_text_kinds=text_kinds,
        ranker=options.ranker,
        weights=tuple(options.weights),
        rrf_k=options.rrf_k,
        filter=all_of(check_user_filter(options.filter), where),
        tenant=options.tenant,
        filter_params=params or None,
    )


def search(
    query: str,
    store: MilvusStore,
    encoder: Encoder,
    options: SearchOptions | None = None,
    *,
    vector: np.ndarray | None = None,
    **overrides,
) -> list[SearchResult]:
    """The ``k`` best documents for ``query``, best first (see the module docstring).

    Keyword ``overrides`` set :class:`SearchOptions` fields (``k=3, mode="late"``).
    """
    if options is None or overrides:
        options = SearchOptions(**{**(options.__dict__ if options else {}), **overrides})
    if isinstance(options.rerank, str):  # loaded (once per process) before any search runs
        options = replace(options, rerank=load_reranker(options.rerank, str(encoder.device)))
    vector = embed_query(encoder, query) if vector is None else vector
    for _ in range(STALE_READ_RETRIES):
        results = _search_once(query, vector, store, encoder, options)
        if all(len(r.text) == r.end - r.start for r in results):
            break
        # A writer committed a new version of a document between ranking and reading its
        # text (whose old rows it then deleted): rank again, against the new version.
    return results


# A concurrent re-ingest can replace a document mid-search; rank again at most this many times.
# Each try fails only if another commit lands inside its own few milliseconds: a writer that
# re-ingests every document non-stop failed ~40% of single tries on 6 documents (measured).
STALE_READ_RETRIES = 10


# A result's span of its document, and the text in it.
Span = tuple[int, int, str]


def _search_once(
    query: str, vector: np.ndarray, store: MilvusStore, encoder: Encoder, options: SearchOptions
) -> list[SearchResult]:
    rerank_depth = options.rerank_depth if options.rerank is not None else 0
    depth = max(options.k, rerank_depth, max(MMR_DEPTH, 4 * options.k) if options.mmr else 0)
    first = options if depth == options.k else replace(options, k=depth)
    ranked, states = store.rank(build_query(store, query, vector, first))
    if not ranked:
        return []
    if options.mmr:  # k diverse documents of the candidates; a reranker then orders them
        ranked = _diverse(store, vector, ranked, states, options)
    passages = _best_passages(store, query, vector, ranked, states, first)
    if options.rerank is not None:  # it scores each passage with its context: those are kept
        ranked, spans = _reranked(query, store, encoder, ranked, states, passages, options)
    if options.rerank is None or options.content == "document":
        spans = _spans(store, encoder, ranked, states, passages, options)
    return [
        _result(row, states[row.doc_id], passages.get(row.doc_id) or row, spans[row.doc_id])
        for row in ranked
    ]


def _diverse(
    store: MilvusStore,
    vector: np.ndarray,
    ranked: Sequence[RankedRow],
    states: dict[str, DocumentState],
    options: SearchOptions,
) -> list[RankedRow]:
    """The ``k`` documents of ``ranked`` that maximal marginal relevance picks, in its order."""
    vectors = document_vectors(store, [states[r.doc_id] for r in ranked])
    kept = [r for r in ranked if r.doc_id in vectors]  # those with a vector to compare
    if not kept:
        return list(ranked[: options.k])
    matrix = np.stack([vectors[r.doc_id] for r in kept])
    order = maximal_marginal_relevance(vector, matrix, options.k, options.mmr_lambda)
    return [kept[i] for i in order]


def _reranked(
    query: str,
    store: MilvusStore,
    encoder: Encoder,
    ranked: Sequence[RankedRow],
    states: dict[str, DocumentState],
    passages: dict[str, RankedRow],
    options: SearchOptions,
) -> tuple[list[RankedRow], dict[str, Span]]:
    """The ``k`` best of ``ranked`` by the cross-encoder's score of each document's best passage
    with context, scored by it; and those passages' spans, for the results to reuse."""
    pairs = [(states[r.doc_id], passages.get(r.doc_id) or r) for r in ranked]
    spans = _with_context(store, encoder, pairs, options.context_tokens)
    scores = options.rerank.score(query, [spans[r.doc_id][2] for r in ranked])
    order = sorted(range(len(ranked)), key=lambda i: -scores[i])[: options.k]
    return [replace(ranked[i], score=scores[i]) for i in order], spans


# -- passages ------------------------------------------------------------------------------------


def _best_passages(
    store: MilvusStore,
    query: str,
    vector: np.ndarray,
    ranked: Sequence[RankedRow],
    states: dict[str, DocumentState],
    options: SearchOptions,
) -> dict[str, RankedRow]:
    """Each document's best passage row: its best row itself, unless that is a whole window
    and the document has late chunks, which are then searched within it."""
    passages = {r.doc_id: r for r in ranked if r.kind != "doc"}
    need = [r.doc_id for r in ranked if r.kind == "doc" and "late" in states[r.doc_id].kinds]
    if need:
        late_query = build_query(store, query, vector, late_chunks_of(need, options, len(need)))
        rows, _ = store.rank(late_query)
        passages.update({r.doc_id: r for r in rows})
    return passages


def late_chunks_of(doc_ids: Sequence[str], options: SearchOptions, k: int) -> SearchOptions:
    """``options`` narrowed to the late chunks of ``doc_ids``, in both legs: where a document's
    best passage is looked for."""
    return SearchOptions(
        k=k, mode="late", hybrid=options.hybrid, ranker=options.ranker, weights=options.weights,
        rrf_k=options.rrf_k, tenant=options.tenant, full_text_kinds=("late",),
        filter=all_of(one_of("doc_id", list(doc_ids)), options.filter),
    )  # fmt: skip


def _spans(
    store: MilvusStore,
    encoder: Encoder,
    ranked: Sequence[RankedRow],
    states: dict[str, DocumentState],
    passages: dict[str, RankedRow],
    options: SearchOptions,
) -> dict[str, Span]:
    """Each result's span: the window that holds its passage (``content="document"``), or the
    passage with its context; the texts read at once."""
    pairs = [(states[r.doc_id], passages.get(r.doc_id) or r) for r in ranked]
    if options.content != "document":
        return _with_context(store, encoder, pairs, options.context_tokens)
    cuts = [(s, *_window_around(store, s, r, p)) for r, (s, p) in zip(ranked, pairs, strict=True)]
    texts = store.document_texts(cuts)
    return {s.doc_id: (start, end, t) for (s, start, end), t in zip(cuts, texts, strict=True)}


def _result(best: RankedRow, state: DocumentState, passage: RankedRow, span: Span) -> SearchResult:
    start, end, text = span
    metadata = {
        **{k: v for k, v in state.metadata.items() if k != "page_starts"},
        "page": page_at(state, start),
        "page_end": page_at(state, end),
    }
    return SearchResult(
        doc_id=state.doc_id, source=state.source, title=state.title, score=best.score,
        kind=best.kind, start=start, end=end, text=text, passage_start=passage.start,
        passage_end=passage.end, metadata=metadata,
    )  # fmt: skip


def _window_around(
    store: MilvusStore, state: DocumentState, best: RankedRow, passage: RankedRow
) -> tuple[int, int]:
    """The whole-document window holding the passage (the document itself past no window)."""
    if best.kind == "doc" and best.start <= passage.start and passage.end <= best.end:
        return best.start, best.end  # the best passage can lie in another window than the best
    for window in store.get_rows([state.doc_id], "doc"):
        if window.start <= passage.start and passage.end <= window.end:
            return window.start, window.end
    return 0, int(state.metadata.get("length", passage.end))


def _with_context(
    store: MilvusStore,
    encoder: Encoder,
    pairs: Sequence[tuple[DocumentState, RankedRow]],
    budget: int,
) -> dict[str, Span]:
    """Each (document, passage) pair's passage grown by whole sentences on both sides while it
    fits in ``budget`` tokens (small-to-big: the match is found on a small span, the reader gets
    its surroundings); the texts around the passages read at once."""
    margin = 8 * budget  # characters: plenty for ``budget`` tokens of ordinary text
    cuts = [(state, max(0, p.start - margin), p.end + margin) for state, p in pairs]
    arounds = store.document_texts(cuts)
    return {
        state.doc_id: _grown(encoder, around, low, passage, budget)
        for (state, passage), (_, low, _), around in zip(pairs, cuts, arounds, strict=True)
    }


def _grown(encoder: Encoder, around: str, low: int, passage: RankedRow, budget: int) -> Span:
    """``passage`` grown within ``around``, the document's text from ``low``."""
    start, end = passage.start, passage.end
    if not around:
        return start, end, ""  # the version was replaced meanwhile: the search ranks again
    high = low + len(around)
    used = _tokens(encoder, around[start - low : end - low])
    before = _sentence_cuts(around, low, start, backwards=True)
    after = _sentence_cuts(around, low, end, backwards=False)
    while before or after:  # each turn takes one cut from each side, or drops that side
        for cuts, backwards in ((after, False), (before, True)):
            if not cuts:
                continue
            cut = cuts.pop(0)
            piece = around[cut - low : start - low] if backwards else around[end - low : cut - low]
            cost = _tokens(encoder, piece)
            if used + cost > budget:
                cuts.clear()
                continue
            used += cost
            start, end = (cut, end) if backwards else (start, cut)
    start, end = max(start, low), min(end, high)
    return start, end, around[start - low : end - low]


def _sentence_cuts(text: str, offset: int, at: int, *, backwards: bool) -> list[int]:
    """Sentence boundaries in ``text`` (which starts at ``offset``) beyond ``at``, nearest first."""
    bounds = [offset + m.end() for m in _SENTENCE_END.finditer(text)]
    if backwards:
        return [b for b in reversed(bounds) if b < at] + ([offset] if offset < at else [])
    ends = [offset + m.start() for m in _SENTENCE_END.finditer(text)]
    return [e for e in ends if e > at] + [offset + len(text)]


def _tokens(encoder: Encoder, text: str) -> int:
    if not text.strip():
        return 0
    return len(encoder.tokenizer.encode(text, add_special_tokens=False).ids)


def page_at(state: DocumentState, offset: int) -> int | None:
    starts = state.metadata.get("page_starts")
    return max(1, bisect.bisect_right(starts, offset)) if starts else None


# -- notices ---------------------------------------------------------------------------------------


def _no_full_text_reason(store: MilvusStore) -> str:
    if not store.capabilities.bm25:
        return (
            f"full-text search is off for {store.where}: Milvus "
            f"{store.capabilities.version} has no BM25 (it needs Milvus ≥ 2.5 or Milvus "
            "Lite); searching by vectors only"
        )
    return (
        f"full-text search is off for {store.where}: it was created without it; searching by "
        "vectors only"
    )


def _notice_once(store: MilvusStore, message: str) -> None:
    key = (store.where, message)
    with _NOTICES_LOCK:
        if key in _NOTICES:
            return
        _NOTICES.add(key)
    logger.warning(message)
