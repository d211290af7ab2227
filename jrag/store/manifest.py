"""A collection's identity and contents: its schema, and the manifest that says what it holds.

The manifest lives in the collection itself, as a few rows of kind ``manifest`` read with one
small query (never a scan of the document rows):

- ``__manifest__``: the schema version, the model's name, fingerprint, dimension and dtype, the
  document prompt, and whether the collection has full-text (BM25) search;
- ``__manifest__:kind:<kind>``: one per row kind the collection holds, with the ingest options
  that built it (window, overlap, late-chunk size and strategy, naive chunk size).

Kinds only ever get added, each by its own row, so two writers adding different kinds at once
cannot lose one another's entry. Creation also records the schema version and model in the
collection's properties, which is how a collection of an older jrag schema is recognised.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from pymilvus import DataType, Function, FunctionType, MilvusClient

from jrag.errors import StoreError
from jrag.store.connection import Connection
from jrag.store.rows import (
    FIELDS,
    MANIFEST_KIND,
    MAX_DOC_ID,
    MAX_HASH,
    MAX_ID,
    MAX_KIND,
    MAX_SOURCE,
    MAX_TENANT,
    MAX_TEXT,
    MAX_TITLE,
    VECTOR_KINDS,
    json_metadata,
    marker_entity,
    quote,
)

SCHEMA_VERSION = 2
MANIFEST_ID = "__manifest__"
BM25_FIELD = "sparse"
HNSW_PARAMS = {"M": 16, "efConstruction": 200}


class ManifestPending(StoreError):
    """The collection exists but is not complete yet (its creator is still at work)."""


@dataclass
class Identity:
    """The embedding model a collection's vectors come from."""

    model: str
    dim: int
    fingerprint: str = ""
    dtype: str = "float32"
    document_prompt: str = ""  # what went before each document's text ("" for none)


@dataclass
class Manifest:
    """What a collection is and holds, as recorded in it."""

    schema_version: int
    identity: Identity
    bm25: bool
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> ingest options

    @property
    def vector_kinds(self) -> tuple[str, ...]:
        """The searchable row kinds this collection holds, in a fixed order."""
        return tuple(kind for kind in VECTOR_KINDS if kind in self.kinds)


def create_collection(
    conn: Connection, name: str, identity: Identity, *, bm25: bool | None = None
) -> Manifest:
    """Create ``name`` with jrag's schema; BM25 only where the backend has it."""
    bm25 = conn.capabilities.bm25 if bm25 is None else bm25 and conn.capabilities.bm25
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    v = DataType.VARCHAR
    schema.add_field("id", v, is_primary=True, max_length=MAX_ID)
    schema.add_field("doc_id", v, max_length=MAX_DOC_ID)
    # Tenants share one collection; the partition key keeps each one's rows together.
    schema.add_field("tenant", v, max_length=MAX_TENANT, is_partition_key=True)
    schema.add_field("kind", v, max_length=MAX_KIND)
    schema.add_field("chunk_index", DataType.INT64)
    schema.add_field("chunk_count", DataType.INT64)
    schema.add_field("start", DataType.INT64)
    schema.add_field("end", DataType.INT64)
    schema.add_field("text", v, max_length=MAX_TEXT, **({"enable_analyzer": True} if bm25 else {}))
    schema.add_field("source", v, max_length=MAX_SOURCE)
    schema.add_field("title", v, max_length=MAX_TITLE)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("content_hash", v, max_length=MAX_HASH)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=identity.dim)
    if bm25:
        # Milvus computes the sparse BM25 vector from ``text`` itself, on insert.
        schema.add_field(BM25_FIELD, DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name="text_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=[BM25_FIELD],
            )
        )
    conn.call(
        f"create collection '{name}'",
        conn.client.create_collection,
        name,
        schema=schema,
        index_params=_index_params(conn, bm25),
        consistency_level="Strong",
        properties={
            "jrag.schema": str(SCHEMA_VERSION),
            "jrag.model": identity.model,
            "jrag.dim": str(identity.dim),
        },
    )
    manifest = Manifest(SCHEMA_VERSION, identity, bm25)
    write_manifest(conn, name, manifest)
    return manifest


def _index_params(conn: Connection, bm25: bool) -> Any:
    index_params = MilvusClient.prepare_index_params()
    if conn.is_lite:  # exact search; Lite is for local corpora
        index_params.add_index("vector", index_type="FLAT", metric_type="COSINE")
    else:
        index_params.add_index(
            "vector", index_type="HNSW", metric_type="COSINE", params=HNSW_PARAMS
        )
    if bm25:
        index_params.add_index(BM25_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    return index_params


def finish_collection(conn: Connection, name: str, identity: Identity) -> None:
    """Finish creating ``name`` (its indexes, loading, the manifest) where its creator stopped
    short, if its properties name this same model: two creators racing on one name may each
    see the other's half-made collection. Each step is idempotent; errors are left to the
    reader that follows."""
    info = conn.call(f"describe collection '{name}'", conn.client.describe_collection, name)
    props = info.get("properties") or {}
    if props.get("jrag.model") != identity.model or props.get("jrag.dim") != str(identity.dim):
        return
    bm25 = any(f.get("name") == BM25_FIELD for f in info.get("fields", []))
    with contextlib.suppress(StoreError):
        conn.call(f"index collection '{name}'", conn.client.create_index, name,
                  _index_params(conn, bm25))  # fmt: skip
    with contextlib.suppress(StoreError):
        conn.call(f"load collection '{name}'", conn.client.load_collection, name)
        write_manifest(conn, name, Manifest(SCHEMA_VERSION, identity, bm25))


def write_manifest(
    conn: Connection, name: str, manifest: Manifest, kinds: list[str] | None = None
) -> None:
    """Upsert the identity row, and the rows of ``kinds`` (default: none)."""
    identity = manifest.identity
    head = {
        "schema_version": manifest.schema_version, "model": identity.model,
        "fingerprint": identity.fingerprint, "dim": identity.dim, "dtype": identity.dtype,
        "document_prompt": identity.document_prompt, "bm25": manifest.bm25,
    }  # fmt: skip
    rows = [marker_entity(MANIFEST_ID, MANIFEST_ID, MANIFEST_KIND, identity.dim, metadata=head)]
    rows += [
        marker_entity(f"{MANIFEST_ID}:kind:{kind}", MANIFEST_ID, MANIFEST_KIND, identity.dim,
                      title=kind, metadata={"kind": kind, "options": manifest.kinds.get(kind, {})})
        for kind in kinds or []
    ]  # fmt: skip
    conn.call(f"write the manifest of '{name}'", conn.client.upsert, name, rows)


def read_manifest(conn: Connection, name: str) -> Manifest:
    """The manifest of an existing collection (one of another schema is refused)."""
    info = conn.call(f"describe collection '{name}'", conn.client.describe_collection, name)
    props = info.get("properties") or {}
    fields = {f.get("name"): f for f in info.get("fields", [])}
    where = f"collection '{name}' at {conn.display}"
    if "jrag.schema" not in props:
        raise StoreError(
            f"{where} was not created by jrag (it records no jrag schema). Use another "
            f"--collection, or `jrag drop -c {name}` to delete it"
        )
    try:
        version = int(props["jrag.schema"])
    except ValueError:
        version = 0
    vector = fields.get("vector") or {}
    dim = int((vector.get("params") or {}).get("dim", 0) or props.get("jrag.dim", 0))
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"{where} was written by an older jrag (schema {version}); rebuild it with `jrag drop "
            f"-c {name} --yes` then `jrag ingest PATH -c {name}`"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{where} was written by a newer jrag (schema {version}; this one knows "
            f"{SCHEMA_VERSION}). Upgrade jrag"
        )
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        raise StoreError(
            f"{where} carries jrag's properties but lacks its fields ({', '.join(missing)}); it "
            f"was not written by this jrag. Use another --collection, or `jrag drop -c {name}`"
        )
    try:  # it is released after a server restart or a Lite reopen
        conn.call(f"load collection '{name}'", conn.client.load_collection, name)
    except StoreError as err:  # e.g. its index is not built yet
        raise ManifestPending(str(err)) from None
    rows = conn.call(
        f"read the manifest of '{name}'",
        conn.client.query,
        name,
        filter=f"kind == {quote(MANIFEST_KIND)}",
        output_fields=["id", "title", "metadata"],
        limit=64,
        consistency_level="Strong",
    )
    head = next((r for r in rows if r["id"] == MANIFEST_ID), None)
    if head is None:
        raise ManifestPending(
            f"{where} has no manifest row: another process is still creating it, or it was not "
            f"written by this jrag (then `jrag drop -c {name}` deletes it)"
        )
    data = json_metadata(head["metadata"])
    identity = Identity(
        model=str(data.get("model", props.get("jrag.model", ""))),
        dim=int(data.get("dim", dim)),
        fingerprint=str(data.get("fingerprint", "")),
        dtype=str(data.get("dtype", "float32")),
        document_prompt=str(data.get("document_prompt", "")),
    )
    kinds = {
        str(r["title"]): json_metadata(r["metadata"]).get("options", {})
        for r in rows
        if r["id"] != MANIFEST_ID
    }
    bm25 = bool(data.get("bm25")) and BM25_FIELD in fields
    return Manifest(SCHEMA_VERSION, identity, bm25, kinds)


def describe(manifest: Manifest) -> dict[str, Any]:
    """The manifest as plain data (for ``jrag stats`` and JSON output)."""
    return {
        "schema_version": manifest.schema_version,
        "model": manifest.identity.model,
        "fingerprint": manifest.identity.fingerprint[:16],
        "dim": manifest.identity.dim,
        "dtype": manifest.identity.dtype,
        "document_prompt": manifest.identity.document_prompt,
        "kinds": {kind: manifest.kinds[kind] for kind in sorted(manifest.kinds)},
        "full_text_search": manifest.bm25,
    }
