"""The store is used through its public methods: read from the source, file by file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("jrag", "connectors", "benchmarks", "tests")
# White-box tests of the store itself, which stage half-written versions and raw rows.
WHITE_BOX = {"tests/test_store.py", "tests/test_concurrent_writes.py",
             "tests/concurrent_writers.py",  # its trace wraps the writer's steps
             "tests/test_hostile_input.py", "tests/test_encapsulation.py"}  # fmt: skip
# A store's inner parts or private members, reached through anything named for a store.
STORE_INSIDES = re.compile(r"\bstore\w*\)?\.(writer|ranker|conn|_\w+)\b", re.IGNORECASE)
# pymilvus' private members: through a client or handler object, or by their known names.
PYMILVUS_PRIVATE = re.compile(
    r"\b\w*(client|handler)\w*\)?\._\w+|\b_get_connection\b|\bMilvusClient\._\w+"
)


def _python_files() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))


def _findings(pattern: re.Pattern[str], *, outside_store: bool) -> list[str]:
    found = []
    for path in _python_files():
        name = path.relative_to(ROOT).as_posix()
        if name in WHITE_BOX or (outside_store and name.startswith("jrag/store/")):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    return found


def test_no_module_outside_the_store_reaches_into_it() -> None:
    assert _findings(STORE_INSIDES, outside_store=True) == []


def test_no_module_uses_a_pymilvus_private() -> None:
    assert _findings(PYMILVUS_PRIVATE, outside_store=False) == []


def test_the_scan_sees_what_it_forbids() -> None:
    assert STORE_INSIDES.search("rows = store.writer.iter_rows(expr)")
    assert STORE_INSIDES.search("self.store._delete_ids(ids)")
    assert STORE_INSIDES.search("client, name = store.conn.client, store.collection")
    assert not STORE_INSIDES.search("ranker=options.ranker, store.collection")
    assert PYMILVUS_PRIVATE.search("handler = conn.client._get_connection()")
    assert not PYMILVUS_PRIVATE.search("self.client.query(name)")
