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
import jrag.encoder
from jrag import Encoder, InputError, ModelLoadError
from jrag.checkpoints import bert_config, jina_v2_config, write_random_checkpoint
from jrag.embedding import identity_of
from jrag.encoder import cpu_has_native_bf16, resolve_dtype, token_budget_batches
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


@pytest.fixture(autouse=True)
def float32_by_default(monkeypatch):
    """Random weights are too ill-conditioned to judge bfloat16 by, so parity runs in float32;
    the tests of the default dtype say so explicitly."""
    monkeypatch.setenv("JRAG_DTYPE", "float32")


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
    assert encoder.max_length == 256  # sentence_bert_config.json's max_seq_length
    assert encoder.config.max_length == 512  # still reachable with an explicit max_length
    assert not encoder.config.uses_alibi
    text = make_text(300, seed=3)
    ids = encoder.tokenizer.encode(text).ids
    assert 256 < len(ids) <= 512
    expected = reference_embedding(resolve_model_dir(MINILM_ID), ids)
    assert np.abs(encoder.encode([text], max_length=512)[0] - expected).max() <= 1e-4
    truncated = [*ids[:255], ids[-1]]
    expected = reference_embedding(resolve_model_dir(MINILM_ID), truncated)
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
        padded = len(batch) * longest
        little_padding = sum(lengths[i] for i in batch) >= (1 - jrag.encoder.MAX_PADDING) * padded
        assert little_padding or padded <= jrag.encoder.MIN_BATCH_TOKENS  # small: may mix
    assert [4] in batches and [1, 3] in batches  # equal lengths share a batch


def test_short_texts_of_mixed_lengths_batch_with_little_padding():
    lengths = [8 + (i * 7) % 57 for i in range(2000)]  # 8–64 tokens
    batches = token_budget_batches(lengths, batch_tokens=16384)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded <= 1.03 * sum(lengths)  # padded positions cost as much as real ones
    assert len(batches) <= 64  # about one per length: 57 lengths, ~35 texts each
    # A few texts of scattered lengths share batches rather than getting one each.
    scattered = [9, 17, 23, 31, 38, 44, 52, 60]
    assert len(token_budget_batches(scattered, batch_tokens=16384)) == 1


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
    if tiny_jina.name.startswith("tiny-geglu"):  # one float64 reference at 8k is enough (~70 s)
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


@pytest.mark.parametrize(
    ("device", "dtype", "kernel"),
    [
        ("cuda", torch.bfloat16, "flex"),
        ("cuda", torch.float16, "flex"),
        ("cuda", torch.float32, "sdpa"),  # compiled flex in float32 measured 10x slower
        ("cpu", torch.float32, "sdpa"),
        ("cpu", torch.bfloat16, "sdpa"),
    ],
)
def test_attention_kernel_is_chosen_from_device_and_dtype(device, dtype, kernel):
    assert jrag.attention.choose_kernel(device, dtype) == kernel


def test_encoder_keeps_the_kernel_chosen_when_it_was_built(tiny_jina):
    encoder = Encoder.from_pretrained(tiny_jina, device="cpu", dtype="float32")
    assert encoder.model.kernel == jrag.attention.Kernel("sdpa")
    with pytest.raises(ValueError, match="unknown attention kernel 'fast'"):
        Encoder.from_pretrained(tiny_jina, kernel="fast")


def test_alibi_reach_is_the_cauchy_schwarz_bound():
    slopes = jrag.attention.alibi_slopes(4)  # 1/4, 1/16, 1/64, 1/256
    bias = jrag.attention.AlibiBias(slopes, 1000, dtype=torch.float32, device="cpu")
    query = torch.zeros(1, 4, 10, 16)
    key = torch.zeros(1, 4, 10, 16)
    query[..., 0] = 2.0  # |q| = 2
    key[..., 0] = 4.0  # |k| = 4, so scores lie within ±2·4/√16 = ±2
    expected = [math.ceil((2 * 2 + jrag.attention.NEGLIGIBLE_LOGIT) / s) for s in slopes.tolist()]
    assert bias.reach(query, key) == expected == [136, 544, 2176, 8704]


def test_skipping_far_keys_changes_nothing(tiny_jina):
    encoder = Encoder.from_pretrained(tiny_jina)
    text = make_text(3000, seed=12)
    (states,) = encoder.encode_tokens([text])
    ids = torch.tensor([encoder.tokenizer.encode(text).ids])
    q = torch.randn(1, 6, ids.shape[1], 8)
    encoder.model.kernel = jrag.attention.Kernel("sdpa", skip_far_keys=False)
    (dense,) = encoder.encode_tokens([text])
    assert np.abs(states.hidden - dense.hidden).max() <= 1e-5
    bias = jrag.attention.AlibiBias(
        encoder.model.alibi_slopes, ids.shape[1], dtype=torch.float32, device="cpu"
    )
    assert (
        bias.kernel.skip_far_keys and min(bias.reach(q, q)) < ids.shape[1]
    )  # the skipping path really ran on some heads


# -- the checkpoint's sentence-transformers config -----------------------------------------------


def sentence_transformer(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


def test_minilm_matches_sentence_transformers_including_its_256_token_limit():
    encoder = Encoder.from_pretrained(MINILM_ID)
    assert encoder.pooling == "mean" and encoder.checkpoint_normalizes
    texts = ["A cat is sleeping on the sofa.", make_text(40, seed=1), make_text(400, seed=2)]
    assert encoder.count_tokens(texts)[2] > 256  # truncated at max_seq_length by both
    expected = sentence_transformer(resolve_model_dir(MINILM_ID)).encode(texts)
    assert np.abs(encoder.encode(texts) - expected).max() <= 1e-5


@pytest.mark.parametrize("pooling", ["cls", "max", "mean_sqrt_len_tokens"])
def test_pooling_modes_match_sentence_transformers(tmp_path, pooling):
    folder = write_random_checkpoint(tmp_path / pooling, bert_config(), seed=3, pooling=pooling,
                                     max_seq_length=128)  # fmt: skip
    encoder = Encoder.from_pretrained(folder)
    assert encoder.pooling == pooling and encoder.max_length == 128
    assert not encoder.checkpoint_normalizes
    texts = ["a short one", make_text(30, seed=4), make_text(200, seed=5)]
    expected = sentence_transformer(folder).encode(texts)  # no Normalize module: raw vectors
    vectors = encoder.encode(texts, normalize=False)
    assert np.abs(vectors - expected).max() <= 1e-5
    mean = np.stack([s.hidden.mean(axis=0) for s in encoder.encode_tokens(texts)])
    assert np.abs(vectors - mean).max() > 1e-2  # really not the mean
    (states,) = encoder.encode_tokens(texts[1:2])
    assert np.abs(states.pooled(normalize=False) - vectors[1]).max() <= 1e-6


def test_unknown_pooling_mode_is_refused_naming_the_file(tmp_path):
    folder = write_random_checkpoint(tmp_path / "m", tiny_config())
    pooling_file = folder / "1_Pooling" / "config.json"
    pooling_file.write_text(json.dumps({"word_embedding_dimension": 48,
                                        "pooling_mode_weightedmean_tokens": True}))  # fmt: skip
    with pytest.raises(
        ModelLoadError, match=r"1_Pooling/config\.json asks for pooling weightedmean"
    ):
        Encoder.from_pretrained(folder)
    pooling_file.write_text(json.dumps({"pooling_mode": "lasttoken"}))
    with pytest.raises(ModelLoadError, match="lasttoken; jrag supports one of mean, cls"):
        Encoder.from_pretrained(folder)


def test_max_seq_length_beyond_the_positions_is_clamped(tmp_path):
    folder = write_random_checkpoint(tmp_path / "m", bert_config(), max_seq_length=4096)
    assert Encoder.from_pretrained(folder).max_length == 512


def test_a_folder_without_sentence_transformers_files_mean_pools(tmp_path):
    folder = write_random_checkpoint(tmp_path / "m", tiny_config(), pooling="cls")
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        (folder / name).unlink()
    encoder = Encoder.from_pretrained(folder)
    assert encoder.pooling == "mean" and encoder.max_length == 8192


def test_fingerprint_tells_checkpoints_apart_by_content_not_by_name(tmp_path):
    one = write_random_checkpoint(tmp_path / "one", tiny_config(), seed=1)
    same = write_random_checkpoint(tmp_path / "same", tiny_config(), seed=1)
    other_weights = write_random_checkpoint(tmp_path / "w", tiny_config(), seed=2)
    other_pooling = write_random_checkpoint(tmp_path / "p", tiny_config(), seed=1, pooling="cls")
    prints = [Encoder.from_pretrained(f).fingerprint for f in (one, same, other_weights,
                                                                 other_pooling)]  # fmt: skip
    assert all(len(p) == 64 and int(p, 16) >= 0 for p in prints)
    assert prints[0] == prints[1]
    assert len(set(prints[1:])) == 3


# -- dtype ---------------------------------------------------------------------------------------


def test_auto_dtype_is_bfloat16_exactly_on_cpus_with_native_bfloat16(monkeypatch):
    cpu = torch.device("cpu")
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", cpu) == expected
    assert resolve_dtype("float32", cpu) == torch.float32
    monkeypatch.setenv("JRAG_DTYPE", "auto")
    encoder = Encoder.from_pretrained(MINILM_ID)
    assert encoder.dtype == expected
    assert encoder.model.encoder.layer[0].attention.self.query.weight.dtype == expected
    assert encoder.dtype_name == {torch.bfloat16: "bfloat16", torch.float32: "float32"}[expected]
    assert encoder.encode(["still float32 out"]).dtype == np.float32
    with pytest.raises(InputError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", cpu)


def test_bfloat16_on_real_weights_stays_close_to_float32():
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.002 per value); over 6 layers
    # of a trained model the errors average out in the mean pool: measured cosines against
    # float32 are ≥ 0.9997 on these texts. 0.999 leaves room for kernel differences while still
    # failing on a real bug (a wrong dtype in pooling or attention gives cosines of 0.9 or less).
    texts = [
        "A cat is sleeping on the sofa.",
        "Quarterly tax filing deadlines for small businesses.",
        make_text(60, seed=1),
        make_text(240, seed=2),
    ]
    fp32 = Encoder.from_pretrained(MINILM_ID, dtype="float32").encode(texts)
    bf16 = Encoder.from_pretrained(MINILM_ID, dtype="bfloat16").encode(texts)
    reference = sentence_transformer(resolve_model_dir(MINILM_ID)).encode(texts)
    assert np.abs(fp32 - reference).max() <= 1e-5
    assert (bf16 * fp32).sum(axis=1).min() >= 0.999
    assert (bf16 * reference).sum(axis=1).min() >= 0.999
    # The similarity structure survives: every text is still nearest to itself.
    assert ((bf16 @ fp32.T).argmax(axis=1) == np.arange(len(texts))).all()


def test_int8_quantizes_the_linear_layers_and_stays_near_float32(monkeypatch):
    texts = [
        "A cat is sleeping on the sofa.",
        "Quarterly tax filing deadlines for small businesses.",
        make_text(60, seed=1),
        make_text(240, seed=2),
    ]
    fp32 = Encoder.from_pretrained(MINILM_ID, dtype="float32").encode(texts)
    monkeypatch.setenv("JRAG_DTYPE", "int8")  # the CLI's --dtype arrives this way too
    int8 = Encoder.from_pretrained(MINILM_ID)
    assert int8.dtype_name == "int8" and int8.quantized
    linear = int8.model.encoder.layer[0].intermediate.dense
    assert "quantized" in type(linear).__module__ and linear.weight().dtype == torch.qint8
    assert identity_of(int8).dtype == "int8"  # recorded in a collection's manifest
    vectors = int8.encode(texts)
    assert vectors.dtype == np.float32
    # Measured 0.97-0.99 on MiniLM (per-channel weight scales); a wrong scale gives < 0.5.
    assert (vectors * fp32).sum(axis=1).min() >= 0.95
    assert ((vectors @ fp32.T).argmax(axis=1) == np.arange(len(texts))).all()
    with pytest.raises(InputError, match="int8 runs on CPU only"):
        Encoder.from_pretrained(MINILM_ID, device="cuda", dtype="int8")


# -- batching and kernels ------------------------------------------------------------------------


def test_packed_short_sequences_match_one_at_a_time(tiny_jina, monkeypatch):
    encoder = Encoder.from_pretrained(tiny_jina)
    texts = [make_text(n, seed=n) for n in (2, 9, 30, 64, 200, 17)]
    packed = encoder.encode_tokens(texts, batch_tokens=10**6)
    monkeypatch.setattr(jrag.attention, "PACKED_MAX_LENGTH", 0)  # every row on its own
    alone = encoder.encode_tokens(texts, batch_tokens=10**6)
    for a, b in zip(packed, alone, strict=True):
        assert np.abs(a.hidden - b.hidden).max() <= 1e-5
    monkeypatch.setattr(jrag.attention, "PACKED_MASK_ELEMENTS", 1)  # one row per packed call
    monkeypatch.setattr(jrag.attention, "PACKED_MAX_LENGTH", 512)
    split = encoder.encode_tokens(texts, batch_tokens=10**6)
    for a, b in zip(packed, split, strict=True):
        assert np.abs(a.hidden - b.hidden).max() <= 1e-5


def test_flex_attention_path_matches_the_reference_on_cpu(tiny_jina):
    # The CUDA kernel path (ALiBi as a score_mod, padding as a block mask), run eagerly on CPU.
    encoder = Encoder.from_pretrained(tiny_jina, kernel="flex")
    texts = [make_text(n, seed=n) for n in (3, 150, 40)]
    states = encoder.encode_tokens(texts, batch_tokens=10**6)
    bias = jrag.attention.AlibiBias(encoder.model.alibi_slopes, 8, dtype=torch.float32,
                                    device="cpu", kernel=encoder.model.kernel)  # fmt: skip
    assert bias.kernel.name == "flex" and not hasattr(bias, "base")  # no bias tensor at all
    for text, state in zip(texts, states, strict=True):
        expected = reference_hidden_states(tiny_jina, encoder.tokenizer.encode(text).ids)
        assert np.abs(state.hidden - expected).max() <= 1e-4
    alone = encoder.encode([texts[2]])[0]
    assert np.abs(encoder.encode(texts, batch_tokens=10**6)[2] - alone).max() <= 1e-5


# -- windows from one tokenization ---------------------------------------------------------------


def test_windows_are_those_of_truncate_with_stride(tiny_jina):
    encoder = Encoder.from_pretrained(tiny_jina)
    text = make_text(1500, seed=8)
    (windows,) = encoder.encode_windows([text], max_length=512, overlap=64)
    raw = encoder.tokenizer.encode(text, add_special_tokens=False)
    raw.truncate(510, stride=64)
    first = encoder.tokenizer.post_process(raw)
    expected = [first, *first.overflowing]
    assert len(windows) == len(expected) >= 3
    for window, encoding in zip(windows, expected, strict=True):
        assert window.offsets.tolist() == [list(o) for o in encoding.offsets]
        assert window.special.tolist() == [bool(m) for m in encoding.special_tokens_mask]


def test_pre_tokenized_input_gives_the_same_windows(tiny_jina):
    encoder = Encoder.from_pretrained(tiny_jina)
    texts = [make_text(900, seed=1), "a few words"]
    encodings = encoder.tokenize(texts)
    counts = [len(t) + encoder.special_token_count for t in encodings]
    assert counts == encoder.count_tokens(texts)
    assert counts == [len(encoder.tokenizer.encode(t).ids) for t in texts]
    from_texts = encoder.encode_windows(texts, max_length=256, overlap=32)
    from_encodings = encoder.encode_windows(encodings=encodings, max_length=256, overlap=32)
    assert [len(w) for w in from_texts] == [len(w) for w in from_encodings] == [5, 1]
    flat = [
        (a, b)
        for x, y in zip(from_texts, from_encodings, strict=True)
        for a, b in zip(x, y, strict=True)
    ]
    for a, b in flat:
        assert np.array_equal(a.hidden, b.hidden) and np.array_equal(a.offsets, b.offsets)
    with pytest.raises(InputError, match="either texts or encodings"):
        encoder.encode_windows(texts, encodings=encodings)
    raw = encoder.tokenizer.encode_batch(texts, add_special_tokens=False)  # Encodings work too
    assert [len(w) for w in encoder.encode_windows(encodings=raw, max_length=256)] == [5, 1]


def test_long_texts_are_tokenized_in_pieces_with_the_same_result(tiny_jina, monkeypatch):
    encoder = Encoder.from_pretrained(tiny_jina)
    text = "Start. " + make_text(3000, seed=21) + "  tail,words;end"
    whole = encoder.tokenizer.encode(text, add_special_tokens=False)
    monkeypatch.setattr(jrag.encoder, "TOKENIZE_CHUNK_CHARS", 997)
    monkeypatch.setattr(jrag.encoder, "_TOKENIZE_GROUP_CHARS", 3000)
    (tokens,) = encoder.tokenize([text])
    assert len(text) > 10 * 997
    assert tokens.ids.tolist() == whole.ids
    assert tokens.offsets.tolist() == [list(o) for o in whole.offsets]


def test_iter_windows_equals_encode_windows_and_reports_progress(tiny_jina):
    encoder = Encoder.from_pretrained(tiny_jina)
    text = make_text(1500, seed=8)
    (expected,) = encoder.encode_windows([text], max_length=256, overlap=32)
    calls = []
    windows = list(
        encoder.iter_windows(text, max_length=256, overlap=32, batch_tokens=600,
                             progress=lambda *call: calls.append(call))
    )  # fmt: skip
    assert len(windows) == len(expected)
    for a, b in zip(windows, expected, strict=True):
        assert np.abs(a.hidden - b.hidden).max() <= 1e-5
    assert calls[-1] == (len(expected), len(expected)) and len(calls) > 1


def test_a_two_megabyte_single_line_text_is_windowed_lazily(tiny_jina):
    encoder = Encoder.from_pretrained(tiny_jina)
    text = make_text(300_000, seed=13).replace(".", ",")  # ~2 MB, one line, no sentence ends
    assert len(text) > 2_000_000 and "\n" not in text
    (encoding,) = encoder.tokenize([text])
    calls = []
    windows = encoder.iter_windows(encoding=encoding, progress=lambda *c: calls.append(c))
    first = next(windows)
    budget, step = 8190, 8190 - 512
    expected_windows = 1 + -(-(len(encoding.ids) - budget) // step)
    # Only the first batch (two 8k windows under the 16k-token budget) has run.
    assert calls == [(2, expected_windows)] and expected_windows > 40
    assert first.span[0] == 0 and len(first.hidden) == 8192
    second = next(windows)
    assert second.span[0] < first.span[1]
    windows.close()


def test_sixteen_bit_models_attend_in_float32_on_cpu(tiny_jina):
    # bfloat16 would round a far key's ALiBi bias (-slope·distance) by up to 0.125 at 8k tokens.
    bias = jrag.attention.AlibiBias(jrag.attention.alibi_slopes(8), 8192, dtype=torch.bfloat16,
                                    device="cpu")  # fmt: skip
    assert bias.base.dtype == torch.float32
    assert float(bias.base[7, 0]) == pytest.approx(-(2**-8) * bias.center, rel=1e-7)
    encoder = Encoder.from_pretrained(tiny_jina, dtype="bfloat16")
    (states,) = encoder.encode_tokens([make_text(700, seed=3)])
    assert np.isfinite(states.hidden).all() and states.hidden.dtype == np.float32
