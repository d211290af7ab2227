"""Search modes against what a collection holds, on both backends: Milvus Lite (hybrid) and the
2.3.5 server (dense only, said once). Real parsing, MiniLM and real Milvus."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from jrag.embedding import identity_of, load_encoder
from jrag.errors import InputError
from jrag.loading import MINILM_ID
from jrag.pipeline import IngestOptions, ingest
from jrag.retrieval import search
from jrag.store import MilvusStore

NOTES = {
    "lighthouse.md": "# Lighthouse\n\n" + "The keeper logged passing ships every evening. " * 30
    + "The Fresnel lens at Gull Point was re-ground by Ottoline Brask in 1902.",
    "bakery.txt": "The cooperative bakery proofed its sourdough overnight. " * 40,
    "railway.txt": "The rack railway climbed the pass in three stages. " * 40,
}  # fmt: skip


@pytest.fixture
def store(store_uri: str, tmp_path: Path):
    encoder = load_encoder(MINILM_ID)
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in NOTES.items():
        (docs / name).write_text(text, encoding="utf-8")
    opened = MilvusStore(store_uri, f"m_{uuid.uuid4().hex[:10]}", identity=identity_of(encoder))
    yield opened, encoder, docs
    opened.drop()
    opened.close()


def test_a_chunked_collection_answers_the_default_search(store) -> None:
    opened, encoder, docs = store
    ingest([docs], opened, encoder, options=IngestOptions(mode="chunked"))
    results = search("Who re-ground the lens at Gull Point?", opened, encoder, k=2)
    assert [Path(r.source).name for r in results][:1] == ["lighthouse.md"]
    assert {r.kind for r in results} == {"chunk"}


def test_a_mode_switch_adds_its_kinds_and_keeps_the_others(store) -> None:
    opened, encoder, docs = store
    ingest([docs], opened, encoder, options=IngestOptions(mode="late"))
    report = ingest([docs], opened, encoder, options=IngestOptions(mode="chunked"))
    assert report.updated == [] and sorted(kinds for _, kinds in report.extended) == [["chunk"]] * 3
    for state in opened.all_states():
        assert {"doc", "late", "chunk", "text"} <= set(state.kinds)
    for mode, kind in (("whole", "doc"), ("late", "late"), ("chunked", "chunk")):
        top = search("Who re-ground the lens?", opened, encoder, k=1, mode=mode, hybrid=False)
        assert top[0].kind == kind and Path(top[0].source).name == "lighthouse.md"


def test_an_explicit_mode_the_collection_lacks_names_the_kinds_it_holds(store) -> None:
    opened, encoder, docs = store
    ingest([docs], opened, encoder, options=IngestOptions(mode="whole"))
    with pytest.raises(InputError, match=r"reads late rows.*holds: doc"):
        search("anything", opened, encoder, mode="late")


def test_hybrid_where_the_backend_has_bm25_and_one_notice_where_it_has_not(store, caplog):
    opened, encoder, docs = store
    ingest([docs], opened, encoder)
    caplog.set_level(logging.WARNING, logger="jrag.retrieval")
    for _ in range(3):
        results = search("Ottoline Brask", opened, encoder, k=3)
        assert Path(results[0].source).name == "lighthouse.md"
    notices = [r.getMessage() for r in caplog.records if "full-text search is off" in r.message]
    if opened.full_text:  # Milvus Lite
        assert notices == []
        dense = search("Ottoline Brask", opened, encoder, k=3, hybrid=False)
        assert [r.score for r in dense] != [r.score for r in results]  # the BM25 leg counted
    else:  # the 2.3.5 server: dense only, said once, in one line
        assert len(notices) == 1 and "\n" not in notices[0] and "2.3" in notices[0]
