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
    """Answers every POST with ``body`` and ``content_type``; records each request's path."""

    paths: ClassVar[list[str]] = []
    body: ClassVar[bytes] = b""
    content_type: ClassVar[str] = "application/json"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
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


@pytest.fixture
def base_url() -> Iterator[str]:
    Endpoint.paths = []
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
