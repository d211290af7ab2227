"""Random-weight checkpoints in the exact jina-embeddings-v2 layout, for tests and benchmarks.

The real weights cannot be downloaded here, so tests and benchmarks write a folder that looks like
the published one (config.json, model.safetensors, tokenizer files, sentence-transformers files)
and load it through ``Encoder.from_pretrained``, the same code path a real checkpoint takes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from jrag.config import BertConfig
from jrag.loading import LEGACY_POOLING_KEYS, MINILM_ID, POOLING_MODES, resolve_model_dir
from jrag.modeling import BertForSequenceClassification, BertModel

# The fields of the published jina-embeddings-v2 config.json files that shape the model.
JINA_V2_LAYOUTS: dict[str, dict] = {
    "small": {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
              "intermediate_size": 2048},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072},
}  # fmt: skip
_JINA_V2_COMMON = {
    "model_type": "bert",
    "architectures": ["JinaBertForMaskedLM"],
    "vocab_size": 30528,
    "max_position_embeddings": 8192,
    "position_embedding_type": "alibi",
    "feed_forward_type": "geglu",
    "emb_pooler": "mean",
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "type_vocab_size": 2,
    "pad_token_id": 0,
}
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


_BERT_COMMON = {
    "model_type": "bert",
    "architectures": ["BertModel"],
    "vocab_size": 30522,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "position_embedding_type": "absolute",
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "type_vocab_size": 2,
    "pad_token_id": 0,
}


def bert_config(**overrides) -> dict:
    """A small plain BERT config.json (absolute positions, BERT's feed-forward)."""
    return {**_BERT_COMMON, **overrides}


def jina_v2_config(layout: str = "small", **overrides) -> dict:
    """The config.json of jina-embeddings-v2-{small,base}-en, with optional overrides."""
    return {**_JINA_V2_COMMON, **JINA_V2_LAYOUTS[layout], **overrides}


def write_random_checkpoint(
    folder: str | Path,
    config: dict,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    key_prefix: str = "",
    tokenizer_from: str | Path = MINILM_ID,
    pooling: str = "mean",
    max_seq_length: int | None = None,
    normalize: bool = False,
    classifier: bool = False,
) -> Path:
    """Write a checkpoint with random weights for ``config`` into ``folder`` and return it.

    The tokenizer files are copied from ``tokenizer_from`` (default: the MiniLM package, which
    has the same bert-base-uncased vocabulary as jina-v2). ``dtype`` sets the stored precision
    (the published base checkpoint is 16-bit) and ``key_prefix`` can add a ``bert.`` prefix.
    The sentence-transformers files say ``pooling`` (e.g. "cls" for a BGE-style model),
    ``max_seq_length`` (default: the position limit) and, with ``normalize``, a Normalize module.
    ``classifier`` writes a cross-encoder instead (``BertForSequenceClassification`` keys:
    ``bert.*``, ``bert.pooler.dense.*``, ``classifier.*``, one label).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_class = BertForSequenceClassification if classifier else BertModel
    model = model_class(BertConfig.from_dict(config))
    if classifier:
        key_prefix = key_prefix or "bert."
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in model.state_dict().items():
        if key.endswith(".weight") and tensor.dim() == 1:  # every LayerNorm's scale
            values = 1.0 + 0.1 * torch.randn(tensor.shape, generator=generator)
        else:
            values = 0.05 * torch.randn(tensor.shape, generator=generator)
        prefix = "" if key.startswith("classifier.") else key_prefix
        state[prefix + key] = values.to(dtype).contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    source = resolve_model_dir(tokenizer_from)
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    if not classifier:
        _write_sentence_transformers_files(folder, config, pooling, max_seq_length, normalize)
    return folder


def _write_sentence_transformers_files(
    folder: Path, config: dict, pooling: str, max_seq_length: int | None, normalize: bool
) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})  # fmt: skip
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    max_seq_length = max_seq_length or config["max_position_embeddings"]
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    # The legacy boolean keys of the modes jrag implements, as most published checkpoints carry.
    pooling_config = {"word_embedding_dimension": config["hidden_size"]}
    pooling_config |= {
        key: mode == pooling for key, mode in LEGACY_POOLING_KEYS.items() if mode in POOLING_MODES
    }
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2))
