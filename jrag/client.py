"""A client of ``jrag serve``: search, ask and stats over HTTP, without loading a model.

The CLI's ``--server URL`` (or ``JRAG_SERVER``) and the retrievers' ``server=`` go through
:class:`Client`. It imports only httpx, so a command that talks to a server starts in a fraction
of the time one that loads torch and the model does. The server's JSON errors come back as the
same :class:`jrag.errors.JragError` subclasses the library raises.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from jrag.errors import CollectionNotFound, InputError, JragError, StoreError

DEFAULT_TIMEOUT_S = 120.0


class ServerError(StoreError):
    """The server answered with an error, or could not be reached."""


class Client:
    """``jrag serve`` at ``url``; ``api_key`` is sent as a Bearer token."""

    def __init__(
        self, url: str, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"the server URL must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def search(self, query: str, **options: Any) -> list[dict[str, Any]]:
        """``POST /search``: the results as the server sends them (see SearchResult)."""
        return self._call("POST", "/search", {"query": query, **options})["results"]

    def ask(self, question: str, **options: Any) -> dict[str, Any]:
        """``POST /ask``, whole (not streamed): the answer as ``Answer.to_dict()``."""
        return self._call("POST", "/ask", {"question": question, "stream": False, **options})

    def ask_stream(self, question: str, **options: Any) -> Iterator[tuple[str, dict]]:
        """``POST /ask`` as server-sent events: (event name, data) pairs, as
        :func:`jrag.qa.answer_events` gives them. An answer with nothing to stream (no LLM, no
        passages) is one ``answer`` event."""
        body = {"question": question, "stream": True, **options}
        response = None
        try:
            with self._http.stream("POST", "/ask", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response, self.url)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    yield "answer", json.loads(response.read())
                    return
                name = "message"
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        name = line[len("event: ") :]
                    elif line.startswith("data: "):
                        yield name, json.loads(line[len("data: ") :])
        except httpx.HTTPError as err:
            if response is not None:
                raise ServerError(
                    f"the jrag server at {self.url} broke off its answer: {err}"
                ) from None
            raise ServerError(f"cannot reach the jrag server at {self.url}: {err}") from None

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as err:
            raise ServerError(f"cannot reach the jrag server at {self.url}: {err}") from None
        if response.status_code >= 400:
            raise _error(response, self.url)
        return response.json()


def _error(response: httpx.Response, url: str) -> JragError:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    status = response.status_code
    if status == 404:
        return CollectionNotFound(message)
    if status in (400, 413, 422):
        return InputError(message)
    return ServerError(f"the jrag server at {url} answered {status}: {message}")
