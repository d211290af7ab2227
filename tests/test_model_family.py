"""The jina-embeddings-v2 family: each published layout loads natively and matches the reference.

The skeleton folders in tests/models hold each checkpoint's config.json and tokenizer files
(docs/models.md says where each comes from); random weights in the exact key layout are written
by ``jrag.checkpoints``. Shapes are shrunk where the layout, not the size, is under test; the
head count stays the published one (8 or 12), so the ALiBi slopes are the real ones.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from jrag import Encoder, ModelLoadError
from jrag.checkpoints import write_random_checkpoint
from jrag.config import BertConfig
from jrag.loading import load_tokenizer
from jrag.modeling import BertModel
from tests.reference_bert import reference_embedding, reference_hidden_states

MODELS = Path(__file__).parent / "models"
LENGTHS = (8, 512, 2048)
# Layout under test -> (skeleton, shrunk shapes).
LAYOUTS = {
    "small-en": ("jina-embeddings-v2-small-en", {"hidden_size": 64, "intermediate_size": 96}),
    "base-en": ("jina-embeddings-v2-base-en", {"hidden_size": 96, "intermediate_size": 128}),
    "base-code": ("jina-embeddings-v2-base-code", {"hidden_size": 96, "intermediate_size": 128}),
    "base-de": ("jina-embeddings-v2-base-de", {"hidden_size": 96, "intermediate_size": 128}),
}
SENTENCES = [
    "Der Leuchtturmwärter notierte den Sturm um Mitternacht.",
    "El barco llegó al puerto antes del amanecer.",
    "The archive keeps every ledger of the harbour since 1871.",
    "def search(query: str, k: int = 5) -> list[str]: return index.top(query, k)",
]


def skeleton_config(skeleton: str, **overrides) -> dict:
    return {**json.loads((MODELS / skeleton / "config.json").read_text()), **overrides}


def long_text(seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(SENTENCES) for _ in range(900))


@pytest.fixture(scope="module", params=list(LAYOUTS))
def family_checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    skeleton, shapes = LAYOUTS[request.param]
    config = skeleton_config(skeleton, num_hidden_layers=2, **shapes)
    folder = write_random_checkpoint(tmp_path_factory.mktemp(request.param), config, seed=7,
                                     tokenizer_from=MODELS / skeleton)  # fmt: skip
    return request.param, folder


def test_each_layout_matches_the_float64_reference_at_8_512_and_2048_tokens(family_checkpoint):
    layout, folder = family_checkpoint
    encoder = Encoder.from_pretrained(folder, device="cpu", dtype="float32")
    text = long_text()
    for length in LENGTHS:
        logging.disable(logging.WARNING)  # the truncation warning is expected here
        try:
            (states,) = encoder.encode_tokens([text], max_length=length)
        finally:
            logging.disable(logging.NOTSET)
        assert states.hidden.shape[0] == length
        ids = encoder.tokenizer.encode(text).ids
        ids = ids[: length - 1] + ids[-1:]  # content truncated, the closing special token kept
        expected = reference_hidden_states(folder, ids)
        assert np.abs(states.hidden - expected).max() <= 1e-4, (layout, length)
        assert np.abs(states.pooled() - reference_embedding(folder, ids)).max() <= 1e-4


def test_the_bilingual_and_code_checkpoints_tokenize_with_byte_level_bpe(family_checkpoint):
    layout, folder = family_checkpoint
    tokenizer = load_tokenizer(folder)
    encoding = tokenizer.encode("Der Sturm erreichte den Hafen")
    if layout in ("base-code", "base-de"):
        assert encoding.tokens[0] == "<s>" and encoding.tokens[-1] == "</s>"
        assert any(token.startswith("Ġ") for token in encoding.tokens)  # byte-level word marks
    else:
        assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"


@pytest.mark.parametrize(
    ("skeleton", "qk_post_norm"),
    [("jina-embeddings-v2-small-en", False), ("jina-embeddings-v2-base-en", False),
     ("jina-embeddings-v2-base-code", True), ("jina-embeddings-v2-base-de", False),
     ("jina-embeddings-v2-base-es", False), ("jina-embeddings-v2-base-zh", False)],
)  # fmt: skip
def test_published_configs_select_their_layer_and_key_layout(skeleton, qk_post_norm):
    config = BertConfig.from_file(MODELS / skeleton / "config.json")
    assert config.qk_layer_norm is qk_post_norm
    with torch.device("meta"):
        keys = set(BertModel(config).state_dict())
    layer = "encoder.layer.0."
    code_keys = {layer + "attention.self.layer_norm_q.weight", layer + "layer_norm_1.weight",
                 layer + "mlp.up_gated_layer.weight", layer + "mlp.down_layer.bias"}  # fmt: skip
    en_keys = {layer + "mlp.gated_layers.weight", layer + "mlp.wo.bias",
               layer + "mlp.layernorm.weight"}  # fmt: skip
    assert (code_keys <= keys) is qk_post_norm
    assert (en_keys <= keys) is not qk_post_norm
    assert not code_keys & keys if not qk_post_norm else not en_keys & keys
    assert len(load_tokenizer(MODELS / skeleton).encode("a b").ids) >= 3


def test_unknown_remote_code_is_refused_naming_auto_map(tmp_path):
    config = skeleton_config("jina-embeddings-v2-base-de")
    config["auto_map"] = {"AutoConfig": "someone/jina-bert-v3-experiment--configuration.Cfg"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"auto_map\.AutoConfig.*someone/jina-bert-v3"):
        BertConfig.from_file(tmp_path / "config.json")


def test_qk_post_norm_with_an_ungated_feed_forward_is_refused_naming_the_field(tmp_path):
    config = skeleton_config("jina-embeddings-v2-base-code", feed_forward_type="original")
    with pytest.raises(ModelLoadError, match=r"feed_forward_type 'original'.*qk-post-norm"):
        BertConfig.from_dict(config)


def test_code_weights_under_an_en_config_are_named_as_a_layout_mismatch(tmp_path):
    skeleton, shapes = LAYOUTS["base-code"]
    config = skeleton_config(skeleton, num_hidden_layers=1, **shapes)
    folder = write_random_checkpoint(tmp_path / "code", config,
                                     tokenizer_from=MODELS / skeleton)  # fmt: skip
    config["auto_map"]["AutoConfig"] = "jinaai/jina-bert-implementation--configuration_bert.C"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"missing .*mlp\.gated_layers.*unexpected"):
        Encoder.from_pretrained(folder, device="cpu")
