"""Hostile files and names: zip bombs, names that are not UTF-8, escape sequences, control
characters in tenants and filters, weights that are not numbers. Real parsing, MiniLM, Milvus.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jrag.cli import app
from jrag.embedding import identity_of, load_encoder
from jrag.errors import InputError, ParseError, StoreError
from jrag.loading import MINILM_ID
from jrag.parse import ParseLimits, parse_file
from jrag.pipeline import IngestOptions, ingest
from jrag.retrieval import SearchOptions, search
from jrag.store import MilvusStore
from jrag.store.filters import check_user_filter
from jrag.store.rows import quote, state_entity
from jrag.terminal import printable
from tests.test_serve import REPO_ROOT, child_env

ESC_TITLE = "\x1b]0;pwned\x07"  # sets the terminal window's title
CLEAR = "\x1b[2J"  # clears the screen
RLO = "\u202e"  # right-to-left override: shows "txt.exe" as "exe.txt"


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(MINILM_ID)


def _docx(text: str, inflated_xml_bytes: int = 0) -> bytes:
    """A DOCX holding ``text``; with ``inflated_xml_bytes``, its document.xml is padded with
    that much whitespace, which deflates to almost nothing."""
    body = f"<w:p><w:r><w:t>{text}</w:t></w:r></w:p>"
    xml = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        f"<w:body>{body}{' ' * inflated_xml_bytes}</w:body></w:document>"
    )
    content_types = (
        '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
        'package/2006/content-types"><Default Extension="rels" ContentType="application/'
        'vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" '
        'ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType='
        '"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
        "</Types>"
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxml'
        'formats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.'
        'openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
        'Target="word/document.xml"/></Relationships>'
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", content_types)
        archive.writestr("_rels/.rels", rels)
        archive.writestr("word/document.xml", xml)
    return buffer.getvalue()


# -- bounded parsing ---------------------------------------------------------------------------


def test_a_docx_that_inflates_past_the_limit_fails_alone_by_name(tmp_path: Path, encoder) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    bomb = docs / "bomb.docx"
    bomb.write_bytes(_docx("boom", inflated_xml_bytes=40 * 2**20))  # 40 MB of XML
    assert bomb.stat().st_size < 100_000
    (docs / "good.docx").write_bytes(_docx("The granite orchard report."))
    started = time.monotonic()
    with MilvusStore(str(tmp_path / "b.db"), "c", identity=identity_of(encoder)) as store:
        report = ingest([docs], store, encoder, options=IngestOptions(mode="whole"))
    assert time.monotonic() - started < 60
    assert [Path(s).name for s in report.added] == ["good.docx"]
    ((source, message),) = report.failed
    assert source == str(bomb) and "bomb.docx would inflate to 40.0 MB" in message


def test_inflate_limits_are_options_and_an_ordinary_docx_passes_them(tmp_path: Path) -> None:
    path = tmp_path / "plain.docx"
    path.write_bytes(_docx("Quarterly harbour figures. " * 400))
    assert "harbour" in parse_file(path).text  # defaults admit an ordinary DOCX
    tight = ParseLimits(max_inflate_ratio=2, min_inflated_bytes=0)
    with pytest.raises(ParseError, match=r"plain\.docx would inflate"):
        parse_file(path, limits=tight)


def test_max_file_size_fails_a_large_file_alone(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "big.txt").write_text("granite " * 200_000)  # 1.6 MB
    (docs / "small.txt").write_text("A small note about the orchard.")
    result = CliRunner().invoke(
        app,
        ["ingest", str(docs), "--uri", str(tmp_path / "m.db"), "-c", "m", "--model", MINILM_ID,
         "--max-file-size", "1"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "big.txt is 1.5 MB, over the limit of 1 MB" in output
    assert "added │ 1" in output or "added 1" in output.replace("│", "")


# -- names that are not UTF-8 ------------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_stored_found_and_printed_escaped(
    tmp_path: Path, encoder
) -> None:
    docs = tmp_path / "d"
    docs.mkdir()
    raw = os.path.join(os.fsencode(docs), b"caf\xe9.txt")
    with open(raw, "wb") as handle:
        handle.write(b"Notes from the lantern ferry crossing.")
    (docs / "other.txt").write_text("Unrelated granite ledger.")
    uri = str(tmp_path / "n.db")
    with MilvusStore(uri, "c", identity=identity_of(encoder)) as store:
        report = ingest([docs], store, encoder, options=IngestOptions(mode="whole"))
        assert report.failed == [] and len(report.added) == 2
        again = ingest([docs], store, encoder, options=IngestOptions(mode="whole"), prune=True)
        assert len(again.skipped) == 2 and again.pruned == []
        (hit,) = search("lantern ferry crossing", store, encoder, SearchOptions(k=1))
        assert hit.source == f"{docs}/caf\\xe9.txt"
    shown = CliRunner().invoke(
        app, ["search", "lantern ferry", "--uri", uri, "-c", "c", "-k", "1"],
        env={"COLUMNS": "300"},
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "caf\\xe9.txt" in shown.output


# -- terminal escapes --------------------------------------------------------------------------


def test_nothing_from_a_file_reaches_the_terminal_unescaped(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    hostile = f"# Report{ESC_TITLE}\n\nThe granite orchard{CLEAR} audit {RLO}fdp.exe done.\n"
    (docs / f"evil{RLO}txt.md").write_text(hostile, encoding="utf-8")
    (docs / "bad\x1b[31m.txt").write_text("")  # fails: its failure line names it
    uri = str(tmp_path / "t.db")
    common = ["--uri", uri, "-c", "t"]
    runner = CliRunner()
    outputs = [runner.invoke(app, ["ingest", str(docs), *common, "--model", MINILM_ID])]
    assert outputs[0].exit_code == 2, outputs[0].output
    outputs.append(runner.invoke(app, ["search", "granite orchard audit", *common]))
    outputs.append(runner.invoke(app, ["ask", "granite orchard audit?", *common, "--no-llm"]))
    for result in outputs:
        assert "\x1b" not in result.output and RLO not in result.output, result.output
        assert "\\x1b" in result.output or "\\u202e" in result.output
    as_json = runner.invoke(app, ["search", "granite orchard audit", *common, "--json"])
    (hit,) = json.loads(as_json.output)
    assert RLO in hit["source"] and CLEAR in hit["text"]  # JSON stays exact
    assert "\x1b" not in as_json.output and RLO not in as_json.output


def test_printable_escapes_controls_bidi_and_undecodable_bytes_only() -> None:
    assert printable("plain café – ok") == "plain café – ok"
    assert printable(f"a{CLEAR}b{RLO}c\udce9\n") == "a\\x1b[2Jb\\u202ec\\xe9\\n"
    assert printable("line\nnext\tcell", newlines=True) == "line\nnext\tcell"


# -- filter quoting ----------------------------------------------------------------------------


def test_quote_gives_milvus_a_literal_for_every_string(store_uri: str) -> None:
    values = ["t\x01x", "a\x1b[2Jb", f"r{RLO}l", 'q"uo\\te', "new\nline\r", "tab\tx", "ü\x7f"]
    with MilvusStore(store_uri, "quoting", model="m", dim=8) as store:
        rows = [state_entity(_state(f"{i:040d}", v), store.dim) for i, v in enumerate(values)]
        store.writer.upsert(rows)
        store.flush()
        for i, value in enumerate(values):
            found = list(store.scan(f"source == {quote(value)}", ["doc_id"]))
            assert [r["doc_id"] for r in found] == [f"{i:040d}"], repr(value)
        user = check_user_filter('source == "a\\x1b[2Jb" or source == "r\\u202el"')
        found = list(store.scan(user, ["doc_id"]))
        assert sorted(r["doc_id"] for r in found) == [f"{1:040d}", f"{2:040d}"]
        store.drop()


def test_a_tenant_with_a_control_character_is_searched_and_pruned(tmp_path: Path, encoder) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The comet harbour timetable.")
    tenant = "team\x01\x1b"
    with MilvusStore(str(tmp_path / "t.db"), "c", identity=identity_of(encoder)) as store:
        ingest([docs], store, encoder, tenant=tenant)
        (hit,) = search("comet harbour", store, encoder, SearchOptions(k=1, tenant=tenant))
        assert hit.source.endswith("a.txt")
        (docs / "a.txt").unlink()
        (docs / "b.txt").write_text("Another note.")
        report = ingest([docs], store, encoder, tenant=tenant, prune=True)
        assert [Path(p).name for p in report.pruned] == ["a.txt"]


def _state(doc_id: str, source: str):
    from jrag.store.rows import DocumentState

    return DocumentState(doc_id=doc_id, source=source, title="", content_hash="h" * 64)


# -- weights, filters, queries -----------------------------------------------------------------


@pytest.mark.parametrize("weights", [(math.nan, math.nan), (math.inf, 1.0), (1.0, -0.5), (0, 0)])
def test_weights_must_be_finite_and_non_negative(weights) -> None:
    with pytest.raises(InputError, match="finite non-negative"):
        SearchOptions(weights=weights)


def test_cli_refuses_nan_weights_and_names_a_bad_filter(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The rye switchback survey.")
    uri = str(tmp_path / "w.db")
    runner = CliRunner()
    common = ["--uri", uri, "-c", "w"]
    assert runner.invoke(app, ["ingest", str(docs), *common, "--model", MINILM_ID]).exit_code == 0
    nan = runner.invoke(app, ["search", "rye", *common, "--weights", "nan", "nan"])
    assert nan.exit_code == 1 and "finite non-negative" in nan.output
    bad = runner.invoke(app, ["search", "rye", *common, "--filter", 'source ==== "x"'])
    assert bad.exit_code == 1 and "bad filter expression" in bad.output, bad.output
    long_query = "survey " * 20_000
    shown = runner.invoke(app, ["search", long_query, *common], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert len(shown.output) < 5_000 and "(140,000 characters)" in shown.output


def test_an_unreadable_path_among_several_fails_alone(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The ferry lantern log.")
    unreadable = tmp_path / ("x" * 300 + ".txt")  # stat fails: the name is too long
    result = CliRunner().invoke(
        app,
        ["ingest", str(docs / "a.txt"), str(unreadable), "--uri", str(tmp_path / "m.db"),
         "-c", "m", "--model", MINILM_ID],
    )  # fmt: skip
    output = " ".join(result.output.split())
    assert "xxx.txt: cannot be read: File name too long" in output, result.output
    assert "added │ 1" in output


def test_a_store_whose_lite_folder_was_deleted_stops_answering(tmp_path: Path) -> None:
    import shutil

    db = tmp_path / "gone.db"
    with MilvusStore(str(db), "c", model="m", dim=8) as store:
        store.count()
        shutil.rmtree(db)
        with pytest.raises(StoreError, match="was deleted or moved"):
            store.count()


def test_a_store_fails_within_seconds_when_the_served_db_dies(tmp_path: Path) -> None:
    from jrag.serve import start_server

    served = start_server(tmp_path / "s.db")
    try:
        with MilvusStore(served.uri, "c", model="m", dim=8) as store:
            store.count()
            served.kill()
            started = time.monotonic()
            with pytest.raises(StoreError, match="cannot count rows"):
                store.count()
            assert time.monotonic() - started < 40  # pymilvus alone retries for 213 s
    finally:
        served.kill()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (needs root)")
def test_a_full_disk_is_one_line_without_debug(tmp_path: Path) -> None:
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], check=True)
    try:
        docs = tmp_path / "docs"
        docs.mkdir()
        for n in range(3):
            (docs / f"d{n}.txt").write_text(f"Note {n} " + " ".join(f"w{j}" for j in range(400)))
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 8 * 1024))  # 8 KB left
        # A real process: its logging goes to its own stderr, as in a terminal.
        result = subprocess.run(
            [sys.executable, "-m", "jrag.cli", "ingest", str(docs), "--uri", str(disk / "x.db"),
             "-c", "c", "--model", MINILM_ID],
            capture_output=True, text=True, env=child_env(), cwd=REPO_ROOT, timeout=300,
        )  # fmt: skip
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1, result.stderr
        assert len(lines) == 1 and "No space left on device" in lines[0], result.stderr
    finally:
        subprocess.run(["umount", str(disk)], check=False)
