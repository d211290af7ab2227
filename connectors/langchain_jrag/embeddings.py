"""``JragEmbeddings``: jrag's encoder as a LangChain ``Embeddings``."""

from __future__ import annotations

import asyncio

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field

from jrag.embedding import embed_texts, load_encoder
from jrag.encoder import Encoder
from jrag.loading import DEFAULT_MODEL


class JragEmbeddings(BaseModel, Embeddings):
    """Whole-text embeddings from a JinaBERT (8,192 tokens) or BERT checkpoint, run locally.

    Example:
        .. code-block:: python

            from langchain_jrag import JragEmbeddings

            embeddings = JragEmbeddings(model="jinaai/jina-embeddings-v2-small-en")
            vector = embeddings.embed_query("Who re-ground the Fresnel lens?")

    The model loads on first use (not at construction) and is shared by every instance that
    names the same model and device.

    ``max_length`` is an upper bound in tokens: the effective limit is
    ``min(max_length, the model's own limit)``, so 8,192 for JinaBERT v2 but 512 for a BERT
    such as all-MiniLM-L6-v2. A text longer than that is truncated by the encoder, which logs a
    warning. To index whole long documents without truncation, use ``jrag ingest`` (overlapping
    windows) and query them with :class:`~langchain_jrag.JragRetriever`.

    Empty or blank texts raise :class:`jrag.InputError` (naming the offending index): an
    embedding of nothing is not a meaningful point to store or search with.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(default=DEFAULT_MODEL, description="Model folder or hub id.")
    device: str | None = Field(default=None, description="torch device; default: CUDA if any.")
    max_length: int = Field(default=8192, gt=2, description="Token limit (clamped to the model's).")
    normalize: bool = Field(default=True, description="L2-normalize the vectors.")
    query_prompt: str | None = Field(default=None, description="None: the model's query prompt.")
    document_prompt: str | None = Field(
        default=None, description="None: the model's document prompt."
    )

    @property
    def encoder(self) -> Encoder:
        """The loaded encoder (loads it on first access)."""
        return load_encoder(self.model, self.device, query_prompt=self.query_prompt,
                            document_prompt=self.document_prompt)  # fmt: skip

    def _embed(self, texts: list[str], query: bool = False) -> list[list[float]]:
        return embed_texts(
            self.encoder, texts, max_length=self.max_length, normalize=self.normalize, query=query
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts, one vector each, with the document prompt if the model has one."""
        return self._embed(texts)

    def embed_query(self, text: str) -> list[float]:
        """Embed one query, with the query prompt if the model has one."""
        return self._embed([text], query=True)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Like :meth:`embed_documents`, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self._embed, list(texts))

    async def aembed_query(self, text: str) -> list[float]:
        """Like :meth:`embed_query`, in a worker thread."""
        return (await asyncio.to_thread(self._embed, [text], True))[0]
