"""The query path as one: concurrent searches against a re-ingesting writer, the store calls
one ``ask`` makes, and late-chunk spans cut with the collection's recorded options."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from jrag import Encoder
from jrag.loading import MINILM_ID
from jrag.pipeline import IngestOptions, ingest
from jrag.qa import ask
from jrag.retrieval import SearchOptions, search
from jrag.store import MilvusStore

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
RAILWAY = SAMPLES / "vellach-pass-railway.txt"
GALLERY_QUESTION = "How long is the gallery of the Vellach Pass railway tunnel?"


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.from_pretrained(MINILM_ID)


def count_calls(store: MilvusStore, names: tuple[str, ...]) -> dict[str, int]:
    """Wrap the store's public ``names`` so each call is counted (the real method still runs)."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        method = getattr(store, name)

        def counted(*args, _name=name, _method=method, **kwargs):
            counts[_name] += 1
            return _method(*args, **kwargs)

        setattr(store, name, counted)
    return counts


@pytest.mark.parametrize("mode", ["auto", "late", "whole"])
def test_ask_ranks_documents_once_and_searches_passages_once(tmp_path, encoder, mode):
    with MilvusStore(str(tmp_path / "a.db"), model=encoder.name, dim=encoder.dim) as store:
        ingest(sorted(SAMPLES.glob("*.txt")), store, encoder)
        counts = count_calls(store, ("rank", "top_rows", "states"))
        answer = ask(GALLERY_QUESTION, store=store, encoder=encoder, k=3, passages=3, mode=mode)
    assert answer.passages and any("1,340" in c.quote for c in answer.passages)
    assert counts["rank"] == 1, counts
    assert counts["top_rows"] <= 1, counts
    assert counts["states"] == 0, counts  # search already read them


@pytest.mark.parametrize("content", ["passage", "document"])
def test_search_reads_its_results_text_in_one_query(tmp_path, encoder, content):
    with MilvusStore(str(tmp_path / "t.db"), model=encoder.name, dim=encoder.dim) as store:
        ingest([p for p in SAMPLES.iterdir() if p.suffix in (".txt", ".md")], store, encoder)
        counts = count_calls(store, ("rank", "document_texts", "document_text"))
        results = search(GALLERY_QUESTION, store, encoder, k=3, content=content)
        assert len(results) == 3
        assert counts == {"rank": 2, "document_texts": 1, "document_text": 0}, counts
        # The window around the passage, even where the best window was another one.
        for r in results:  # each text is the exact span of the whole text
            assert r.text == store.document_text(store.states([r.doc_id])[r.doc_id], r.start, r.end)
            assert r.start <= r.passage_start < r.passage_end <= r.end


def test_ask_cuts_spans_with_the_collections_recorded_late_chunk_size(tmp_path, encoder):
    """A document stored whole, in a collection whose late rows were cut at 64 tokens, is
    quoted in the spans a 64-token late ingest stores for it, not the 256-token default's."""
    small = IngestOptions(mode="late", late_chunk_tokens=64)
    others = [p for p in sorted(SAMPLES.glob("*.md"))][:2]
    uri = str(tmp_path / "c.db")
    with MilvusStore(uri, "mixed", model=encoder.name, dim=encoder.dim) as store:
        ingest(others, store, encoder, options=small)
        ingest([RAILWAY], store, encoder, options=IngestOptions(mode="whole"))
        answer = ask(GALLERY_QUESTION, store=store, encoder=encoder, k=1, passages=3)
    with MilvusStore(uri, "reference", model=encoder.name, dim=encoder.dim) as reference:
        ingest([RAILWAY], reference, encoder, options=small)
        doc_id = next(iter(reference.all_states())).doc_id
        stored = {(row.start, row.end) for row in reference.get_rows([doc_id], "late")}
    quoted = [(c.start, c.end) for c in answer.passages if c.doc_id == doc_id]
    assert quoted and set(quoted) <= stored, (quoted, sorted(stored)[:5])


def test_searches_during_reingest_return_complete_committed_documents(tmp_path, encoder):
    """8 threads search one store while a writer keeps re-ingesting the matched documents with
    new text: each search gets every document (k is their count, so one hidden by another
    search's exclusions is missed), each text a slice of one whole version."""
    folder = tmp_path / "docs"
    folder.mkdir()
    paths = [folder / f"tunnel-{n}.txt" for n in range(4)]
    base = RAILWAY.read_text()[:1500]

    def version(path: Path, v: int) -> str:
        return f"{base}\n\nRevision {v} of {path.stem}: the gallery was inspected in year {v}.\n"

    versions: dict[str, list[str]] = {str(p.resolve()): [] for p in paths}
    for path in paths:
        path.write_text(version(path, 0))
        versions[str(path.resolve())].append(version(path, 0))
    k, deadline = len(paths), time.monotonic() + 8
    failures: list[str] = []
    stop = threading.Event()
    with MilvusStore(str(tmp_path / "s.db"), model=encoder.name, dim=encoder.dim) as store:
        ingest(paths, store, encoder)

        def writer() -> None:
            for v in range(1, 40):  # bounded by count and time
                if stop.is_set() or time.monotonic() > deadline:
                    return
                for path in paths:
                    versions[str(path.resolve())].append(version(path, v))
                    path.write_text(version(path, v))
                ingest(paths, store, encoder)

        def reader() -> None:
            for _ in range(60):
                if time.monotonic() > deadline:
                    return
                try:
                    results = search("gallery inspected", store, encoder, k=k)
                except Exception as error:  # every failure is reported
                    failures.append(repr(error))
                    return
                if len({r.doc_id for r in results}) != k:
                    failures.append(f"{len(results)} results: {[r.source for r in results]}")
                for r in results:
                    if not any(text[r.start : r.end] == r.text for text in versions[r.source]):
                        failures.append(f"{r.source} [{r.start}:{r.end}] is no committed text")

        threads = [threading.Thread(target=writer)] + [
            threading.Thread(target=reader) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads[1:]:
            thread.join(timeout=30)
        stop.set()
        threads[0].join(timeout=30)
    assert not failures, failures[:5]


def test_front_doors_take_their_search_options_from_search_options():
    """Both retrievers hand every like-named field to SearchOptions, and share its defaults."""
    from langchain_jrag import JragRetriever as LangChainRetriever
    from llama_index.retrievers.jrag import JragRetriever as LlamaIndexRetriever

    chosen = {
        "mode": "late", "hybrid": False, "ranker": "rrf", "weights": (0.3, 0.7),
        "content": "document", "tenant": "t1", "rerank_depth": 7, "filter": 'title == "x"',
    }  # fmt: skip
    expected = SearchOptions(k=2, **chosen)
    langchain = LangChainRetriever(uri="unused.db", k=2, **chosen)
    assert langchain._options(None, None) == expected
    assert langchain._options(9, None) == replace(expected, k=9)
    assert LlamaIndexRetriever(uri="unused.db", k=2, **chosen).options == expected
    defaults = SearchOptions(k=4)
    assert LangChainRetriever(uri="unused.db")._options(None, None) == defaults
    assert LlamaIndexRetriever(uri="unused.db").options == defaults
    with pytest.raises(ValueError, match="unknown ranker 'borda'"):
        LangChainRetriever(uri="unused.db", ranker="borda")
    assert SearchOptions.pick({"k": 3, "weights": [1, 0], "unrelated": 1}) == SearchOptions(
        k=3, weights=(1, 0)
    )


def test_a_ranker_without_weights_gets_its_own_weights_at_every_front_door():
    """``--ranker relative`` alone must not inherit the default ranker's weights: at 0.025 /
    0.975 a fixed fusion is BM25 alone. Given weights always win."""
    from langchain_jrag import JragRetriever as LangChainRetriever
    from llama_index.retrievers.jrag import JragRetriever as LlamaIndexRetriever

    from jrag.cli import _search_options
    from jrag.modes import DEFAULT_RANKER, DEFAULT_WEIGHTS, RANKER_WEIGHTS
    from jrag.server.schemas import SearchRequest

    assert RANKER_WEIGHTS["relative"] != DEFAULT_WEIGHTS
    for ranker, weights in RANKER_WEIGHTS.items():
        built = [
            SearchOptions(ranker=ranker),
            _search_options({"ranker": ranker, "weights": None}),
            SearchOptions.pick(SearchRequest(query="q", ranker=ranker)),
            LangChainRetriever(uri="unused.db", ranker=ranker)._options(None, None),
            LlamaIndexRetriever(uri="unused.db", ranker=ranker).options,
        ]
        assert {options.weights for options in built} == {weights}, ranker
    assert SearchOptions().weights == DEFAULT_WEIGHTS == RANKER_WEIGHTS[DEFAULT_RANKER]
    assert SearchOptions(ranker="relative", weights=[0.4, 0.6]).weights == (0.4, 0.6)
    assert SearchOptions.pick(SearchRequest(query="q", weights=(0.4, 0.6))).weights == (0.4, 0.6)
