"""The CLI's wiring: ``jrag serve``, the symlink policy, the Ray engine flags and ``--dtype``.

Real Milvus Lite, real parsing and real MiniLM forward passes; the library pieces behind each
flag have their own tests (test_serve, test_hostile_files, test_ray, test_encoder).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from jrag.cli import app
from jrag.loading import MINILM_ID
from jrag.serve import HTTP_PREFIX, URI_PREFIX
from jrag.store import MilvusStore

REPO_ROOT = Path(__file__).resolve().parents[1]
TOPICS = {
    "lighthouse": "The lighthouse keeper trimmed the lamp wick and logged passing ships at dusk.",
    "bakery": "The bakery cooperative proofed sourdough overnight and sold rye loaves at dawn.",
    "railway": "The alpine railway climbed switchbacks through tunnels bored into granite.",
}
SECRET = "The vault combination outside the corpus folder is four, eleven, nineteen."


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """``tmp_path`` resolved: discovery stores the resolved folder's paths."""
    return tmp_path.resolve()


def table_value(output: str, label: str) -> str | None:
    """The value printed next to ``label`` in a two-column rich table."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) >= 4 and cells[1] == label:
            return cells[2]
    return None


def write_docs(folder: Path) -> dict[str, Path]:
    """Three short Markdown documents, one topic each."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for topic, sentence in TOPICS.items():
        paths[topic] = folder / f"{topic}.md"
        body = " ".join(f"{sentence} Entry {i}." for i in range(6))
        paths[topic].write_text(f"# The {topic} notes\n\n{body}\n", encoding="utf-8")
    return paths


def sources(db: Path, collection: str = "jrag") -> set[str]:
    with MilvusStore(str(db), collection, create=False) as store:
        return {state.source for state in store.all_states()}


def ingest(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, ["ingest", *args, "--model", MINILM_ID])
    assert result.exit_code == 0, result.output
    return result.output


def child_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


# -- jrag serve --------------------------------------------------------------------------------


def test_serve_help_names_its_options_and_the_loopback_bind(runner: CliRunner) -> None:
    result = runner.invoke(app, ["serve", "--help"], terminal_width=200)

    assert result.exit_code == 0, result.output
    assert "--db" in result.output and "--port" in result.output
    assert "127.0.0.1 only" in result.output and "--uri http://127.0.0.1:PORT" in result.output
    bad = runner.invoke(app, ["serve", "--port", "70000"])
    assert bad.exit_code == 2 and "--port" in bad.output


def test_serve_names_a_busy_port_in_one_line(runner: CliRunner, tmp: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "--db", str(tmp / "x.db"), "--port", str(port)])

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is in use; pick another --port, or 0 for any"
    ]


def test_jrag_serve_shares_a_db_that_other_commands_reach_by_uri(
    runner: CliRunner, tmp: Path
) -> None:
    docs = tmp / "docs"
    write_docs(docs)
    db = tmp / "served.db"
    command = [sys.executable, "-m", "jrag.cli", "serve", "--db", str(db), "--port", "0",
               "--model", MINILM_ID]  # fmt: skip
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(),
        start_new_session=True,
    )  # fmt: skip
    try:
        printed = []
        for line in server.stdout:
            printed.append(line)
            if line.startswith(URI_PREFIX):
                break
        uri = printed[-1].removeprefix(URI_PREFIX).strip()
        assert uri.startswith("http://127.0.0.1:"), "".join(printed)
        assert f"Pass --uri {uri}" in "".join(printed)

        for line in server.stdout:
            printed.append(line)
            if line.startswith(HTTP_PREFIX):
                break
        http = printed[-1].removeprefix(HTTP_PREFIX).strip()
        assert http.startswith("http://127.0.0.1:"), "".join(printed)

        ingest(runner, str(docs), "--uri", uri)
        stats = runner.invoke(app, ["stats", "--uri", uri])
        assert stats.exit_code == 0, stats.output
        assert "milvus-server" in stats.output  # reached through the server, not the file
        # The HTTP service finds the collection that was written through the Milvus port.
        found = httpx.post(f"{http}/search", json={"query": "lamp wick at dusk"}, timeout=60)
        assert found.status_code == 200, found.text
        assert Path(found.json()["results"][0]["source"]).name == "lighthouse.md"
    finally:
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=30)
    assert server.returncode == 0, rest
    assert f"Stopped; {db.resolve()} is released." in rest
    assert len(sources(db)) == 3


# -- symlink policy ----------------------------------------------------------------------------


def test_links_leaving_the_folder_are_skipped_followed_on_request_and_pruned_once_gone(
    runner: CliRunner, tmp: Path
) -> None:
    docs = tmp / "docs"
    paths = write_docs(docs)
    outside = tmp / "elsewhere"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET, encoding="utf-8")
    link = docs / "escape.txt"
    link.symlink_to(outside / "secret.txt")
    db = tmp / "links.db"
    own = {str(p) for p in paths.values()}
    skipped_line = f"skipped {link}: links to {outside / 'secret.txt'}, outside the folder"

    output = ingest(runner, str(docs), "--uri", str(db))
    assert skipped_line in output.splitlines()
    assert sources(db) == own

    output = ingest(runner, str(docs), "--uri", str(db), "--follow-links")
    assert "skipped" not in output.replace("skipped (unchanged)", "")
    assert sources(db) == own | {str(link)}  # stored under the link's own path
    # Without --follow-links the link is left out again, which is not "gone": prune keeps it.
    output = ingest(runner, str(docs), "--uri", str(db), "--prune")
    assert skipped_line in output.splitlines()
    assert sources(db) == own | {str(link)}

    link.unlink()
    ingest(runner, str(docs), "--uri", str(db), "--prune")
    assert sources(db) == own


def test_a_symlink_loop_is_reported_and_the_ingest_finishes(runner: CliRunner, tmp: Path) -> None:
    docs = tmp / "docs"
    paths = write_docs(docs)
    (docs / "sub").mkdir()
    (docs / "sub" / "up").symlink_to(docs, target_is_directory=True)
    (docs / "loop.txt").symlink_to(docs / "loop.txt")
    db = tmp / "loop.db"

    output = ingest(runner, str(docs), "--uri", str(db), "--follow-links")

    assert f"skipped {docs / 'loop.txt'}: a symlink loop" in output.splitlines()
    assert any(line.startswith(f"skipped {docs / 'sub' / 'up'}: a symlink loop") for line in
               output.splitlines())  # fmt: skip
    assert sources(db) == {str(p) for p in paths.values()}


# -- Ray engine flags --------------------------------------------------------------------------


def test_ingest_help_lists_the_engine_link_and_dtype_flags(runner: CliRunner) -> None:
    result = runner.invoke(app, ["ingest", "--help"], terminal_width=200)

    assert result.exit_code == 0, result.output
    for flag in ("--engine", "--ray-address", "--workers", "--gpus-per-worker", "--batch-tokens",
                 "--bulk", "--follow-links", "--dtype"):  # fmt: skip
        assert flag in result.output, flag


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bulk"], "error: --bulk needs --engine ray: bulk import is written by the Ray engine"),
        (["--workers", "2"], "error: --workers needs --engine ray"),
        (["--ray-address", "auto"], "error: --ray-address needs --engine ray"),
        (["--engine", "spark"], "error: --engine must be one of local, ray, not 'spark'"),
    ],
)
def test_ray_only_flags_without_the_ray_engine_are_one_line_errors(
    runner: CliRunner, tmp: Path, flags: list[str], message: str
) -> None:
    write_docs(tmp / "docs")
    db = tmp / "x.db"

    result = runner.invoke(app, ["ingest", str(tmp / "docs"), "--uri", str(db), *flags])

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [message]
    assert not db.exists()


def test_the_ray_engine_stores_the_same_rows_as_the_local_one(runner: CliRunner, tmp: Path) -> None:
    pytest.importorskip("ray")
    from tests.test_ray import all_rows, assert_same_rows

    docs = tmp / "docs"
    write_docs(docs)
    db = tmp / "engines.db"
    common = ["--uri", str(db), "--dtype", "float32", "--batch-tokens", "4096"]
    ingest(runner, str(docs), *common, "-c", "local")

    output = ingest(runner, str(docs), *common, "-c", "ray", "--engine", "ray", "--workers", "1")

    assert table_value(output, "added") == "3" and table_value(output, "failed") == "0"
    with MilvusStore(str(db), "local", create=False) as local:
        local_rows = all_rows(local)
    with MilvusStore(str(db), "ray", create=False) as distributed:
        assert distributed.identity.dtype == "float32"
        assert_same_rows(local_rows, all_rows(distributed))
    assert len(sources(db, "ray")) == 3


# -- --dtype -----------------------------------------------------------------------------------


def test_dtype_is_recorded_shown_by_stats_and_another_dtype_can_search(
    runner: CliRunner, tmp: Path
) -> None:
    paths = write_docs(tmp / "docs")
    db = str(tmp / "dtype.db")
    collection = f"d_{uuid.uuid4().hex[:8]}"
    ingest(runner, str(tmp / "docs"), "--uri", db, "-c", collection, "--dtype", "float32")

    stats = runner.invoke(app, ["stats", "--uri", db, "-c", collection], terminal_width=200)
    assert stats.exit_code == 0, stats.output
    assert table_value(stats.output, "dtype") == "float32"

    result = runner.invoke(
        app, ["search", "sourdough rye loaves", "--uri", db, "-c", collection, "--json",
              "--dtype", "bfloat16"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits[0]["source"] == str(paths["bakery"])


def test_dtype_from_the_environment_is_recorded(
    runner: CliRunner, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_docs(tmp / "docs")
    db = tmp / "env.db"
    monkeypatch.setenv("JRAG_DTYPE", "bfloat16")

    ingest(runner, str(tmp / "docs"), "--uri", str(db))

    with MilvusStore(str(db), "jrag", create=False) as store:
        assert store.identity.dtype == "bfloat16"


@pytest.mark.parametrize("command", ["ingest", "search", "ask"])
def test_a_bad_dtype_is_a_one_line_error_naming_the_option(
    runner: CliRunner, tmp: Path, command: str
) -> None:
    write_docs(tmp / "docs")
    target = str(tmp / "docs") if command == "ingest" else "a query"

    result = runner.invoke(app, [command, target, "--uri", str(tmp / "x.db"), "--dtype", "x"])

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: --dtype (or JRAG_DTYPE) must be one of auto, float32, bfloat16, float16, int8, "
        "not 'x'"
    ]
