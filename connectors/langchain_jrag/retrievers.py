"""``JragRetriever``: a jrag collection as a LangChain retriever, one ``Document`` per document."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

from jrag.modes import DEFAULT_RANKER, DEFAULT_WEIGHTS
from jrag.retrieval import DEFAULT_RERANK_DEPTH, SearchOptions, SearchResult
from jrag.searcher import RemoteSearcher, Searcher, result_metadata
from jrag.store import CONNECT_TIMEOUT_S


class JragRetriever(BaseRetriever):
    """Retrieve whole documents from a collection built by ``jrag ingest``.

    Example:
        .. code-block:: python

            from langchain_jrag import JragRetriever

            retriever = JragRetriever(uri="./jrag.db", collection="jrag", k=4)
            docs = retriever.invoke("When was the Fresnel lens re-ground?")
            docs[0].metadata["source"], docs[0].metadata["score"]

    Each ``Document`` is one source document: ``page_content`` is its best passage with
    neighbouring context (``content="passage"``), or the whole window holding it
    (``content="document"``), and ``metadata`` holds ``source``, ``title``, ``score``,
    ``start``, ``end`` (the content's span), ``passage_start``, ``passage_end``, ``page`` (None
    when unknown), ``doc_id`` and ``kind``. By default every kind of row the collection holds is
    searched (``mode="auto"``), fused with full-text BM25 where the collection has it
    (``hybrid=False`` turns that off; ``ranker`` and ``weights`` set the fusion). ``rerank``
    names a cross-encoder that re-scores the top ``rerank_depth`` documents (off by default).

    ``model=None`` loads the model the collection was built with; a named model must match it.
    Nothing connects or loads at construction: the store and the model open on the first query
    (which raises :class:`jrag.StoreError` if Milvus is unreachable) and are then reused.
    ``invoke(query, k=...)`` overrides ``k`` for one call. ``server`` (a ``jrag serve`` URL,
    with its ``api_key``) searches there instead, loading no model here.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    uri: str = Field(default="./jrag.db", description="Milvus Lite path or server URL.")
    collection: str = Field(default="jrag", description="Collection name.")
    token: SecretStr | None = Field(default=None, description="Milvus server token.")
    model: str | None = Field(default=None, description="None: the collection's own model.")
    device: str | None = Field(default=None, description="torch device; default: CUDA if any.")
    k: int = Field(default=4, ge=1, description="How many documents to return.")
    filter: str | None = Field(default=None, description="Milvus filter expression.")
    mode: Literal["auto", "whole", "late", "chunked"] = Field(
        default="auto", description="Which rows to search: auto = all the collection holds."
    )
    hybrid: bool = Field(default=True, description="Fuse dense and BM25 full-text search.")
    ranker: Literal["adaptive", "relative", "dbsf", "rrf", "weighted"] = Field(
        default=DEFAULT_RANKER, description="How the dense and BM25 results are fused."
    )
    weights: tuple[float, float] = Field(
        default=DEFAULT_WEIGHTS, description="Dense and BM25 weights (see --weights)."
    )
    content: Literal["passage", "document"] = Field(
        default="passage", description="Best passage with context, or its whole window."
    )
    tenant: str = Field(default="", description="Only this tenant's documents.")
    rerank: str | None = Field(default=None, description="Cross-encoder model; None: off.")
    rerank_depth: int = Field(
        default=DEFAULT_RERANK_DEPTH, ge=1, le=1000, description="Documents the reranker scores."
    )
    connect_timeout: float = Field(default=CONNECT_TIMEOUT_S, gt=0, description="Seconds.")
    server: str | None = Field(
        default=None, description="A `jrag serve` URL: search there, loading no model here."
    )
    api_key: SecretStr | None = Field(default=None, description="The server's API key.")
    query_prompt: str | None = Field(default=None, description="None: the model's query prompt.")
    document_prompt: str | None = Field(
        default=None, description="None: the model's; must match the collection's."
    )

    _searcher: Searcher | RemoteSearcher = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        if self.server:
            key = self.api_key.get_secret_value() if self.api_key else None
            self._searcher = RemoteSearcher(self.server, self.collection, api_key=key)
            return
        self._searcher = Searcher(
            self.uri,
            self.collection,
            token=self.token.get_secret_value() if self.token else None,
            model=self.model,
            device=self.device,
            connect_timeout=self.connect_timeout,
            query_prompt=self.query_prompt,
            document_prompt=self.document_prompt,
        )

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: str | None = None,
    ) -> list[Document]:
        results = self._searcher.search(query, self._options(k, filter))
        return [_to_document(result) for result in results]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: str | None = None,
    ) -> list[Document]:
        # Model forward passes and the Milvus client are blocking: keep them off the loop.
        results = await asyncio.to_thread(self._searcher.search, query, self._options(k, filter))
        return [_to_document(result) for result in results]

    def _options(self, k: int | None, filter: str | None) -> SearchOptions:
        return SearchOptions(
            k=self.k if k is None else k,
            mode=self.mode,
            filter=self.filter if filter is None else filter,
            hybrid=self.hybrid,
            ranker=self.ranker,
            weights=self.weights,
            content=self.content,
            tenant=self.tenant,
            rerank=self.rerank,
            rerank_depth=self.rerank_depth,
        )

    def close(self) -> None:
        """Close the store if it was opened (a later query opens it again)."""
        self._searcher.close()


def _to_document(result: SearchResult) -> Document:
    return Document(
        id=f"{result.doc_id}:{result.kind}:{result.start}",
        page_content=result.text,
        metadata=result_metadata(result),
    )
