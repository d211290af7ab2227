"""``JragVectorStore``: a jrag collection as a LlamaIndex vector store, nodes kept by id."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.schema import (
    BaseNode,
    MetadataMode,
    NodeRelationship,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from pydantic import PrivateAttr

from jrag.errors import InputError
from jrag.retrieval import SearchOptions
from jrag.store import CONNECT_TIMEOUT_S, quote
from jrag.store.metadata import USER_KEY
from jrag.vectorstore import DocumentCollection

# The key, among a node's stored metadata, that holds the id of the document it came from.
REF_DOC_KEY = "ref_doc_id"
# How the collection names the model of vectors computed by LlamaIndex's embed model.
MODEL_NAME = "llama_index"
_OPERATORS = {
    FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte", FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in", FilterOperator.NIN: "$nin",
}  # fmt: skip
_CONDITIONS = {FilterCondition.AND: "$and", FilterCondition.OR: "$or"}


class JragVectorStore(BasePydanticVectorStore):
    """Nodes with their own metadata, kept by id in a jrag collection.

    Example:
        .. code-block:: python

            from llama_index.core import StorageContext, VectorStoreIndex
            from llama_index.vector_stores.jrag import JragVectorStore

            store = JragVectorStore(uri="./jrag.db", collection="notes")
            index = VectorStoreIndex.from_documents(
                documents, storage_context=StorageContext.from_defaults(vector_store=store)
            )

    Each node is stored as one document row with the vector LlamaIndex's embed model gave it,
    its text (searched by BM25 too where the collection has it) and its metadata; its
    ``ref_doc_id`` is kept so ``delete(ref_doc_id)`` removes every node of a document. Adding a
    node id again replaces the node (or skips it, unchanged). ``query`` takes
    ``MetadataFilters`` (``== != > >= < <= in nin``, nested, AND/OR) and the modes
    ``default`` (dense), ``hybrid`` (dense fused with BM25) and ``mmr``. The collection is
    created on the first ``add``; nothing connects before.
    """

    stores_text: bool = True
    flat_metadata: bool = False
    uri: str = "./jrag.db"
    collection: str = "jrag"
    token: str | None = None
    tenant: str = ""
    connect_timeout: float = CONNECT_TIMEOUT_S

    _collection: DocumentCollection = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._collection = DocumentCollection(
            self.uri, self.collection, token=self.token, tenant=self.tenant,
            connect_timeout=self.connect_timeout,
        )  # fmt: skip

    @classmethod
    def class_name(cls) -> str:
        return "JragVectorStore"

    @property
    def client(self) -> Any:
        """The opened :class:`jrag.store.MilvusStore` (None while the collection is missing)."""
        return self._collection.store()

    # -- writing -------------------------------------------------------------------------------

    def add(self, nodes: list[BaseNode], **kwargs: Any) -> list[str]:
        """Store each node (with its embedding) as one document; returns the node ids."""
        if not nodes:
            return []
        vectors = []
        for node in nodes:
            if node.embedding is None:
                raise InputError(f"node {node.node_id!r} has no embedding")
            vectors.append(node.embedding)
        return self._collection.add_vectors(
            MODEL_NAME,
            [node.get_content(metadata_mode=MetadataMode.NONE) for node in nodes],
            vectors,
            [_stored_metadata(node) for node in nodes],
            [node.node_id for node in nodes],
        )

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the document ``ref_doc_id``."""
        nodes = self._collection.list({REF_DOC_KEY: ref_doc_id})
        self._collection.delete([d.id for d in nodes])

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete the nodes with these ids and/or matching these filters."""
        self._collection.delete([node.node_id for node in self.get_nodes(node_ids, filters)])

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """The stored nodes with these ids and/or matching these filters."""
        if node_ids is None and filters is None:
            raise InputError("get_nodes needs node_ids or filters")
        if filters is None:
            stored = self._collection.get(node_ids)
        else:
            stored = self._collection.list(to_where(filters))
            if node_ids is not None:
                wanted = set(node_ids)
                stored = [d for d in stored if d.id in wanted]
        return [_to_node(d.id, d.text, d.metadata) for d in stored]

    def clear(self) -> None:
        """Drop the whole collection."""
        self._collection.drop()

    def close(self) -> None:
        """Close the store (a later call opens it again)."""
        self._collection.close()

    # -- searching -----------------------------------------------------------------------------

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` best nodes for the query's embedding (and text)."""
        options = _options(query, self.tenant)
        vector = query.query_embedding
        if vector is None:
            raise InputError("a jrag vector store query needs a query embedding")
        results = self._collection.search(query.query_str or "", options, vector=vector)
        nodes = [_to_node(r.source, r.text, r.metadata.get(USER_KEY) or {}) for r in results]
        return VectorStoreQueryResult(
            nodes=nodes, similarities=[r.score for r in results], ids=[n.node_id for n in nodes]
        )

    # The model's and Milvus' calls block: the async variants keep them off the event loop.

    async def async_add(self, nodes: list[BaseNode], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add, nodes, **kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id, **delete_kwargs)

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        await asyncio.to_thread(self.delete_nodes, node_ids, filters, **delete_kwargs)

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)


def to_where(filters: MetadataFilters) -> dict:
    """LlamaIndex ``MetadataFilters`` as a structured jrag filter (:mod:`jrag.store.metadata`)."""
    if filters.condition not in _CONDITIONS:
        raise InputError(f"metadata filter condition {filters.condition!r} is not supported")
    parts = []
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            parts.append(to_where(item))
            continue
        assert isinstance(item, MetadataFilter)
        operator = _OPERATORS.get(item.operator)
        if operator is None:
            raise InputError(
                f"metadata filter operator {item.operator.value!r} on {item.key!r} is not "
                f"supported (supported: {', '.join(o.value for o in _OPERATORS)})"
            )
        parts.append({item.key: {operator: item.value}})
    return {_CONDITIONS[filters.condition]: parts} if parts else {}


def _options(query: VectorStoreQuery, tenant: str) -> SearchOptions:
    mode = VectorStoreQueryMode(query.mode)
    if mode not in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.HYBRID,
                    VectorStoreQueryMode.MMR):  # fmt: skip
        raise InputError(f"query mode {mode.value!r} is not supported (default, hybrid, mmr)")
    where = to_where(query.filters) if query.filters is not None else None
    if query.doc_ids:
        where = {"$and": [where or {}, {REF_DOC_KEY: {"$in": list(query.doc_ids)}}]}
    raw = None
    if query.node_ids:
        raw = " or ".join(f"source == {quote(node_id)}" for node_id in query.node_ids)
    extra: dict[str, Any] = {}
    if mode is VectorStoreQueryMode.MMR:
        extra = {"mmr": True}
        if query.mmr_threshold is not None:
            extra["mmr_lambda"] = query.mmr_threshold
    return SearchOptions(
        k=query.hybrid_top_k or query.similarity_top_k if mode is VectorStoreQueryMode.HYBRID
        else query.similarity_top_k,
        hybrid=mode is VectorStoreQueryMode.HYBRID, content="document", tenant=tenant,
        where=where, filter=raw, **extra,
    )  # fmt: skip


def _stored_metadata(node: BaseNode) -> dict[str, Any]:
    metadata = dict(node.metadata)
    if REF_DOC_KEY in metadata:
        raise InputError(f"node {node.node_id!r}: the metadata key {REF_DOC_KEY!r} is jrag's own")
    if node.ref_doc_id is not None:
        metadata[REF_DOC_KEY] = node.ref_doc_id
    return metadata


def _to_node(node_id: str, text: str, stored: dict[str, Any]) -> TextNode:
    metadata = dict(stored)
    ref_doc_id = metadata.pop(REF_DOC_KEY, None)
    relationships = {}
    if ref_doc_id is not None:
        relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref_doc_id)
    return TextNode(id_=node_id, text=text, metadata=metadata, relationships=relationships)
