"""The Ray engine: real Ray (2 CPUs, one per module), a real model, Milvus Lite and the server."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from jrag.distributed import Progress, StoreConfig, ingest_ray
from jrag.embedding import identity_of, load_encoder
from jrag.loading import MINILM_ID
from jrag.pipeline import IngestOptions, ingest
from jrag.store import MilvusStore
from tests.docs_factory import long_text, make_html, make_markdown

ray = pytest.importorskip("ray")

OPTIONS = IngestOptions(mode="late", late_chunk_tokens=64)
# The engines are compared within 1e-5, which holds in float32 (bfloat16 rounds differently
# when a text is packed with other texts).
DTYPE = "float32"
ROW_FIELDS = ["id", "doc_id", "tenant", "kind", "chunk_index", "start", "end", "text", "vector"]
ROW_FIELDS += ["content_hash", "source", "metadata"]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray of 2 CPUs for the module (start-up takes several seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def write_corpus(folder: Path, count: int = 40) -> list[Path]:
    """``count`` generated documents of varied length and type, some past MiniLM's 512 tokens,
    plus one empty file that must fail by name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        if i % 10 == 3:
            paths.append(make_markdown(folder / f"doc{i:02d}.md"))
        elif i % 10 == 7:
            paths.append(make_html(folder / f"doc{i:02d}.html"))
        else:
            path = folder / f"doc{i:02d}.txt"
            path.write_text(f"Record {i}\n\n" + long_text(60 + 37 * i), encoding="utf-8")
            paths.append(path)
    (folder / "empty.txt").write_text("", encoding="utf-8")
    return paths


def all_rows(store: MilvusStore) -> dict[str, dict]:
    """Every row but the manifest, by id."""
    rows = store.scan('kind != "manifest"', ROW_FIELDS)
    return {r["id"]: r for r in rows}


def assert_same_rows(local: dict[str, dict], distributed: dict[str, dict]) -> None:
    assert local.keys() == distributed.keys()
    for row_id, a in local.items():
        b = distributed[row_id]
        for name in ("kind", "chunk_index", "start", "end", "text", "content_hash", "source"):
            assert a[name] == b[name], (row_id, name)
        if a["kind"] in ("doc", "late", "chunk"):
            np.testing.assert_allclose(a["vector"], b["vector"], atol=1e-5, err_msg=row_id)
        if a["kind"] == "state":
            assert a["metadata"]["kinds"] == b["metadata"]["kinds"]


def test_same_rows_as_the_local_engine(ray_cluster: None, store_uri: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    # Fewer documents on the server, whose versioned writes cost about a second each there; the
    # Lite run keeps the whole corpus (every file type, lengths past the window).
    count = 12 if store_uri.startswith("http") else 40
    write_corpus(corpus, count=count)
    encoder = load_encoder(MINILM_ID, device="cpu", dtype=DTYPE)
    suffix = uuid.uuid4().hex[:8]
    with MilvusStore(store_uri, f"local_{suffix}", identity=identity_of(encoder)) as store:
        local_report = ingest([corpus], store, encoder, options=OPTIONS)
        local_rows = all_rows(store)

    config = StoreConfig(store_uri, f"ray_{suffix}")
    progress: list[Progress] = []
    report = ingest_ray(
        [corpus],
        config,
        MINILM_ID,
        dtype=DTYPE,
        options=OPTIONS,
        workers=2,
        on_progress=progress.append,
    )
    assert report.added == sorted(local_report.added) and len(report.added) == count
    assert [name for name, _ in report.failed] == [str((corpus / "empty.txt").resolve())]
    assert "empty" in report.failed[0][1]
    assert report.tokens == local_report.tokens
    assert {"parse", "embed", "store", "ray_start", "plan"} <= report.stage_seconds.keys()
    assert len(progress) == count + 1 and progress[-1].done == count + 1
    assert progress[-1].documents_per_second > 0
    with config.open(create=False) as store:
        assert_same_rows(local_rows, all_rows(store))

    again = ingest_ray([corpus], config, MINILM_ID, dtype=DTYPE, options=OPTIONS, workers=1)
    assert again.stored == 0 and len(again.skipped) == count


def test_update_extend_and_prune_in_a_tenant(ray_cluster: None, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    paths = write_corpus(corpus, count=6)
    uri = str(tmp_path / "lite" / "jrag.db")
    config = StoreConfig(uri, "docs")
    ingest_ray(
        [corpus],
        config,
        MINILM_ID,
        dtype=DTYPE,
        options=IngestOptions(mode="late"),
        workers=1,
        tenant="t1",
    )
    paths[0].write_text("Record zero, rewritten.\n\n" + long_text(80), encoding="utf-8")
    paths[1].unlink()
    report = ingest_ray(
        [corpus],
        config,
        MINILM_ID,
        options=IngestOptions(mode="chunked"),
        workers=1,
        prune=True,
        tenant="t1",
    )
    assert report.updated == [str(paths[0].resolve())]
    assert sorted(s for s, _ in report.extended) == sorted(str(p.resolve()) for p in paths[2:])
    assert all(kinds == ["chunk"] for _, kinds in report.extended)
    assert report.pruned == [str(paths[1].resolve())]
    with config.open(create=False) as store:
        states = list(store.all_states("t1"))
        assert not list(store.all_states(""))
        assert len(states) == 5
        assert all(set(s.kinds) == {"doc", "late", "chunk", "text"} for s in states)


def _embedder_processes() -> list[psutil.Process]:
    """This test's own Ray actor processes that embed (descendants of this process only)."""
    found = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "_Embedder" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_a_killed_worker_leaves_every_document_stored_once(
    ray_cluster: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    config = StoreConfig(str(tmp_path / "lite" / "jrag.db"), "docs")
    killed: list[int] = []

    def kill_one_actor(progress: Progress) -> None:
        if progress.done == 3 and not killed:
            victims = _embedder_processes()
            assert victims, "no embedding actor process found"
            os.kill(victims[0].pid, signal.SIGKILL)
            killed.append(victims[0].pid)

    options = IngestOptions(mode="late")
    caplog.set_level(logging.WARNING)
    try:
        first = ingest_ray(
            [corpus], config, MINILM_ID, dtype=DTYPE, options=options, workers=2, batch_tokens=1024,
            on_progress=kill_one_actor,
        )  # fmt: skip
        stored_first = set(first.added)
    except Exception:  # the job may fail with the actor: then a re-run must finish it
        stored_first = set()
    assert killed
    second = ingest_ray([corpus], config, MINILM_ID, dtype=DTYPE, options=options, workers=2)
    assert not stored_first & set(second.added)
    assert len(stored_first | set(second.added)) == 40
    with config.open(create=False) as store:
        states = {s.doc_id: s for s in store.all_states()}
        assert len(states) == 40
        for state in states.values():
            for kind in ("late", "text"):
                rows = store.scan(
                    f'doc_id == "{state.doc_id}" and kind == "{kind}"', ["id", "content_hash"]
                )
                ids = [r["id"] for r in rows]
                assert len(ids) == len(set(ids)) == state.kinds[kind]["rows"]
        assert store.count('kind == "late"') == sum(
            s.kinds["late"]["rows"] for s in states.values()
        )


def _bulk_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "jrag.bulk" and r.levelno == logging.WARNING
    ]


def test_bulk_import_gives_the_same_searchable_rows(
    ray_cluster: None,
    milvus_server_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On the 2.3.5 server, with a folder it reads at the same path: a real import."""
    from jrag.retrieval import search

    corpus = tmp_path / "corpus"
    write_corpus(corpus, count=8)
    bulk_dir = tmp_path / "bulk"
    bulk_dir.mkdir()
    monkeypatch.setenv("JRAG_BULK_DIR", str(bulk_dir))
    suffix = uuid.uuid4().hex[:8]
    encoder = load_encoder(MINILM_ID, device="cpu", dtype=DTYPE)
    with MilvusStore(milvus_server_uri, f"ins_{suffix}", identity=identity_of(encoder)) as store:
        ingest([corpus], store, encoder, options=OPTIONS)
        inserted = all_rows(store)
        expected = search("the ferryman carried twelve lanterns", store, encoder, k=8)

    caplog.set_level(logging.WARNING)
    config = StoreConfig(milvus_server_uri, f"bulk_{suffix}")
    report = ingest_ray(
        [corpus], config, MINILM_ID, dtype=DTYPE, options=OPTIONS, workers=1, bulk=True
    )
    assert len(report.added) == 8 and not _bulk_warnings(caplog)
    assert not list(bulk_dir.iterdir())  # the import files are cleaned up
    with config.open(create=False) as store:
        assert_same_rows(inserted, all_rows(store))
        found = search("the ferryman carried twelve lanterns", store, encoder, k=8)
    # Some generated documents are identical (tied scores), so compare as sets.
    assert {(r.source, r.start, r.end, round(r.score, 4)) for r in found} == {
        (r.source, r.start, r.end, round(r.score, 4)) for r in expected
    }
    again = ingest_ray(
        [corpus], config, MINILM_ID, dtype=DTYPE, options=OPTIONS, workers=1, bulk=True
    )
    assert again.stored == 0 and len(again.skipped) == 8


def test_bulk_falls_back_to_upsert_in_one_line(
    ray_cluster: None,
    store_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Milvus Lite cannot import; a server cannot read files it has no path to."""
    monkeypatch.delenv("JRAG_BULK_DIR", raising=False)
    monkeypatch.delenv("JRAG_BULK_S3_ENDPOINT", raising=False)
    corpus = tmp_path / "corpus"
    write_corpus(corpus, count=3)
    caplog.set_level(logging.WARNING)
    config = StoreConfig(store_uri, f"fallback_{uuid.uuid4().hex[:8]}")
    report = ingest_ray(
        [corpus], config, MINILM_ID, dtype=DTYPE, options=OPTIONS, workers=1, bulk=True
    )
    assert len(report.added) == 3
    warnings = _bulk_warnings(caplog)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "writing rows with upsert instead" in warnings[0]
    with config.open(create=False) as store:
        assert len(list(store.all_states())) == 3


def test_a_file_rewritten_between_plan_and_parse_keeps_every_kind(
    ray_cluster: None, tmp_path: Path
) -> None:
    """The plan says "add late rows to version A"; the file turns into B before it is parsed.
    The document must never be stored as a version that lacks the kinds it held."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # Planned in name order: the victim first, then the bystander, whose skip is the hook.
    victim, bystander = corpus / "a_victim.txt", corpus / "b_bystander.txt"
    victim.write_text("Version A.\n\n" + long_text(90), encoding="utf-8")
    bystander.write_text("Bystander.\n\n" + long_text(40), encoding="utf-8")
    uri = str(tmp_path / "lite" / "jrag.db")
    encoder = load_encoder(MINILM_ID, device="cpu", dtype=DTYPE)
    with MilvusStore(uri, "docs", identity=identity_of(encoder)) as store:
        ingest([victim], store, encoder, options=IngestOptions(mode="whole"))
        ingest([bystander], store, encoder, options=IngestOptions(mode="late"))
    rewritten = "Version B, rewritten after the plan.\n\n" + long_text(120)

    def rewrite_after_plan(progress: Progress) -> None:
        # The bystander's skip is reported after the victim was read and planned, before any
        # file is parsed.
        if progress.outcome == "skipped" and not victim.read_text().startswith("Version B"):
            victim.write_text(rewritten, encoding="utf-8")

    config = StoreConfig(uri, "docs")
    late = IngestOptions(mode="late")
    first = ingest_ray([corpus], config, MINILM_ID, dtype=DTYPE, options=late, workers=1,
                       on_progress=rewrite_after_plan)  # fmt: skip
    assert victim.read_text() == rewritten
    # Planned as "extend version A", parsed as B: re-planned as new content with every kind.
    assert first.updated == [str(victim.resolve())]
    with config.open(create=False) as store:
        (state,) = [s for s in store.all_states() if s.source.endswith("a_victim.txt")]
        assert {"doc", "late", "text"} <= set(state.kinds)
        assert store.document_text(state).startswith("Version B")
        assert state.content_hash == hashlib.sha256(rewritten.encode("utf-8")).hexdigest()
