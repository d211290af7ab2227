"""``JragVectorStore``: a jrag collection as a LangChain ``VectorStore``, documents kept by id."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from jrag.errors import InputError
from jrag.retrieval import SearchOptions, SearchResult
from jrag.store import CONNECT_TIMEOUT_S
from jrag.store.metadata import USER_KEY
from jrag.vectorstore import DocumentCollection
from langchain_jrag.embeddings import JragEmbeddings

log = logging.getLogger("jrag")
_WARNED: set[str] = set()
# Keyword arguments a search takes (also through ``as_retriever(search_kwargs=...)``).
SEARCH_KWARGS = ("mode", "hybrid", "tenant", "content", "ranker", "weights")


class JragVectorStore(VectorStore):
    """Any text in, with its own metadata, kept by id in a jrag collection.

    Example:
        .. code-block:: python

            from langchain_jrag import JragEmbeddings, JragVectorStore

            store = JragVectorStore(JragEmbeddings(), uri="./jrag.db", collection="notes")
            store.add_texts(["The barn owl hunts at night."], [{"year": 2021}], ids=["owl"])
            store.similarity_search("owls", k=1, filter={"year": {"$gte": 2020}})

    With :class:`~langchain_jrag.JragEmbeddings` each text is embedded whole (in windows past
    the model's limit) with late chunks and BM25, as ``jrag ingest`` does. With any other
    ``Embeddings`` each text is one whole-document row with that model's vector, and BM25.

    An id is a document's key: adding it again with changed text or metadata replaces the
    document, with the same ones skips it; without ids, ids come from the text. ``filter`` is a
    structured metadata filter (``{"year": {"$gte": 2020}, "$or": [...]}``) or a raw Milvus
    expression (a string). Results are ``Document(id, page_content, metadata)`` with the
    document's text (``content="document"``; ``"passage"``: the best passage with context,
    jrag's embeddings only) and exactly the metadata it was added with. The collection is
    created on the first write, for the embeddings' model; nothing connects before.
    """

    def __init__(
        self,
        embedding: Embeddings,
        *,
        uri: str = "./jrag.db",
        collection: str = "jrag",
        token: str | None = None,
        tenant: str = "",
        mode: str = "auto",
        hybrid: bool = True,
        content: str = "document",
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if not isinstance(embedding, Embeddings):
            raise InputError(f"embedding must be a LangChain Embeddings, not {embedding!r:.80}")
        self.embedding = embedding
        self.defaults = SearchOptions(mode=mode, hybrid=hybrid, content=content, tenant=tenant)
        self._collection = DocumentCollection(
            uri, collection, token=token, tenant=tenant, connect_timeout=connect_timeout
        )
        if not self._own_encoder:
            name = type(embedding).__name__
            if name not in _WARNED:
                _WARNED.add(name)
                log.warning(
                    "JragVectorStore with %s: each text is stored as one whole-document row with "
                    "BM25; late chunks and passages need JragEmbeddings", name,
                )  # fmt: skip

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    @property
    def documents(self) -> DocumentCollection:
        """The jrag collection behind this store: its documents API and its Milvus store."""
        return self._collection

    @property
    def _own_encoder(self) -> bool:
        return isinstance(self.embedding, JragEmbeddings)

    @property
    def _model_name(self) -> str:
        return f"langchain:{type(self.embedding).__name__}"

    # -- writing -------------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        tenant: str | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Store each text as one document; returns their ids, in order."""
        texts = list(texts)
        if self._own_encoder:
            return self._collection.add_encoded(
                self.embedding.encoder, texts, metadatas, ids, tenant=tenant
            )
        vectors = self.embedding.embed_documents(texts) if texts else []
        return self._collection.add_vectors(
            self._model_name, texts, vectors, metadatas, ids, tenant=tenant
        )

    def delete(
        self,
        ids: list[str] | None = None,
        *,
        filter: dict | None = None,
        tenant: str | None = None,
        **kwargs: Any,
    ) -> bool:
        """Delete the documents with these ids (or matching a structured ``filter``)."""
        if ids is None:
            if filter is None:
                raise InputError("delete needs ids or a filter (to delete everything, drop())")
            ids = [d.id for d in self._collection.list(filter, tenant=tenant)]
        self._collection.delete(ids, tenant=tenant)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents with these ids, in order; missing ones are skipped."""
        return [
            Document(id=d.id, page_content=d.text, metadata=d.metadata)
            for d in self._collection.get(ids)
        ]

    def drop(self) -> None:
        """Drop the whole collection."""
        self._collection.drop()

    def close(self) -> None:
        """Close the store (a later call opens it again)."""
        self._collection.close()

    # -- searching -----------------------------------------------------------------------------

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict | str | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` best documents with their fused scores (higher is better)."""
        return self._search(query, None, self._options(k, filter, kwargs))

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict | str | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents nearest ``embedding`` (dense only: there is no query text)."""
        options = self._options(k, filter, {**kwargs, "hybrid": False})
        return [doc for doc, _ in self._search("", embedding, options)]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict | str | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` relevant and mutually different documents (jrag picks the candidate depth)."""
        options = self._options(k, filter, {**kwargs, "mmr": True, "mmr_lambda": lambda_mult})
        return [doc for doc, _ in self._search(query, None, options)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict | str | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        extra = {**kwargs, "mmr": True, "mmr_lambda": lambda_mult, "hybrid": False}
        return [doc for doc, _ in self._search("", embedding, self._options(k, filter, extra))]

    def _select_relevance_score_fn(self):
        return lambda score: max(0.0, min(1.0, score))

    def _options(self, k: int, filter: dict | str | None, kwargs: dict) -> SearchOptions:
        unknown = set(kwargs) - {*SEARCH_KWARGS, "mmr", "mmr_lambda", "fetch_k"}
        if unknown:
            raise InputError(f"unknown search arguments: {', '.join(sorted(unknown))}")
        kwargs.pop("fetch_k", None)
        if filter is not None and not isinstance(filter, dict | str):
            raise InputError(f"filter must be a dict or a Milvus expression, not {filter!r:.80}")
        options = SearchOptions(**{
            **self.defaults.__dict__, **kwargs, "k": k,
            "where": filter if isinstance(filter, dict) else None,
            "filter": filter if isinstance(filter, str) else None,
        })  # fmt: skip
        if options.content != "document" and not self._own_encoder:
            raise InputError('content="passage" needs JragEmbeddings (passages are late chunks)')
        return options

    def _search(
        self, query: str, vector: list[float] | None, options: SearchOptions
    ) -> list[tuple[Document, float]]:
        if self._own_encoder:
            encoder = self.embedding.encoder
        else:
            encoder = None
            if vector is None:
                vector = self.embedding.embed_query(query)
        results = self._collection.search(query, options, encoder=encoder, vector=vector)
        return [(_to_document(result), result.score) for result in results]

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> JragVectorStore:
        """A store (``kwargs``: the constructor's) holding ``texts``."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store


def _to_document(result: SearchResult) -> Document:
    return Document(
        id=result.source,
        page_content=result.text,
        metadata=dict(result.metadata.get(USER_KEY) or {}),
    )
