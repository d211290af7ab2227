"""jrag's Milvus store: one collection per corpus, in Milvus Lite or a Milvus server.

Read in this order: :mod:`~jrag.store.rows` (the one schema: fields, row kinds, the builders
of every row), :mod:`~jrag.store.connection` (reaching Milvus), :mod:`~jrag.store.manifest`
(identity and contents), :mod:`~jrag.store.writes` (the versioned write protocol),
:mod:`~jrag.store.search` (document ranking) and :mod:`~jrag.store.milvus` (``MilvusStore``,
which joins them).
Code outside this package uses ``MilvusStore``'s public methods only (a test reads the source).
"""

from jrag.store.connection import CONNECT_TIMEOUT_S, Capabilities, Connection, display_uri
from jrag.store.manifest import SCHEMA_VERSION, Identity, Manifest
from jrag.store.milvus import MilvusStore, Staged, check_identity, drop_collection
from jrag.store.rows import (
    KINDS,
    VECTOR_KINDS,
    DocumentState,
    DocumentVersion,
    Hit,
    Row,
    document_id,
    quote,
    truncate_utf8,
)
from jrag.store.search import RANKERS, Query, RankedRow

__all__ = [
    "CONNECT_TIMEOUT_S",
    "KINDS",
    "RANKERS",
    "SCHEMA_VERSION",
    "VECTOR_KINDS",
    "Capabilities",
    "Connection",
    "DocumentState",
    "DocumentVersion",
    "Hit",
    "Identity",
    "Manifest",
    "MilvusStore",
    "Query",
    "RankedRow",
    "Row",
    "Staged",
    "check_identity",
    "display_uri",
    "document_id",
    "drop_collection",
    "quote",
    "truncate_utf8",
]
