"""The HTTP service: one process holds the model and the collection and answers over HTTP.

Routes (documented by the app's own OpenAPI page at ``/docs``): ``POST /v1/embeddings`` (the
OpenAI protocol), ``POST /search``, ``POST /ask`` (server-sent events while an LLM answers),
``POST /documents``, ``DELETE /documents/{id}``, ``GET /stats``, ``GET /health``, ``GET
/metrics`` (Prometheus) and a web page at ``/``. With an API key every route but ``/health``
and the page itself (which holds no data; it asks for the key) needs ``Authorization: Bearer
KEY``. Errors answer JSON in OpenAI's shape, ``{"error": {"message", "type", "param"}}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from jrag.embedding import identity_of
from jrag.encoder import DEFAULT_BATCH_TOKENS, Encoder
from jrag.errors import CollectionNotFound, InputError, JragError, ParseError, StoreError
from jrag.llm import LLMError, resolve_llm
from jrag.pipeline import IngestOptions, ingest_documents, text_document
from jrag.qa import answer_events, answer_from, retrieve_passages
from jrag.retrieval import SearchOptions, search
from jrag.server.batching import DEFAULT_MAX_QUEUE, Batcher, QueueFull
from jrag.server.schemas import (
    AskRequest,
    DeleteResponse,
    DocumentSpan,
    DocumentsRequest,
    DocumentsResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    SearchRequest,
    SearchResponse,
)
from jrag.store import MilvusStore, document_id

logger = logging.getLogger("jrag.server")

DEFAULT_MAX_BODY = 32 * 1024 * 1024
RETRY_AFTER_S = 1
DEFAULT_STORE_TIMEOUT_S = 30.0
MAX_STORE_THREADS = 64
T = TypeVar("T")
PAGE = Path(__file__).with_name("static") / "index.html"
_BEARER = HTTPBearer(auto_error=False, description="The server's API key, if it has one.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


class Service:
    """The loaded model, its batcher, and the collection (opened on first use if it was not
    there at start; created by the first document write)."""

    def __init__(
        self,
        encoder: Encoder,
        collection: str,
        *,
        uri: str | None = None,
        token: str | None = None,
        store: MilvusStore | None = None,
        llm: object | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        ingest_options: IngestOptions | None = None,
        store_timeout: float = DEFAULT_STORE_TIMEOUT_S,
    ) -> None:
        self.encoder = encoder
        self.store_timeout = store_timeout
        # Store work runs in daemon threads, so that a request waits at most ``store_timeout``
        # for a Milvus that stopped answering (pymilvus itself retries for minutes), and a
        # stuck call cannot hold up the process's exit.
        self._store_slots = threading.BoundedSemaphore(MAX_STORE_THREADS)
        self.collection = collection
        self.uri = uri
        self._token = token
        self._store = store
        self._open_lock = threading.Lock()
        self.llm = resolve_llm(llm)
        self.ingest_options = ingest_options or IngestOptions(mode="late")
        self.metrics = Metrics()
        self.batcher = Batcher(encoder, max_queue=max_queue, batch_tokens=batch_tokens,
                               on_batch=self.metrics.batch)  # fmt: skip
        self.metrics.queue.set_function(lambda: self.batcher.depth)

    def store(self, *, create: bool = False) -> MilvusStore:
        """The collection; CollectionNotFound until it exists (``create``: make it now)."""
        with self._open_lock:
            if self._store is None:
                if self.uri is None:
                    raise StoreError("no collection is served")
                try:
                    store = MilvusStore(self.uri, self.collection, token=self._token, create=False)
                except CollectionNotFound:
                    if not create:
                        raise
                    store = MilvusStore(self.uri, self.collection, token=self._token,
                                        identity=identity_of(self.encoder))  # fmt: skip
                try:
                    store.check_model(identity_of(self.encoder))
                except BaseException:
                    store.close()
                    raise
                self._store = store
            return self._store

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the store's threads; StoreError past ``store_timeout`` seconds."""
        if not self._store_slots.acquire(timeout=self.store_timeout):
            raise StoreError(f"{MAX_STORE_THREADS} store calls are stuck; is Milvus running?")
        future: Future = Future()

        def work() -> None:
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as err:  # handed to the waiting request
                        future.set_exception(err)
            finally:
                self._store_slots.release()

        threading.Thread(target=work, name="jrag-store", daemon=True).start()
        try:
            return future.result(timeout=self.store_timeout)
        except FutureTimeout:
            where = self.uri or "the store"
            raise StoreError(
                f"Milvus at {where} did not answer within {self.store_timeout:.0f} s; is it "
                "running?"
            ) from None

    def check_collection(self, name: str | None) -> None:
        if name not in (None, "", self.collection):
            raise CollectionNotFound(
                f"collection {name!r} is not served here; this server serves {self.collection!r}"
            )

    def embed_query(self, text: str) -> np.ndarray:
        if not text.strip():
            raise InputError("the query is empty")
        (tokens,) = self.encoder.count_tokens([text])
        return self.batcher.embed([text], tokens)[0]

    def close(self) -> None:
        self.batcher.close()
        if self._store is not None:
            self._store.close()


class DocumentNotFound(CollectionNotFound):
    """No such document is stored (answers 404)."""


class ModelNotServed(CollectionNotFound):
    """A request named another model than the one this server holds (answers 404)."""


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("jrag_http_requests_total", "HTTP requests answered.",
                                ["method", "route", "status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram(
            "jrag_http_request_seconds", "Time to answer a request (to its first byte).",
            ["method", "route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.tokens = Counter("jrag_tokens_embedded_total", "Tokens embedded by the model.",
                              registry=self.registry)  # fmt: skip
        self.texts = Counter("jrag_texts_embedded_total", "Texts embedded by the model.",
                             registry=self.registry)  # fmt: skip
        self.batches = Counter("jrag_model_batches_total", "Model calls (batched requests).",
                               registry=self.registry)  # fmt: skip
        self.queue = Gauge("jrag_queue_depth", "Requests waiting for the model.",
                           registry=self.registry)  # fmt: skip

    def batch(self, texts: int, tokens: int) -> None:
        self.batches.inc()
        self.texts.inc(texts)
        self.tokens.inc(tokens)


# -- errors ----------------------------------------------------------------------------------------


def error_response(
    status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:  # fmt: skip
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _jrag_error(err: JragError) -> JSONResponse:
    if isinstance(err, QueueFull):
        return error_response(503, f"busy: {err}; retry shortly", kind="overloaded",
                              headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
    if isinstance(err, ModelNotServed):
        return error_response(404, str(err), kind="not_found", param="model")
    if isinstance(err, DocumentNotFound):
        return error_response(404, str(err), kind="not_found", param="id")
    if isinstance(err, CollectionNotFound):
        return error_response(404, str(err), kind="not_found", param="collection")
    if isinstance(err, LLMError):
        return error_response(502, str(err), kind="llm_error")
    if isinstance(err, StoreError):
        return error_response(503, f"the store failed: {err}", kind="store_unavailable")
    return error_response(400, str(err), param=_param_of(str(err)))


def _param_of(message: str) -> str | None:
    """The request field an InputError names, where its message starts with one."""
    for name in ("filter", "input", "query", "question", "weights", "mode", "ranker", "k"):
        if message.startswith((name, f"bad {name}", f"unknown {name}")):
            return name
    return None


def _validation_error(errors: list[dict[str, Any]]) -> JSONResponse:
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return error_response(400, f"the request body is not valid JSON: {detail}", param="body")
    parts: dict[str, str] = {}
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        # A union's alternatives add their type names to the location: name the field.
        field_path = ".".join(x for x in loc if not x.startswith(("str", "list[")))
        if field_path.split(".")[0] == "input":
            parts["input"] = "must be a string or a list of strings"
        elif field_path == "":
            parts["body"] = "must be a JSON object"
        else:
            parts.setdefault(field_path, e.get("msg", "invalid"))
    message = "; ".join(f"{where}: {why}" for where, why in list(parts.items())[:5])
    param = next(iter(parts)).split(".")[0]
    return error_response(400 if param == "body" else 422, message, param=param)


# -- the request body limit (413) ------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes answers 413, however it is sent.

    The body is read here (up to the limit) before the app sees it, so a body sent without a
    Content-Length is refused as surely as one that declares its size.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        message = f"the request body is over {self.limit} bytes"
        await error_response(413, message, param="body")(scope, receive, send)


# -- the app ---------------------------------------------------------------------------------------


def create_app(
    service: Service, *, api_key: str | None = None, max_body: int = DEFAULT_MAX_BODY
) -> FastAPI:
    """The FastAPI app serving ``service``; ``api_key``: the Bearer token every route but
    ``/health`` and the page requires."""
    app = FastAPI(
        title="jrag",
        summary="Whole-document retrieval over long documents: embeddings, search, ask.",
        version="0.1.0",
        openapi_url=None,  # added below, behind the key like every other route
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service

    def authorized(credentials: Credentials) -> None:
        if api_key is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise StarletteHTTPException(401, "a valid API key is required: Authorization: "
                                         "Bearer KEY")  # fmt: skip

    guarded = [Depends(authorized)]
    metrics = service.metrics

    @app.exception_handler(JragError)
    async def on_jrag_error(request: Request, err: JragError) -> JSONResponse:
        return _jrag_error(err)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, err: RequestValidationError) -> JSONResponse:
        return _validation_error(list(err.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "authentication_error" if err.status_code == 401 else "invalid_request_error"
        headers = {"WWW-Authenticate": "Bearer"} if err.status_code == 401 else None
        return error_response(err.status_code, str(err.detail), kind=kind, headers=headers)

    @app.exception_handler(Exception)
    async def on_other(request: Request, err: Exception) -> JSONResponse:
        logger.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error: {type(err).__name__}", kind="server_error")

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        metrics.latency.labels(request.method, path).observe(time.perf_counter() - started)
        return response

    @app.get("/health", tags=["service"])
    def health() -> dict:
        """Liveness: the process answers and its model is loaded (never needs the key)."""
        return {"status": "ok", "model": service.encoder.name, "queue": service.batcher.depth}

    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    def openapi() -> dict:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=guarded)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="jrag API")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.post("/v1/embeddings", tags=["embeddings"], dependencies=guarded)
    def embeddings(body: EmbeddingsRequest) -> EmbeddingsResponse:
        """OpenAI-compatible embeddings: one vector per input text, in input order."""
        encoder = service.encoder
        if body.model not in (None, "", encoder.name, Path(encoder.name).name):
            raise ModelNotServed(f"model {body.model!r} is not served here; "
                                     f"this server serves {encoder.name!r}")  # fmt: skip
        if body.dimensions not in (None, encoder.dim):
            raise InputError(f"dimensions must be {encoder.dim} for {encoder.name}, not "
                             f"{body.dimensions}")  # fmt: skip
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise InputError("input is an empty list; send at least one text")
        for index, text in enumerate(texts):
            if not text.strip():
                raise InputError(f"input[{index}] is empty; jrag does not embed empty text")
        counts = encoder.count_tokens(texts)
        limit = encoder.max_length
        if not body.truncate:
            for index, count in enumerate(counts):
                if count > limit:
                    raise InputError(
                        f"input[{index}] has {count} tokens, past {encoder.name}'s limit of "
                        f'{limit}; send it in parts, or set "truncate": true to embed its '
                        f"first {limit} tokens"
                    )
        used = [min(c, limit) for c in counts]
        vectors = np.asarray(service.batcher.embed(texts, sum(used)), dtype=np.float32)
        if body.encoding_format == "base64":
            values = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            values = vectors.tolist()
        data = [{"index": index, "embedding": value} for index, value in enumerate(values)]
        usage = {"prompt_tokens": sum(used), "total_tokens": sum(used)}
        return EmbeddingsResponse(data=data, model=encoder.name, usage=usage)

    @app.post("/search", tags=["search"], dependencies=guarded)
    def search_route(body: SearchRequest) -> SearchResponse:
        """The best documents for a query, each with its best passage in context."""
        service.check_collection(body.collection)
        options = SearchOptions.pick(body, content=body.content)
        vector = service.embed_query(body.query)
        results = service.run(
            lambda: search(body.query, service.store(), service.encoder, options, vector=vector)
        )
        hits = [r.to_dict() for r in results]
        return SearchResponse(collection=service.collection, results=hits)

    @app.post("/ask", tags=["search"], dependencies=guarded,
              responses={200: {"content": {"text/event-stream": {}}}})  # fmt: skip
    def ask_route(body: AskRequest) -> Any:
        """An answer with its citations. With an LLM and ``stream`` true: server-sent events
        (``passages``, then ``delta`` pieces, then ``answer``); otherwise one JSON answer
        (extractive when no LLM is configured)."""
        service.check_collection(body.collection)
        options = SearchOptions.pick(body, content="passage")
        vector = service.embed_query(body.question)
        context = service.run(
            lambda: retrieve_passages(
                body.question,
                store=service.store(),
                encoder=service.encoder,
                passages=body.passages,
                options=options,
                vector=vector,
            )
        )
        backend = service.llm if body.llm else None
        if not body.stream or backend is None or not context:
            return answer_from(body.question, context, backend).to_dict()

        def events() -> Iterator[str]:
            try:
                for name, data in answer_events(body.question, context, backend):
                    yield _event(name, data)
            except JragError as err:
                yield _event("error", {"message": str(err)})

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})  # fmt: skip

    @app.post(
        "/documents", tags=["documents"], dependencies=guarded,
        openapi_extra={"requestBody": {"content": {
            "application/json": {"schema": DocumentsRequest.model_json_schema()},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "ids": {"type": "array", "items": {"type": "string"}},
                "tenant": {"type": "string"},
            }}},
        }}},
    )  # fmt: skip
    async def add_documents(request: Request) -> DocumentsResponse:
        """Store documents: JSON ``{"documents": [{"id", "text", "title"}]}``, or files uploaded
        as multipart ``files`` (with optional ``ids``, one per file; the file name otherwise).
        The same id with the same text is skipped; changed text replaces the old version."""
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form()
            uploads = [(f.filename or "", await f.read()) for f in form.getlist("files")
                       if hasattr(f, "read")]  # fmt: skip
            ids = [str(i) for i in form.getlist("ids")]
            tenant = str(form.get("tenant") or "")
            service.check_collection(str(form.get("collection") or "") or None)
            documents = await run_in_threadpool(_parse_uploads, uploads, ids)
        else:
            try:
                body = DocumentsRequest.model_validate_json(await request.body())
            except ValidationError as err:
                return _validation_error(list(err.errors()))
            service.check_collection(body.collection)
            tenant = body.tenant
            documents = [text_document(d.id, d.text, d.title, d.metadata) for d in body.documents]
        seen: set[str] = set()
        for doc in documents:
            if doc.source in seen:
                raise InputError(f"document id {doc.source!r} is given twice")
            seen.add(doc.source)
        report = await run_in_threadpool(service.run, _write, service, documents, tenant)
        return DocumentsResponse(
            added=report.added, updated=report.updated, skipped=report.skipped,
            failed=[{"id": s, "error": m} for s, m in report.failed], tokens=report.tokens,
        )  # fmt: skip

    @app.get("/documents/{doc_key:path}", tags=["documents"], dependencies=guarded)
    def document_span(
        doc_key: str, start: int = 0, end: int | None = None, tenant: str = ""
    ) -> DocumentSpan:
        """A stored document's text from ``start`` to ``end`` (characters of its parsed text):
        where a search result or a citation points."""
        if start < 0 or (end is not None and end < start):
            raise InputError(f"start and end must satisfy 0 <= start <= end, not {start}, {end}")
        return service.run(_span, service, doc_key, tenant, start, end)

    @app.delete("/documents/{doc_key:path}", tags=["documents"], dependencies=guarded)
    def delete_document(doc_key: str, tenant: str = "") -> DeleteResponse:
        """Delete a document (every version and kind) by its id, or a file's source path."""
        deleted = service.run(_delete, service, document_id(doc_key, tenant))
        return DeleteResponse(id=doc_key, deleted=deleted > 0)

    @app.get("/stats", tags=["service"], dependencies=guarded)
    def stats() -> dict:
        """What the collection holds: its manifest and row counts."""
        return service.run(lambda: service.store().stats())

    @app.get("/metrics", tags=["service"], dependencies=guarded)
    def metrics_route() -> Response:
        """Prometheus metrics: requests, latency histograms, tokens embedded, queue depth."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, limit=max_body)  # outermost: before any route reads
    return app


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _write(service: Service, documents: list, tenant: str):
    store = service.store(create=True)
    with service.batcher.model_lock:  # the model runs one batch at a time; writes serialize
        return ingest_documents(documents, store, service.encoder,
                                options=service.ingest_options, tenant=tenant)  # fmt: skip


def _span(service: Service, key: str, tenant: str, start: int, end: int | None) -> DocumentSpan:
    store = service.store()
    state = store.states([document_id(key, tenant)]).get(document_id(key, tenant))
    if state is None or not state.committed:
        whose = f" for tenant {tenant!r}" if tenant else ""
        raise DocumentNotFound(f"no document {key!r} is stored{whose}")
    length = int(state.metadata.get("length", 0)) or None
    if length is not None:
        end = length if end is None else min(end, length)
    text = store.document_text(state, start, end)
    return DocumentSpan(id=key, source=state.source, title=state.title, start=start,
                        end=start + len(text), text=text)  # fmt: skip


def _delete(service: Service, doc_id: str) -> int:
    store = service.store()
    with service.batcher.model_lock:  # writes are serialized
        deleted = store.delete_documents([doc_id])
        store.flush()
    return deleted


def _parse_uploads(uploads: list[tuple[str, bytes]], ids: list[str]) -> list:
    """Parse uploaded files; each is stored under its id (or its file name as sent)."""
    from jrag.parse import parse_file

    if ids and len(ids) != len(uploads):
        raise InputError(f"ids: {len(ids)} ids for {len(uploads)} files; give one per file")
    if not uploads:
        raise InputError("files: no file was uploaded")
    documents = []
    with tempfile.TemporaryDirectory(prefix="jrag-upload-") as folder:
        for index, (name, data) in enumerate(uploads):
            key = ids[index] if ids else name
            if not key:
                raise InputError(f"files[{index}] has no file name; give ids")
            suffix = "".join(c for c in Path(name).suffix if c.isalnum() or c == ".")[:12]
            path = Path(folder) / f"upload-{index}{suffix}"
            path.write_bytes(data)
            try:
                parsed = parse_file(path, data=data, content_hash=hashlib.sha256(data).hexdigest())
            except ParseError as err:
                raise InputError(f"files[{index}] ({key!r}): {err}") from None
            title = parsed.title if parsed.title != path.stem else Path(name).stem or key
            documents.append(replace(parsed, source=key, title=title))
    return documents
