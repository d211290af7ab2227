"""`jrag eval`: metrics checked by hand, seeded synthetic corpora, data loaders with clear errors,
and the CLI end to end with real models and Milvus Lite (a trained model beats chance, a random
one does not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jrag import Encoder
from jrag.checkpoints import jina_v2_config, write_random_checkpoint
from jrag.cli import app
from jrag.errors import InputError
from jrag.evaluation import evaluate, load_beir, load_documents, needle_corpora, passkey_corpora
from jrag.evaluation.runner import run_evaluation
from jrag.loading import MINILM_ID
from jrag.pipeline import IngestOptions

runner = CliRunner()
DOCS = 10  # candidates per length in the CLI runs: chance Acc@1 is 1/10


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return Encoder.from_pretrained(MINILM_ID)


@pytest.fixture(scope="module")
def random_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("random-small"), jina_v2_config("small"))


def run_cli(*args: str) -> str:
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 0, result.output
    return result.output


def eval_json(out: Path, task: str) -> dict:
    return json.loads((out / f"{task}.json").read_text())


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_match_hand_computed_values():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"d": 1}}
    run = {
        "q1": {"a": 0.9, "x": 0.5},  # relevant at rank 1
        "q2": {"x": 0.9, "b": 0.8, "y": 0.7, "c": 0.6},  # relevant at ranks 2 and 4
        "q3": {"x": 0.9, "y": 0.8},  # relevant document not retrieved
    }
    scores = evaluate(qrels, run, ("Acc@1", "nDCG@10", "Recall@10", "MRR@10"))
    # Acc@1: only q1 has a relevant first result → 1/3.
    # nDCG@10: q1 = 1. q2: DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161,
    #   ideal = 1 + 1/log2(3) = 1.63093 → 0.65092. q3 = 0. Mean = 1.65092 / 3 = 0.55031.
    # Recall@10: 1, 2/2, 0 → 2/3. MRR@10: 1, 1/2, 0 → 1/2.
    assert scores["Acc@1"] == pytest.approx(1 / 3)
    assert scores["nDCG@10"] == pytest.approx(0.55031, abs=1e-5)
    assert scores["Recall@10"] == pytest.approx(2 / 3)
    assert scores["MRR@10"] == pytest.approx(0.5)
    # A query missing from the run counts as 0, not as absent.
    assert evaluate(qrels, {"q1": {"a": 1.0}}, ("MRR@10",))["MRR@10"] == pytest.approx(1 / 3)


# -- synthetic corpora -------------------------------------------------------------------------


def test_synthetic_corpora_are_seeded_hit_their_lengths_and_hold_their_facts(minilm):
    for make in (passkey_corpora, needle_corpora):
        first = make(minilm.tokenizer, [256, 1024], docs=5, seed=3)
        again = make(minilm.tokenizer, [256, 1024], docs=5, seed=3)
        other = make(minilm.tokenizer, [256], docs=5, seed=4)
        assert [d.text for c in first for d in c.documents] == [
            d.text for c in again for d in c.documents
        ]
        assert first[0].documents[0].text != other[0].documents[0].text
        for corpus, length in zip(first, (256, 1024), strict=True):
            counts = minilm.count_tokens([d.text for d in corpus.documents])
            assert all(length - 24 <= n <= length for n in counts), counts
            assert len({d.text for d in corpus.documents}) == 5
            for query, doc in zip(corpus.queries, corpus.documents, strict=True):
                assert query.relevant == {doc.doc_id: 1}
                words = query.text.rstrip("?").split()[1:]
                name = next(w.split("'")[0] for w in words if w[0].isupper())
                assert name in doc.text  # the queried name is in its own document only
                assert sum(name in d.text for d in corpus.documents) == 1
    passkey = passkey_corpora(minilm.tokenizer, [512], docs=3)[0]
    assert passkey.queries[0].text.startswith("what is the passkey for ")
    assert "The grass is green. The sky is blue." in passkey.documents[0].text
    with pytest.raises(InputError, match="--docs"):
        passkey_corpora(minilm.tokenizer, [256], docs=1)


# -- your own data -----------------------------------------------------------------------------


def write_beir(folder: Path, corpus, qrels_lines: list[str]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as out:
        for doc in corpus.documents:
            out.write(json.dumps({"_id": doc.doc_id, "title": "", "text": doc.text}) + "\n")
    with open(folder / "queries.jsonl", "w") as out:
        for query in corpus.queries:
            out.write(json.dumps({"_id": query.query_id, "text": query.text}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels_lines) + "\n")
    return folder


def test_beir_and_document_folders_load_and_bad_input_names_the_file(minilm, tmp_path):
    corpus = needle_corpora(minilm.tokenizer, [256], docs=4)[0]
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{q.query_id}\t{next(iter(q.relevant))}\t1" for q in corpus.queries]
    beir = write_beir(tmp_path / "beir", corpus, lines)
    loaded = load_beir(beir)
    assert [d.text for d in loaded.documents] == [d.text for d in corpus.documents]
    assert loaded.qrels() == corpus.qrels()

    (beir / "qrels" / "test.tsv").write_text("q-x\tdoc\n")
    with pytest.raises(InputError, match=r"test\.tsv:1: expected"):
        load_beir(beir)
    (beir / "qrels" / "test.tsv").write_text(f"{corpus.queries[0].query_id}\tnope\t1\n")
    with pytest.raises(InputError, match=r"test\.tsv:1: document 'nope' is not in corpus"):
        load_beir(beir)
    (beir / "queries.jsonl").unlink()
    with pytest.raises(InputError, match=r"queries\.jsonl does not exist"):
        load_beir(beir)
    with pytest.raises(InputError, match="missing-folder is not a folder"):
        load_beir(tmp_path / "missing-folder")

    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Alpha\n\nThe alpha notes about lighthouses.\n")
    (docs / "sub" / "b.txt").write_text("Bakery notes: rye loaves at dawn.\n")
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        '{"query": "lighthouse notes", "relevant": ["a.md"]}\n'
        '{"question": "rye bread", "document": "sub/b.txt"}\n'
    )
    loaded = load_documents(docs, queries)
    assert sorted(d.doc_id for d in loaded.documents) == ["a.md", "sub/b.txt"]
    assert [q.relevant for q in loaded.queries] == [{"a.md": 1}, {"sub/b.txt": 1}]
    queries.write_text('{"query": "x", "relevant": ["c.md"]}\n')
    with pytest.raises(InputError, match=r"queries\.jsonl:1: 'c\.md' is not a document"):
        load_documents(docs, queries)
    queries.write_text("{not json\n")
    with pytest.raises(InputError, match=r"queries\.jsonl:1: not valid JSON"):
        load_documents(docs, queries)

    result = runner.invoke(app, ["eval", "beir", str(tmp_path / "nowhere"), "-m", MINILM_ID])
    assert result.exit_code == 1 and "nowhere is not a folder" in result.output


# -- the CLI end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_passkey(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("passkey")
    printed = run_cli(
        "passkey", "--model", MINILM_ID, "--lengths", "256", "1024",
        "--docs", str(DOCS), "--out", str(out),
    )  # fmt: skip
    assert "mean Acc@1" in printed and "chunked" in printed
    assert (out / "passkey.png").read_bytes()[:4] == b"\x89PNG"
    return eval_json(out, "passkey")


def test_passkey_cli_runs_every_mode_and_minilm_beats_chance(minilm_passkey):
    result = minilm_passkey
    assert result["modes"] == ["whole", "late", "chunked", "bm25", "hybrid"]
    assert result["labels"] == ["256", "1024"] and result["info"]["docs"] == DOCS
    # MiniLM's window is 256 tokens (its max_seq_length): at 1024, 'whole' covers each document
    # with overlapping windows (more than one row per document) and scores it by its best window.
    assert result["rows"]["whole"]["256"] == DOCS  # 256 tokens, [CLS]/[SEP] included: one window
    assert result["rows"]["whole"]["1024"] > DOCS
    assert result["rows"]["chunked"]["1024"] > DOCS
    for mode in ("late", "chunked", "bm25", "hybrid"):
        assert result["mean"][mode]["Acc@1"] >= 0.6, mode  # chance is 0.1
    assert result["scores"]["whole"]["256"]["Acc@1"] >= 0.6


def test_needle_cli_minilm_beats_a_random_model_that_stays_near_chance(random_small, tmp_path):
    args = ["--lengths", "256", "1024", "--docs", str(DOCS), "--modes", "whole", "chunked"]
    run_cli("needle", "--model", MINILM_ID, *args, "--out", str(tmp_path / "minilm"))
    run_cli("needle", "--model", str(random_small), *args, "--out", str(tmp_path / "random"))
    trained = eval_json(tmp_path / "minilm", "needle")["mean"]
    untrained = eval_json(tmp_path / "random", "needle")["mean"]
    # 20 queries per mode, 10 candidates each: by chance about 2 right (Acc@1 0.1); more than 6
    # would be p < 1%. Random weights keep a little lexical signal (names in short documents),
    # hence a bound of 3/N rather than 1/N. Measured: random 0.25, MiniLM 0.60-0.65.
    for mode in ("whole", "chunked"):
        assert untrained[mode]["Acc@1"] <= 3 / DOCS, untrained
        assert trained[mode]["Acc@1"] >= 0.5, trained
        assert trained[mode]["Acc@1"] >= untrained[mode]["Acc@1"] + 0.25


def test_documents_longer_than_an_8k_model_take_the_macro_window_path(tmp_path):
    """A 16k-token passkey corpus with a tiny random JinaBERT: three 8k windows per document."""
    tiny = write_random_checkpoint(
        tmp_path / "tiny",
        jina_v2_config(
            "small", hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=128,
        ),
    )  # fmt: skip
    encoder = Encoder.from_pretrained(tiny, device="cpu")
    corpora = passkey_corpora(encoder.tokenizer, [16384], docs=3)
    result = run_evaluation("passkey", corpora, encoder, ["whole"], ("Acc@1",))
    assert encoder.max_length == 8192
    assert result.rows["whole"]["16384"] == 3 * 3  # (16,382 tokens - 512 overlap) / 7,678 → 3
    assert 0.0 <= result.scores["whole"]["16384"]["Acc@1"] <= 1.0


def test_evaluation_indexes_late_chunks_with_the_given_ingest_options(minilm):
    """Halving the late-chunk size writes more late rows; the default is `jrag ingest`'s."""
    corpora = needle_corpora(minilm.tokenizer, [1024], docs=3)
    rows = {
        tokens: run_evaluation(
            "needle", corpora, minilm, ["late"], ("Acc@1",),
            ingest_options=None if tokens is None else IngestOptions(late_chunk_tokens=tokens),
        ).rows["late"]["1024"]
        for tokens in (None, 256, 64)
    }  # fmt: skip
    assert rows[None] == rows[256]
    assert rows[64] > rows[256] >= 3


def test_docs_cli_scores_a_folder_with_a_queries_file(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    corpus = needle_corpora(Encoder.from_pretrained(MINILM_ID).tokenizer, [768], docs=4)[0]
    lines = []
    for doc, query in zip(corpus.documents, corpus.queries, strict=True):
        (docs / f"{doc.doc_id}.txt").write_text(doc.text)
        lines.append(json.dumps({"query": query.text, "relevant": [f"{doc.doc_id}.txt"]}))
    (tmp_path / "queries.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    printed = run_cli(
        "docs", str(docs), "--queries", str(tmp_path / "queries.jsonl"), "--model", MINILM_ID,
        "--modes", "whole", "chunked", "--out", str(out),
    )  # fmt: skip
    assert "nDCG@10" in printed and "MRR@10" in printed
    result = eval_json(out, "docs")
    assert result["modes"] == ["whole", "chunked"]
    assert result["mean"]["chunked"]["Recall@10"] == pytest.approx(1.0)  # 4 docs: all retrieved
    assert result["mean"]["chunked"]["MRR@10"] >= 0.5
    assert (out / "docs.png").is_file()
