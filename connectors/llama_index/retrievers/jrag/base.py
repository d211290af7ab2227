"""``JragRetriever``: a jrag collection as a LlamaIndex retriever, one node per document."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from jrag.embedding import RemoteSearcher, Searcher, result_metadata
from jrag.retrieval import SearchOptions, SearchResult
from jrag.store import CONNECT_TIMEOUT_S

# Kept in the node's metadata for callers, but not shown to the LLM or re-embedded.
_INTERNAL_KEYS = ["score", "start", "end", "passage_start", "passage_end", "doc_id", "kind"]


_DEFAULTS = SearchOptions()


class JragRetriever(BaseRetriever):
    """Retrieve whole documents from a collection built by ``jrag ingest``.

    Example:
        .. code-block:: python

            from llama_index.retrievers.jrag import JragRetriever

            retriever = JragRetriever(uri="./jrag.db", collection="jrag", k=4)
            for hit in retriever.retrieve("When was the Fresnel lens re-ground?"):
                print(hit.score, hit.node.metadata["source"])

    Each ``NodeWithScore`` is one source document: the node's text is its best passage with
    neighbouring context (``content="passage"``) or the whole window holding it
    (``content="document"``), ``start_char_idx``/``end_char_idx`` locate it in the document,
    and the metadata holds ``source``, ``title``, ``score``, ``start``, ``end``,
    ``passage_start``, ``passage_end``, ``page`` (None when unknown), ``doc_id`` and ``kind``.
    ``mode="auto"`` searches every kind of row the collection holds, fused with BM25 full-text
    search where the collection has it (``hybrid=False`` turns that off; ``ranker`` and
    ``weights`` set the fusion; ``rerank`` names a cross-encoder that re-scores the top
    ``rerank_depth`` documents, off by default). ``model=None`` loads
    the model the collection was built with. ``query_prompt`` / ``document_prompt`` override the
    model's prompts (None: the checkpoint's; the document prompt must match the collection's).
    Nothing connects or loads at construction: the store and model open on the first query
    (:class:`jrag.StoreError` if Milvus is unreachable) and are then reused. ``server`` (a
    ``jrag serve`` URL, with its ``api_key``) searches there instead, loading no model here.
    """

    def __init__(
        self,
        uri: str = "./jrag.db",
        collection: str = "jrag",
        model: str | None = None,
        k: int = 4,
        filter: str | None = None,
        mode: str = _DEFAULTS.mode,
        *,
        hybrid: bool = _DEFAULTS.hybrid,
        ranker: str = _DEFAULTS.ranker,
        weights: tuple[float, float] | None = None,  # None: the ranker's own
        content: str = _DEFAULTS.content,
        tenant: str = _DEFAULTS.tenant,
        rerank: str | None = None,
        rerank_depth: int = _DEFAULTS.rerank_depth,
        token: str | None = None,
        device: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        server: str | None = None,
        api_key: str | None = None,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        **kwargs: Any,
    ) -> None:
        # The search options among the arguments, by name; checked here, so a bad one fails at
        # construction rather than at the first query.
        self.options = SearchOptions.pick(locals())
        self._searcher: Searcher | RemoteSearcher
        if server:
            self._searcher = RemoteSearcher(server, collection, api_key=api_key)
            super().__init__(**kwargs)
            return
        self._searcher = Searcher(
            uri,
            collection,
            token=token,
            model=model,
            device=device,
            connect_timeout=connect_timeout,
            query_prompt=query_prompt,
            document_prompt=document_prompt,
        )
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return _to_nodes(self._search(query_bundle.query_str))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # Model forward passes and the Milvus client are blocking: keep them off the loop.
        return _to_nodes(await asyncio.to_thread(self._search, query_bundle.query_str))

    def _search(self, query: str) -> list[SearchResult]:
        return self._searcher.search(query, self.options)

    def close(self) -> None:
        """Close the store if it was opened (a later query opens it again)."""
        self._searcher.close()


def _to_nodes(results: list[SearchResult]) -> list[NodeWithScore]:
    return [
        NodeWithScore(
            node=TextNode(
                id_=f"{r.doc_id}:{r.kind}:{r.start}",
                text=r.text,
                start_char_idx=r.start,
                end_char_idx=r.end,
                metadata=result_metadata(r),
                excluded_llm_metadata_keys=list(_INTERNAL_KEYS),
                excluded_embed_metadata_keys=list(_INTERNAL_KEYS),
            ),
            score=r.score,
        )
        for r in results
    ]
