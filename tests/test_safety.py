"""Regressions for paths that lost data or hid bugs: each test names what used to go wrong.
Real parsing, MiniLM, Milvus Lite and the `jrag` command."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from jrag.cli import app
from jrag.embedding import identity_of, load_encoder
from jrag.errors import InputError, StoreError
from jrag.loading import MINILM_ID
from jrag.parse import parse_file
from jrag.pipeline import IngestOptions, ingest
from jrag.qa import ask
from jrag.store import MilvusStore
from jrag.store.connection import Connection

runner = CliRunner()


def sources(uri: str, collection: str) -> set[str]:
    with MilvusStore(uri, collection, create=False) as store:
        return {Path(s.source).name for s in store.all_states()}


def test_prune_with_a_glob_keeps_the_files_the_glob_left_out(tmp_path: Path) -> None:
    """`--glob '*.md' --prune` used to delete every stored file that was not Markdown."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nThe ferry crossed at dawn.", encoding="utf-8")
    (docs / "b.txt").write_text("The lighthouse lamp was trimmed at dusk.", encoding="utf-8")
    common = ["--uri", str(tmp_path / "g.db"), "--collection", "g", "--model", MINILM_ID]
    assert runner.invoke(app, ["ingest", str(docs), *common]).exit_code == 0
    pruned = runner.invoke(app, ["ingest", str(docs), *common, "--glob", "*.md", "--prune"])
    assert pruned.exit_code == 0, pruned.output
    assert sources(str(tmp_path / "g.db"), "g") == {"a.md", "b.txt"}
    (docs / "a.md").unlink()
    runner.invoke(app, ["ingest", str(docs), *common, "--glob", "*.md", "--prune"])
    assert sources(str(tmp_path / "g.db"), "g") == {"b.txt"}  # a.md was the glob's to prune


def test_ingest_without_model_uses_the_collections_model(tmp_path: Path) -> None:
    """Without --model, ingest loaded the default model, then failed the model check."""
    from jrag.checkpoints import jina_v2_config, write_random_checkpoint

    model = write_random_checkpoint(tmp_path / "tiny", jina_v2_config("small", num_hidden_layers=1))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "one.txt").write_text("The first note about the mill race.", encoding="utf-8")
    common = ["--uri", str(tmp_path / "m.db"), "--collection", "m"]
    first = runner.invoke(app, ["ingest", str(docs), *common, "--model", str(model)])
    assert first.exit_code == 0, first.output
    (docs / "two.txt").write_text("A second note about the sluice gate.", encoding="utf-8")
    second = runner.invoke(app, ["ingest", str(docs), *common])
    assert second.exit_code == 0, second.output
    assert sources(str(tmp_path / "m.db"), "m") == {"one.txt", "two.txt"}


def test_an_unknown_late_strategy_is_an_input_error_naming_the_field() -> None:
    """It escaped as a bare ValueError from deep inside chunking and aborted the whole run."""
    with pytest.raises(InputError, match="late_strategy 'paragraphs'"):
        IngestOptions(late_strategy="paragraphs")
    with pytest.raises(InputError, match="late_chunk_tokens"):
        IngestOptions(late_chunk_tokens=0)


def test_programming_errors_are_not_reported_as_store_errors(tmp_path: Path) -> None:
    """TypeError and ValueError were caught as store errors, which hid bugs."""
    with Connection(str(tmp_path / "c.db")) as conn:

        def buggy() -> None:
            raise TypeError("unsupported operand")

        with pytest.raises(TypeError):
            conn.call("do something", buggy)
        with pytest.raises(StoreError, match="cannot list collections"):
            conn.call("list collections", conn.client.describe_collection, "no_such")


def test_quotes_equal_the_parsed_text_in_a_200k_character_multibyte_document(tmp_path: Path):
    """Text rows were cut at 65,535 bytes, so `ask` quoted a truncated passage."""
    words = ["ünïcödé", "文字", "Ωmega", "naïve", "café", "Zürich"]
    sentences = [
        f"Sentence {i} mentions {words[i % 6]} and {words[(i * 5) % 6]} at mark {i}."
        for i in range(5200)
    ]
    sentences[4100] = "The brass anemometer on the Høgfjell station was recalibrated in 1932."
    path = tmp_path / "multibyte.txt"
    path.write_text(" ".join(sentences), encoding="utf-8")
    document = parse_file(path)
    assert len(document.text) > 200_000 and len(document.text.encode()) > 4 * 65_535
    encoder = load_encoder(MINILM_ID)
    with MilvusStore(str(tmp_path / "q.db"), "q", identity=identity_of(encoder)) as store:
        report = ingest([path], store, encoder)
        assert report.failed == [] and len(report.added) == 1
        state = next(iter(store.all_states()))
        assert store.document_text(state) == document.text  # every character, in order
        answer = ask("When was the Høgfjell anemometer recalibrated?", store=store,
                     encoder=encoder, k=1, passages=3)  # fmt: skip
    assert answer.citations
    for citation in answer.citations:
        assert document.text[citation.start : citation.end] == citation.quote
    assert any("1932" in c.quote for c in answer.citations)
