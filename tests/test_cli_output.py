"""What the `jrag` command prints: document text and paths verbatim, and an interrupted ingest
that says what it stored. Real parsing, MiniLM and Milvus Lite."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from jrag.cli import app
from jrag.loading import MINILM_ID
from jrag.store import MilvusStore

# Text that rich would read as markup: a closing tag with no opening one raises MarkupError,
# and [quote] / [url=…] would vanish as unknown styles.
MARKUP = "Slicing uses array[/] indexing, see [quote]the manual[/quote] and [url=http://x]here."


def _default_sigint() -> None:
    """A child inherits an ignored or blocked SIGINT from its parent (a background job, or a
    library in the test process), and Python then raises no KeyboardInterrupt: give the child
    the default, as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _jrag(*args: str) -> list[str]:
    return [sys.executable, "-m", "jrag.cli", *args]


def test_text_and_names_that_look_like_markup_are_printed_verbatim(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "[bold]notes[red].txt").write_text(f"Array notes. {MARKUP} The end.", encoding="utf-8")
    (docs / "[red]empty[blink].txt").write_text("", encoding="utf-8")
    uri = str(tmp_path / "m.db")
    runner = CliRunner()
    common = ["--uri", uri, "--collection", "m"]

    ingested = runner.invoke(app, ["ingest", str(docs), *common, "--model", MINILM_ID])
    assert ingested.exit_code == 2, ingested.output  # one file failed, the other is stored
    output = " ".join(ingested.output.split())  # rich wraps long lines
    assert "[red]empty[blink].txt" in output

    wide = {"COLUMNS": "400"}  # so that the table does not wrap the file name
    shown = runner.invoke(app, ["search", "array slicing indexing", *common, "-k", "1"], env=wide)
    assert shown.exit_code == 0, shown.output
    printed = " ".join(shown.output.split())
    assert "array[/] indexing" in printed and "[quote]the manual[/quote]" in printed
    assert "[bold]notes[red].txt" in printed

    as_json = runner.invoke(app, ["search", "array slicing indexing", *common, "--json"])
    (hit,) = json.loads(as_json.output)
    assert MARKUP in hit["text"] and hit["source"].endswith("[bold]notes[red].txt")


def test_ctrl_c_during_ingest_says_what_was_stored_and_a_rerun_resumes(tmp_path: Path) -> None:
    """Fifteen documents of ~5,500 tokens embed in two groups (eleven, then four): the interrupt
    comes once the first group is stored, while the second is being embedded."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(15):
        sentences = " ".join(f"Entry {i}.{s}: the river pilot logged the tide." for s in range(560))
        (docs / f"log-{i:02}.txt").write_text(sentences, encoding="utf-8")
    uri = str(tmp_path / "c.db")
    common = ["--uri", uri, "--collection", "c", "--model", MINILM_ID]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    process = subprocess.Popen(
        _jrag("--debug", "ingest", str(docs), *common), stderr=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint,
    )  # fmt: skip
    assert process.stderr is not None
    for line in process.stderr:
        if "stored" in line:
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    message = " ".join((out + err).split())
    assert "interrupted" in message and "Run the same command again to resume" in message
    assert "Traceback" not in message
    assert re.search(r"\d+ document\(s\) were stored completely in this run", message)

    with MilvusStore(uri, "c", create=False) as store:
        assert 1 <= len(list(store.all_states())) < 15
    rerun = subprocess.run(_jrag("ingest", str(docs), *common), capture_output=True, text=True,
                           env=env, timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    with MilvusStore(uri, "c", create=False) as store:
        assert len(list(store.all_states())) == 15
