"""``Reranker``: a cross-encoder that scores (query, passage) pairs, for a second search stage.

It loads BERT (``BertForSequenceClassification``, such as the ms-marco MiniLM cross-encoders) and
JinaBERT (``JinaBertForSequenceClassification``, the jina-reranker-v1 layout) checkpoints from
safetensors, with the encoder's own modules (``jrag.modeling``), attention and token-budget
batching. ``score`` returns the raw logit of the one-label head, as sentence-transformers'
``CrossEncoder.predict`` returns it for these checkpoints.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from jrag.attention import Kernel, choose_kernel
from jrag.config import BertConfig
from jrag.encoder import DEFAULT_BATCH_TOKENS, resolve_dtype, token_budget_batches
from jrag.errors import InputError, ModelLoadError
from jrag.loading import build_model, load_state_dict, load_tokenizer, resolve_model_dir
from jrag.modeling import BertForSequenceClassification


class Reranker:
    """A cross-encoder checkpoint with its tokenizer, ready to score query-passage pairs."""

    def __init__(
        self,
        model: BertForSequenceClassification,
        tokenizer: Tokenizer,
        *,
        name: str,
        device: torch.device,
        dtype: torch.dtype,
        max_length: int,
    ):
        self.model = model.to(device)
        self.model.kernel = Kernel(choose_kernel(device.type, dtype))
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.dtype = dtype
        self.config: BertConfig = model.config
        self.max_length = max_length
        # Longest-first truncation of the pair, special tokens included, as the Hugging Face
        # tokenizer does for CrossEncoder.
        self.tokenizer.enable_truncation(max_length, strategy="longest_first")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        *,
        max_length: int | None = None,
        allow_pickle: bool = False,
    ) -> Reranker:
        """Load a local folder in Hugging Face layout, or a hub id (cache first).

        ``device`` and ``dtype`` mean what they mean for ``Encoder.from_pretrained``.
        ``max_length`` (tokens per pair, special tokens included) defaults to the tokenizer's
        ``model_max_length`` within the model's position limit.
        """
        model_dir = resolve_model_dir(name_or_path)
        config = BertConfig.from_file(model_dir / "config.json")
        _check_one_label(model_dir / "config.json")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = resolve_dtype(dtype, device)
        tokenizer = load_tokenizer(model_dir)
        state = load_state_dict(model_dir, allow_pickle=allow_pickle)
        model = build_model(config, state, dtype=dtype, source=str(model_dir),
                            model_class=BertForSequenceClassification)  # fmt: skip
        limit = max_length or min(config.max_length, _tokenizer_limit(model_dir))
        if not 3 <= limit <= config.max_length:
            raise InputError(f"max_length must be between 3 and {config.max_length}, not {limit}")
        return cls(model, tokenizer, name=str(name_or_path), device=device, dtype=dtype,
                   max_length=limit)  # fmt: skip

    def score(
        self,
        query: str,
        passages: Sequence[str],
        *,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> list[float]:
        """One raw logit per passage (higher: more relevant), in the passages' order."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty")
        if isinstance(passages, str) or not isinstance(passages, Sequence):
            raise InputError(f"passages must be a list of strings, not {type(passages).__name__}")
        for index, passage in enumerate(passages):
            if not isinstance(passage, str):
                raise InputError(f"passages[{index}] is {type(passage).__name__}, not str")
        if not passages:
            return []
        encodings = self.tokenizer.encode_batch([(query, passage) for passage in passages])
        scores = np.zeros(len(passages), dtype=np.float32)
        lengths = [len(encoding.ids) for encoding in encodings]
        with torch.inference_mode():
            for batch in token_budget_batches(lengths, batch_tokens):
                rows = [encodings[i] for i in batch]
                width = max(lengths[i] for i in batch)
                ids = np.full((len(batch), width), self.config.pad_token_id, dtype=np.int64)
                types = np.zeros((len(batch), width), dtype=np.int64)
                for row, encoding in enumerate(rows):
                    ids[row, : len(encoding.ids)] = encoding.ids
                    if self.config.type_vocab_size > 1:
                        types[row, : len(encoding.ids)] = encoding.type_ids
                logits = self.model(
                    torch.from_numpy(ids).to(self.device),
                    [len(encoding.ids) for encoding in rows],
                    torch.from_numpy(types).to(self.device),
                )
                scores[batch] = logits.float().cpu().numpy()
        return [float(s) for s in scores]


@functools.lru_cache(maxsize=2)
def load_reranker(name: str, device: str | None = None) -> Reranker:
    """A reranker loaded once per (model, device) and kept, for searches that name one."""
    return Reranker.from_pretrained(name, device=device)


def _check_one_label(path: Path) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    labels = raw.get("id2label") or {0: "LABEL_0"}
    if len(labels) != 1:
        raise ModelLoadError(
            f"{path}: id2label has {len(labels)} labels; jrag reranks with one-label "
            "cross-encoders (one relevance logit per pair)"
        )


def _tokenizer_limit(model_dir: Path) -> int:
    """``model_max_length`` from tokenizer_config.json (huge or absent: no limit)."""
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return 1 << 30
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path} is not readable JSON: {err}") from None
    return int(value) if isinstance(value, int | float) and value > 0 else 1 << 30
