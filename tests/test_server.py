"""``jrag serve``'s HTTP service: every route over real HTTP (uvicorn on a free loopback port),
real Milvus Lite, real MiniLM forward passes; the LLM is LangChain's own fake chat model."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from jrag.embedding import identity_of, load_encoder
from jrag.loading import MINILM_ID
from jrag.pipeline import IngestOptions, ingest
from jrag.serve import HttpSettings, RunningApp, start_server
from jrag.server.app import Service, create_app
from jrag.store import MilvusStore
from tests.test_serve import audit

KEY = "k3y-for-tests-0123456789"
REPLY = "Odile Marchetti re-ground the lens [1]."
TOPICS = {
    "lighthouse": "At Gull Point the keeper Odile Marchetti re-ground the Fresnel lens by hand "
    "in the winter of 1911, polishing each prism with rouge until the beam carried twenty miles.",
    "bakery": "The bakery cooperative proofed rye overnight in oak troughs and sold the loaves "
    "at dawn from a cart painted green.",
    "railway": "The alpine railway climbed switchbacks through tunnels bored into granite, and "
    "its snow sheds were rebuilt after the avalanche of 1923.",
    "moths": "Migratory moths gathered over the orchard walls each September, and the "
    "naturalists counted them by lantern light.",
}
FILLER = "The committee met again and read the minutes of the previous meeting aloud. "
QUESTION = "Who re-ground the Fresnel lens at Gull Point?"


def write_docs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for topic, fact in TOPICS.items():
        paths[topic] = folder / f"{topic}.md"
        text = f"# The {topic} records\n\n{FILLER * 16}\n\n{fact}\n\n{FILLER * 16}\n"
        paths[topic].write_text(text, encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(MINILM_ID)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, encoder):
    """A Lite collection of the four topic documents (late chunks), and their paths."""
    folder = tmp_path_factory.mktemp("server")
    paths = write_docs(folder / "docs")
    store = MilvusStore(str(folder / "s.db"), "docs", identity=identity_of(encoder))
    ingest([str(folder / "docs")], store, encoder, options=IngestOptions(mode="late"))
    yield store, paths
    store.close()


@pytest.fixture(scope="module")
def service(corpus, encoder):
    service = Service(encoder, "docs", store=corpus[0], llm=FakeListChatModel(responses=[REPLY]))
    yield service
    service.batcher.close()


@pytest.fixture(scope="module")
def server(service):
    with RunningApp(create_app(service)) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# -- embeddings ------------------------------------------------------------------------------------


def test_openai_sdk_embeddings_equal_encode_in_float_and_base64(server, encoder) -> None:
    import openai

    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    texts = ["The lighthouse keeper re-ground the lens.", "rye loaves at dawn", "moths " * 40]
    expected = encoder.encode(texts)
    for encoding_format in ("float", "base64", openai.NOT_GIVEN):  # the SDK's default: base64
        reply = sdk.embeddings.create(input=texts, model=MINILM_ID,
                                      encoding_format=encoding_format)  # fmt: skip
        rows = [d.embedding for d in sorted(reply.data, key=lambda d: d.index)]
        if encoding_format == "base64":  # asked for explicitly, the SDK hands it over as is
            rows = [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows]
        got = np.asarray(rows)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert reply.usage.prompt_tokens == sum(encoder.count_tokens(texts))
        assert reply.model == MINILM_ID
    one = sdk.embeddings.create(input="a single string", model=MINILM_ID)
    np.testing.assert_allclose(one.data[0].embedding, encoder.encode("a single string"), atol=1e-5)


def test_embeddings_errors_name_the_field_and_the_server_keeps_serving(client, encoder) -> None:
    cases = [
        (dict(content=b'{"input": ["a",', headers={"content-type": "application/json"}), 400,
         "body", "not valid JSON"),
        (dict(json=["not", "an", "object"]), 400, "body", "JSON object"),
        (dict(json={"input": [1, 2]}), 422, "input", "string or a list of strings"),
        (dict(json={"input": []}), 400, "input", "empty list"),
        (dict(json={"input": ["fine", "  "]}), 400, "input", "input[1] is empty"),
        (dict(json={"input": "word " * 400}), 400, "input", "past sentence-transformers"),
        (dict(json={"input": "x", "dimensions": 12}), 400, None, "dimensions must be 384"),
        (dict(json={"input": "x", "model": "other-model"}), 404, "model", "not served"),
        (dict(json={"input": "x", "encoding_format": "int8"}), 422, "encoding_format", "float"),
    ]  # fmt: skip
    for kwargs, status, param, words in cases:
        response = client.post("/v1/embeddings", **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        error = error_of(response)
        assert words in error["message"], (kwargs, error)
        if param is not None:
            assert error["param"] == param, (kwargs, error)
    # A text past the limit is embedded only when asked, cut as Encoder.encode cuts it.
    long = "word " * 400
    cut = client.post("/v1/embeddings", json={"input": long, "truncate": True}).json()
    np.testing.assert_allclose(cut["data"][0]["embedding"], encoder.encode(long), atol=1e-5)
    assert cut["usage"]["prompt_tokens"] == encoder.max_length
    assert client.get("/health").json()["status"] == "ok"


# -- search and ask --------------------------------------------------------------------------------


def test_search_finds_the_document_and_its_passage_and_filters_only_narrow(client, corpus) -> None:
    _, paths = corpus
    response = client.post("/search", json={"query": QUESTION, "k": 2})
    assert response.status_code == 200, response.text
    best = response.json()["results"][0]
    assert best["source"] == str(paths["lighthouse"])
    passage = best["text"][
        best["passage_start"] - best["start"] : best["passage_end"] - best["start"]
    ]
    assert "re-ground the Fresnel lens" in passage
    narrowed = client.post("/search", json={"query": QUESTION, "filter": 'source like "%bakery%"'})
    assert [r["source"] for r in narrowed.json()["results"]] == [str(paths["bakery"])]

    widen = client.post("/search", json={"query": QUESTION, "filter": 'true) or (kind == "state"'})
    assert widen.status_code == 400 and error_of(widen)["param"] == "filter"
    unknown = client.post("/search", json={"query": QUESTION, "collection": "other"})
    assert unknown.status_code == 404 and "'other' is not served" in error_of(unknown)["message"]
    bad_k = client.post("/search", json={"query": QUESTION, "k": 0})
    assert bad_k.status_code == 422 and error_of(bad_k)["param"] == "k"
    bad_mode = client.post("/search", json={"query": QUESTION, "mode": "fuzzy"})
    assert bad_mode.status_code == 400 and "unknown mode" in error_of(bad_mode)["message"]


def test_ask_without_llm_quotes_passages_with_citations(client, corpus) -> None:
    answer = client.post("/ask", json={"question": QUESTION, "llm": False}).json()
    assert answer["backend"] == "extractive"
    first = answer["citations"][0]
    assert first["source"] == str(corpus[1]["lighthouse"])
    assert "Odile Marchetti" in first["quote"] and first["end"] > first["start"]


def test_ask_streams_the_llm_answer_as_server_sent_events(client, corpus) -> None:
    with client.stream("POST", "/ask", json={"question": QUESTION}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = []
        for block in response.read().decode().split("\n\n"):
            if block.strip():
                name, data = block.split("\n", 1)
                events.append(
                    (name.removeprefix("event: "), json.loads(data.removeprefix("data: ")))
                )
    names = [name for name, _ in events]
    assert names[0] == "passages" and names[-1] == "answer"
    deltas = [data["text"] for name, data in events if name == "delta"]
    assert len(deltas) > 1 and "".join(deltas) == REPLY  # streamed in pieces
    answer = events[-1][1]
    assert answer["text"] == REPLY and answer["backend"] == "langchain:FakeListChatModel"
    assert [c["number"] for c in answer["citations"]] == [1]
    assert answer["citations"][0]["source"] == str(corpus[1]["lighthouse"])
    whole = client.post("/ask", json={"question": QUESTION, "stream": False}).json()
    assert whole["text"] == REPLY


# -- documents ---------------------------------------------------------------------------------


def search_sources(client: httpx.Client, query: str, k: int = 3) -> list[str]:
    response = client.post("/search", json={"query": query, "k": k})
    assert response.status_code == 200, response.text
    return [r["source"] for r in response.json()["results"]]


def test_documents_by_id_skip_same_text_replace_changed_text_and_delete(client) -> None:
    old = "The quartermaster counted forty barrels of tar in the harbour shed."
    new = "The quartermaster counted ninety coils of hemp rope in the harbour shed."
    first = client.post("/documents", json={"documents": [{"id": "notes/qm", "text": old}]})
    assert first.status_code == 200, first.text and first.json()["added"] == ["notes/qm"]
    again = client.post("/documents", json={"documents": [{"id": "notes/qm", "text": old}]})
    assert again.json()["skipped"] == ["notes/qm"] and again.json()["tokens"] == 0
    changed = client.post("/documents", json={"documents": [{"id": "notes/qm", "text": new}]})
    assert changed.json()["updated"] == ["notes/qm"]
    hit = client.post("/search", json={"query": "coils of hemp rope", "k": 1}).json()["results"][0]
    assert hit["source"] == "notes/qm" and hit["text"] == new

    twice = client.post("/documents", json={"documents": [{"id": "d", "text": "a"}] * 2})
    assert twice.status_code == 400 and "given twice" in error_of(twice)["message"]
    extra = client.post("/documents", json={"documents": [{"id": "d", "text": "a", "x": 1}]})
    assert extra.status_code == 422 and "documents.0.x" in error_of(extra)["message"]

    assert client.delete("/documents/notes/qm").json() == {"id": "notes/qm", "deleted": True}
    assert "notes/qm" not in search_sources(client, "coils of hemp rope", k=5)
    assert client.delete("/documents/notes/qm").json()["deleted"] is False


def test_documents_carry_metadata_that_search_and_ask_filter_on(client) -> None:
    docs = [
        {"id": "m/north", "text": "The lighthouse keeper logged the storm at midnight.",
         "metadata": {"team": "north", "year": 2021}},
        {"id": "m/south", "text": "The lighthouse keeper logged the fog at dawn.",
         "metadata": {"team": "south", "year": 2019}},
    ]  # fmt: skip
    added = client.post("/documents", json={"documents": docs})
    assert added.status_code == 200, added.text
    assert sorted(added.json()["added"]) == ["m/north", "m/south"]

    def found(where: dict, route: str = "/search") -> list[str]:
        body = {"query": "lighthouse keeper logged", "k": 5, "where": where}
        if route == "/ask":
            body = {"question": body.pop("query"), "stream": False, "llm": False, **body}
        response = client.post(route, json=body)
        assert response.status_code == 200, response.text
        if route == "/ask":
            return sorted({c["source"] for c in response.json()["citations"]})
        return sorted(r["source"] for r in response.json()["results"])

    assert found({"team": "north"}) == ["m/north"]
    assert found({"year": {"$lt": 2020}}) == ["m/south"]
    assert found({"$or": [{"team": "north"}, {"year": 2019}]}) == ["m/north", "m/south"]
    assert found({"team": "south"}, "/ask") == ["m/south"]
    bad = client.post("/search", json={"query": "x", "where": {"team) or (1": 1}})
    assert bad.status_code == 400 and "team) or (1" in error_of(bad)["message"]
    for doc in docs:
        client.delete(f"/documents/{doc['id']}")


def test_uploaded_files_are_parsed_stored_and_their_text_escaped_on_the_page(client) -> None:
    name = "<img src=x onerror=alert(1)>.md"
    body = b"# Owl survey\n\nThe barn owl hoots at midnight over the hayloft <script>x()</script>."
    response = client.post("/documents", files=[("files", (name, body, "text/markdown"))])
    assert response.status_code == 200, response.text
    assert response.json()["added"] == [name]
    hit = client.post("/search", json={"query": "barn owl at midnight", "k": 1}).json()["results"]
    assert hit[0]["source"] == name and "hoots at midnight" in hit[0]["text"]
    no_files = client.post("/documents", files=[("other", ("a.txt", b"x"))])
    assert no_files.status_code == 400 and error_of(no_files)["param"] is None
    client.delete(f"/documents/{name}")


def test_two_clients_writing_and_searching_at_once_lose_nothing(server, corpus) -> None:
    store, _ = corpus
    errors: list[str] = []

    def writer(who: str) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            for batch in range(3):
                docs = [
                    {"id": f"{who}/{batch}-{i}", "text": f"{who} wrote entry {batch}-{i} about "
                     f"{list(TOPICS)[i % 4]} and the ledger."}
                    for i in range(4)
                ]  # fmt: skip
                r = c.post("/documents", json={"documents": docs})
                if r.status_code != 200 or len(r.json()["added"]) != 4:
                    errors.append(r.text)
                r = c.post("/search", json={"query": f"{who} ledger", "k": 3})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=writer, args=(who,)) for who in ("ann", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    written = {s.source for s in store.all_states() if s.source.startswith(("ann/", "bob/"))}
    assert len(written) == 24
    assert audit(store) == []
    store.delete_documents([s.doc_id for s in store.all_states() if s.source in written])


# -- service routes, auth, limits --------------------------------------------------------------


def test_stats_health_metrics_and_openapi(client) -> None:
    client.post("/v1/embeddings", json={"input": ["count these tokens"]})
    stats = client.get("/stats").json()
    assert stats["collection"] == "docs" and stats["documents"] >= 4
    assert client.get("/health").json()["model"] == MINILM_ID
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'jrag_http_requests_total{method="POST",route="/v1/embeddings",status="200"}' in text
    assert "jrag_http_request_seconds_bucket" in text and "jrag_queue_depth" in text
    tokens = [float(x.split()[-1]) for x in text.splitlines()
              if x.startswith("jrag_tokens_embedded_total ")]  # fmt: skip
    assert tokens and tokens[0] > 0
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/search", "/ask", "/documents", "/documents/{doc_key}", "/stats",
            "/health", "/metrics"} <= set(paths)  # fmt: skip


def test_api_key_is_required_on_every_route_but_health(service) -> None:
    with (
        RunningApp(create_app(service, api_key=KEY)) as running,
        httpx.Client(base_url=running.url, timeout=60) as c,
    ):
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200  # the page holds no data; it asks for the key
        for method, path, body in [
            ("POST", "/v1/embeddings", {"input": "x"}), ("POST", "/search", {"query": "x"}),
            ("POST", "/ask", {"question": "x"}), ("GET", "/stats", None),
            ("GET", "/metrics", None), ("POST", "/documents", {"documents": []}),
            ("DELETE", "/documents/x", None), ("GET", "/openapi.json", None),
        ]:  # fmt: skip
            for headers in ({}, {"Authorization": "Bearer wrong-key"}):
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (path, r.text)
                assert error_of(r)["type"] == "authentication_error"
                assert r.headers["www-authenticate"] == "Bearer"
        ok = {"Authorization": f"Bearer {KEY}"}
        assert c.post("/search", json={"query": QUESTION}, headers=ok).status_code == 200
        assert c.get("/stats", headers=ok).status_code == 200
    with pytest.raises(Exception, match="--api-key or JRAG_API_KEY"):
        HttpSettings(host="0.0.0.0").check()
    with pytest.raises(Exception, match="at least 16"):
        HttpSettings(host="0.0.0.0", api_key="short").check()
    HttpSettings(host="0.0.0.0", api_key=KEY).check()


def test_a_body_over_the_limit_answers_413_however_it_is_sent(service) -> None:
    with (
        RunningApp(create_app(service, max_body=2048)) as running,
        httpx.Client(base_url=running.url, timeout=60) as c,
    ):
        big = {"input": ["word " * 600]}
        declared = c.post("/v1/embeddings", json=big)
        assert declared.status_code == 413 and error_of(declared)["param"] == "body"

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"input": ["'
            for _ in range(20):
                yield b"word " * 50
            yield b'"]}'

        streamed = c.post("/v1/embeddings", content=chunks(),
                          headers={"content-type": "application/json"})  # fmt: skip
        assert streamed.status_code == 413
        assert c.post("/v1/embeddings", json={"input": "small"}).status_code == 200


def test_a_full_queue_answers_503_with_retry_after_and_requests_are_batched(encoder, corpus):
    service = Service(encoder, "docs", store=corpus[0], max_queue=4)
    try:
        with RunningApp(create_app(service)) as running:
            texts = [f"request number {i} about lighthouses" for i in range(8)]

            def post(text: str) -> httpx.Response:
                with httpx.Client(base_url=running.url, timeout=60) as c:
                    return c.post("/v1/embeddings", json={"input": text})

            with ThreadPoolExecutor(8) as pool:
                with service.batcher.model_lock:  # the model is busy: requests queue up
                    first = pool.submit(post, texts[0])
                    deadline = time.monotonic() + 30
                    while service.batcher.running == 0 and time.monotonic() < deadline:
                        time.sleep(0.01)  # until the model thread took it (it waits for the lock)
                    rest = [pool.submit(post, t) for t in texts[1:]]
                    while sum(f.done() for f in rest) < 3 and time.monotonic() < deadline:
                        time.sleep(0.02)
                    assert service.batcher.depth == 4
                responses = [first.result(), *(f.result() for f in rest)]
            codes = [r.status_code for r in responses]
            # One request is with the model thread, four wait, the other three are refused.
            assert sorted(codes) == [200] * 5 + [503] * 3, codes
            refused = [r for r in responses if r.status_code == 503]
            assert all(r.headers["retry-after"] == "1" for r in refused)
            assert error_of(refused[0])["type"] == "overloaded"
            for r in responses:
                if r.status_code == 200:
                    sent = json.loads(r.request.content)["input"]
                    np.testing.assert_allclose(r.json()["data"][0]["embedding"],
                                               encoder.encode(sent), atol=1e-5)  # fmt: skip
            # The four that waited went through the model together, in one call.
            assert service.metrics.registry.get_sample_value("jrag_model_batches_total") == 2
    finally:
        service.batcher.close()


def test_a_milvus_that_went_away_answers_503_and_the_server_keeps_serving(tmp_path, encoder):
    from jrag.pipeline import ingest_documents, text_document

    with start_server(tmp_path / "gone.db") as served:
        store = MilvusStore(served.uri, "docs", identity=identity_of(encoder))
        ingest_documents([text_document("owl", "The barn owl hoots at night.")], store, encoder)
        service = Service(encoder, "docs", store=store, uri=served.uri, store_timeout=3)
        try:
            with (
                RunningApp(create_app(service)) as running,
                httpx.Client(base_url=running.url, timeout=60) as c,
            ):
                assert search_sources(c, "owl") == ["owl"]
                served.kill()
                gone = c.post("/search", json={"query": "owl"})
                assert gone.status_code == 503, gone.text
                assert "did not answer within 3 s" in error_of(gone)["message"]
                assert error_of(gone)["type"] == "store_unavailable"
                assert c.get("/health").status_code == 200
                assert c.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200
        finally:
            service.close()  # closing the connection ends the calls still retrying


# -- clients: the CLI's --server and the retrievers' server= -------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -X importtime -m jrag.cli ARGS`` in a fresh interpreter (stderr: its imports)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jrag.cli", *args], capture_output=True,
        text=True, timeout=120, env={**os.environ, "PYTHONPATH": path, **(env or {})},
    )  # fmt: skip


def imported(result: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}


def test_cli_search_ask_and_stats_with_server_load_no_torch(server, corpus) -> None:
    lighthouse = str(corpus[1]["lighthouse"])
    found = cli("search", QUESTION, "--server", server.url, "-c", "docs", "--json", "-k", "2")
    assert found.returncode == 0, found.stderr[-2000:]
    assert json.loads(found.stdout)[0]["source"] == lighthouse
    assert "torch" not in imported(found) and "pymilvus" not in imported(found)

    asked = cli("ask", QUESTION, "-c", "docs", "--no-llm", env={"JRAG_SERVER": server.url})
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert (
        asked.stdout.startswith("No LLM is configured") and "sources (extractive)" in asked.stdout
    )
    assert "torch" not in imported(asked)
    streamed = cli("ask", QUESTION, "-c", "docs", "--server", server.url)  # the server's LLM
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    assert streamed.stdout.count(REPLY) == 1 and "sources (langchain:FakeListChatModel)" in (
        streamed.stdout
    )
    assert "torch" not in imported(streamed)
    answer = json.loads(cli("ask", QUESTION, "-c", "docs", "--json", "--server", server.url).stdout)
    assert answer["citations"][0]["source"] == lighthouse
    assert any("Odile Marchetti" in c["quote"] for c in answer["citations"])
    assert answer["citations"][0]["location"].startswith("chars ")

    stats = cli("stats", "--server", server.url)
    assert stats.returncode == 0 and "docs" in stats.stdout and "torch" not in imported(stats)

    wrong = cli("search", QUESTION, "--server", server.url)  # collection "jrag" is not served
    assert wrong.returncode == 1
    assert "collection 'jrag' is not served here" in wrong.stderr
    gone = cli("search", QUESTION, "--server", "http://127.0.0.1:9", "-c", "docs")
    assert gone.returncode == 1 and "cannot reach the jrag server" in gone.stderr


def test_an_answer_cut_off_midway_says_so_and_one_never_begun_says_cannot_reach() -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from jrag.client import Client, ServerError

    class CutOff(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            event = b'event: delta\ndata: {"text": "Odile "}\n\n'
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(event) + 100))  # the rest never comes
            self.end_headers()
            self.wfile.write(event)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), CutOff)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        events: list[tuple[str, dict]] = []
        with Client(url) as client, pytest.raises(ServerError) as caught:
            events.extend(client.ask_stream(QUESTION))
        assert events == [("delta", {"text": "Odile "})]
        assert str(caught.value).startswith(f"the jrag server at {url} broke off its answer: ")
    finally:
        server.shutdown()
        server.server_close()
    with Client(url) as client, pytest.raises(ServerError, match="cannot reach the jrag server"):
        list(client.ask_stream(QUESTION))  # the port is closed now


def test_the_cli_sends_a_server_every_search_option_its_requests_take() -> None:
    """The CLI names the options itself (the schema would load torch): they must stay the same."""
    from jrag.cli import _server_request
    from jrag.server.schemas import SearchFields

    arguments = {name: None for name in SearchFields.model_fields}
    local_only = {"rerank": None, "query_prompt": None, "document_prompt": None}
    assert set(_server_request(arguments | local_only)) == set(SearchFields.model_fields)


def test_both_retrievers_search_through_a_server_as_they_do_in_process(server, corpus, encoder):
    from langchain_jrag import JragRetriever as LangChainRetriever
    from llama_index.retrievers.jrag import JragRetriever as LlamaIndexRetriever

    from jrag.retrieval import SearchOptions, search

    store, paths = corpus
    local = search(QUESTION, store, encoder, SearchOptions(k=3))
    via_langchain = LangChainRetriever(server=server.url, collection="docs", k=3).invoke(QUESTION)
    assert [d.metadata["source"] for d in via_langchain] == [r.source for r in local]
    assert via_langchain[0].page_content == local[0].text
    assert via_langchain[0].metadata["source"] == str(paths["lighthouse"])
    llama = LlamaIndexRetriever(server=server.url, collection="docs", k=3)
    nodes = llama.retrieve(QUESTION)
    assert [n.node.metadata["source"] for n in nodes] == [r.source for r in local]
    assert nodes[0].score == pytest.approx(local[0].score)


# -- the web page, in a real headless browser ----------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1200,1400")  # fmt: skip


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            "chromium and chromium-driver are not installed: run scripts/install_browser.sh"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_web_page_finds_the_passage_answers_with_citations_and_escapes_file_text(
    server, client, browser, corpus, tmp_path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script> saffron crocus'
    client.post("/documents", json={"documents": [
        {"id": "<b>hostile</b>.md", "title": "<script>window.pwned=3</script>", "text": hostile}
    ]})  # fmt: skip
    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(lambda d: "documents" in d.find_element(By.ID, "served").text)

    box = browser.find_element(By.ID, "query")
    box.send_keys(QUESTION)
    browser.find_element(By.ID, "search-button").click()
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#results .result")))
    first = browser.find_elements(By.CSS_SELECTOR, "#results .result")[0]
    assert str(corpus[1]["lighthouse"]) in first.find_element(By.CSS_SELECTOR, ".source").text
    passage = first.find_element(By.CSS_SELECTOR, "mark").text
    context = first.find_element(By.CSS_SELECTOR, ".context").text
    assert "re-ground the Fresnel lens" in passage and len(passage) < len(context)
    first.find_element(By.CSS_SELECTOR, ".span-link").click()
    wait.until(lambda d: "re-ground the Fresnel lens" in d.find_element(By.ID, "span").text)

    browser.find_element(By.ID, "question").send_keys(QUESTION)
    browser.find_element(By.ID, "ask-button").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#citations .citation"))
    assert browser.find_element(By.ID, "answer-text").text == REPLY  # streamed from the LLM
    citation = browser.find_elements(By.CSS_SELECTOR, "#citations .citation")[0].text
    assert citation.startswith("[1] The lighthouse records") and "lighthouse.md" in citation
    browser.save_screenshot(str(tmp_path / "page.png"))

    box.clear()
    box.send_keys("saffron crocus")
    browser.find_element(By.ID, "search-button").click()
    wait.until(lambda d: "<b>hostile</b>.md" in d.find_element(By.ID, "results").text)
    results = browser.find_element(By.ID, "results").text
    assert (
        "<script>window.pwned=3</script>" in results
        and '<img src=x onerror="window.pwned=1">' in results
    )
    assert browser.execute_script("return window.pwned === undefined")
    assert browser.find_elements(By.CSS_SELECTOR, "#results img, #results script, #results b") == []
    browser.save_screenshot(str(tmp_path / "hostile.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000
    client.delete("/documents/<b>hostile</b>.md")
