"""Encoder behaviour: parity with a float64 reference, batching, truncation, windows, bad input."""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import jrag.attention
from jrag import Encoder, InputError, ModelLoadError
from jrag.checkpoints import jina_v2_config, write_random_checkpoint
from jrag.encoder import token_budget_batches
from jrag.loading import MINILM_ID, resolve_model_dir
from tests.reference_bert import reference_embedding, reference_hidden_states

WORDS = [
    "river",
    "mountain",
    "archive",
    "ledger",
    "quantum",
    "harbor",
    "violet",
    "engine",
    "signal",
    "orchard",
    "copper",
    "lantern",
    "basalt",
    "meadow",
    "cipher",
    "falcon",
    "glacier",
    "thunder",
    "velvet",
    "canyon",
]


def make_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + ("." if rng.random() < 0.1 else "") for _ in range(n_words))


def tiny_config(feed_forward_type: str = "geglu", heads: int = 6) -> dict:
    # Six heads exercise the non-power-of-two ALiBi slopes.
    return jina_v2_config(
        "small", hidden_size=48, num_hidden_layers=2, num_attention_heads=heads,
        intermediate_size=96, feed_forward_type=feed_forward_type,
    )  # fmt: skip


@pytest.fixture(scope="module", params=["geglu", "reglu"])
def tiny_jina(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    return write_random_checkpoint(folder, tiny_config(request.param), seed=1)


@pytest.fixture(scope="module")
def small_jina(tmp_path_factory):
    """The real jina-v2-small layout (4 layers, 512 wide, 8 heads) with random weights."""
    return write_random_checkpoint(tmp_path_factory.mktemp("small"), jina_v2_config("small"))


@pytest.fixture
def small_query_blocks(monkeypatch):
    """Shrink the query blocks so that even short inputs go through several of them."""
    monkeypatch.setattr(jrag.attention, "QUERY_BLOCK", 64)


def test_parity_with_float64_reference_in_a_padded_mixed_batch(tiny_jina, small_query_blocks):
    encoder = Encoder.from_pretrained(tiny_jina)
    texts = [make_text(n, seed) for seed, n in enumerate((3, 180, 2400, 700))]
    token_counts = encoder.count_tokens(texts)
    assert max(token_counts) > 2048
    states = encoder.encode_tokens(texts, batch_tokens=10**6)  # one padded batch of four
    vectors = encoder.encode(texts, batch_tokens=10**6)
    for text, state, vector in zip(texts, states, vectors, strict=True):
        ids = encoder.tokenizer.encode(text).ids
        expected = reference_hidden_states(tiny_jina, ids)
        assert state.hidden.shape == expected.shape
        assert np.abs(state.hidden - expected).max() <= 1e-4
        assert np.abs(vector - reference_embedding(tiny_jina, ids)).max() <= 1e-4


def test_parity_of_the_real_small_layout_at_3000_tokens(small_jina):
    encoder = Encoder.from_pretrained(small_jina)
    text = make_text(3000, seed=7)
    ids = encoder.tokenizer.encode(text).ids
    assert len(ids) > 2048
    expected = reference_embedding(small_jina, ids)
    assert np.abs(encoder.encode([text])[0] - expected).max() <= 1e-4


def test_plain_bert_with_absolute_positions_matches_reference():
    encoder = Encoder.from_pretrained(MINILM_ID)
    assert encoder.max_length == 512
    assert not encoder.config.uses_alibi
    text = make_text(300, seed=3)
    ids = encoder.tokenizer.encode(text).ids
    expected = reference_embedding(resolve_model_dir(MINILM_ID), ids)
    assert np.abs(encoder.encode([text])[0] - expected).max() <= 1e-4


def test_minilm_gives_meaningful_similarities():
    encoder = Encoder.from_pretrained(MINILM_ID)
    cat, kitten, tax = encoder.encode(
        [
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Quarterly tax filing deadlines.",
        ]
    )
    assert cat @ kitten > cat @ tax + 0.3


def test_outputs_do_not_depend_on_batch_composition(tiny_jina):
    encoder = Encoder.from_pretrained(tiny_jina)
    target = make_text(120, seed=11)
    alone = encoder.encode([target])[0]
    neighbours = [make_text(n, seed=20 + n) for n in (5, 40, 600, 121, 1500)]
    for batch_tokens in (10**6, 4096, 1):
        mixed = encoder.encode([neighbours[0], target, *neighbours[1:]], batch_tokens=batch_tokens)
        assert np.abs(mixed[1] - alone).max() <= 1e-5


def test_order_is_restored_after_length_sorting(tiny_jina):
    encoder = Encoder.from_pretrained(tiny_jina)
    texts = [make_text(n, seed=n) for n in (50, 5, 400, 20, 200)]
    together = encoder.encode(texts, batch_tokens=1000)
    one_by_one = np.stack([encoder.encode([t])[0] for t in texts])
    assert np.abs(together - one_by_one).max() <= 1e-5


def test_token_budget_batches_respect_the_budget_and_cover_every_input():
    lengths = [10, 300, 40, 300, 5000, 20, 80]
    batches = token_budget_batches(lengths, batch_tokens=700)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert batches[0] == [4]  # longer than the budget: alone
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= 700
    assert len(batches) < len(lengths)


def test_long_text_is_truncated_with_one_warning_saying_how_much(tiny_jina, caplog):
    encoder = Encoder.from_pretrained(tiny_jina)
    texts = [make_text(200, seed=1), make_text(9000, seed=2), make_text(8500, seed=3)]
    total = encoder.count_tokens(texts)
    with caplog.at_level(logging.WARNING, logger="jrag"):
        vectors = encoder.encode(texts)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    dropped = (total[1] - 8192) + (total[2] - 8192)
    assert f"dropping {dropped} tokens" in warnings[0].getMessage()
    assert "2 of 3 texts" in warnings[0].getMessage()
    assert vectors.shape == (3, 48)
    truncated_ids = [*encoder.tokenizer.encode(texts[1]).ids[:8191], 102]
    assert np.abs(vectors[1] - reference_embedding(tiny_jina, truncated_ids)).max() <= 1e-4


def test_token_states_carry_character_offsets_and_pool_to_encode(tiny_jina):
    encoder = Encoder.from_pretrained(tiny_jina)
    text = "Violet engines hum. Copper lanterns glow in the archive."
    (states,) = encoder.encode_tokens([text])
    assert states.special[0] and states.special[-1]
    words = [
        text[s:e].lower()
        for (s, e), sp in zip(states.offsets, states.special, strict=False)
        if not sp
    ]
    assert words[:3] == ["violet", "engines", "hum"]
    assert states.span == (0, len(text))
    assert np.abs(states.pooled() - encoder.encode([text])[0]).max() <= 1e-6


def test_windows_cover_a_long_text_with_overlap(tiny_jina):
    encoder = Encoder.from_pretrained(tiny_jina)
    text = make_text(20000, seed=5)
    (windows,) = encoder.encode_windows([text], max_length=8192, overlap=256)
    assert len(windows) >= 3
    assert all(len(w.hidden) <= 8192 for w in windows)
    assert windows[0].span[0] == 0 and windows[-1].span[1] == len(text.rstrip())
    for before, after in itertools.pairwise(windows):
        assert after.span[0] < before.span[1]  # they overlap
    first = encoder.encode([text], max_length=8192)[0]
    assert np.abs(windows[0].pooled() - first).max() <= 1e-5
    (short,) = encoder.encode_windows(["just a few words"])
    assert len(short) == 1


def test_sixteen_bit_weights_with_bert_prefix_load(tmp_path):
    config = tiny_config()
    fp16 = write_random_checkpoint(tmp_path / "fp16", config, seed=4, dtype=torch.float16,
                                   key_prefix="bert.")  # fmt: skip
    assert all(k.startswith("bert.") for k in load_file(fp16 / "model.safetensors"))
    encoder = Encoder.from_pretrained(fp16)
    assert encoder.model.embeddings.word_embeddings.weight.dtype == torch.float32
    text = make_text(300, seed=9)
    expected = reference_embedding(fp16, encoder.tokenizer.encode(text).ids)
    assert np.abs(encoder.encode([text])[0] - expected).max() <= 1e-4


def test_missing_path_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Encoder.from_pretrained(tmp_path / "no-such-model")


def test_hub_id_that_is_not_cached_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        Encoder.from_pretrained("jrag-tests/no-such-model")
    assert time.monotonic() - started < 30
    assert "jrag-tests/no-such-model" in str(err.value)
    assert "local folder" in str(err.value)


def test_non_bert_config_is_refused(tmp_path):
    folder = write_random_checkpoint(tmp_path / "m", tiny_config())
    (folder / "config.json").write_text(json.dumps({**tiny_config(), "model_type": "gpt2"}))
    with pytest.raises(ModelLoadError, match="'gpt2' model"):
        Encoder.from_pretrained(folder)


def test_unknown_feed_forward_type_is_refused(tmp_path):
    folder = write_random_checkpoint(tmp_path / "m", tiny_config())
    (folder / "config.json").write_text(
        json.dumps({**tiny_config(), "feed_forward_type": "swiglu"})
    )
    with pytest.raises(ModelLoadError, match="feed_forward_type 'swiglu'"):
        Encoder.from_pretrained(folder)


def test_weights_whose_shapes_do_not_match_the_config_are_named(tmp_path):
    folder = write_random_checkpoint(tmp_path / "m", tiny_config())
    (folder / "config.json").write_text(json.dumps({**tiny_config(), "intermediate_size": 64}))
    with pytest.raises(
        ModelLoadError,
        match=r"mlp\.gated_layers\.weight.*shape \[192, 48\].*\[128, 48\]",
    ):
        Encoder.from_pretrained(folder)


def test_weights_of_another_architecture_are_named(tmp_path):
    folder = write_random_checkpoint(tmp_path / "m", tiny_config())
    (folder / "config.json").write_text(
        json.dumps({**tiny_config(), "feed_forward_type": "original"})
    )
    with pytest.raises(ModelLoadError, match=r"missing encoder\.layer\.0\.intermediate\.dense"):
        Encoder.from_pretrained(folder)


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path):
    folder = write_random_checkpoint(tmp_path / "m", tiny_config())
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickled weights"):
        Encoder.from_pretrained(folder)
    encoder = Encoder.from_pretrained(folder, allow_pickle=True)
    assert encoder.encode(["still works"]).shape == (1, 48)


def test_corrupt_safetensors_is_named(tmp_path):
    folder = write_random_checkpoint(tmp_path / "m", tiny_config())
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is not a readable safetensors"):
        Encoder.from_pretrained(folder)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["fine", ""], r"texts\[1\] is empty"),
        (["fine", "   \n"], r"texts\[1\] is empty"),
        (["fine", 42], r"texts\[1\] is int, not str"),
        ([None], r"texts\[0\] is NoneType"),
        (7, "must be a list of strings"),
    ],
)
def test_bad_texts_get_named_errors(tiny_jina, texts, message):
    encoder = Encoder.from_pretrained(tiny_jina)
    with pytest.raises(InputError, match=message):
        encoder.encode(texts)


def test_one_string_gives_one_vector(tiny_jina):
    encoder = Encoder.from_pretrained(tiny_jina)
    vector = encoder.encode("a single string")
    assert vector.shape == (48,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_max_length_beyond_the_model_limit_is_refused():
    encoder = Encoder.from_pretrained(MINILM_ID)
    with pytest.raises(InputError, match="between 3 and 512"):
        encoder.encode(["text"], max_length=8192)


def test_alibi_reach_is_the_cauchy_schwarz_bound():
    slopes = jrag.attention.alibi_slopes(4)  # 1/4, 1/16, 1/64, 1/256
    bias = jrag.attention.AlibiBias(slopes, 1000, dtype=torch.float32, device="cpu")
    query = torch.zeros(1, 4, 10, 16)
    key = torch.zeros(1, 4, 10, 16)
    query[..., 0] = 2.0  # |q| = 2
    key[..., 0] = 4.0  # |k| = 4, so scores lie within ±2·4/√16 = ±2
    expected = [math.ceil((2 * 2 + jrag.attention.NEGLIGIBLE_LOGIT) / s) for s in slopes.tolist()]
    assert bias.reach(query, key) == expected == [136, 544, 2176, 8704]


def test_skipping_far_keys_changes_nothing(tiny_jina, monkeypatch):
    encoder = Encoder.from_pretrained(tiny_jina)
    text = make_text(3000, seed=12)
    (states,) = encoder.encode_tokens([text])
    ids = torch.tensor([encoder.tokenizer.encode(text).ids])
    q = torch.randn(1, 6, ids.shape[1], 8)
    monkeypatch.setattr(jrag.attention, "SKIP_FAR_KEYS", False)
    (dense,) = encoder.encode_tokens([text])
    assert np.abs(states.hidden - dense.hidden).max() <= 1e-5
    bias = jrag.attention.AlibiBias(
        encoder.model.alibi_slopes, ids.shape[1], dtype=torch.float32, device="cpu"
    )
    monkeypatch.setattr(jrag.attention, "SKIP_FAR_KEYS", True)
    assert min(bias.reach(q, q)) < ids.shape[1]  # the skipping path really ran on some heads
