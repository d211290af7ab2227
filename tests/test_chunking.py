"""Chunk spans and late-chunk pooling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jrag import Encoder
from jrag.checkpoints import jina_v2_config, write_random_checkpoint
from jrag.chunking import late_chunk_spans, pool_spans, sentence_spans, token_spans


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    config = jina_v2_config("small", hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=64)  # fmt: skip
    return Encoder.from_pretrained(write_random_checkpoint(tmp_path_factory.mktemp("m"), config))


def offsets_of(encoder: Encoder, text: str) -> np.ndarray:
    return np.asarray(encoder.tokenizer.encode(text, add_special_tokens=False).offsets).reshape(
        -1, 2
    )


def test_sentence_spans_split_on_end_punctuation_and_blank_lines():
    text = 'One here. Two "quoted." Three!\n\nHeading without stop\nstill heading? Yes.'
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        "One here.", 'Two "quoted."', "Three!", "Heading without stop\nstill heading?", "Yes.",
    ]  # fmt: skip


def test_late_chunks_pack_whole_sentences_under_the_token_budget(encoder):
    text = " ".join(f"Sentence number {i} talks about copper lanterns." for i in range(60))
    offsets = offsets_of(encoder, text)
    spans = late_chunk_spans(text, offsets, chunk_tokens=40)
    assert len(spans) > 5
    for start, end in spans:
        assert text[start:end].startswith("Sentence") and text[end - 1] == "."
        inside = ((offsets[:, 0] >= start) & (offsets[:, 0] < end)).sum()
        assert inside <= 40
    # Chunks are in order, don't overlap, and cover every sentence.
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert sum(text[s:e].count("Sentence") for s, e in spans) == 60


def test_a_sentence_longer_than_the_budget_is_split_by_tokens(encoder):
    text = "Short one. " + " ".join(["word"] * 100) + ". Tail."
    spans = late_chunk_spans(text, offsets_of(encoder, text), chunk_tokens=30)
    assert text[spans[0][0] : spans[0][1]] == "Short one."
    assert len(spans) >= 5


def test_token_spans_cover_the_text_in_fixed_pieces(encoder):
    text = " ".join(f"w{i}" for i in range(100))
    offsets = offsets_of(encoder, text)
    spans = token_spans(offsets, 50)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert len(spans) == -(-len(offsets) // 50)


def test_pooled_span_equals_mean_of_its_token_states(encoder):
    text = "Alpha beta gamma. Delta epsilon zeta. Eta theta iota."
    (windows,) = encoder.encode_windows([text])
    spans = sentence_spans(text)
    vectors, kept = pool_spans(windows, spans)
    assert kept == [0, 1, 2]
    state = windows[0]
    mask = (
        ~state.special & (state.offsets[:, 0] >= spans[1][0]) & (state.offsets[:, 0] < spans[1][1])
    )
    expected = state.hidden[mask].mean(axis=0)
    expected /= np.linalg.norm(expected)
    assert np.abs(vectors[1] - expected).max() < 1e-5


def test_overlapping_windows_count_each_token_once(encoder):
    text = " ".join(f"token{i % 50} filler." for i in range(3000))
    windows = encoder.encode_windows([text], max_length=512, overlap=128)[0]
    assert len(windows) > 3
    spans = [(0, len(text))]
    _, kept = pool_spans(windows, spans)
    assert kept == [0]
    # Reconstruct the kept token starts: strictly increasing means no token counted twice.
    covered, starts = 0, []
    for w in windows:
        keep = ~w.special & (w.offsets[:, 0] >= covered)
        starts.extend(w.offsets[keep, 0].tolist())
        covered = max(covered, w.span[1])
    assert all(a < b for a, b in itertools.pairwise(starts))
    assert len(starts) == len(offsets_of(encoder, text))
