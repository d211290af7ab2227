"""Question answering end to end: real samples, a real model, Milvus Lite, and the frameworks'
own fake LLMs (the only thing that cannot exist here is a real LLM)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from jrag import Encoder, InputError
from jrag.cli import app
from jrag.llm import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, LLMError, OpenAICompatibleLLM, from_env
from jrag.loading import MINILM_ID
from jrag.parse import ParsedDocument, parse_file
from jrag.pipeline import IngestOptions, ingest
from jrag.qa import SYSTEM_PROMPT, Answer, Citation, ask, cited
from jrag.store import MilvusStore
from tests.test_llm import streamed_completion

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
DOCUMENTS = [
    "vellach-pass-railway.txt",
    "harrowmere-lighthouse-society.md",
    "stonegate-bakers-annual-report.pdf",
]
QUESTIONS = {
    json.loads(line)["answer"]: json.loads(line)
    for line in (ROOT / "samples-src" / "questions.jsonl").read_text().splitlines()
}
GALLERY = QUESTIONS["1,340 metres long"]  # a .txt document
FLOUR = QUESTIONS["62 pence per kilo"]  # a PDF, so pages are known
SECRET = "sk-test-do-not-print-4711"


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.from_pretrained(MINILM_ID)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> str:
    """One Milvus Lite database holding the sample documents twice: mode late, and mode whole."""
    uri = str(tmp_path_factory.mktemp("qa") / "qa.db")
    for mode in ("late", "whole"):
        with MilvusStore(uri, mode, model=encoder.name, dim=encoder.dim) as store:
            report = ingest(
                [SAMPLES / name for name in DOCUMENTS], store, encoder,
                options=IngestOptions(mode=mode),
            )  # fmt: skip
            assert len(report.added) == len(DOCUMENTS) and not report.failed
    return uri


@pytest.fixture(scope="module")
def stores(db: str, encoder: Encoder):
    opened = {mode: MilvusStore(db, mode, model=encoder.name, dim=encoder.dim) for mode in MODES}
    yield opened
    for store in opened.values():
        store.close()


MODES = ("late", "whole")


@pytest.fixture(scope="module")
def parsed() -> dict[str, ParsedDocument]:
    return {name: parse_file(SAMPLES / name) for name in DOCUMENTS}


def citation_holding(answer: Answer, expected: str) -> Citation:
    found = [c for c in answer.citations if expected in c.quote]
    assert found, f"no cited passage holds {expected!r}: {[c.quote[:80] for c in answer.citations]}"
    return found[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("question", [GALLERY, FLOUR], ids=["txt", "pdf"])
def test_extractive_answer_quotes_the_passage_with_its_exact_offsets(
    mode, question, stores, encoder, parsed
):
    answer = ask(question["question"], store=stores[mode], encoder=encoder, k=3, mode=mode)
    assert answer.prompt is None and answer.backend == "extractive"
    citation = citation_holding(answer, question["answer"])
    document = parsed[question["document"]]
    assert citation.source == document.source == str((SAMPLES / question["document"]).resolve())
    assert document.text[citation.start : citation.end] == citation.quote
    assert f'[{citation.number}] "{citation.quote.strip()}"' in answer.text
    assert f"[{citation.number}] {document.title} — {document.source}, " in str(answer)
    if document.page_starts:
        # Late rows carry exact pages; re-embedded windows know a page only where their
        # stored boundaries pin it down, and then it must be right.
        expected = document.page_at(citation.start)
        assert citation.page == expected if mode == "late" else citation.page in (None, expected)
        assert citation.page == 2 or mode == "whole"
    else:
        assert citation.page is None


def test_whole_collection_finds_the_same_late_chunks_as_the_stored_late_rows(stores, encoder):
    """Re-embedding the stitched windows must reproduce what a late ingest stored (dense only:
    the stored late rows also have a BM25 leg, which re-embedded spans lack)."""
    by_mode = {
        mode: ask(GALLERY["question"], store=stores[mode], encoder=encoder, mode=mode, hybrid=False)
        for mode in MODES
    }
    late, whole = by_mode["late"].passages, by_mode["whole"].passages
    assert [(c.source, c.start, c.end) for c in late] == [(c.source, c.start, c.end) for c in whole]
    assert [c.score for c in late] == pytest.approx([c.score for c in whole], abs=1e-3)
    stored = {(h.start, h.end) for h in stores["late"].get_rows([late[0].doc_id], "late")}
    assert (late[0].start, late[0].end) in stored


def test_a_filter_that_matches_nothing_gives_an_answer_without_citations(stores, encoder):
    answer = ask(
        "anything", store=stores["late"], encoder=encoder, filter='source == "/nowhere.md"'
    )
    assert answer.citations == [] and "No documents matched" in answer.text


def assert_prompt_carries_the_context(prompt: str, answer: Answer, question: str) -> None:
    assert answer.prompt is not None and answer.prompt in prompt
    assert len(answer.passages) == 3
    for passage in answer.passages:
        assert f"[{passage.number}] {passage.title} ({passage.source}, " in prompt
        assert passage.quote.strip() in prompt
    assert prompt.index("[1]") < prompt.index("[2]") < prompt.index("[3]")
    assert answer.prompt.endswith(f"Question: {question}")


def test_langchain_chat_model_gets_the_context_and_its_answer_keeps_its_citations(stores, encoder):
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    class Recorder(BaseCallbackHandler):
        def __init__(self) -> None:
            self.messages: list = []

        def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
            self.messages.extend(messages[0])

    recorder = Recorder()
    reply = "The snow gallery at Brandegg is 1,340 metres long [1]."
    model = FakeListChatModel(responses=[reply], callbacks=[recorder])
    answer = ask(GALLERY["question"], store=stores["late"], encoder=encoder, mode="late",
                 llm=model)  # fmt: skip

    system, human = recorder.messages
    assert (system.type, system.content) == ("system", SYSTEM_PROMPT)
    assert human.type == "human" and human.content == answer.prompt
    assert_prompt_carries_the_context(human.content, answer, GALLERY["question"])
    assert answer.text == reply and answer.backend == "langchain:FakeListChatModel"
    assert [c.number for c in answer.citations] == [1]
    assert "1,340 metres long" in answer.citations[0].quote
    assert str(answer).startswith(reply)
    assert f"Sources:\n[1] {answer.citations[0].title} — {answer.citations[0].source}" in str(
        answer
    )


def test_llamaindex_llm_gets_the_context_and_its_answer_keeps_its_citations(stores, encoder):
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback

    reply = "The Fresnel lens was re-ground by Ottoline Brask [1][3]."

    class RecordingLLM(CustomLLM):
        prompts: ClassVar[list[str]] = []

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name="recording")

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs) -> CompletionResponse:
            self.prompts.append(prompt)
            return CompletionResponse(text=reply)

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs):
            yield self.complete(prompt)

    RecordingLLM.prompts = []
    llm = RecordingLLM()
    question = QUESTIONS["Ottoline Brask"]["question"]
    answer = ask(question, store=stores["whole"], encoder=encoder, mode="whole", llm=llm)

    (prompt,) = llm.prompts
    assert SYSTEM_PROMPT in prompt
    assert_prompt_carries_the_context(prompt, answer, question)
    assert answer.text == reply and answer.backend == "llamaindex:RecordingLLM"
    assert [c.number for c in answer.citations] == [1, 3]
    assert any("Ottoline Brask" in c.quote for c in answer.passages)


def test_cited_keeps_the_referenced_passages_or_all_when_none_is_referenced():
    passages = [
        Citation(n, "/a.md", "A", 0, 1, None, None, "x", 0.5, "id") for n in (1, 2, 3)
    ]  # fmt: skip
    assert [c.number for c in cited("see [2, 3] and [9]", passages)] == [2, 3]
    assert [c.number for c in cited("[3][1]", passages)] == [1, 3]
    assert [c.number for c in cited("no markers here", passages)] == [1, 2, 3]


# -- an OpenAI-compatible endpoint, served on loopback by this test ----------------------------


class ChatCompletions(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []
    reply = "The snow gallery at Brandegg is 1,340 metres long [1]."
    pieces: ClassVar[list[str]] = []  # a streamed request's reply, as server-sent events

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(streamed_completion(*self.pieces))
            return
        payload = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": self.reply}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endpoint():
    ChatCompletions.requests = []
    ChatCompletions.pieces = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_openai_compatible_endpoint_from_env_gets_the_context(
    endpoint, monkeypatch, stores, encoder
):
    monkeypatch.setenv(ENV_BASE_URL, endpoint)
    monkeypatch.setenv(ENV_MODEL, "tiny-chat")
    monkeypatch.setenv(ENV_API_KEY, SECRET)
    llm = from_env()
    assert SECRET not in repr(llm) and SECRET not in llm.name
    answer = ask(GALLERY["question"], store=stores["late"], encoder=encoder, mode="late",
                 llm=llm)  # fmt: skip

    (request,) = ChatCompletions.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == f"Bearer {SECRET}"
    assert request["body"]["model"] == "tiny-chat"
    system, user = request["body"]["messages"]
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user["role"] == "user" and user["content"] == answer.prompt
    assert_prompt_carries_the_context(user["content"], answer, GALLERY["question"])
    assert answer.text == ChatCompletions.reply
    assert [c.number for c in answer.citations] == [1]


def test_a_down_endpoint_fails_clearly_naming_the_url_but_not_the_key(monkeypatch, stores, encoder):
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    llm = OpenAICompatibleLLM(base_url, "tiny-chat", api_key=SECRET, max_retries=0)
    with pytest.raises(LLMError) as caught:
        ask(GALLERY["question"], store=stores["late"], encoder=encoder, mode="late", llm=llm)
    message = str(caught.value)
    assert base_url in message and "cannot reach" in message and SECRET not in message


def test_endpoint_settings_are_checked_before_any_request(monkeypatch):
    monkeypatch.delenv(ENV_BASE_URL, raising=False)
    assert from_env() is None
    with pytest.raises(InputError, match=ENV_MODEL):
        from_env({ENV_BASE_URL: "http://localhost:8000/v1"})
    with pytest.raises(InputError, match=ENV_BASE_URL):
        from_env({ENV_BASE_URL: "localhost:8000", ENV_MODEL: "m"})
    with pytest.raises(InputError, match="LangChain chat model"):
        ask("q", store=None, encoder=None, llm=object())  # type: ignore[arg-type]


def test_importing_qa_needs_no_llm_framework():
    code = (
        "import sys, jrag.qa, jrag.llm; "
        "print([m for m in ('langchain_core', 'llama_index.core', 'openai') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the command line ---------------------------------------------------------------------------


def test_cli_ask_quotes_the_passage_and_its_source(db, stores, monkeypatch, parsed):
    monkeypatch.delenv(ENV_BASE_URL, raising=False)
    runner = CliRunner()
    base = ["ask", GALLERY["question"], "--uri", db, "-c", "late", "--mode", "late", "-k", "2"]

    shown = runner.invoke(app, base)
    assert shown.exit_code == 0, shown.output
    assert "sources (extractive)" in shown.output
    as_json = runner.invoke(app, [*base, "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    citation = next(c for c in data["citations"] if "1,340 metres long" in c["quote"])
    assert citation["source"] == parsed[GALLERY["document"]].source
    text = parsed[GALLERY["document"]].text
    assert text[citation["start"] : citation["end"]] == citation["quote"]
    assert f'[{citation["number"]}] "{citation["quote"]}"' in shown.output
    assert f"chars {citation['start']}–{citation['end']}" in shown.output.replace("\n", "")


def test_cli_ask_prints_the_streamed_reply_once_escaped_then_its_sources(db, stores, endpoint):
    ChatCompletions.pieces = ["The snow gallery ", "\x1b]0;pwned\x07is 1,340 ", "metres long [1]."]
    env = {ENV_BASE_URL: endpoint, ENV_MODEL: "tiny-chat"}
    base = ["ask", GALLERY["question"], "--uri", db, "-c", "late", "--mode", "late"]

    shown = CliRunner().invoke(app, base, env=env)

    assert shown.exit_code == 0, shown.output
    assert [r["body"].get("stream") for r in ChatCompletions.requests] == [True]
    text = "The snow gallery \\x1b]0;pwned\\x07is 1,340 metres long [1]."
    assert shown.output.count(text) == 1 and "\x1b" not in shown.output
    assert "sources (openai-compatible:tiny-chat@" in shown.output
    as_json = json.loads(CliRunner().invoke(app, [*base, "--json"], env=env).output)
    assert as_json["text"] == "".join(ChatCompletions.pieces)
    assert [c["number"] for c in as_json["citations"]] == [1]


def test_cli_ask_prints_each_piece_before_the_next_is_asked_for(capsys):
    from jrag.cli import _read_answer

    pieces = ["The ferry ", "leaves at ", "noon [1]."]

    def events():
        yield "passages", {"passages": []}
        for n, piece in enumerate(pieces):
            if n:  # the previous piece is on the terminal before this one exists
                assert capsys.readouterr().out.endswith(pieces[n - 1])
            yield "delta", {"text": piece}
        yield "answer", {"text": "".join(pieces)}

    answer, shown = _read_answer(events(), "answering", echo=True)

    assert shown and answer == {"text": "".join(pieces)}
    assert capsys.readouterr().out == pieces[-1] + "\n"
    broken = iter([("delta", {"text": "half"}), ("error", {"message": "the LLM went away"})])
    with pytest.raises(LLMError, match="the LLM went away"):
        _read_answer(broken, "answering", echo=True)
    assert capsys.readouterr().out == "half\n"  # the broken line is ended before the error


def test_cli_ask_with_a_down_endpoint_prints_one_line_without_the_key(db, stores, monkeypatch):
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    env = {ENV_BASE_URL: base_url, ENV_MODEL: "tiny-chat", ENV_API_KEY: SECRET}
    result = CliRunner().invoke(
        app, ["ask", GALLERY["question"], "--uri", db, "-c", "late"], env=env
    )
    assert result.exit_code == 1
    assert base_url in result.output and SECRET not in result.output
    assert "Traceback" not in result.output
