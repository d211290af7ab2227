"""Query and document prompts from config_sentence_transformers.json, as sentence-transformers
uses them.

The model is the real all-MiniLM-L6-v2 in a folder that adds E5-style prompts. Both sides run
for real: jrag's encoder and sentence-transformers' ``SentenceTransformer``; what each feeds its
model is recorded at the forward pass (the token ids) and the vectors are compared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from typer.testing import CliRunner

from jrag import Encoder, InputError, ModelLoadError, StoreError
from jrag.cli import app
from jrag.embedding import identity_of
from jrag.encoder import Tokens, _split_prompt
from jrag.loading import MINILM_ID, resolve_model_dir
from jrag.retrieval import SearchOptions, search
from jrag.store import Identity, MilvusStore

PROMPTS = {"query": "search_query: ", "document": "search_document: "}  # nomic-embed's
TEXTS = [
    "Who re-ground the Fresnel lens of the north lighthouse?",
    "The bakery cooperative proofed sourdough overnight.",
    "granite",
]


def prompt_model(folder: Path, prompts: dict, default: str | None = None, **pooling) -> Path:
    """all-MiniLM-L6-v2 with ``prompts`` in its config_sentence_transformers.json."""
    source = resolve_model_dir(MINILM_ID)
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.safetensors", "onnx*"))
    (folder / "model.safetensors").symlink_to(source / "model.safetensors")
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": prompts, "default_prompt_name": default}), encoding="utf-8"
    )
    if pooling:
        path = folder / "1_Pooling" / "config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | pooling), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def e5_folder(tmp_path_factory) -> Path:
    return prompt_model(tmp_path_factory.mktemp("models") / "nomic-style", PROMPTS)


@pytest.fixture(scope="module")
def encoder(e5_folder: Path) -> Encoder:
    return Encoder.from_pretrained(e5_folder, device="cpu", dtype="float32")


def recorded_jrag_ids(encoder: Encoder, call) -> tuple[list[list[int]], np.ndarray]:
    """The real rows of ``input_ids`` jrag's model receives during ``call()``, in input order."""
    seen: list[list[int]] = []
    forward = encoder.model.forward

    def spy(input_ids, lengths):
        seen.extend(row[:n].tolist() for row, n in zip(input_ids, lengths, strict=True))
        return forward(input_ids, lengths)

    encoder.model.forward = spy
    try:
        vectors = call()
    finally:
        del encoder.model.forward
    return seen, vectors


def recorded_st_ids(model, call) -> tuple[list[list[int]], np.ndarray]:
    """The same for sentence-transformers: the ``input_ids`` its preprocessing hands on."""
    seen: list[list[int]] = []
    preprocess = model.preprocess

    def spy(*args, **kwargs):
        features = preprocess(*args, **kwargs)
        for ids, mask in zip(features["input_ids"], features["attention_mask"], strict=True):
            seen.append(ids[mask.bool()].tolist())
        return features

    model.preprocess = spy
    try:
        vectors = call()
    finally:
        del model.preprocess
    return seen, np.asarray(vectors)


def sentence_transformer(folder: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


@pytest.mark.parametrize("include_prompt", [True, False])
def test_queries_and_documents_get_their_prompts_exactly_as_sentence_transformers(
    tmp_path: Path, include_prompt: bool
):
    folder = prompt_model(tmp_path / "m", PROMPTS, include_prompt=include_prompt)
    encoder = Encoder.from_pretrained(folder, device="cpu", dtype="float32")
    st = sentence_transformer(folder)
    assert (encoder.query_prompt, encoder.document_prompt) == (
        "search_query: ",
        "search_document: ",
    )
    for jrag_call, st_call in [
        (encoder.encode_query, st.encode_query),
        (encoder.encode_document, st.encode_document),
    ]:
        jrag_ids, jrag_vectors = recorded_jrag_ids(encoder, lambda f=jrag_call: f(TEXTS))
        st_ids, st_vectors = recorded_st_ids(st, lambda f=st_call: f(TEXTS))
        assert sorted(jrag_ids) == sorted(st_ids)  # jrag batches in its own order
        st_vectors /= np.linalg.norm(st_vectors, axis=1, keepdims=True)
        np.testing.assert_allclose(jrag_vectors, st_vectors, atol=2e-5)
    # The prompts matter: a query and the same text as a document embed differently.
    query, document = encoder.encode_query(TEXTS[0]), encoder.encode_document(TEXTS[0])
    assert float(query @ document) < 0.999


def test_prompt_names_and_the_default_prompt_are_picked_as_sentence_transformers_picks_them(
    tmp_path: Path,
):
    # E5 names its document prompt "passage"; sentence-transformers 6 gives every model an empty
    # "document" prompt first, so encode_document uses none, and the default prompt applies to
    # plain encode() only.
    prompts = {"query": "query: ", "passage": "passage: ", "classification": "Classify: "}
    folder = prompt_model(tmp_path / "m", prompts, default="classification")
    encoder = Encoder.from_pretrained(folder, device="cpu", dtype="float32")
    st = sentence_transformer(folder)
    assert (encoder.query_prompt, encoder.document_prompt) == ("query: ", "")
    for jrag_call, st_call in [
        (encoder.encode_query, st.encode_query),
        (encoder.encode_document, st.encode_document),
        (
            encoder.encode,
            st.encode,
        ),  # plain encode: the default prompt, as in sentence-transformers
    ]:
        jrag_ids, _ = recorded_jrag_ids(encoder, lambda f=jrag_call: f(TEXTS))
        st_ids, _ = recorded_st_ids(st, lambda f=st_call: f(TEXTS))
        assert sorted(jrag_ids) == sorted(st_ids)


def test_prompt_overrides_replace_the_checkpoints_own(e5_folder: Path, encoder: Encoder):
    plain = Encoder.from_pretrained(MINILM_ID, device="cpu", dtype="float32")
    overridden = Encoder.from_pretrained(
        e5_folder, device="cpu", dtype="float32", query_prompt="", document_prompt="doc: "
    )
    np.testing.assert_allclose(overridden.encode_query(TEXTS), plain.encode(TEXTS), atol=1e-6)
    expected = plain.encode([f"doc: {t}" for t in TEXTS])
    np.testing.assert_allclose(overridden.encode_document(TEXTS), expected, atol=1e-6)
    assert not np.allclose(overridden.encode_document(TEXTS), encoder.encode_document(TEXTS))


def test_late_chunk_offsets_still_index_the_text_when_a_document_prompt_is_prepended(
    encoder: Encoder,
):
    text = " ".join(f"Entry {i}: the keeper logged ship number {i * 7} at dusk." for i in range(60))
    (with_prompt,) = encoder.tokenize([text])
    (without,) = encoder.tokenize([text], prompt="")
    prompt_ids = encoder.tokenizer.encode("search_document: ", add_special_tokens=False).ids
    assert with_prompt.prompt.tolist() == prompt_ids
    np.testing.assert_array_equal(with_prompt.ids, without.ids)
    np.testing.assert_array_equal(with_prompt.offsets, without.offsets)
    windows = encoder.encode_windows(encodings=[with_prompt], max_length=64, overlap=8)[0]
    assert len(windows) > 10
    covered = set()
    lead = len(prompt_ids) + 1  # [CLS] + the prompt, before every window's text
    for index, window in enumerate(windows):
        assert window.special[:lead].all() and not window.special[lead]
        real = window.offsets[~window.special]
        if index < len(windows) - 1:  # the prompt's tokens come out of the window's budget
            assert len(real) == 64 - lead - 1
        for start, end in real:
            word = text[start:end].lower()
            assert word and word in text.lower()
        covered.update(map(tuple, real.tolist()))
    # Every token of the text, at its own offsets, is in some window: nothing shifted by the prompt.
    assert covered == set(map(tuple, without.offsets.tolist()))


def test_a_byte_level_token_straddling_the_prompt_end_belongs_to_the_text():
    # Byte-level BPE (the bilingual jina-v2 tokenizers) glues the prompt's trailing space to the
    # text's first word: "Ġhello" spans (6, 12) of "query: hello world".
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["query: hello world"] * 50, trainer)
    joint = bpe.encode("query: hello world", add_special_tokens=False)
    assert joint.offsets[2] == (6, 12)
    tokens = _split_prompt(Tokens.from_encoding(joint), len("query: "))
    assert tokens.prompt.tolist() == joint.ids[:2] and tokens.ids.tolist() == joint.ids[2:]
    assert tokens.offsets.tolist() == [[0, 5], [5, 11]]  # "hello", " world" of the text


def test_bad_prompt_settings_are_refused_naming_the_file_or_setting(tmp_path: Path):
    folder = prompt_model(tmp_path / "m", PROMPTS, default="missing")
    with pytest.raises(ModelLoadError, match=r"config_sentence_transformers\.json.*missing"):
        Encoder.from_pretrained(folder, device="cpu")
    folder = prompt_model(tmp_path / "n", {"query": 3})
    with pytest.raises(ModelLoadError, match="prompts"):
        Encoder.from_pretrained(folder, device="cpu")
    long_prompt = Encoder.from_pretrained(
        MINILM_ID, device="cpu", dtype="float32", query_prompt="instruction " * 300
    )
    with pytest.raises(InputError, match=r"prompt takes 300 tokens.*--query-prompt"):
        long_prompt.encode_query("short")


def test_collection_records_the_document_prompt_and_refuses_another(
    milvus_lite_uri: str, e5_folder: Path, encoder: Encoder
):
    with MilvusStore(milvus_lite_uri, "c", identity=identity_of(encoder)) as store:
        assert store.manifest.identity.document_prompt == "search_document: "
        assert store.stats()["document_prompt"] == "search_document: "
    other = Encoder.from_pretrained(e5_folder, device="cpu", dtype="float32", document_prompt="")
    with pytest.raises(StoreError, match=r"prompt 'search_document: '.*--document-prompt"):
        MilvusStore(milvus_lite_uri, "c", identity=identity_of(other))
    with MilvusStore(milvus_lite_uri, "c", identity=identity_of(encoder)) as store:
        assert store.manifest.identity.document_prompt == "search_document: "


def test_a_prompt_with_control_characters_prints_escaped(tmp_path: Path):
    db = str(tmp_path / "e.db")
    identity = Identity(model="m", dim=384, document_prompt="\x1b[2Jcleared: ")
    MilvusStore(db, "jrag", identity=identity).close()
    result = CliRunner().invoke(app, ["stats", "--uri", db])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\\x1b[2Jcleared" in result.output


def test_cli_prompt_flags_reach_the_encoder_and_the_manifest(tmp_path: Path, e5_folder: Path):
    runner = CliRunner()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lamp.md").write_text("# Lamp\n\nThe keeper re-ground the Fresnel lens in May.\n")
    (docs / "bread.md").write_text("# Bread\n\nThe cooperative proofed rye overnight.\n")
    db = str(tmp_path / "p.db")
    common = ["--uri", db, "--model", str(e5_folder), "--dtype", "float32"]
    result = runner.invoke(app, ["ingest", str(docs), *common, "--document-prompt", "note: "])
    assert result.exit_code == 0, result.output
    stats = runner.invoke(app, ["stats", "--uri", db])
    assert "note: " in stats.output

    refused = runner.invoke(app, ["search", "lens", *common])  # the model's own prompt
    assert refused.exit_code == 1
    assert "document prompt 'note: '" in refused.output and "--document-prompt" in refused.output

    def top_score(query_prompt: str) -> float:
        args = ["search", "who ground the lens", *common, "--document-prompt", "note: "]
        result = runner.invoke(
            app, [*args, "--query-prompt", query_prompt, "--json", "--no-hybrid"]
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.output)[0]["score"]

    # What the library gives with an encoder built with the same prompts, from the same store.
    for query_prompt in ("search_query: ", "find: "):
        expected_encoder = Encoder.from_pretrained(
            e5_folder, device="cpu", dtype="float32", query_prompt=query_prompt,
            document_prompt="note: ",
        )  # fmt: skip
        with MilvusStore(db, "jrag", create=False) as store:
            options = SearchOptions(hybrid=False)
            expected = search("who ground the lens", store, expected_encoder, options)
        assert top_score(query_prompt) == pytest.approx(expected[0].score, abs=1e-4)
    assert top_score("search_query: ") != pytest.approx(top_score("find: "), abs=1e-4)


def test_framework_embeddings_use_the_query_and_document_prompts(
    e5_folder: Path, encoder: Encoder, monkeypatch
):
    monkeypatch.setenv("JRAG_DTYPE", "float32")
    from langchain_jrag import JragEmbeddings
    from llama_index.embeddings.jrag import JragEmbedding

    langchain = JragEmbeddings(model=str(e5_folder), device="cpu")
    llama = JragEmbedding(model=str(e5_folder), device="cpu")
    query, document = encoder.encode_query(TEXTS[0]), encoder.encode_document(TEXTS[0])
    for embed_query, embed_document in [
        (langchain.embed_query, langchain.embed_documents),
        (llama.get_query_embedding, llama.get_text_embedding_batch),
    ]:
        np.testing.assert_allclose(embed_query(TEXTS[0]), query, atol=1e-5)
        np.testing.assert_allclose(embed_document([TEXTS[0]])[0], document, atol=1e-5)
    overridden = JragEmbeddings(model=str(e5_folder), device="cpu", query_prompt="")
    plain = overridden.encoder.encode(TEXTS[0], prompt="")
    np.testing.assert_allclose(overridden.embed_query(TEXTS[0]), plain, atol=1e-5)
