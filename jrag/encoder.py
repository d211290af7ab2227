"""``Encoder``: texts in, embeddings out. The one public entry point to the model.

It tokenizes, sorts inputs by length, packs them into batches under a token budget, runs the
model, pools in fp32 the way the checkpoint's sentence-transformers config says (mean for
JinaBERT) and restores the caller's order, the way ``SentenceTransformer.encode`` does.
``encode_tokens``, ``encode_windows`` and ``iter_windows`` return per-token states with
character offsets, for late chunking and for documents longer than the model.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from tqdm.auto import tqdm

from jrag.attention import Kernel, choose_kernel
from jrag.config import BertConfig
from jrag.errors import InputError
from jrag.loading import (
    DEFAULT_MODEL,
    SentenceConfig,
    build_model,
    checkpoint_fingerprint,
    load_sentence_config,
    load_state_dict,
    load_tokenizer,
    resolve_model_dir,
)
from jrag.modeling import BertModel

logger = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 16384
# Long texts are tokenized in pieces of about this many characters, a few pieces at a time.
TOKENIZE_CHUNK_CHARS = 100_000
_TOKENIZE_GROUP_CHARS = 800_000
# The largest share of a batch's positions that may be padding once the batch holds
# MIN_BATCH_TOKENS positions (see token_budget_batches). At 0, a batch past that size holds
# texts of one length, which need no padding mask: measured faster than 2% or 12.5% padding.
MAX_PADDING = 0.0
MIN_BATCH_TOKENS = 512
# Window overlap: an eighth of the window, at most 512 tokens (512 of 8,192 for JinaBERT).
MAX_WINDOW_OVERLAP = 512
# What ``dtype=None`` means, unless the JRAG_DTYPE environment variable says otherwise.
DEFAULT_DTYPE = "auto"
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

QUERY_PROMPT_NAMES = ("query",)
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")
_NO_IDS = np.zeros(0, np.int64)

T = TypeVar("T")
Progress = Callable[[int, int], None]


@dataclass
class TokenStates:
    """The last hidden states of one tokenized text (or one window of a long text).

    ``offsets[i]`` is token i's character span in the *original* text; special tokens ([CLS],
    [SEP]) and prompt tokens have ``special[i] = True`` and span (0, 0). ``pool_from`` is the
    first token the pooling reads (past the prompt when the checkpoint excludes it).
    """

    hidden: np.ndarray  # [tokens, dim] float32
    offsets: np.ndarray  # [tokens, 2] int64
    special: np.ndarray  # [tokens] bool
    pooling: str = "mean"
    pool_from: int = 0

    @property
    def span(self) -> tuple[int, int]:
        """The characters of the original text this window covers."""
        real = self.offsets[~self.special]
        return (int(real[0, 0]), int(real[-1, 1])) if len(real) else (0, 0)

    def pooled(self, normalize: bool = True) -> np.ndarray:
        """The checkpoint's pooling over every token, special ones included: ``encode``'s vector."""
        return _finish(pool(self.hidden, self.pooling, self.pool_from), normalize)


def pool(hidden: np.ndarray, mode: str, pool_from: int = 0) -> np.ndarray:
    """Pool [tokens, dim] states into one vector, in float32, as sentence-transformers does.

    Tokens before ``pool_from`` (a prompt, with ``include_prompt: false``) are left out, except
    by "cls", which reads the first token whatever the mask says, as sentence-transformers does.
    """
    hidden = hidden.astype(np.float32, copy=False)
    if mode == "cls":
        return hidden[0].copy()
    hidden = hidden[pool_from:]
    if mode == "max":
        return hidden.max(axis=0)
    total = hidden.sum(axis=0)
    if mode == "mean_sqrt_len_tokens":
        return total / np.float32(np.sqrt(len(hidden)))
    return total / np.float32(len(hidden))


def _finish(vector: np.ndarray, normalize: bool) -> np.ndarray:
    vector = vector.astype(np.float32)
    if normalize:
        vector /= max(float(np.linalg.norm(vector)), 1e-12)
    return vector


@dataclass
class _Window:
    """Token ids of one model input, special tokens included, with offsets and special flags."""

    ids: np.ndarray
    offsets: np.ndarray
    special: np.ndarray
    pool_from: int = 0


@dataclass
class Tokens:
    """One text's tokens, special tokens excluded: ids and character offsets into the text.

    ``prompt`` holds the ids of the prompt put before the text (see ``Encoder.tokenize``); it
    precedes every window cut from these tokens and is not counted by ``len``.
    """

    ids: np.ndarray  # [n] int64
    offsets: np.ndarray  # [n, 2] int64
    prompt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_encoding(cls, encoding: Encoding) -> Tokens:
        return cls(
            np.asarray(encoding.ids, dtype=np.int64),
            np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2),
        )


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
        sentence: SentenceConfig | None = None,
        model_dir: Path | None = None,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        kernel: str | None = None,
    ):
        self.model = model.to(device)
        # The attention kernel: chosen once, here, for this device and dtype (or as given).
        self.model.kernel = Kernel(kernel or choose_kernel(device.type, dtype))
        self.quantized = any(_is_quantized(m) for m in model.modules())
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.dtype = dtype
        self.config: BertConfig = model.config
        self.sentence = sentence or SentenceConfig()
        self.model_dir = model_dir
        self._pad_id = tokenizer.token_to_id("[PAD]") or self.config.pad_token_id
        self._special_count = tokenizer.post_processor.num_special_tokens_to_add(False)
        self._prefix, self._suffix = _special_layout(tokenizer)
        self._splits_at_whitespace = isinstance(tokenizer.pre_tokenizer, BertPreTokenizer)
        # The prompts put before queries and documents: the checkpoint's unless overridden
        # ("" for none), chosen as sentence-transformers' encode_query / encode_document do.
        self.query_prompt = _prompt(self.sentence, QUERY_PROMPT_NAMES, query_prompt, "query")
        self.document_prompt = _prompt(
            self.sentence, DOCUMENT_PROMPT_NAMES, document_prompt, "document"
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        *,
        allow_pickle: bool = False,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        kernel: str | None = None,
    ) -> Encoder:
        """Load a local folder in Hugging Face layout, or a hub id (cache first).

        ``device`` defaults to CUDA when available. ``dtype`` "auto" (the default, unless the
        JRAG_DTYPE environment variable names another) means bfloat16 on CUDA and on CPUs with
        native bfloat16 (AVX-512 BF16 or AMX), float32 on other CPUs; pooling and normalization
        run in float32 either way. "int8" (CPU only, opt-in) runs the linear layers with int8
        weights and dynamically quantized activations, the rest in float32. Weights are read
        from safetensors only unless ``allow_pickle``. ``query_prompt`` / ``document_prompt``
        override the prompts of the checkpoint's config_sentence_transformers.json ("" for
        none). ``kernel`` ("sdpa" or "flex") overrides the attention kernel
        :func:`jrag.attention.choose_kernel` picks for the device and dtype.
        """
        model_dir, config, sentence, tokenizer, name = _checkpoint(name_or_path)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype, int8 = _compute_dtype(dtype, device)
        state = load_state_dict(model_dir, allow_pickle=allow_pickle)
        model = build_model(config, state, dtype=dtype, source=str(model_dir))
        if int8:
            model = quantize_linear_layers(model)
        return cls(
            model, tokenizer, name=name, device=device, dtype=dtype, sentence=sentence,
            model_dir=model_dir, query_prompt=query_prompt, document_prompt=document_prompt,
            kernel=kernel,
        )  # fmt: skip

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    @property
    def dtype_name(self) -> str:
        """The compute dtype as a plain name ("float32", "bfloat16", "int8"), for the manifest."""
        if self.quantized:
            return "int8"
        return _DTYPE_NAMES.get(self.dtype, str(self.dtype).removeprefix("torch."))

    @property
    def max_length(self) -> int:
        """The default input limit in tokens, special tokens included.

        The checkpoint's ``max_seq_length`` when it states one (256 for all-MiniLM-L6-v2), else
        the position limit (8,192 for JinaBERT). An explicit ``max_length`` argument may go up to
        the position limit.
        """
        return _max_length(self.sentence, self.config)

    @property
    def pooling(self) -> str:
        """How token states become one vector: "mean", "cls", "max" or "mean_sqrt_len_tokens"."""
        return self.sentence.pooling

    @property
    def checkpoint_normalizes(self) -> bool:
        """Whether the checkpoint ends in a Normalize module (jrag normalizes by default anyway)."""
        return self.sentence.normalize

    @property
    def special_token_count(self) -> int:
        """Special tokens added to each input ([CLS] and [SEP]: 2)."""
        return self._special_count

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the checkpoint's content: config, tokenizer, pooling files, weights.

        See ``jrag.loading.checkpoint_fingerprint``: weights enter by name, size and their first
        and last MiB, so a swapped weights file is told apart cheaply. Empty for an encoder built
        without a model folder.
        """
        if self.model_dir is None:
            return ""
        return checkpoint_fingerprint(self.model_dir, self.sentence.files)

    def tokenize(self, texts: Sequence[str], *, prompt: str | None = None) -> list[Tokens]:
        """One tokenization per text, without special tokens or truncation.

        ``prompt`` (default: ``document_prompt``) is tokenized together with the text, exactly
        as sentence-transformers feeds ``prompt + text`` to the tokenizer; its tokens go to
        ``Tokens.prompt`` and the text's offsets still index the text itself.
        Pass the result to ``encode_windows(encodings=...)`` or ``iter_windows(encoding=...)``;
        its ``offsets`` serve late chunking, and ``count_tokens`` is its length with the prompt
        and special tokens. Long texts are tokenized in pieces of about ``TOKENIZE_CHUNK_CHARS``
        cut at whitespace (where a BERT tokenizer splits anyway), so memory stays bounded:
        tokenizing 5 MB at once peaks at about 600 MB.
        """
        texts = _check_texts(texts)
        prompt = self.document_prompt if prompt is None else _check_prompt(prompt, "prompt")
        chunk = TOKENIZE_CHUNK_CHARS if self._splits_at_whitespace else None
        parts: list[list[Tokens]] = [[] for _ in texts]
        group: list[tuple[int, int, str, str]] = []
        group_chars = 0

        def flush() -> None:
            nonlocal group, group_chars
            encodings = self.tokenizer.encode_batch([lead + p for _, _, p, lead in group],
                                                    add_special_tokens=False)  # fmt: skip
            for (index, start, _, lead), encoding in zip(group, encodings, strict=True):
                tokens = _split_prompt(Tokens.from_encoding(encoding), len(lead))
                tokens.offsets += start
                parts[index].append(tokens)
            group, group_chars = [], 0

        for index, text in enumerate(texts):
            for start, end in _pieces(text, chunk):
                group.append((index, start, text[start:end], prompt if start == 0 else ""))
                group_chars += end - start
                if group_chars >= _TOKENIZE_GROUP_CHARS:
                    flush()
        if group:
            flush()
        return [_concatenate(p) for p in parts]

    def count_tokens(self, texts: Sequence[str], *, prompt: str | None = None) -> list[int]:
        """Token counts, special tokens and ``prompt`` (default: none) included, untruncated."""
        return [
            len(t) + len(t.prompt) + self._special_count
            for t in self.tokenize(texts, prompt=prompt or "")
        ]

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        max_length: int | None = None,
        normalize: bool = True,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        show_progress: bool = False,
        prompt: str | None = None,
    ) -> np.ndarray:
        """Embed texts: [n, dim] float32 (or [dim] for one string), pooled as the checkpoint says.

        Text past ``max_length`` (default: ``self.max_length``) is truncated, with one warning.
        ``prompt`` goes before each text; by default the checkpoint's ``default_prompt_name``
        prompt, if any, as in ``SentenceTransformer.encode``. Queries and documents have their
        own methods, ``encode_query`` and ``encode_document``.
        """
        if prompt is None:
            prompt = self.sentence.prompt(())
        single = isinstance(texts, str)
        windows = self._truncated(_check_texts([texts] if single else texts), max_length, prompt)
        vectors = self._run(
            windows,
            lambda hidden, window: _finish(pool(hidden, self.pooling, window.pool_from), normalize),
            batch_tokens=batch_tokens,
            show_progress=show_progress,
        )
        array = np.stack(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        return array[0] if single else array

    def encode_query(self, texts: str | Sequence[str], **kwargs) -> np.ndarray:
        """``encode`` with the query prompt (``query_prompt``), as for search queries."""
        return self.encode(texts, prompt=self.query_prompt, **kwargs)

    def encode_document(self, texts: str | Sequence[str], **kwargs) -> np.ndarray:
        """``encode`` with the document prompt (``document_prompt``), as for stored texts."""
        return self.encode(texts, prompt=self.document_prompt, **kwargs)

    def encode_tokens(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        show_progress: bool = False,
    ) -> list[TokenStates]:
        """Per-token last hidden states with character offsets, one entry per (truncated) text.

        Each text gets the document prompt, as in ``encode_windows``.
        """
        windows = self._truncated(_check_texts(texts), max_length, self.document_prompt)
        return self._run(windows, self._states, batch_tokens=batch_tokens,
                         show_progress=show_progress)  # fmt: skip

    def encode_windows(
        self,
        texts: Sequence[str] | None = None,
        *,
        encodings: Sequence[Tokens | Encoding] | None = None,
        max_length: int | None = None,
        overlap: int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        show_progress: bool = False,
        progress: Progress | None = None,
    ) -> list[list[TokenStates]]:
        """Cover each whole text with overlapping windows of at most ``max_length`` tokens.

        Every window starts with the document prompt (see ``tokenize``). A text that fits gets
        one window. Longer ones get windows that overlap by ``overlap``
        tokens (default: an eighth of the window, at most 512), so that no text is ever silently
        truncated. Pass ``texts``, or ``encodings`` from ``tokenize`` to skip tokenizing again.
        ``progress(done, total)`` is called after each batch, counting windows.
        """
        per_text = [self._windows(t, max_length, overlap) for t in self._tokens(texts, encodings)]
        flat = [window for windows in per_text for window in windows]
        states = iter(self._run(flat, self._states, batch_tokens=batch_tokens,
                                show_progress=show_progress, progress=progress))  # fmt: skip
        return [[next(states) for _ in windows] for windows in per_text]

    def iter_windows(
        self,
        text: str | None = None,
        *,
        encoding: Tokens | Encoding | None = None,
        max_length: int | None = None,
        overlap: int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        progress: Progress | None = None,
    ) -> Iterator[TokenStates]:
        """The windows of one text, as ``encode_windows`` cuts them, computed a batch at a time.

        Memory stays bounded by one batch of hidden states however long the text is, so a
        caller that pools each window and drops it can ingest a file of any size.
        ``progress(done, total)`` counts windows.
        """
        (tokens,) = self._tokens(None if text is None else [text],
                                 None if encoding is None else [encoding])  # fmt: skip
        windows = self._windows(tokens, max_length, overlap)
        done = 0
        for group in _window_groups([len(w.ids) for w in windows], batch_tokens):
            states = self._run([windows[i] for i in group], self._states,
                               batch_tokens=batch_tokens, show_progress=False)  # fmt: skip
            done += len(group)
            if progress is not None:
                progress(done, len(windows))
            yield from states

    # -- internals ---------------------------------------------------------------------------

    def _budget(self, max_length: int | None, prompt: np.ndarray = _NO_IDS) -> int:
        """Content tokens per sequence, special tokens and the prompt's excluded."""
        limit = self.max_length if max_length is None else max_length
        if not self._special_count < limit <= self.config.max_length:
            raise InputError(
                f"max_length must be between {self._special_count + 1} and "
                f"{self.config.max_length} (this model's limit), not {limit}"
            )
        if limit - self._special_count - len(prompt) < 1:
            raise InputError(
                f"the prompt takes {len(prompt)} tokens, leaving no room for text within "
                f"max_length {limit}; use a shorter prompt (--query-prompt / --document-prompt)"
            )
        return limit - self._special_count - len(prompt)

    def _tokens(
        self, texts: Sequence[str] | None, encodings: Sequence[Tokens | Encoding] | None
    ) -> list[Tokens]:
        if (texts is None) == (encodings is None):
            raise InputError("pass either texts or encodings (from Encoder.tokenize), not both")
        if texts is not None:
            return self.tokenize(texts)
        tokens = []
        for index, encoding in enumerate(encodings):
            if isinstance(encoding, Encoding):
                encoding = Tokens.from_encoding(encoding)
            if not isinstance(encoding, Tokens):
                raise InputError(
                    f"encodings[{index}] is {type(encoding).__name__}, not Tokens (from "
                    "Encoder.tokenize) or tokenizers.Encoding"
                )
            tokens.append(encoding)
        return tokens

    def _windows(
        self, tokens: Tokens, max_length: int | None, overlap: int | None
    ) -> list[_Window]:
        """Overlapping windows cut from one tokenization's ids and offsets, special tokens added.

        Equivalent to ``raw.truncate(budget, stride=overlap)`` plus its overflowing encodings,
        without building a full ``Encoding`` per window.
        """
        budget = self._budget(max_length, tokens.prompt)
        if overlap is None:
            overlap = min(MAX_WINDOW_OVERLAP, budget // 8)
        if not 0 <= overlap < budget // 2:
            raise InputError(
                f"overlap must be between 0 and {budget // 2 - 1} tokens, not {overlap}"
            )
        ids, offsets = tokens.ids, tokens.offsets
        starts = [0]
        while starts[-1] + budget < len(ids):
            starts.append(starts[-1] + budget - overlap)
        return [
            self._window(ids[s : s + budget], offsets[s : s + budget], tokens.prompt)
            for s in starts
        ]

    def _window(self, ids: np.ndarray, offsets: np.ndarray, prompt: np.ndarray) -> _Window:
        """[prefix specials, prompt, ids, suffix specials]; the prompt counts as special."""
        lead = np.concatenate([self._prefix, prompt])
        suffix = self._suffix
        return _Window(
            ids=np.concatenate([lead, ids, suffix]),
            offsets=np.concatenate([_no_span(len(lead)), offsets, _no_span(len(suffix))]),
            special=np.concatenate(
                [np.ones(len(lead), bool), np.zeros(len(ids), bool), np.ones(len(suffix), bool)]
            ),
            pool_from=0 if self.sentence.include_prompt or not len(prompt) else len(lead),
        )

    def _truncated(self, texts: list[str], max_length: int | None, prompt: str) -> list[_Window]:
        windows, dropped = [], []
        for tokens in self.tokenize(texts, prompt=prompt):
            budget = self._budget(max_length, tokens.prompt)
            if len(tokens) > budget:
                dropped.append(len(tokens) - budget)
            windows.append(self._window(tokens.ids[:budget], tokens.offsets[:budget],
                                        tokens.prompt))  # fmt: skip
        if dropped:
            logger.warning(
                "%d of %d texts exceeded %d tokens and were truncated, dropping %d tokens in all "
                "(up to %d from one text). Use encode_windows() or `jrag ingest` to keep "
                "everything.",
                len(dropped), len(texts), budget + self._special_count, sum(dropped), max(dropped),
            )  # fmt: skip
        return windows

    def _states(self, hidden: np.ndarray, window: _Window) -> TokenStates:
        return TokenStates(
            hidden=hidden.copy(), offsets=window.offsets, special=window.special,
            pooling=self.pooling, pool_from=window.pool_from,
        )  # fmt: skip

    @torch.inference_mode()
    def _run(
        self,
        windows: list[_Window],
        collect: Callable[[np.ndarray, _Window], T],
        *,
        batch_tokens: int,
        show_progress: bool,
        progress: Progress | None = None,
    ) -> list[T]:
        """Run the model over windows; ``collect`` maps each [len, dim] float32 state and window."""
        results: list[T | None] = [None] * len(windows)
        done = 0
        with tqdm(
            total=len(windows), disable=not show_progress, desc="encoding", unit="text"
        ) as bar:
            for batch in token_budget_batches([len(w.ids) for w in windows], batch_tokens):
                lengths = [len(windows[i].ids) for i in batch]
                input_ids = np.full((len(batch), max(lengths)), self._pad_id, dtype=np.int64)
                for row, index in enumerate(batch):
                    input_ids[row, : lengths[row]] = windows[index].ids
                hidden = self.model(torch.from_numpy(input_ids).to(self.device), lengths)
                # One device-to-host copy per batch; pooling runs in float32 on the host.
                hidden = hidden.float().cpu().numpy()
                for row, index in enumerate(batch):
                    results[index] = collect(hidden[row, : lengths[row]], windows[index])
                bar.update(len(batch))
                done += len(batch)
                if progress is not None:
                    progress(done, len(windows))
        return results  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelFacts:
    """What a checkpoint records about itself, read without its weights: enough for a
    collection's identity (:func:`jrag.embedding.identity_of`) and for the window the ingest
    options record (:meth:`jrag.pipeline.IngestOptions.for_kind`)."""

    name: str
    dim: int
    max_length: int
    special_token_count: int
    fingerprint: str
    dtype_name: str
    document_prompt: str

    @classmethod
    def read(
        cls,
        name_or_path: str | Path,
        device: str = "cpu",
        dtype: torch.dtype | str | None = None,
        *,
        document_prompt: str | None = None,
    ) -> ModelFacts:
        """The facts of the encoder ``Encoder.from_pretrained`` would build with these
        arguments, from its config, tokenizer and pooling files only."""
        model_dir, config, sentence, tokenizer, name = _checkpoint(name_or_path)
        resolved, int8 = _compute_dtype(dtype, torch.device(device))
        return cls(
            name=name, dim=config.hidden_size, max_length=_max_length(sentence, config),
            special_token_count=tokenizer.post_processor.num_special_tokens_to_add(False),
            fingerprint=checkpoint_fingerprint(model_dir, sentence.files),
            dtype_name="int8" if int8 else _DTYPE_NAMES.get(resolved, str(resolved)),
            document_prompt=_prompt(sentence, DOCUMENT_PROMPT_NAMES, document_prompt, "document"),
        )  # fmt: skip


def _checkpoint(
    name_or_path: str | Path,
) -> tuple[Path, BertConfig, SentenceConfig, Tokenizer, str]:
    """A checkpoint's folder, config, pooling config, tokenizer and name, without weights."""
    model_dir = resolve_model_dir(name_or_path)
    config = BertConfig.from_file(model_dir / "config.json")
    sentence = load_sentence_config(model_dir, config)
    # A local folder is named by its absolute path, so that a collection's model check does
    # not depend on the working directory.
    local = Path(name_or_path).expanduser().is_dir()
    name = str(model_dir.resolve()) if local else str(name_or_path)
    return model_dir, config, sentence, load_tokenizer(model_dir), name


def _compute_dtype(
    dtype: torch.dtype | str | None, device: torch.device
) -> tuple[torch.dtype, bool]:
    """The dtype the model computes in, and whether its linear layers run in int8 (float32 else)."""
    int8 = (dtype or os.environ.get("JRAG_DTYPE")) == "int8"
    if int8 and device.type != "cpu":
        raise InputError(f"dtype int8 runs on CPU only, not on {device}")
    return (torch.float32 if int8 else resolve_dtype(dtype, device)), int8


def _max_length(sentence: SentenceConfig, config: BertConfig) -> int:
    stated = sentence.max_seq_length
    return min(stated, config.max_length) if stated else config.max_length


def _special_layout(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The special token ids the post-processor puts before and after a single text's tokens."""
    probe = tokenizer.encode("a", add_special_tokens=False)
    processed = tokenizer.post_process(probe)
    special = list(processed.special_tokens_mask)
    content = [i for i, flag in enumerate(special) if not flag]
    first = content[0] if content else len(special)
    last = content[-1] + 1 if content else len(special)
    ids = np.asarray(processed.ids, dtype=np.int64)
    return ids[:first], ids[last:]


def _pieces(text: str, chunk: int | None) -> Iterator[tuple[int, int]]:
    """Spans of ``text`` of about ``chunk`` characters that end at whitespace (None: one span)."""
    start = 0
    while chunk is not None and len(text) - start > chunk:
        end = start + chunk
        while end > start and not text[end].isspace():
            end -= 1
        if end == start:  # no whitespace in the chunk: cut at the next one, if any
            end = next((i for i in range(start + chunk, len(text)) if text[i].isspace()), len(text))
        yield start, end
        start = end
    if start < len(text) or not text:
        yield start, len(text)


def _concatenate(parts: list[Tokens]) -> Tokens:
    if len(parts) == 1:
        return parts[0]
    return Tokens(
        np.concatenate([t.ids for t in parts]), np.concatenate([t.offsets for t in parts]),
        parts[0].prompt,
    )  # fmt: skip


def _split_prompt(tokens: Tokens, prompt_chars: int) -> Tokens:
    """Split the tokens of ``prompt + text`` into the prompt's and the text's (offsets shifted).

    A token ending inside the prompt is the prompt's; one that straddles the boundary (a
    byte-level BPE merge) is the text's, starting at its first character.
    """
    if not prompt_chars:
        return tokens
    count = int(np.searchsorted(tokens.offsets[:, 1], prompt_chars, side="right"))
    offsets = np.maximum(tokens.offsets[count:] - prompt_chars, 0)
    return Tokens(tokens.ids[count:], offsets, tokens.ids[:count].copy())


def _prompt(sentence: SentenceConfig, names: tuple[str, ...], given: str | None, kind: str) -> str:
    """The ``kind`` prompt: ``given``, else the checkpoint's (as sentence-transformers picks it)."""
    return _check_prompt(sentence.prompt(names) if given is None else given, f"{kind}_prompt")


def _check_prompt(prompt: str, setting: str) -> str:
    if not isinstance(prompt, str):
        raise InputError(f"{setting} must be a string, not {type(prompt).__name__}")
    return prompt


def _no_span(count: int) -> np.ndarray:
    return np.zeros((count, 2), np.int64)


def _window_groups(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Consecutive windows in groups of about ``batch_tokens`` tokens (at least one each)."""
    groups: list[list[int]] = [[]]
    total = 0
    for index, length in enumerate(lengths):
        if groups[-1] and total + length > batch_tokens:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += length
    return groups


def token_budget_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group indices, longest first, so that rows × longest row stays within ``batch_tokens``.

    A sequence longer than the budget gets a batch of its own. A batch also closes before its
    padding would exceed ``MAX_PADDING`` of its positions, once it holds ``MIN_BATCH_TOKENS``:
    padded positions cost as much as real ones, and many short texts then fall into batches of
    one length each, which need no padding mask at all (measured: faster than large padded
    batches, see benchmarks/bench_short.py). Small batches still take rows of other lengths, so
    a few texts of scattered lengths do not become one batch each.
    """
    if batch_tokens < 1:
        raise InputError(f"batch_tokens must be positive, not {batch_tokens}")
    batches: list[list[int]] = []
    real = 0
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        # Sorted longest first, so a batch's first item is its longest.
        if batches:
            padded = (len(batches[-1]) + 1) * lengths[batches[-1][0]]
            little_padding = real + lengths[index] >= (1 - MAX_PADDING) * padded
            if padded <= batch_tokens and (little_padding or padded <= MIN_BATCH_TOKENS):
                batches[-1].append(index)
                real += lengths[index]
                continue
        batches.append([index])
        real = lengths[index]
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


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """The compute dtype for ``dtype`` on ``device``; None means JRAG_DTYPE or ``DEFAULT_DTYPE``."""
    if dtype is None:
        dtype = os.environ.get("JRAG_DTYPE") or DEFAULT_DTYPE
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    if isinstance(dtype, str):
        name = dtype
        dtype = getattr(torch, name, None)
        if dtype not in _DTYPE_NAMES:
            raise InputError(
                f"unknown dtype {name!r}; use auto, float32, float16, bfloat16 or int8"
            )
    return dtype


def quantize_linear_layers(model: BertModel) -> BertModel:
    """Dynamic int8 quantization of every ``nn.Linear``: int8 weights, per-batch activation scales.

    The projections and the feed-forward are most of the work on short texts; attention,
    LayerNorm and the embeddings stay float32. Opt-in: it changes the vectors (see
    benchmarks/bench_dtype_retrieval.py for what it costs in retrieval quality).
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # Per output channel: per-tensor weight scales cost MiniLM cosine 0.95 to its float32
    # vectors, per-channel scales 0.97-0.985 (measured on four texts).
    with warnings.catch_warnings():  # torch.ao's deprecation notices: known, and still working
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def _is_quantized(module: torch.nn.Module) -> bool:
    return type(module).__module__.startswith("torch.ao.nn.quantized")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), per /proc/cpuinfo.

    Elsewhere oneDNN emulates bfloat16, which is slower than float32, so "auto" stays float32.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False
