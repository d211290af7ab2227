"""Tenants: one collection, the same file paths, and each tenant sees only its own documents."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from jrag.embedding import identity_of, load_encoder
from jrag.errors import JragError
from jrag.loading import MINILM_ID
from jrag.pipeline import IngestOptions, ingest
from jrag.retrieval import SearchOptions, search
from jrag.store import MilvusStore, document_id

FACTS = {
    "a": "The copper weathervane on the granary was regilded by Tamsin Orlo in 1904.",
    "b": "The observatory's brass orrery was rebuilt by Elio Varga after the flood.",
}
ESCAPES = (
    'true) or (tenant == "b"',
    'tenant == "b" or true',
    '(tenant == "b")',
    'source like "%" or tenant != ""',
    'tenant in ["a", "b"]',
)


def write_files(folder: Path, tenant: str) -> list[Path]:
    """The same three file names for every tenant; the contents say whose they are."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("notes.txt", "report.md", "log.txt"):
        path = folder / name
        path.write_text(
            f"Tenant {tenant} {name}.\n\n{FACTS[tenant]} Filed under {name} for tenant {tenant}.\n",
            encoding="utf-8",
        )
        paths.append(path)
    return paths


@pytest.fixture
def two_tenants(store_uri: str, tmp_path: Path) -> tuple[MilvusStore, list[Path]]:
    """Tenants a and b ingest files at the same paths (rewritten between the two runs)."""
    encoder = load_encoder(MINILM_ID, device="cpu")
    store = MilvusStore(store_uri, f"tenants_{uuid.uuid4().hex[:8]}", identity=identity_of(encoder))
    folder = tmp_path / "shared"
    for tenant in ("a", "b"):
        paths = write_files(folder, tenant)
        report = ingest([folder], store, encoder, options=IngestOptions(mode="late"), tenant=tenant)
        assert len(report.added) == 3  # the other tenant's copy does not count as stored
    yield store, paths
    store.drop()
    store.close()


def test_each_tenant_sees_only_its_own_documents(
    two_tenants: tuple[MilvusStore, list[Path]],
) -> None:
    store, paths = two_tenants
    encoder = load_encoder(MINILM_ID, device="cpu")
    for tenant, other in (("a", "b"), ("b", "a")):
        results = search(FACTS[other], store, encoder, k=10, tenant=tenant)
        assert len(results) == 3
        assert {r.doc_id for r in results} == {document_id(str(p), tenant) for p in paths}
        assert all(
            f"Tenant {tenant}" in r.text and f"Tenant {other}" not in r.text for r in results
        )
    assert {s.source for s in store.all_states("a")} == {str(p) for p in paths}
    assert len(list(store.all_states("b"))) == 3


def test_a_filter_cannot_escape_its_tenant(two_tenants: tuple[MilvusStore, list[Path]]) -> None:
    store, _ = two_tenants
    encoder = load_encoder(MINILM_ID, device="cpu")
    for expr in ESCAPES:
        try:
            results = search(FACTS["b"], store, encoder, k=10, tenant="a", filter=expr)
        except JragError:
            continue  # refused (unbalanced, or the server cannot parse it): fine
        assert all("Tenant a" in r.text for r in results), expr
        assert all(r.doc_id == document_id(r.source, "a") for r in results), expr


def test_a_tenant_without_documents_finds_nothing(
    two_tenants: tuple[MilvusStore, list[Path]],
) -> None:
    store, _ = two_tenants
    encoder = load_encoder(MINILM_ID, device="cpu")
    assert search(FACTS["a"], store, encoder, k=5, tenant="nobody") == []
    assert search(FACTS["a"], store, encoder, k=5) == []  # the default tenant "" holds nothing
    options = SearchOptions(k=5, tenant="nobody", filter="chunk_index >= 0")
    assert search(FACTS["a"], store, encoder, options) == []


def test_ask_and_both_retrievers_keep_to_their_tenant(
    two_tenants: tuple[MilvusStore, list[Path]], store_uri: str
) -> None:
    from langchain_jrag import JragRetriever as LangChainRetriever
    from llama_index.retrievers.jrag import JragRetriever as LlamaRetriever

    from jrag.qa import ask

    store, _ = two_tenants
    encoder = load_encoder(MINILM_ID, device="cpu")
    question = "Who rebuilt the brass orrery?"  # tenant b's fact, asked by tenant a too
    for tenant in ("a", "b"):
        answer = ask(question, store=store, encoder=encoder, k=3, tenant=tenant)
        assert answer.citations and all(f"tenant {tenant}" in c.quote for c in answer.citations)
    lc = LangChainRetriever(uri=store_uri, collection=store.collection, k=5, tenant="a")
    docs = lc.invoke(question)
    assert len(docs) == 3 and all("Tenant a" in d.page_content for d in docs)
    lc.close()
    li = LlamaRetriever(uri=store_uri, collection=store.collection, k=5, tenant="b")
    nodes = li.retrieve(question)
    assert len(nodes) == 3 and all("Tenant b" in n.node.get_content() for n in nodes)
    li.close()
    nobody = LangChainRetriever(uri=store_uri, collection=store.collection, tenant="nobody")
    assert nobody.invoke(question) == []
    nobody.close()
