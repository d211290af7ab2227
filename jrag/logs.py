"""Logging filters that jrag installs on other libraries' loggers only inside its own calls.

Importing jrag never changes a host application's logging. Around its own calls, jrag hides
noise that it replaces with a clear error or that is harmless (:func:`quiet_milvus_logs`), and
scrubs secrets from HTTP client logs (:func:`scrub_secrets`). Each context manager adds fresh
filter objects and removes exactly those on exit, so blocks nest and run in parallel threads.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator
from urllib.parse import quote, quote_plus

REDACTED = "***"
# Top-level logger names of the HTTP stack under the openai client ("httpx2" and "httpcore2"
# are the names newer releases log under).
HTTP_LOGGER_PREFIXES = ("httpx", "httpcore", "openai")


class DropUnimplementedTraceback(logging.Filter):
    """Milvus Lite's in-process gRPC server does not implement every RPC that pymilvus probes
    (such as AllocTimestamp); pymilvus falls back, but grpc logs the server-side traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], NotImplementedError))


class DropMvccWarning(logging.Filter):
    """Milvus Lite and Milvus 2.3 report no MVCC timestamp to query iterators; pymilvus warns on
    every page although it falls back correctly."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


class DropExpressionErrorTraceback(logging.Filter):
    """pymilvus logs an ERROR with a full traceback for every failed RPC; inside jrag's own
    calls each failure is raised as one readable line instead (a bad filter expression, a
    released collection, a server that went away)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("RPC error:")


class DropLiteOpenTraceback(logging.Filter):
    """Milvus Lite logs a traceback when a .db cannot be opened; jrag names the cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to start MilvusLite server")


class DropLiteServicerTraceback(logging.Filter):
    """Milvus Lite's in-process server logs a full traceback for every failed call (a full disk
    gave 165 lines); the client gets the same error, which jrag prints as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


@contextlib.contextmanager
def _filters_installed(pairs: Iterable[tuple[logging.Logger, logging.Filter]]) -> Iterator[None]:
    installed = list(pairs)
    for logger, flt in installed:
        logger.addFilter(flt)
    try:
        yield
    finally:
        for logger, flt in installed:
            logger.removeFilter(flt)


@contextlib.contextmanager
def quiet_milvus_logs() -> Iterator[None]:
    """Inside the block, drop Milvus noise: grpc's NotImplementedError tracebacks, pymilvus's
    mvccTs warnings and its tracebacks for malformed filter expressions."""
    filters = {
        "grpc._server": DropUnimplementedTraceback(),
        "pymilvus.orm.iterator": DropMvccWarning(),
        "pymilvus.decorators": DropExpressionErrorTraceback(),
        "milvus_lite.server_manager": DropLiteOpenTraceback(),
        "milvus_lite.adapter.grpc.servicer": DropLiteServicerTraceback(),
    }
    with _filters_installed((logging.getLogger(name), flt) for name, flt in filters.items()):
        yield


class ScrubSecrets(logging.Filter):
    """Replace secrets in a record's message with ``***``: each secret as given or URL-encoded,
    and the value of each named query parameter in any URL (``?api-key=***``)."""

    def __init__(self, secrets: Iterable[str], query_keys: Iterable[str] = ()) -> None:
        super().__init__()
        forms = {form for s in secrets if s for form in (s, quote(s, safe=""), quote_plus(s))}
        self.secrets = sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers
        keys = "|".join(re.escape(k) for k in sorted(set(query_keys)) if k)
        self.query = re.compile(rf"([?&](?:{keys})=)[^&#\s\"'<>]*") if keys else None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True

    def scrub(self, text: str) -> str:
        if self.query is not None:
            text = self.query.sub(rf"\g<1>{REDACTED}", text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


@contextlib.contextmanager
def scrub_secrets(
    secrets: Iterable[str | None],
    query_keys: Iterable[str] = (),
    prefixes: tuple[str, ...] = HTTP_LOGGER_PREFIXES,
) -> Iterator[None]:
    """Inside the block, scrub ``secrets`` and the values of ``query_keys`` from every record of
    the loggers named by ``prefixes`` (those that exist when the block starts: a library makes
    its loggers when it is imported, so import it first)."""
    flt = ScrubSecrets([s for s in secrets if s], query_keys)
    if not flt.secrets and flt.query is None:
        yield
        return
    names = {*prefixes, *logging.root.manager.loggerDict}
    loggers = [logging.getLogger(n) for n in sorted(names) if n.split(".")[0].startswith(prefixes)]
    with _filters_installed((logger, flt) for logger in loggers):
        yield
