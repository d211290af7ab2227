"""The model config: every shape and switch of a BERT or JinaBERT checkpoint (config.json)."""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from jrag.errors import ModelLoadError

POSITION_TYPES = ("absolute", "alibi")
FEED_FORWARD_TYPES = ("original", "geglu", "reglu")
ACTIVATIONS = ("gelu", "relu", "gelu_new", "gelu_pytorch_tanh")
# The remote code a JinaBERT config.json names (``auto_map.AutoConfig``, else ``_name_or_path``)
# decides its layer layout; jrag runs none of that code, it only reads the name.
# True: LayerNorm on the query and key projections, ``mlp.up_gated_layer``/``mlp.down_layer`` and
# two more layer norms per layer (``layer_norm_1``/``_2``), as in jina-embeddings-v2-base-code.
REMOTE_CODE_LAYOUTS = {
    "jinaai/jina-bert-implementation": False,
    "jinaai/jina-bert-v2-qk-post-norm": True,
}


@dataclass(frozen=True)
class BertConfig:
    """Shapes and architecture switches shared by BERT and JinaBERT.

    JinaBERT is a BERT with ``position_embedding_type="alibi"`` (no position embeddings) and a gated
    feed-forward (``feed_forward_type`` "geglu" or "reglu"). ``model_type`` is "bert" for both.
    ``qk_layer_norm`` selects the qk-post-norm layer; config.json does not state it, it is read
    from the remote code the config names (see ``REMOTE_CODE_LAYOUTS``).
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    feed_forward_type: str = "original"
    qk_layer_norm: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def uses_alibi(self) -> bool:
        return self.position_embedding_type == "alibi"

    @property
    def max_length(self) -> int:
        """The longest input in tokens, special tokens included."""
        return self.max_position_embeddings

    @classmethod
    def from_dict(cls, raw: dict, *, source: str = "config.json") -> BertConfig:
        """Build a config from a parsed config.json, refusing anything that is not (Jina)BERT."""
        model_type = raw.get("model_type")
        if model_type not in ("bert", "jina_bert"):
            raise ModelLoadError(
                f"{source} describes a {model_type!r} model; jrag loads BERT and JinaBERT "
                "checkpoints only (model_type 'bert')."
            )
        known = {f.name for f in fields(cls)}
        values = {key: raw[key] for key in known if raw.get(key) is not None}
        values.setdefault("qk_layer_norm", _qk_layer_norm(raw, source))
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in values]
        if missing:
            raise ModelLoadError(f"{source} lacks required fields: {', '.join(sorted(missing))}")
        config = cls(**values)
        config._check(source)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> BertConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelLoadError(f"{path} not found: a model folder needs a config.json") from None
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{path} is not readable JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{path} must hold a JSON object")
        return cls.from_dict(raw, source=str(path))

    def _check(self, source: str) -> None:
        if self.position_embedding_type not in POSITION_TYPES:
            raise ModelLoadError(
                f"{source}: position_embedding_type {self.position_embedding_type!r} is not "
                f"supported (expected one of {', '.join(POSITION_TYPES)})"
            )
        if self.feed_forward_type not in FEED_FORWARD_TYPES:
            raise ModelLoadError(
                f"{source}: feed_forward_type {self.feed_forward_type!r} is not supported "
                f"(expected one of {', '.join(FEED_FORWARD_TYPES)})"
            )
        if self.qk_layer_norm and self.feed_forward_type not in ("geglu", "reglu"):
            raise ModelLoadError(
                f"{source}: feed_forward_type {self.feed_forward_type!r} is not supported with "
                "the qk-post-norm layer (expected geglu or reglu)"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ModelLoadError(f"{source}: hidden_act {self.hidden_act!r} is not supported")
        if self.hidden_size % self.num_attention_heads:
            raise ModelLoadError(
                f"{source}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )


def _qk_layer_norm(raw: dict, source: str) -> bool:
    """Whether the remote code this config names is the qk-post-norm JinaBERT.

    ``auto_map.AutoConfig`` ("repo--module.Class") names it, as text-embeddings-inference reads
    it; a config with local code only ("module.Class") falls back to ``_name_or_path``. A repo jrag
    does not know is refused: its layer could differ in ways the weight names do not show.
    """
    auto_map = raw.get("auto_map")
    auto_config = auto_map.get("AutoConfig") if isinstance(auto_map, dict) else None
    if isinstance(auto_config, str) and "--" in auto_config:
        repo = auto_config.split("--", 1)[0]
        if repo not in REMOTE_CODE_LAYOUTS:
            raise ModelLoadError(
                f"{source}: auto_map.AutoConfig names remote code {repo!r}, whose layer jrag does "
                f"not know (known: {', '.join(REMOTE_CODE_LAYOUTS)}); jrag never runs remote code"
            )
        return REMOTE_CODE_LAYOUTS[repo]
    return REMOTE_CODE_LAYOUTS.get(str(raw.get("_name_or_path", "")), False)
