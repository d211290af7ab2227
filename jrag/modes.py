"""One table: what each ingest mode writes, and what each search mode reads.

Row kinds (see :mod:`jrag.store.rows`): ``doc`` (a whole document, or one overlapping window
past the model's limit), ``late`` (late chunks pooled from that same pass) and ``chunk`` (naive
512-token chunks embedded one by one, the baseline).

The defaults were chosen by measurement; see README.md ("Defaults, measured").
"""

from __future__ import annotations

from jrag.errors import InputError

# ingest mode -> the row kinds it writes
INGEST_MODES: dict[str, tuple[str, ...]] = {
    "whole": ("doc",),
    "late": ("doc", "late"),
    "chunked": ("chunk",),
}
# search mode -> the row kinds it reads; "auto" reads every kind the collection holds
SEARCH_MODES: dict[str, tuple[str, ...] | None] = {
    "auto": None,
    "whole": ("doc",),
    "late": ("late",),
    "chunked": ("chunk",),
}
DEFAULT_INGEST_MODE = "late"
DEFAULT_SEARCH_MODE = "auto"
# Which rows carry the BM25 leg of a hybrid search, best first: whole windows beat late passages
# (needle Acc@1 at 2k: 0.96 against 0.83; measured, see README.md). Naive chunks are the BM25
# rows of a chunked-only collection.
FULL_TEXT_PREFERENCE: tuple[str, ...] = ("doc", "chunk", "late")
# How a hybrid search fuses its dense and BM25 legs (see jrag.store.search): chosen by the worst
# case across word-overlap and paraphrase benchmarks (docs/retrieval-variants.md).
DEFAULT_RANKER = "adaptive-max"
# Each ranker's weights (dense, BM25) when none are given, each its best by the same worst case;
# for the adaptive rankers, those reached when BM25's winner stands out. rrf and dbsf take none.
RANKER_WEIGHTS: dict[str, tuple[float, float]] = {
    "adaptive-max": (0.025, 0.975),
    "adaptive": (0.1, 0.9),
    "adaptive-median": (0.025, 0.975),
    "relative": (0.1, 0.9),
    "weighted": (0.2, 0.8),
}
DEFAULT_WEIGHTS = RANKER_WEIGHTS[DEFAULT_RANKER]
CONTENTS = ("passage", "document")
# The rest of a search's defaults (jrag.retrieval.SearchOptions), here so that the CLI can show
# them without importing the search code.
DEFAULT_K = 5
DEFAULT_CONTENT = "passage"
# How many fused documents a reranker scores, when it is on.
DEFAULT_RERANK_DEPTH = 20


def ranker_weights(ranker: str) -> tuple[float, float]:
    """``ranker``'s weights when a search gives none."""
    return RANKER_WEIGHTS.get(ranker, (0.5, 0.5))


def check_ingest_mode(mode: str) -> tuple[str, ...]:
    if mode not in INGEST_MODES:
        raise InputError(f"unknown mode {mode!r}; use one of {', '.join(INGEST_MODES)}")
    return INGEST_MODES[mode]


def search_kinds(
    mode: str, held: tuple[str, ...], where: str = "the collection"
) -> tuple[str, ...]:
    """The row kinds a search in ``mode`` reads, given the kinds the collection ``held``."""
    if mode not in SEARCH_MODES:
        raise InputError(f"unknown mode {mode!r}; use one of {', '.join(SEARCH_MODES)}")
    wanted = SEARCH_MODES[mode]
    if wanted is None:
        return held
    missing = [kind for kind in wanted if kind not in held]
    if missing:
        holds = ", ".join(held) if held else "no rows yet"
        raise InputError(
            f"search mode {mode!r} reads {'/'.join(missing)} rows, which {where} does not hold "
            f"(it holds: {holds}). Use --mode auto, or ingest with --mode {_mode_writing(missing)}"
        )
    return wanted


def full_text_kinds(held: tuple[str, ...], preference: tuple[str, ...] = FULL_TEXT_PREFERENCE):
    """The kinds the BM25 leg searches: the first preferred kind the search reads."""
    for kind in preference:
        if kind in held:
            return (kind,)
    return ()


def _mode_writing(kinds: list[str]) -> str:
    for mode, writes in INGEST_MODES.items():
        if set(kinds) <= set(writes):
            return mode
    return "late"
