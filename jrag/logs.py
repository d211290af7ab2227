"""Milvus' log noise, silenced only around jrag's own calls (never for the host application)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "pymilvus.decorators":
            return False  # jrag raises the error itself, as one line
        if record.exc_info and isinstance(record.exc_info[1], NotImplementedError):
            return False  # Lite's gRPC server lacks some RPCs that pymilvus probes, then skips
        message = record.getMessage()
        return "mvccTs" not in message and not message.startswith(
            "Failed to start MilvusLite server"
        )


_NOISY = (
    "grpc._server",
    "pymilvus",
    "pymilvus.decorators",  # logs every failed call's traceback before raising it
    "pymilvus.orm.iterator",
    "milvus_lite.server_manager",
)


@contextlib.contextmanager
def quiet_milvus_logs() -> Iterator[None]:
    """Drop Milvus' known-harmless tracebacks while the block runs."""
    flt = _DropNoise()
    loggers = [logging.getLogger(name) for name in _NOISY]
    for log in loggers:
        log.addFilter(flt)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(flt)
