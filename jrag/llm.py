"""Pluggable LLMs for :mod:`jrag.qa`: one ``chat(system, user) -> str`` call, three backends.

- any LangChain language model (a chat model such as ``ChatOpenAI``, or a plain LLM);
- any LlamaIndex ``LLM``;
- an OpenAI-compatible ``/chat/completions`` endpoint (a hosted API, vLLM, llama.cpp, Ollama),
  configured by ``JRAG_LLM_BASE_URL``, ``JRAG_LLM_MODEL`` and ``JRAG_LLM_API_KEY``.

Neither framework is needed to import this module: an object can only be a LangChain or
LlamaIndex model if that framework is already imported, so detection looks in ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from jrag.errors import InputError, JragError
from jrag.logs import ScrubSecrets, scrub_secrets

ENV_BASE_URL = "JRAG_LLM_BASE_URL"
ENV_MODEL = "JRAG_LLM_MODEL"
ENV_API_KEY = "JRAG_LLM_API_KEY"
DEFAULT_TIMEOUT_S = 120.0  # a whole answer; connecting gets CONNECT_TIMEOUT_S of it
CONNECT_TIMEOUT_S = 10.0
_MIN_SECRET_CHARS = 4  # shorter URL values (such as "1" or "v2") are scrubbed only as ?key=***
_SNIPPET_CHARS = 80  # of a body that is not JSON
_DETAIL_CHARS = 300  # of an error's detail


class LLMError(JragError):
    """The LLM could not be reached, refused the request, or returned no text."""


@runtime_checkable
class ChatBackend(Protocol):
    """What :func:`jrag.qa.ask` needs from an LLM: a name, and one system + user turn."""

    name: str

    def chat(self, system: str, user: str) -> str: ...


@dataclass
class LangChainLLM:
    """A LangChain ``BaseLanguageModel``, called with a system and a human message."""

    model: Any

    @property
    def name(self) -> str:
        return f"langchain:{type(self.model).__name__}"

    def chat(self, system: str, user: str) -> str:
        from langchain_core.messages import HumanMessage, SystemMessage

        try:
            reply = self.model.invoke([SystemMessage(system), HumanMessage(user)])
        except Exception as err:
            name = type(self.model).__name__
            raise LLMError(f"the LangChain model {name} failed: {err}") from err
        return _text_of(reply.content if hasattr(reply, "content") else reply, self.name)

    def stream(self, system: str, user: str) -> Iterator[str]:
        """The reply in pieces, as the model streams them."""
        from langchain_core.messages import HumanMessage, SystemMessage

        try:
            for chunk in self.model.stream([SystemMessage(system), HumanMessage(user)]):
                piece = chunk.content if hasattr(chunk, "content") else chunk
                if isinstance(piece, str) and piece:
                    yield piece
        except Exception as err:
            name = type(self.model).__name__
            raise LLMError(f"the LangChain model {name} failed: {err}") from err


@dataclass
class LlamaIndexLLM:
    """A LlamaIndex ``LLM``, called through its ``chat`` method."""

    llm: Any

    @property
    def name(self) -> str:
        return f"llamaindex:{type(self.llm).__name__}"

    def chat(self, system: str, user: str) -> str:
        try:
            reply = self.llm.chat(_llama_index_messages(system, user))
        except Exception as err:
            raise LLMError(f"the LlamaIndex LLM {type(self.llm).__name__} failed: {err}") from err
        return _text_of(reply.message.content, self.name)

    def stream(self, system: str, user: str) -> Iterator[str]:
        """The reply in pieces, through the LLM's ``stream_chat``."""
        try:
            for reply in self.llm.stream_chat(_llama_index_messages(system, user)):
                if reply.delta:
                    yield reply.delta
        except Exception as err:
            raise LLMError(f"the LlamaIndex LLM {type(self.llm).__name__} failed: {err}") from err


def _llama_index_messages(system: str, user: str) -> list:
    from llama_index.core.llms import ChatMessage, MessageRole

    return [
        ChatMessage(role=MessageRole.SYSTEM, content=system),
        ChatMessage(role=MessageRole.USER, content=user),
    ]


@dataclass
class OpenAICompatibleLLM:
    """A ``/chat/completions`` endpoint, through the ``openai`` client.

    ``base_url`` includes the API prefix, e.g. ``https://api.openai.com/v1`` or
    ``http://localhost:8000/v1``. The key is never shown in messages or reprs.
    """

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT_S
    max_retries: int = 1
    temperature: float | None = None
    _client: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(
                f"the LLM base URL {display_url(self.base_url)!r} must be an http(s) URL such "
                f"as http://localhost:8000/v1 (set {ENV_BASE_URL})"
            )
        if not self.model:
            raise InputError(
                f"no model name for the LLM endpoint {display_url(self.base_url)}; set {ENV_MODEL}"
            )

    @property
    def name(self) -> str:
        return f"openai-compatible:{self.model}@{display_url(self.base_url)}"

    def chat(self, system: str, user: str) -> str:
        with self._calling() as where:
            response = self.client.chat.completions.create(**self._request(system, user))
        if isinstance(response, str):  # a non-JSON content type comes back as the raw body
            raise LLMError(
                f"{where} answered with a body that is not JSON: {self._snippet(response)}"
            )
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices else None
        return _text_of(content, where)

    def stream(self, system: str, user: str) -> Iterator[str]:
        """The reply in pieces, as the endpoint streams them (``"stream": true``). An endpoint
        that answers a streamed request with no pieces is asked once more, whole."""
        pieces = 0
        with self._calling(lambda: pieces > 0):
            for chunk in self.client.chat.completions.create(
                **self._request(system, user), stream=True
            ):
                choices = getattr(chunk, "choices", None) or []
                piece = choices[0].delta.content if choices and choices[0].delta else None
                if piece:
                    pieces += 1
                    yield piece
        if not pieces:
            yield self.chat(system, user)

    def _request(self, system: str, user: str) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        }
        if self.temperature is not None:
            request["temperature"] = self.temperature
        return request

    @contextmanager
    def _calling(self, answering: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """Around a request (and the reading of its stream): each failure as one
        :class:`LLMError` naming the endpoint, without secrets. Yields that name.
        ``answering``: whether the endpoint had begun its answer (a stream cut off midway)."""
        import openai

        where = f"the LLM endpoint {display_url(self.base_url)} (model {self.model})"
        try:
            with scrub_secrets(self._secrets(), self._query_keys()):
                yield where
        except openai.APIStatusError as err:
            raise LLMError(
                f"{where} answered HTTP {err.status_code}: {self._scrub(_error_detail(err))}"
            ) from None
        except openai.APITimeoutError:
            raise LLMError(f"{where} did not answer within {self.timeout:.0f} s") from None
        except openai.APIConnectionError as err:
            reason = self._scrub(str(err.__cause__ or err))
            if answering():
                raise LLMError(f"{where} broke off its answer: {reason}") from None
            raise LLMError(f"cannot reach {where}: {reason}") from None
        except openai.OpenAIError as err:
            raise LLMError(f"{where} failed: {self._scrub(str(err))}") from None
        except json.JSONDecodeError as err:
            raise LLMError(
                f"{where} answered with a body that is not JSON: {self._snippet(err.doc)}"
            ) from None

    @property
    def client(self) -> Any:
        """The ``openai.OpenAI`` client, made on first use."""
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise LLMError(
                    f"{ENV_BASE_URL} is set but the openai package is not installed; "
                    "run `pip install jrag[openai]`"
                ) from None
            # The query goes on every request; the client would append paths after it.
            parts = urlsplit(self.base_url)
            self._client = openai.OpenAI(
                base_url=urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
                default_query=dict(parse_qsl(parts.query, keep_blank_values=True)) or None,
                # Local servers usually need no key, but the client insists on one.
                api_key=self.api_key or "unused",
                timeout=openai.Timeout(self.timeout, connect=CONNECT_TIMEOUT_S),
                max_retries=self.max_retries,
            )
        return self._client

    def _secrets(self) -> list[str]:
        """The key, and what the base URL may hold: user, password, query values."""
        parts = urlsplit(self.base_url)
        query_values = [v for _, v in parse_qsl(parts.query) if len(v) >= _MIN_SECRET_CHARS]
        return [s for s in (self.api_key, parts.username, parts.password, *query_values) if s]

    def _query_keys(self) -> list[str]:
        return [key for key, _ in parse_qsl(urlsplit(self.base_url).query, keep_blank_values=True)]

    def _scrub(self, text: str) -> str:
        """``text`` on one short line, without secrets: fit for an error message."""
        text = " ".join(ScrubSecrets(self._secrets(), self._query_keys()).scrub(text).split())
        return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"

    def _snippet(self, body: str) -> str:
        """The start of a response body, on one line, without secrets."""
        text = self._scrub(body or "")
        return repr(text[:_SNIPPET_CHARS] + ("…" if len(text) > _SNIPPET_CHARS else ""))


def from_env(environ: Mapping[str, str] | None = None) -> OpenAICompatibleLLM | None:
    """The endpoint named by ``JRAG_LLM_*`` variables, or None if ``JRAG_LLM_BASE_URL`` is
    unset or empty."""
    environ = os.environ if environ is None else environ
    base_url = environ.get(ENV_BASE_URL, "").strip()
    if not base_url:
        return None
    return OpenAICompatibleLLM(
        base_url=base_url,
        model=environ.get(ENV_MODEL, "").strip(),
        api_key=environ.get(ENV_API_KEY) or None,
    )


def stream_reply(backend: ChatBackend, system: str, user: str) -> Iterator[str]:
    """The reply in pieces where the backend streams, else whole in one piece. A reply with no
    text is an :class:`LLMError`, as it is from ``chat``."""
    stream = getattr(backend, "stream", None)
    if not callable(stream):
        yield backend.chat(system, user)
        return
    text = False
    for piece in stream(system, user):
        text = text or bool(piece.strip())
        yield piece
    if not text:
        raise LLMError(f"{backend.name} returned no text")


def resolve_llm(llm: object | None) -> ChatBackend | None:
    """Wrap a LangChain model or LlamaIndex LLM; pass a ``ChatBackend`` through; None stays None."""
    if llm is None:
        return None
    if _instance_of(llm, "langchain_core.language_models.base", "BaseLanguageModel"):
        return LangChainLLM(llm)
    if _instance_of(llm, "llama_index.core.llms.llm", "LLM"):
        return LlamaIndexLLM(llm)
    if isinstance(llm, ChatBackend):
        return llm
    raise InputError(
        f"llm must be a LangChain chat model, a LlamaIndex LLM, or an object with "
        f"name and chat(system, user); got {type(llm).__name__}"
    )


def display_url(url: str) -> str:
    """``url`` without user:password@ and without a query string (either may hold a key)."""
    parts = urlsplit(url or "")
    if not parts.hostname:
        return url
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _instance_of(obj: object, module: str, name: str) -> bool:
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(obj, cls)


def _text_of(content: object, who: str) -> str:
    """The text of a reply: a string, or the text blocks of a list of content blocks."""
    if isinstance(content, list):
        content = "".join(
            block if isinstance(block, str) else str(block.get("text", ""))
            for block in content
            if isinstance(block, str) or (isinstance(block, dict) and block.get("type") == "text")
        )
    if not isinstance(content, str) or not content.strip():
        raise LLMError(f"{who} returned no text")
    return content.strip()


def _error_detail(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return str(message)
    return str(getattr(err, "message", "") or err)
