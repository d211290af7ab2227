"""The OpenAI-compatible endpoint client against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from jrag.llm import LLMError, OpenAICompatibleLLM
from jrag.logs import ScrubSecrets

KEY = "sk-test-KEY-0123456789"
QUERY_SECRET = "Q-SECRET-9876"
REPLY = "The ferry leaves at noon."


class Endpoint(BaseHTTPRequestHandler):
    """Answers every POST with ``body`` and ``content_type``; records each request's path and
    whether it asked for a stream."""

    paths: ClassVar[list[str]] = []
    streamed: ClassVar[list[bool]] = []
    status: ClassVar[int] = 200
    body: ClassVar[bytes] = b""
    content_type: ClassVar[str] = "application/json"
    length: ClassVar[int | None] = None  # the Content-Length sent, if not the body's

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).paths.append(self.path)
        type(self).streamed.append(bool(request.get("stream")))
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(self.length or len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def _completion(text: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "tiny",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
    }).encode()  # fmt: skip


def streamed_completion(*pieces: str) -> bytes:
    """A streamed completion: one server-sent event per piece, then ``[DONE]``."""
    events = [
        json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                    "model": "tiny", "choices": [{"index": 0, "delta": {"content": piece}}]})
        for piece in pieces
    ]  # fmt: skip
    return "".join(f"data: {event}\n\n" for event in [*events, "[DONE]"]).encode()


@pytest.fixture
def base_url() -> Iterator[str]:
    Endpoint.paths = []
    Endpoint.streamed = []
    Endpoint.length = None
    Endpoint.status = 200
    Endpoint.body = _completion(REPLY)
    Endpoint.content_type = "application/json"
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("content_type", ["application/json", "text/html"])
def test_a_200_answer_that_is_not_json_is_one_line_naming_the_url(
    base_url: str, content_type: str
) -> None:
    Endpoint.body = b"<html><body>Gateway says hello\n" + KEY.encode() + b"</body></html>"
    Endpoint.content_type = content_type
    llm = OpenAICompatibleLLM(f"{base_url}?api-key={QUERY_SECRET}", "tiny", api_key=KEY)

    with pytest.raises(LLMError) as caught:
        llm.chat("system", "user")

    message = str(caught.value)
    assert message == (
        f"the LLM endpoint {base_url} (model tiny) answered with a body that is not JSON: "
        "'<html><body>Gateway says hello ***</body></html>'"
    )
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


@pytest.mark.parametrize("content_type", ["text/html", "application/json"])
@pytest.mark.parametrize("how", ["chat", "stream"])
def test_an_html_error_page_is_one_line_without_secrets(
    base_url: str, content_type: str, how: str
) -> None:
    Endpoint.status = 502
    Endpoint.content_type = content_type
    Endpoint.body = (
        "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n"
        + f"<p>upstream refused key {KEY}</p>\n" * 40
        + "</body>\n</html>\n"
    ).encode()
    llm = OpenAICompatibleLLM(base_url, "tiny", api_key=KEY, max_retries=0)

    with pytest.raises(LLMError) as caught:
        llm.chat("system", "user") if how == "chat" else list(llm.stream("system", "user"))

    message = str(caught.value)
    assert message.startswith(f"the LLM endpoint {base_url} (model tiny) answered HTTP 502: ")
    assert "\n" not in message and KEY not in message
    assert len(message) < 500


def test_a_query_in_the_base_url_goes_on_each_request_and_stays_out_of_debug_logs(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    llm = OpenAICompatibleLLM(f"{base_url}?api-key={QUERY_SECRET}&v=1", "tiny", api_key=KEY)
    caplog.set_level(logging.DEBUG)

    assert llm.chat("system", "user") == REPLY

    assert Endpoint.paths == [f"/v1/chat/completions?api-key={QUERY_SECRET}&v=1"]
    messages = [r.getMessage() for r in caplog.records]
    request_lines = [m for m in messages if m.startswith("HTTP Request:")]
    assert len(request_lines) == 1, messages  # the line that used to carry the secret
    # Every query value is scrubbed: jrag cannot tell which of them are secrets.
    assert "/v1/chat/completions?api-key=***&v=*** " in request_lines[0]
    assert not [m for m in messages if QUERY_SECRET in m or KEY in m]
    for name in logging.root.manager.loggerDict:
        assert not any(isinstance(f, ScrubSecrets) for f in logging.getLogger(name).filters), name


def test_a_streamed_reply_comes_in_the_endpoints_pieces(base_url: str) -> None:
    Endpoint.body = streamed_completion("The ferry ", "leaves ", "at noon.")
    Endpoint.content_type = "text/event-stream"
    llm = OpenAICompatibleLLM(base_url, "tiny", api_key=KEY)

    assert list(llm.stream("system", "user")) == ["The ferry ", "leaves ", "at noon."]
    assert Endpoint.streamed == [True]


def test_an_endpoint_that_answers_a_stream_whole_is_asked_again_without_one(base_url: str) -> None:
    llm = OpenAICompatibleLLM(base_url, "tiny", api_key=KEY)  # the body is a plain completion

    assert list(llm.stream("system", "user")) == [REPLY]
    assert Endpoint.streamed == [True, False]


def test_a_stream_cut_off_midway_is_one_line_naming_the_url(base_url: str) -> None:
    Endpoint.body = streamed_completion("The ferry ", "leaves ")
    Endpoint.body = Endpoint.body[: Endpoint.body.rindex(b"data: [DONE]")]
    Endpoint.length = len(Endpoint.body) + 500  # the connection closes before the rest
    Endpoint.content_type = "text/event-stream"
    llm = OpenAICompatibleLLM(f"{base_url}?api-key={QUERY_SECRET}", "tiny", api_key=KEY)

    pieces: list[str] = []
    with pytest.raises(LLMError) as caught:
        pieces.extend(llm.stream("system", "user"))

    assert pieces == ["The ferry ", "leaves "]
    message = str(caught.value)
    assert message.startswith(f"the LLM endpoint {base_url} (model tiny) broke off its answer")
    assert QUERY_SECRET not in message and KEY not in message and "\n" not in message
