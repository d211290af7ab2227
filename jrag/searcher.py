"""Opening a collection with its model, lazily, and searching it: shared by the adapters.

The LangChain and LlamaIndex adapters (and the CLI) need the same steps: open an existing
collection, load the model it was built with (or a named one that matches it), search, and hand
results back as plain metadata. Nothing here connects or loads until the first query, so a
retriever can be built inside a framework's configuration code, or pointed at a server that is not
up yet.
"""

from __future__ import annotations

import threading
from typing import Any

from jrag.encoder import Encoder
from jrag.errors import InputError
from jrag.pipeline import SEARCH_KIND, SearchResult, search
from jrag.store import CONNECT_TIMEOUT_S, MilvusStore

_ENCODERS: dict[tuple[str, str | None, str | None], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def load_encoder(model: str, device: str | None = None, dtype: str | None = None) -> Encoder:
    """``Encoder.from_pretrained(model, device, dtype)``, loaded once per process and shared.

    ``dtype`` None follows JRAG_DTYPE, else "auto" (bfloat16 where the CPU has it natively).

    Adapters are cheap objects that frameworks build often (one per chain, per test, per
    request); the weights behind them should be loaded once.
    """
    key = (str(model), device, dtype)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = Encoder.from_pretrained(model, device=device, dtype=dtype)
        return _ENCODERS[key]


def embed_texts(
    encoder: Encoder, texts: list[str], *, max_length: int, normalize: bool
) -> list[list[float]]:
    """Vectors as plain lists, for the frameworks; ``max_length`` is clamped to the model's."""
    vectors = encoder.encode(
        list(texts), max_length=min(max_length, encoder.max_length), normalize=normalize
    )
    return vectors.tolist()


def open_collection(
    uri: str,
    collection: str,
    *,
    token: str | None = None,
    model: str | None = None,
    device: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> tuple[MilvusStore, Encoder]:
    """Open an existing collection and the model it was built with (or ``model``, checked).

    The store opens first, so a wrong URI or collection fails before any weights load.
    """
    store = MilvusStore(uri, collection, token=token, create=False, connect_timeout=connect_timeout)
    try:
        encoder = load_encoder(model or store.model, device)
        store.check_model(encoder.name, encoder.dim)
    except BaseException:
        store.close()
        raise
    return store, encoder


def result_metadata(result: SearchResult) -> dict[str, Any]:
    """The metadata the adapters attach to a result: where it is and how well it matched."""
    return {
        "source": result.source,
        "title": result.title,
        "score": result.score,
        "start": result.start,
        "end": result.end,
        "page": result.page,
        "doc_id": result.doc_id,
        "kind": result.kind,
    }


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
    ) -> None:
        self.uri = uri
        self.collection = collection
        self.model = model
        self.device = device
        self.connect_timeout = connect_timeout
        self._token = token
        self._opened: tuple[MilvusStore, Encoder] | None = None
        # Async callers run queries in worker threads; only one of them may open the store.
        self._lock = threading.Lock()

    def _open(self) -> tuple[MilvusStore, Encoder]:
        with self._lock:
            if self._opened is None:
                self._opened = open_collection(
                    self.uri,
                    self.collection,
                    token=self._token,
                    model=self.model,
                    device=self.device,
                    connect_timeout=self.connect_timeout,
                )
            return self._opened

    @property
    def is_open(self) -> bool:
        return self._opened is not None

    def search(
        self, query: str, *, k: int = 4, mode: str = "whole", filter: str | None = None
    ) -> list[SearchResult]:
        """The ``k`` best documents for ``query`` (see :func:`jrag.pipeline.search`)."""
        if mode not in SEARCH_KIND:
            raise InputError(f"unknown mode {mode!r}; use one of {', '.join(SEARCH_KIND)}")
        if not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive number of documents, not {k!r}")
        store, encoder = self._open()
        return search(query, store, encoder, k=k, mode=mode, filter=filter)

    def close(self) -> None:
        """Close the store (for Milvus Lite: release its folder for other processes)."""
        with self._lock:
            opened, self._opened = self._opened, None
        if opened is not None:
            opened[0].close()
