"""``JragEmbedding``: jrag's encoder as a LlamaIndex embedding model."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from pydantic import Field, PrivateAttr

from jrag.embedding import embed_texts, load_encoder
from jrag.encoder import Encoder
from jrag.loading import DEFAULT_MODEL


class JragEmbedding(BaseEmbedding):
    """Whole-text embeddings from a JinaBERT (8,192 tokens) or BERT checkpoint, run locally.

    Example:
        .. code-block:: python

            from llama_index.embeddings.jrag import JragEmbedding

            embed_model = JragEmbedding(model="jinaai/jina-embeddings-v2-small-en")
            vector = embed_model.get_query_embedding("Who re-ground the Fresnel lens?")

    The model loads on first use and is shared by every instance naming the same model and
    device. ``max_length`` is an upper bound: the effective limit is ``min(max_length, the
    model's own limit)`` (8,192 for JinaBERT v2, 512 for all-MiniLM-L6-v2); longer texts are
    truncated by the encoder with a warning. ``jrag ingest`` (overlapping windows) plus
    :class:`llama_index.retrievers.jrag.JragRetriever` is the path that never truncates.
    Empty or blank texts raise :class:`jrag.InputError`.
    """

    model: str = Field(default=DEFAULT_MODEL, description="Model folder or hub id.")
    device: str | None = Field(default=None, description="torch device; default: CUDA if any.")
    max_length: int = Field(default=8192, gt=2, description="Token limit (clamped to the model's).")
    normalize: bool = Field(default=True, description="L2-normalize the vectors.")
    query_prompt: str | None = Field(default=None, description="None: the model's query prompt.")
    document_prompt: str | None = Field(
        default=None, description="None: the model's document prompt."
    )

    _encoder: Encoder | None = PrivateAttr(default=None)

    def __init__(self, model: str = DEFAULT_MODEL, **kwargs: Any) -> None:
        kwargs.setdefault("model_name", model)
        super().__init__(model=model, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "JragEmbedding"

    @property
    def encoder(self) -> Encoder:
        """The loaded encoder (loads it on first access)."""
        if self._encoder is None:
            self._encoder = load_encoder(
                self.model, self.device, query_prompt=self.query_prompt,
                document_prompt=self.document_prompt,
            )  # fmt: skip
        return self._encoder

    def _embed(self, texts: list[str], query: bool = False) -> list[Embedding]:
        return embed_texts(
            self.encoder, texts, max_length=self.max_length, normalize=self.normalize, query=query
        )

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query], query=True)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts)

    # The async twins run the forward pass in a worker thread, so the event loop keeps running.

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await asyncio.to_thread(self._embed, [query], True))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await asyncio.to_thread(self._embed, [text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._embed, list(texts))
