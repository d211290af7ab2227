"""Shared fixtures: a fresh Milvus Lite path per test, and one real Milvus server per session."""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jrag import Encoder
from jrag.loading import MINILM_ID
from jrag.store import MilvusStore
from tests.milvus_server import (
    SERVER_ENV,
    SKIP_ENV,
    MilvusServerError,
    MilvusServerProcess,
    server_binary,
)


@pytest.fixture
def milvus_lite_uri(tmp_path: Path) -> str:
    """A Milvus Lite ``.db`` path (a directory, created on first open) in this test's tmp dir."""
    return str(tmp_path / "lite" / "jrag.db")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServerProcess]:
    """A real Milvus 2.3.5 standalone server in a private netns, started once per session.

    Missing binary → the server tests FAIL (CI must not skip them silently), unless
    ``JRAG_SKIP_SERVER_TESTS=1``.
    """
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: skipping tests against a real Milvus server")
    binary = server_binary()
    if not binary.exists():
        pytest.fail(
            f"Milvus server binary not found at {binary}: run `make install` "
            f"(or scripts/install_milvus_server.sh), or set {SERVER_ENV}; "
            f"set {SKIP_ENV}=1 to skip the server tests.",
            pytrace=False,
        )
    server = MilvusServerProcess(tmp_path_factory.mktemp("milvus-server"), binary)
    atexit.register(server.stop)  # also on interpreter exit paths that skip fixture teardown
    try:
        server.start()
        error = None
    except MilvusServerError as e:
        error = str(e)
    if error is not None:
        pytest.fail(error, pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)


@pytest.fixture(scope="session")
def milvus_server_uri(milvus_server: MilvusServerProcess) -> str:
    """``http://127.0.0.1:<port>`` of the session's Milvus server (via the loopback bridge)."""
    return milvus_server.uri


@pytest.fixture(params=["lite", pytest.param("server", marks=pytest.mark.server)])
def store_uri(request: pytest.FixtureRequest) -> str:
    """Each store test runs against Milvus Lite and against the real server (marked ``server``)."""
    return request.getfixturevalue(f"milvus_{request.param}_uri")


@pytest.fixture(scope="session")
def minilm() -> Encoder:
    """all-MiniLM-L6-v2, loaded once per session."""
    return Encoder.from_pretrained(MINILM_ID)


@pytest.fixture
def minilm_store(store_uri: str, minilm: Encoder) -> Iterator[MilvusStore]:
    """A new collection for MiniLM vectors, on each backend; dropped afterwards."""
    collection = f"t_{uuid.uuid4().hex[:12]}"
    with MilvusStore(store_uri, collection, model=minilm.name, dim=minilm.dim) as opened:
        yield opened
        opened.drop()
