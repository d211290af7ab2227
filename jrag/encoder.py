"""``Encoder``: texts in, embeddings out. The one public entry point to the model.

It tokenizes, sorts inputs by length, packs them into batches under a token budget, runs the
model, mean-pools in fp32 and restores the caller's order, the way
``SentenceTransformer.encode`` does. ``encode_tokens`` and ``encode_windows`` return per-token
states with character offsets, for late chunking and for documents longer than the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer
from tqdm.auto import tqdm

from jrag.config import BertConfig
from jrag.errors import InputError
from jrag.loading import (
    DEFAULT_MODEL,
    build_model,
    load_state_dict,
    load_tokenizer,
    resolve_model_dir,
)
from jrag.modeling import BertModel

logger = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 16384
# Window overlap: an eighth of the window, at most 512 tokens (512 of 8,192 for JinaBERT).
MAX_WINDOW_OVERLAP = 512

T = TypeVar("T")


@dataclass
class TokenStates:
    """The last hidden states of one tokenized text (or one window of a long text).

    ``offsets[i]`` is token i's character span in the *original* text; special tokens ([CLS],
    [SEP]) have ``special[i] = True`` and span (0, 0).
    """

    hidden: np.ndarray  # [tokens, dim] float32
    offsets: np.ndarray  # [tokens, 2] int64
    special: np.ndarray  # [tokens] bool

    @property
    def span(self) -> tuple[int, int]:
        """The characters of the original text this window covers."""
        real = self.offsets[~self.special]
        return (int(real[0, 0]), int(real[-1, 1])) if len(real) else (0, 0)

    def pooled(self, normalize: bool = True) -> np.ndarray:
        """Mean over every token, special ones included: the same vector ``encode`` returns."""
        return _finish(self.hidden.mean(axis=0), normalize)


def _finish(vector: np.ndarray, normalize: bool) -> np.ndarray:
    vector = vector.astype(np.float32)
    if normalize:
        vector /= max(float(np.linalg.norm(vector)), 1e-12)
    return vector


class Encoder:
    """A BERT or JinaBERT checkpoint with its tokenizer, ready to embed texts."""

    def __init__(
        self,
        model: BertModel,
        tokenizer: Tokenizer,
        *,
        name: str,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.dtype = dtype
        self.config: BertConfig = model.config
        self._pad_id = tokenizer.token_to_id("[PAD]") or self.config.pad_token_id
        self._special_count = tokenizer.post_processor.num_special_tokens_to_add(False)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        *,
        allow_pickle: bool = False,
    ) -> Encoder:
        """Load a local folder in Hugging Face layout, or a hub id (cache first).

        ``device`` defaults to CUDA when available; ``dtype`` to float32 on CPU and bfloat16 (or
        float16) on CUDA. Weights are read from safetensors only unless ``allow_pickle``.
        """
        model_dir = resolve_model_dir(name_or_path)
        config = BertConfig.from_file(model_dir / "config.json")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _pick_dtype(dtype, device)
        tokenizer = load_tokenizer(model_dir)
        state = load_state_dict(model_dir, allow_pickle=allow_pickle)
        model = build_model(config, state, dtype=dtype, source=str(model_dir))
        # A local folder is named by its absolute path, so that a collection's model check does
        # not depend on the working directory.
        name = (
            str(model_dir.resolve())
            if Path(name_or_path).expanduser().is_dir()
            else str(name_or_path)
        )
        return cls(model, tokenizer, name=name, device=device, dtype=dtype)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    @property
    def max_length(self) -> int:
        """The model's real limit in tokens, special tokens included (8,192 for JinaBERT)."""
        return self.config.max_length

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts, special tokens included, without truncation."""
        texts = _check_texts(texts)
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts)]

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        max_length: int | None = None,
        normalize: bool = True,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed texts: [n, dim] float32 (or [dim] for one string), mean-pooled.

        Text past ``max_length`` (default: the model's limit) is truncated, with one warning.
        """
        single = isinstance(texts, str)
        encodings = self._truncated(_check_texts([texts] if single else texts), max_length)
        vectors = self._run(
            [e.ids for e in encodings],
            lambda hidden: _finish(hidden.float().mean(dim=0).cpu().numpy(), normalize),
            batch_tokens=batch_tokens,
            show_progress=show_progress,
        )
        array = np.stack(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        return array[0] if single else array

    def encode_tokens(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        show_progress: bool = False,
    ) -> list[TokenStates]:
        """Per-token last hidden states with character offsets, one entry per (truncated) text."""
        encodings = self._truncated(_check_texts(texts), max_length)
        return self._token_states(encodings, batch_tokens, show_progress)

    def encode_windows(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        overlap: int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        show_progress: bool = False,
    ) -> list[list[TokenStates]]:
        """Cover each whole text with overlapping windows of at most ``max_length`` tokens.

        A text that fits gets one window. Longer ones get windows that overlap by ``overlap``
        tokens (default: an eighth of the window, at most 512), so that no text is ever silently
        truncated.
        """
        texts = _check_texts(texts)
        budget = self._budget(max_length)
        if overlap is None:
            overlap = min(MAX_WINDOW_OVERLAP, budget // 8)
        if not 0 <= overlap < budget // 2:
            raise InputError(
                f"overlap must be between 0 and {budget // 2 - 1} tokens, not {overlap}"
            )
        windows_per_text = []
        for raw in self.tokenizer.encode_batch(texts, add_special_tokens=False):
            raw.truncate(budget, stride=overlap)
            processed = self.tokenizer.post_process(raw)
            windows_per_text.append([processed, *processed.overflowing])
        flat = [window for windows in windows_per_text for window in windows]
        states = iter(self._token_states(flat, batch_tokens, show_progress))
        return [[next(states) for _ in windows] for windows in windows_per_text]

    # -- internals ---------------------------------------------------------------------------

    def _budget(self, max_length: int | None) -> int:
        """Content tokens per sequence, special tokens excluded."""
        limit = self.max_length if max_length is None else max_length
        if not self._special_count < limit <= self.max_length:
            raise InputError(
                f"max_length must be between {self._special_count + 1} and {self.max_length} "
                f"(this model's limit), not {limit}"
            )
        return limit - self._special_count

    def _truncated(self, texts: list[str], max_length: int | None) -> list[Encoding]:
        budget = self._budget(max_length)
        encodings, dropped = [], []
        for raw in self.tokenizer.encode_batch(texts, add_special_tokens=False):
            if len(raw.ids) > budget:
                dropped.append(len(raw.ids) - budget)
                raw.truncate(budget)
            encodings.append(self.tokenizer.post_process(raw))
        if dropped:
            logger.warning(
                "%d of %d texts exceeded %d tokens and were truncated, dropping %d tokens in all "
                "(up to %d from one text). Use encode_windows() or `jrag ingest` to keep "
                "everything.",
                len(dropped), len(texts), budget + self._special_count, sum(dropped), max(dropped),
            )  # fmt: skip
        return encodings

    def _token_states(
        self, encodings: list[Encoding], batch_tokens: int, show_progress: bool
    ) -> list[TokenStates]:
        hidden = self._run(
            [e.ids for e in encodings],
            lambda states: states.float().cpu().numpy(),
            batch_tokens=batch_tokens,
            show_progress=show_progress,
        )
        return [
            TokenStates(
                hidden=states,
                offsets=np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2),
                special=np.asarray(e.special_tokens_mask, dtype=bool),
            )
            for states, e in zip(hidden, encodings, strict=True)
        ]

    @torch.inference_mode()
    def _run(
        self,
        sequences: list[list[int]],
        collect: Callable[[torch.Tensor], T],
        *,
        batch_tokens: int,
        show_progress: bool,
    ) -> list[T]:
        """Run the model over token-id lists; ``collect`` maps each [len, dim] state to a result."""
        results: list[T | None] = [None] * len(sequences)
        with tqdm(
            total=len(sequences), disable=not show_progress, desc="encoding", unit="text"
        ) as bar:
            for batch in token_budget_batches([len(s) for s in sequences], batch_tokens):
                lengths = [len(sequences[i]) for i in batch]
                input_ids = torch.full((len(batch), max(lengths)), self._pad_id, dtype=torch.long)
                for row, index in enumerate(batch):
                    input_ids[row, : lengths[row]] = torch.tensor(sequences[index])
                hidden = self.model(input_ids.to(self.device), lengths)
                for row, index in enumerate(batch):
                    results[index] = collect(hidden[row, : lengths[row]])
                bar.update(len(batch))
        return results  # type: ignore[return-value]


def token_budget_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group indices, longest first, so that rows × longest row stays within ``batch_tokens``.

    A sequence longer than the budget gets a batch of its own.
    """
    if batch_tokens < 1:
        raise InputError(f"batch_tokens must be positive, not {batch_tokens}")
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        # Sorted longest first, so a batch's first item is its longest.
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InputError(f"texts must be a list of strings, not {type(texts).__name__}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{index}] is {type(text).__name__}, not str")
        if not text.strip():
            raise InputError(f"texts[{index}] is empty; jrag does not embed empty text")
    return list(texts)


def _pick_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise InputError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
