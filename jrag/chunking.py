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
from collections.abc import Sequence

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
    windows: Sequence[TokenStates], spans: Sequence[Span]
) -> tuple[np.ndarray, list[int]]:
    """Mean-pool the token states inside each span; returns (unit vectors, indices of spans kept).

    Windows of a long document overlap; each later window's tokens that an earlier window
    already covered are dropped first, so every token counts once, with the states of the window
    that saw the most context before it. Spans holding no token are skipped.
    """
    hidden, starts = [], []
    covered_until = 0
    for window in windows:
        keep = ~window.special & (window.offsets[:, 0] >= covered_until)
        hidden.append(window.hidden[keep])
        starts.append(window.offsets[keep, 0])
        covered_until = max(covered_until, window.span[1])
    states = np.concatenate(hidden).astype(np.float64)
    token_starts = np.concatenate(starts)
    cumulative = np.vstack([np.zeros((1, states.shape[1])), np.cumsum(states, axis=0)])
    vectors, kept = [], []
    for index, (start, end) in enumerate(spans):
        first, last = np.searchsorted(token_starts, [start, end], side="left")
        if last > first:
            mean = (cumulative[last] - cumulative[first]) / (last - first)
            vectors.append(mean / max(np.linalg.norm(mean), 1e-12))
            kept.append(index)
    dim = states.shape[1]
    return (np.asarray(vectors, dtype=np.float32).reshape(-1, dim), kept)
