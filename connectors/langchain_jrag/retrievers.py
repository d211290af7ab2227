"""``JragRetriever``: a jrag collection as a LangChain retriever, one ``Document`` per document."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from jrag.embedding import RemoteSearcher, Searcher, result_metadata
from jrag.retrieval import SearchOptions, SearchResult
from jrag.store import CONNECT_TIMEOUT_S

_DEFAULTS = SearchOptions()


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
    # The search options: named and defaulted as SearchOptions' fields, checked by it.
    mode: str = Field(
        default=_DEFAULTS.mode, description="Which rows to search: auto = all the collection holds."
    )
    hybrid: bool = Field(default=_DEFAULTS.hybrid, description="Fuse dense and BM25 search.")
    ranker: str = Field(
        default=_DEFAULTS.ranker, description="How the dense and BM25 results are fused."
    )
    weights: tuple[float, float] | None = Field(
        default=None, description="Dense and BM25 weights; None: the ranker's own (see --weights)."
    )
    content: str = Field(
        default=_DEFAULTS.content, description="Best passage with context, or its whole window."
    )
    tenant: str = Field(default=_DEFAULTS.tenant, description="Only this tenant's documents.")
    rerank: str | None = Field(default=None, description="Cross-encoder model; None: off.")
    rerank_depth: int = Field(
        default=_DEFAULTS.rerank_depth, description="Documents the reranker scores."
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

    @model_validator(mode="after")
    def _check_options(self) -> JragRetriever:
        self._options(None, None)  # a bad option fails here, not at the first query
        return self

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
        """This retriever's search options, with one call's ``k`` and ``filter``."""
        return SearchOptions.pick(self, k=k, filter=filter)

    def close(self) -> None:
        """Close the store if it was opened (a later query opens it again)."""
        self._searcher.close()


def _to_document(result: SearchResult) -> Document:
    return Document(
        id=f"{result.doc_id}:{result.kind}:{result.start}",
        page_content=result.text,
        metadata=result_metadata(result),
    )
