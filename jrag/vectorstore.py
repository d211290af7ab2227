"""One collection as a framework's vector store: opened lazily, written and searched by id.

The LangChain and LlamaIndex vector stores need the same steps: create the collection on the
first write (for the model that embeds it), find nothing rather than fail when it does not
exist yet, and add, delete, read and search documents through :mod:`jrag.documents` and
:func:`jrag.retrieval.search`. Vectors come either from jrag's own encoder (whole documents,
late chunks, BM25) or from any other embedding model (one whole-document row each, and BM25).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jrag import documents
from jrag.embedding import identity_of
from jrag.encoder import Encoder
from jrag.errors import CollectionNotFound
from jrag.retrieval import SearchOptions, SearchResult, search
from jrag.store import CONNECT_TIMEOUT_S, MilvusStore
from jrag.store.manifest import Identity
from jrag.store.metadata import compile_where


class DocumentCollection:
    """A collection of documents kept by id; nothing connects until the first call."""

    def __init__(
        self,
        uri: str,
        collection: str,
        *,
        token: str | None = None,
        tenant: str = "",
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.uri = uri
        self.collection = collection
        self.tenant = tenant
        self.connect_timeout = connect_timeout
        self._token = token
        self._store: MilvusStore | None = None
        # Async callers run in worker threads; one client, one call at a time.
        self._lock = threading.RLock()

    def store(self, identity: Identity | None = None) -> MilvusStore | None:
        """The opened store; created for ``identity`` if given, else None while it is missing."""
        with self._lock:
            if self._store is None:
                try:
                    self._store = MilvusStore(
                        self.uri, self.collection, token=self._token, identity=identity,
                        create=identity is not None, connect_timeout=self.connect_timeout,
                    )  # fmt: skip
                except CollectionNotFound:
                    return None
            elif identity is not None:  # opened by a read: writing must still match its model
                self._store.check_model(identity)
            return self._store

    def add_encoded(
        self,
        encoder: Encoder,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str | None] | None = None,
        *,
        tenant: str | None = None,
    ) -> list[str]:
        """Store texts embedded by jrag's encoder (whole, late chunks, BM25); returns ids."""
        with self._lock:
            store = self.store(identity_of(encoder))
            return documents.add_texts(store, encoder, texts, metadatas, ids,
                                       tenant=self._tenant(tenant))  # fmt: skip

    def add_vectors(
        self,
        model: str,
        texts: Sequence[str],
        vectors: Sequence[Sequence[float]],
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str | None] | None = None,
        *,
        tenant: str | None = None,
    ) -> list[str]:
        """Store texts with vectors from another model (named ``model``); returns ids."""
        if not texts:
            return []
        matrix = np.asarray(vectors, dtype=np.float32)
        with self._lock:
            store = self.store(Identity(model=model, dim=int(matrix.shape[-1])))
            return documents.add_embedded(store, texts, matrix, metadatas, ids,
                                          tenant=self._tenant(tenant))  # fmt: skip

    def delete(self, ids: Sequence[str], *, tenant: str | None = None) -> int:
        """Delete these documents; returns how many existed."""
        with self._lock:
            store = self.store()
            return 0 if store is None else documents.delete(store, ids, tenant=self._tenant(tenant))

    def get(
        self, ids: Sequence[str], *, tenant: str | None = None
    ) -> list[documents.StoredDocument]:
        """The stored documents with these ids, in order; missing ones skipped."""
        with self._lock:
            store = self.store()
            if store is None:
                return []
            return documents.get_by_ids(store, ids, tenant=self._tenant(tenant))

    def list(
        self, filter: Mapping[str, Any] | None = None, *, tenant: str | None = None,
        limit: int | None = None,
    ) -> list[documents.StoredDocument]:  # fmt: skip
        """The stored documents matching a structured metadata filter."""
        compile_where(filter, params=False)  # a bad filter fails even before anything is stored
        with self._lock:
            store = self.store()
            if store is None:
                return []
            return documents.list_documents(store, filter, tenant=self._tenant(tenant), limit=limit)

    def search(
        self,
        query: str,
        options: SearchOptions,
        *,
        encoder: Encoder | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
    ) -> list[SearchResult]:
        """The best documents (see :func:`jrag.retrieval.search`); none while it is missing."""
        with self._lock:
            store = self.store()
            if store is None:
                return []
            if vector is not None:
                vector = np.asarray(vector, dtype=np.float32)
            return search(query, store, encoder, options, vector=vector)

    def drop(self) -> None:
        """Drop the collection (if it exists) and close."""
        with self._lock:
            store = self.store()
            if store is not None:
                store.drop()
            self.close()

    def close(self) -> None:
        """Close the store if open (a later call opens it again)."""
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()

    def _tenant(self, tenant: str | None) -> str:
        return self.tenant if tenant is None else tenant
