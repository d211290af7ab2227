"""The query side's one door: a model shared across a process, and a collection opened with it.

Every front door (the CLI, both retrievers and embeddings, ``jrag serve``, the eval) loads its
model through :func:`load_encoder` and opens an existing collection with the model it was built
with through :func:`open_collection` (or :class:`Searcher`, which does so lazily: nothing connects
or loads until the first query, so a retriever can be built inside a framework's configuration
code, or pointed at a server that is not up yet).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from jrag.encoder import Encoder
from jrag.retrieval import SearchOptions, SearchResult, search
from jrag.store import CONNECT_TIMEOUT_S, Identity, MilvusStore

_ENCODERS: dict[tuple, Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def load_encoder(
    model: str,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
) -> Encoder:
    """``Encoder.from_pretrained(model, device, dtype, ...)``, loaded once per process, shared.

    Adapters are cheap objects that frameworks build often (one per chain, per test, per
    request); the weights behind them should be loaded once. The prompts (None: the
    checkpoint's) are part of the key.
    """
    key = (str(model), device, str(dtype) if dtype is not None else None, query_prompt,
           document_prompt)  # fmt: skip
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = Encoder.from_pretrained(
                model, device, dtype, query_prompt=query_prompt, document_prompt=document_prompt
            )
        return _ENCODERS[key]


def identity_of(encoder: Encoder) -> Identity:
    """The model identity a collection records and checks: name, dim, fingerprint, dtype and
    document prompt.

    The dtype ("float32", "bfloat16") is recorded, never checked: vectors computed in another
    dtype differ little (git-doc nDCG@10 within 0.004 between float32 and bfloat16).
    """
    return Identity(
        model=encoder.name,
        dim=encoder.dim,
        fingerprint=getattr(encoder, "fingerprint", ""),
        dtype=encoder.dtype_name,
        document_prompt=encoder.document_prompt,
    )


def embed_texts(
    encoder: Encoder, texts: list[str], *, max_length: int, normalize: bool, query: bool = False
) -> list[list[float]]:
    """Vectors as plain lists, for the frameworks; ``max_length`` is clamped to the model's.
    Queries get the query prompt, other texts the document prompt."""
    encode = encoder.encode_query if query else encoder.encode_document
    max_length = min(max_length, encoder.max_length)
    return encode(list(texts), max_length=max_length, normalize=normalize).tolist()


def open_collection(
    uri: str,
    collection: str,
    *,
    token: str | None = None,
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
) -> tuple[MilvusStore, Encoder]:
    """Open an existing collection and the model it was built with (or ``model``, checked).

    The store opens first, so a wrong URI or collection fails before any weights load. The
    prompts (None: the checkpoint's) override the model's; the document prompt must be the one
    the collection was built with.
    """
    store = MilvusStore(uri, collection, token=token, create=False, connect_timeout=connect_timeout)
    try:
        encoder = load_encoder(model or store.model, device, dtype, query_prompt=query_prompt,
                               document_prompt=document_prompt)  # fmt: skip
        store.check_model(identity_of(encoder))
    except BaseException:
        store.close()
        raise
    return store, encoder


def result_metadata(result: SearchResult) -> dict[str, Any]:
    """The metadata the adapters attach to a result: where it is and how well it matched."""
    return {k: v for k, v in result.to_dict().items() if k not in ("text", "metadata")}


class Searcher:
    """Search one collection; the store and the model open on the first query, then stay open."""

    def __init__(
        self,
        uri: str,
        collection: str,
        *,
        token: str | None = None,
        model: str | None = None,
        device: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
    ) -> None:
        self.uri = uri
        self.collection = collection
        self.model = model
        self.device = device
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.connect_timeout = connect_timeout
        self._token = token
        self._opened: tuple[MilvusStore, Encoder] | None = None
        # Async callers run queries in worker threads; only one of them may open the store.
        self._lock = threading.Lock()

    def open(self) -> tuple[MilvusStore, Encoder]:
        """The store and its model, opened on first use."""
        with self._lock:
            if self._opened is None:
                self._opened = open_collection(
                    self.uri,
                    self.collection,
                    token=self._token,
                    model=self.model,
                    device=self.device,
                    connect_timeout=self.connect_timeout,
                    query_prompt=self.query_prompt,
                    document_prompt=self.document_prompt,
                )
            return self._opened

    def search(self, query: str, options: SearchOptions) -> list[SearchResult]:
        """The best documents for ``query`` (see :func:`jrag.retrieval.search`)."""
        store, encoder = self.open()
        return search(query, store, encoder, options)

    def close(self) -> None:
        """Close the store (for Milvus Lite: release its folder for other processes)."""
        with self._lock:
            opened, self._opened = self._opened, None
        if opened is not None:
            opened[0].close()


class RemoteSearcher:
    """Search a collection that ``jrag serve`` holds, over HTTP: no model loads here."""

    def __init__(self, server: str, collection: str, *, api_key: str | None = None) -> None:
        from jrag.client import Client

        self.collection = collection
        self._client = Client(server, api_key=api_key)

    def search(self, query: str, options: SearchOptions) -> list[SearchResult]:
        """The server's results for ``query`` with ``options`` (as :meth:`Searcher.search`)."""
        hits = self._client.search(
            query, k=options.k, mode=options.mode, filter=options.filter, hybrid=options.hybrid,
            ranker=options.ranker, weights=list(options.weights), content=options.content,
            tenant=options.tenant, collection=self.collection,
        )  # fmt: skip
        return [SearchResult(**{k: v for k, v in hit.items() if k != "page"}) for hit in hits]

    def close(self) -> None:
        self._client.close()
