"""Chunk boundaries as character spans, and late-chunk pooling of token states.

Two kinds of chunk:
- *late* chunks: sentence groups (or fixed token counts) whose vectors are pooled from one
  whole-document pass, so each chunk's vector has seen the entire document;
- *naive* chunks: independent pieces of at most 512 tokens, each embedded on its own — the
  baseline that whole-document and late-chunk retrieval are measured against.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence

import numpy as np

from jrag.encoder import TokenStates

Span = tuple[int, int]

# A sentence ends at . ! ? (plus closing quotes/brackets) before whitespace, or at a blank line.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")


def sentence_spans(text: str) -> list[Span]:
    """Character spans of the sentences of ``text``, surrounding whitespace excluded."""
    spans, start = [], 0
    for match in _SENTENCE_BREAK.finditer(text):
        _append_stripped(spans, text, start, match.start() + len(match.group().rstrip()))
        start = match.end()
    _append_stripped(spans, text, start, len(text))
    return spans


def _append_stripped(spans: list[Span], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if stripped:
        first = start + len(piece) - len(piece.lstrip())
        spans.append((first, first + len(stripped)))


def token_spans(token_offsets: np.ndarray, chunk_tokens: int) -> list[Span]:
    """Consecutive pieces of ``chunk_tokens`` tokens, as character spans."""
    return [
        (
            int(token_offsets[i, 0]),
            int(token_offsets[min(i + chunk_tokens, len(token_offsets)) - 1, 1]),
        )
        for i in range(0, len(token_offsets), chunk_tokens)
    ]


def late_chunk_spans(
    text: str, token_offsets: np.ndarray, *, chunk_tokens: int = 256, strategy: str = "sentence"
) -> list[Span]:
    """Chunk spans for late chunking.

    ``strategy="sentence"`` packs whole sentences into chunks of up to ``chunk_tokens`` tokens (a
    longer sentence is split by tokens); ``"tokens"`` cuts every ``chunk_tokens`` tokens.
    ``token_offsets`` [n, 2] are the character offsets of ``text``'s tokens, specials excluded.
    """
    if strategy == "tokens":
        return token_spans(token_offsets, chunk_tokens)
    if strategy != "sentence":
        raise ValueError(f"unknown chunking strategy {strategy!r}; use 'sentence' or 'tokens'")
    starts = token_offsets[:, 0].tolist()
    chunks: list[Span] = []
    current: Span | None = None
    current_tokens = 0
    for start, end in sentence_spans(text):
        first, last = bisect.bisect_left(starts, start), bisect.bisect_left(starts, end)
        tokens = last - first
        if tokens > chunk_tokens:
            if current:
                chunks.append(current)
            chunks.extend(token_spans(token_offsets[first:last], chunk_tokens))
            current, current_tokens = None, 0
        elif current and current_tokens + tokens <= chunk_tokens:
            current, current_tokens = (current[0], end), current_tokens + tokens
        else:
            if current:
                chunks.append(current)
            current, current_tokens = (start, end), tokens
    if current:
        chunks.append(current)
    return chunks


def pool_spans(
    windows: Iterable[TokenStates], spans: Sequence[Span]
) -> tuple[np.ndarray, list[int]]:
    """Mean-pool the token states inside each span; returns (unit vectors, indices of spans kept).

    Windows of a long document overlap; each later window's tokens that an earlier window
    already covered are dropped first, so every token counts once, with the states of the window
    that saw the most context before it. Spans holding no token are skipped.
    """
    pooler = SpanPooler(spans)
    for window in windows:
        pooler.add(window)
    return pooler.result()


class SpanPooler:
    """:func:`pool_spans` a window at a time: memory holds one window and a sum per span, so a
    document of any length can be late-chunked while its windows stream past."""

    def __init__(self, spans: Sequence[Span]) -> None:
        bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        self.starts, self.ends = bounds[:, 0], bounds[:, 1]
        self.sums: np.ndarray | None = None
        self.counts = np.zeros(len(bounds), dtype=np.int64)
        self.covered_until = 0

    def add(self, window: TokenStates) -> None:
        keep = ~window.special & (window.offsets[:, 0] >= self.covered_until)
        self.covered_until = max(self.covered_until, window.span[1])
        states = window.hidden[keep].astype(np.float64)
        token_starts = window.offsets[keep, 0]
        if self.sums is None:
            self.sums = np.zeros((len(self.starts), window.hidden.shape[1]))
        cumulative = np.vstack([np.zeros((1, states.shape[1])), np.cumsum(states, axis=0)])
        first = np.searchsorted(token_starts, self.starts, side="left")
        last = np.searchsorted(token_starts, self.ends, side="left")
        hit = last > first
        self.sums[hit] += cumulative[last[hit]] - cumulative[first[hit]]
        self.counts[hit] += (last - first)[hit]

    def result(self) -> tuple[np.ndarray, list[int]]:
        kept = [int(i) for i in np.flatnonzero(self.counts)]
        if self.sums is None:
            return np.zeros((0, 0), dtype=np.float32), []
        means = self.sums[kept] / self.counts[kept, None]
        norms = np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        return (means / norms).astype(np.float32), kept
