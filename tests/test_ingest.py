"""The ingest pipeline end to end: real parsing, a real model, real Milvus (Lite and server)."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from jrag import Encoder, pipeline
from jrag.loading import MINILM_ID
from jrag.parse import ParsedDocument
from jrag.pipeline import IngestOptions, document_id, embed_documents, ingest
from jrag.retrieval import search
from jrag.store import MilvusStore
from tests.docs_factory import make_pdf

TOPICS = {
    "lighthouse": "The lighthouse keeper trimmed the lamp wick and logged passing ships at dusk.",
    "bakery": "The bakery cooperative proofed sourdough overnight and sold rye loaves at dawn.",
    "railway": "The alpine railway climbed switchbacks through tunnels bored into granite.",
    "moths": "Migratory moths gathered on the orchard walls before flying south in autumn.",
    "observatory": "The observatory telescope tracked comets while the dome rotated slowly.",
}
FACTS = {
    "lighthouse": "The brass foghorn at Gull Point was recast in 1911 by a bellfounder "
    "named Orrin Vale.",
    "railway": "Tunnel number seven on the alpine line was sealed after a rockfall in the "
    "winter of 1987.",
}


def filler(topic: str, sentences: int) -> str:
    return " ".join(f"{TOPICS[topic]} Entry {i} of the {topic} record." for i in range(sentences))


def write_corpus(folder: Path) -> dict[str, Path]:
    """Five documents, two of them longer than 512 tokens with a fact deep inside."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for topic in TOPICS:
        body = filler(topic, 30)
        if topic in FACTS:
            body += " " + FACTS[topic] + " " + filler(topic, 10)
        suffix = ".md" if topic != "moths" else ".txt"
        paths[topic] = folder / f"{topic}{suffix}"
        text = f"# The {topic} notes\n\n{body}\n" if suffix == ".md" else body
        paths[topic].write_text(text, encoding="utf-8")
    return paths


@pytest.fixture
def store(minilm_store: MilvusStore) -> MilvusStore:
    return minilm_store


def stored(store: MilvusStore) -> dict:
    """The committed documents by source."""
    return {state.source: state for state in store.all_states()}


def rows_by_kind(store: MilvusStore) -> dict[str, int]:
    return store.stats()["rows"]


def test_ingest_then_search_finds_the_document_by_a_fact_past_token_512(store, minilm, tmp_path):
    paths = write_corpus(tmp_path / "docs")
    assert minilm.count_tokens([paths["lighthouse"].read_text()])[0] > 700
    report = ingest([tmp_path / "docs"], store, minilm)
    assert sorted(report.added) == sorted(str(p.resolve()) for p in paths.values())
    assert report.failed == [] and report.tokens > 2000
    results = search("Who recast the foghorn at Gull Point, and when?", store, minilm, k=3)
    assert results[0].source == str(paths["lighthouse"].resolve())
    assert "1911" in results[0].text  # the matching window holds the fact
    results = search("Which tunnel was sealed after a rockfall?", store, minilm, k=3)
    assert results[0].source == str(paths["railway"].resolve())


def test_metadata_filter_limits_results(store, minilm, tmp_path):
    paths = write_corpus(tmp_path / "docs")
    ingest([tmp_path / "docs"], store, minilm)
    only_text = search("orchard moths", store, minilm, k=5, filter='metadata["doc_type"] == "txt"')
    assert [r.source for r in only_text] == [str(paths["moths"].resolve())]
    no_moths = search("orchard moths", store, minilm, k=5, filter='title != "moths"')
    assert all("moths" not in r.source for r in no_moths) and no_moths


def test_reingest_of_unchanged_files_adds_nothing(store, minilm, tmp_path):
    write_corpus(tmp_path / "docs")
    first = ingest([tmp_path / "docs"], store, minilm)
    rows_before = rows_by_kind(store)
    second = ingest([tmp_path / "docs"], store, minilm)
    assert len(second.skipped) == len(first.added) == 5
    assert second.added == second.updated == [] and second.tokens == 0
    assert rows_by_kind(store) == rows_before


def test_a_changed_file_replaces_its_rows(store, minilm, tmp_path):
    paths = write_corpus(tmp_path / "docs")
    ingest([tmp_path / "docs"], store, minilm)
    rows_before = rows_by_kind(store)
    old_bakery_rows = len(store.get_rows([document_id(str(paths["bakery"].resolve()))], "doc"))
    assert old_bakery_rows >= 2  # ~600 tokens: overlapping 256-token MiniLM windows
    paths["bakery"].write_text(
        "# Bakery\n\nThe cooperative now also mills buckwheat flour on Tuesdays."
    )
    report = ingest([tmp_path / "docs"], store, minilm)
    assert report.updated == [str(paths["bakery"].resolve())] and len(report.skipped) == 4
    state = stored(store)[str(paths["bakery"].resolve())]
    assert state.content_hash == hashlib.sha256(paths["bakery"].read_bytes()).hexdigest()
    assert rows_by_kind(store)["doc"] == rows_before["doc"] - old_bakery_rows + 1
    top = search("buckwheat flour milling day", store, minilm, k=1)[0]
    assert top.source == str(paths["bakery"].resolve()) and "buckwheat" in top.text


def test_prune_deletes_rows_of_removed_files_only_under_the_given_paths(store, minilm, tmp_path):
    write_corpus(tmp_path / "docs")
    other = write_corpus(tmp_path / "other")
    ingest([tmp_path / "docs"], store, minilm)
    ingest([tmp_path / "other"], store, minilm)
    (tmp_path / "docs" / "bakery.md").unlink()
    report = ingest([tmp_path / "docs"], store, minilm, prune=True)
    assert report.pruned == [str((tmp_path / "docs" / "bakery.md").resolve())]
    sources = set(stored(store))
    assert len(sources) == 9 and str(other["bakery"].resolve()) in sources


def test_late_mode_stores_whole_and_late_chunk_vectors_from_one_pass(store, minilm, tmp_path):
    paths = write_corpus(tmp_path / "docs")
    ingest([tmp_path / "docs"], store, minilm, options=IngestOptions(mode="late"))
    rows = rows_by_kind(store)
    assert rows["doc"] >= 5 and rows["late"] >= 5
    best = search("Who recast the foghorn?", store, minilm, k=1, mode="late")[0]
    assert best.source == str(paths["lighthouse"].resolve())
    passage = best.text[best.passage_start - best.start : best.passage_end - best.start]
    assert "Orrin Vale" in passage and len(passage) < 1500  # a chunk, not the document


def test_chunked_mode_embeds_independent_512_token_chunks(store, minilm, tmp_path):
    write_corpus(tmp_path / "docs")
    ingest([tmp_path / "docs"], store, minilm, options=IngestOptions(mode="chunked"))
    chunks = store.get_rows(
        [document_id(str((tmp_path / "docs" / "lighthouse.md").resolve()))], "chunk"
    )
    assert len(chunks) >= 2
    assert all(minilm.count_tokens([c.text])[0] <= 512 for c in chunks)


def test_long_documents_get_overlapping_windows_never_silent_truncation(store, minilm, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    text = filler("observatory", 200) + " The final entry notes a violet comet over Kestrel Ridge."
    (folder / "long.txt").write_text(text)
    report = ingest([folder], store, minilm)
    assert report.tokens > 3 * 512
    windows = store.get_rows([document_id(str((folder / "long.txt").resolve()))], "doc")
    assert len(windows) >= 4
    assert windows[0].start == 0 and windows[-1].end == len(text)
    assert all(a.end > b.start for a, b in itertools.pairwise(windows))  # overlapping


def test_bad_files_are_reported_by_name_and_the_rest_goes_on(store, minilm, tmp_path):
    docs = tmp_path / "docs"
    write_corpus(docs)
    ingest([docs], store, minilm)
    rows_before = rows_by_kind(store)
    (docs / "empty.md").write_text("")
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf" + os.urandom(200))
    (docs / "junk.txt").write_bytes(bytes(range(256)) * 20)
    (docs / "latin1.txt").write_bytes(
        "Caf\xe9 notes: the na\xefve glazier from Z\xfcrich.".encode("cp1252")
    )
    (docs / "huge.txt").write_text(filler("railway", 4000))  # ~100k tokens
    make_pdf(
        docs / "report.pdf", (("Quarterly lighthouse report.",), ("The lamp was serviced twice.",))
    )
    report = ingest([docs], store, minilm)
    failed = dict(report.failed)
    assert set(failed) == {
        str((docs / n).resolve()) for n in ("empty.md", "corrupt.pdf", "junk.txt")
    }
    assert "empty" in failed[str((docs / "empty.md").resolve())]
    assert "PDF" in failed[str((docs / "corrupt.pdf").resolve())]
    assert "binary" in failed[str((docs / "junk.txt").resolve())]
    assert sorted(Path(p).name for p in report.added) == ["huge.txt", "latin1.txt", "report.pdf"]
    assert len(report.skipped) == 5
    rows = rows_by_kind(store)
    assert rows["doc"] > rows_before["doc"] + 100  # the huge file: windows, nothing truncated
    hit = search("naive glazier cafe in Zurich", store, minilm, k=1)[0]
    assert hit.source.endswith("latin1.txt") and "Café" in hit.text


def test_a_file_that_turns_corrupt_keeps_its_stored_version(store, minilm, tmp_path):
    paths = write_corpus(tmp_path / "docs")
    ingest([tmp_path / "docs"], store, minilm)
    paths["moths"].write_bytes(b"\x00\x01\x02" * 500)
    report = ingest([tmp_path / "docs"], store, minilm)
    assert [Path(p).name for p, _ in report.failed] == ["moths.txt"]
    assert str(paths["moths"].resolve()) in stored(store)


def _jrag(*args: str) -> list[str]:
    return [sys.executable, "-m", "jrag.cli", *args]


def test_kill_9_halfway_then_rerun_ends_with_every_document_once(store_uri, minilm, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        topic = list(TOPICS)[i % 5]
        (docs / f"{topic}-{i:02}.txt").write_text(f"Document {i}. " + filler(topic, 12 + i % 7))
    collection = f"k_{uuid.uuid4().hex[:12]}"
    common = [
        "--uri",
        store_uri,
        "--collection",
        collection,
        "--model",
        MINILM_ID,
        "--mode",
        "late",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        _jrag("--debug", "ingest", str(docs), *common), stderr=subprocess.PIPE, text=True, env=env
    )
    logged = 0
    for line in process.stderr:
        logged += "stored" in line
        if logged == 15:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"

    with MilvusStore(store_uri, collection, model=minilm.name, dim=minilm.dim) as store:
        assert 15 <= len(stored(store)) < 40
        report = ingest([docs], store, minilm, options=IngestOptions(mode="late"))
        assert len(report.skipped) >= 15 and report.failed == []
        documents = stored(store)
        assert len(documents) == 40
        doc_rows = store.get_rows([document_id(s) for s in documents], "doc")
        assert len({r.doc_id for r in doc_rows}) == 40
        assert sum(v.kinds["doc"]["rows"] for v in documents.values()) == len(doc_rows)
        assert len(doc_rows) == len({r.id for r in doc_rows})
        late_rows = store.get_rows([document_id(s) for s in documents], "late")
        assert len(late_rows) == len({r.id for r in late_rows})
        assert sum(v.kinds["late"]["rows"] for v in documents.values()) == len(late_rows)
        # Nothing beyond the committed versions: every row in the collection is accounted for.
        committed = sum(sum(k["rows"] for k in v.kinds.values()) for v in documents.values())
        assert store.count('kind in ["doc", "late", "chunk", "text"]') == committed
        store.drop()


def test_cli_ingest_search_stats_drop(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from jrag.cli import app

    paths = write_corpus(tmp_path / "docs")
    db = str(tmp_path / "cli.db")
    runner = CliRunner()
    result = runner.invoke(
        app, ["ingest", str(tmp_path / "docs"), "--uri", db, "--model", MINILM_ID]
    )
    assert result.exit_code == 0, result.output
    assert "added" in result.output and "5" in result.output
    result = runner.invoke(
        app, ["search", "foghorn recast at Gull Point", "--uri", db, "--json", "-k", "2"]
    )
    assert result.exit_code == 0, result.output
    import json

    hits = json.loads(result.stdout)
    assert hits[0]["source"] == str(paths["lighthouse"].resolve()) and len(hits) == 2
    result = runner.invoke(app, ["stats", "--uri", db])
    assert result.exit_code == 0 and "all-MiniLM-L6-v2" in result.output
    assert runner.invoke(app, ["drop", "--uri", db, "--yes"]).exit_code == 0
    result = runner.invoke(app, ["stats", "--uri", db])
    assert result.exit_code == 1 and "jrag" in result.output


def test_cli_reports_a_server_that_is_down_without_leaking_the_token(tmp_path):
    write_corpus(tmp_path / "docs")
    result = subprocess.run(
        _jrag("ingest", str(tmp_path / "docs"), "--uri", "http://127.0.0.1:1", "--token",
              "root:s3cret-token", "--model", MINILM_ID),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "127.0.0.1:1" in result.stderr and "s3cret-token" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_cli_names_a_missing_model_folder(tmp_path):
    write_corpus(tmp_path / "docs")
    result = subprocess.run(
        _jrag("ingest", str(tmp_path / "docs"), "--uri", str(tmp_path / "x.db"), "--model",
              str(tmp_path / "nope")),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "nope does not exist" in result.stderr


def test_a_huge_document_streams_its_windows_with_progress_and_the_same_rows(monkeypatch):
    """Past STREAM_TOKENS a document is embedded a batch of windows at a time (bounded memory);
    its rows equal the batched path's (float32: batch-independent within 1e-5)."""
    encoder = Encoder.from_pretrained(MINILM_ID, dtype="float32")
    text = " ".join(f"Line {i}: the tide table for pier {i % 17} was posted." for i in range(300))
    doc = ParsedDocument(source="/huge.txt", text=text, title="huge", doc_type="txt", size=0,
                         mtime=0.0, content_hash="0" * 64, page_count=None,
                         page_starts=())  # fmt: skip
    options = IngestOptions(mode="late")
    kinds = [("doc", "late", "chunk")]
    batched = embed_documents([doc], encoder, options, kinds)[0]
    seen: list[tuple[str, int, int]] = []
    monkeypatch.setattr(pipeline, "STREAM_TOKENS", 500)
    streamed = embed_documents(
        [doc], encoder, options, kinds, on_windows=lambda *args: seen.append(args)
    )[0]
    assert [(r.kind, r.start, r.end) for r in streamed] == [
        (r.kind, r.start, r.end) for r in batched
    ]
    assert {r.kind for r in streamed} == {"doc", "late", "chunk"} and len(streamed) > 20
    for a, b in zip(streamed, batched, strict=True):
        np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)
    windows = [s for s in seen if s[2] == len([r for r in batched if r.kind == "doc"])]
    assert windows and windows[-1][1] == windows[-1][2]  # progress reached the last window
    assert [done for _, done, _ in windows] == sorted(done for _, done, _ in windows)
