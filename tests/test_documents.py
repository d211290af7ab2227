"""The documents API and users' metadata, on Milvus Lite and on the real 2.3.5 server: add,
replace, skip and delete by id leave exactly one committed version (also after kill -9), every
filter operator selects exactly the matching documents, and filters cannot leave a tenant."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from jrag.diversity import maximal_marginal_relevance
from jrag.documents import (
    StoredDocument,
    add_documents,
    add_embedded,
    add_texts,
    delete,
    get_by_ids,
    list_documents,
)
from jrag.errors import InputError
from jrag.loading import MINILM_ID
from jrag.pipeline import IngestOptions, ingest, ingest_documents
from jrag.records import text_document
from jrag.retrieval import SearchOptions, search
from jrag.store import MilvusStore, document_id, quote
from jrag.store.metadata import compile_where

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(minilm_store: MilvusStore) -> MilvusStore:
    return minilm_store


@pytest.fixture
def lite_store(milvus_lite_uri, minilm):
    """For behaviour that does not depend on the backend."""
    with MilvusStore(milvus_lite_uri, "lite", model=minilm.name, dim=minilm.dim) as opened:
        yield opened


def assert_one_version(store: MilvusStore, key: str, tenant: str = "") -> None:
    """The document ``key`` has one committed version, and no row of any other."""
    doc_id = document_id(key, tenant)
    state = store.states([doc_id])[doc_id]
    assert state.committed  # (its garbage list names the replaced version, whose rows are gone)
    rows = store.count(f"doc_id == {quote(doc_id)}")
    assert rows == sum(state.row_counts.values()) + 1  # + its state row
    other = f'doc_id == {quote(doc_id)} and kind != "state" and content_hash != '
    assert store.count(other + quote(state.content_hash)) == 0


# -- add, replace, skip, delete ------------------------------------------------------------------


def test_add_replace_skip_and_delete_by_id_keep_one_committed_version(store, minilm):
    texts = [
        "The barn owl hunts voles at night over the water meadows.",
        "Copper weathervanes turn green as the metal weathers.",
        "The lighthouse foghorn at Gull Point was recast in 1921.",
    ]
    ids = add_texts(store, minilm, texts, [{"n": 1}, {"n": 2}, None], ids=["owl", "vane", "horn"])
    assert ids == ["owl", "vane", "horn"]
    for key in ids:
        assert_one_version(store, key)
    hashes = {k: s.content_hash for k, s in store.states([document_id(k) for k in ids]).items()}

    # The same texts and metadata again: nothing is embedded or written.
    documents = [text_document(k, t, metadata=m) for k, t, m in
                 zip(ids, texts, [{"n": 1}, {"n": 2}, None], strict=True)]  # fmt: skip
    report = ingest_documents(documents, store, minilm)
    assert sorted(report.skipped) == sorted(ids) and report.stored == 0

    # Changed text replaces; changed metadata alone replaces too.
    add_texts(store, minilm, ["Barn owls swallow their prey whole."], [{"n": 1}], ids=["owl"])
    add_texts(store, minilm, [texts[1]], [{"n": 20}], ids=["vane"])
    owl, vane, horn = get_by_ids(store, ["owl", "vane", "horn"])
    assert owl.text == "Barn owls swallow their prey whole." and owl.metadata == {"n": 1}
    assert vane.text == texts[1] and vane.metadata == {"n": 20}
    assert horn == StoredDocument("horn", texts[2], {}, "horn", "horn")
    for key in ids:
        assert_one_version(store, key)
    now = {k: s.content_hash for k, s in store.states([document_id(k) for k in ids]).items()}
    assert now[document_id("horn")] == hashes[document_id("horn")]
    assert now[document_id("owl")] != hashes[document_id("owl")]
    assert now[document_id("vane")] != hashes[document_id("vane")]

    assert delete(store, ["owl", "missing"]) == 1
    assert store.count(f"doc_id == {quote(document_id('owl'))}") == 0
    assert [d.id for d in get_by_ids(store, ["owl", "horn", "vane"])] == ["horn", "vane"]
    assert [d.id for d in list_documents(store)] == ["horn", "vane"]


def test_texts_without_ids_get_ids_from_their_content(lite_store, minilm):
    store = lite_store
    first = add_texts(store, minilm, ["Moths navigate by the moon.", "Moths navigate by the moon."])
    assert first[0] == first[1] and len(first[0]) == 32
    other = add_documents(store, minilm, [("Moths navigate by the moon.", {"lab": "b"})])
    assert other == first[:1]
    assert [(d.id, d.metadata) for d in list_documents(store)] == [(first[0], {"lab": "b"})]
    assert_one_version(store, first[0])
    long = "".join(f"Line {i}: the tide came in at {i % 12} o'clock.\n" for i in range(1200))
    assert len(long) > 2 * 16000  # several text pieces, read back in one batch
    (key,) = add_texts(store, minilm, [long], options=IngestOptions(mode="whole"))
    assert get_by_ids(store, [key, first[0]])[0].text == long


def test_a_bad_entry_is_refused_by_name_before_anything_is_stored(lite_store, minilm):
    store = lite_store
    with pytest.raises(InputError, match=r"metadata of document 'b'"):
        add_texts(store, minilm, ["one text", "two"], [{}, {"x": float("nan")}], ids=["a", "b"])
    with pytest.raises(InputError, match="ids has 1 entries for 2 texts"):
        add_texts(store, minilm, ["one", "two"], ids=["a"])
    with pytest.raises(InputError, match="repeat the id 'a' with other content"):
        add_texts(store, minilm, ["one", "two"], ids=["a", "a"])
    assert list_documents(store) == []


# The child adds documents one call at a time and says so after each.
_CHILD = """
import sys
from jrag import Encoder
from jrag.documents import add_texts
from jrag.store import MilvusStore
uri, collection, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
encoder = Encoder.from_pretrained({model!r})
with MilvusStore(uri, collection, model=encoder.name, dim=encoder.dim) as store:
    for i in range(count):
        text = f"Document {{i}} tells of lantern {{i}} and its keeper's logbook, page {{i}}. " * 30
        add_texts(store, encoder, [text], [{{"i": i}}], ids=[f"doc-{{i}}"])
        print("stored", i, flush=True)
"""


def test_kill_9_halfway_then_rerun_leaves_one_version_of_each_document(store_uri, minilm):
    collection = f"k_{uuid.uuid4().hex[:12]}"
    count, kill_after = 6, 2
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(model=MINILM_ID), store_uri, collection, str(count)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    stored = 0
    try:
        for line in child.stdout:
            stored += line.startswith("stored")
            if stored == kill_after or time.monotonic() > deadline:
                child.send_signal(signal.SIGKILL)
                break
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, child.stderr.read()

    with MilvusStore(store_uri, collection, model=minilm.name, dim=minilm.dim) as store:
        assert kill_after <= len(list_documents(store)) < count
        # Re-run: the first half with changed text (replaced), the rest as the child had them.
        texts = [
            (f"Changed {i}. " if i < count // 2 else "")
            + f"Document {i} tells of lantern {i} and its keeper's logbook, page {i}. " * 30
            for i in range(count)
        ]
        keys = [f"doc-{i}" for i in range(count)]
        add_texts(store, minilm, texts, [{"i": i} for i in range(count)], ids=keys)
        found = get_by_ids(store, keys)
        assert [d.text for d in found] == texts
        for key in keys:
            assert_one_version(store, key)
        states = list(store.all_states())
        committed = sum(sum(s.row_counts.values()) for s in states)
        assert len(states) == count
        assert store.count('kind in ["doc", "late", "chunk", "text"]') == committed
        assert delete(store, keys[::2]) == count // 2
        for key in keys[::2]:
            assert store.count(f"doc_id == {quote(document_id(key))}") == 0
        for key in keys[1::2]:
            assert_one_version(store, key)
        store.drop()


# -- filters ---------------------------------------------------------------------------------------

LIBRARY = {
    "a": ({"author": "ann", "year": 2018, "score": 0.5, "open": True, "tags": {"lang": "en"}},
          "Ann's 2018 notes on barn owls and their nesting boxes."),
    "b": ({"author": "bob", "year": 2020, "score": 1.5, "open": False, "tags": {"lang": "fr"}},
          "Bob's 2020 survey of copper roofs in the old town."),
    "c": ({"author": "ann", "year": 2021, "score": 2.5, "open": False, "tags": {"lang": "en"}},
          "Ann's 2021 report on the lighthouse foghorn."),
    "d": ({"author": "cy", "year": 2023, "score": -1.0, "open": True, "tags": {"lang": "de"}},
          "Cy's 2023 study of moths at the lantern."),
    "e": ({"author": 'x" or tenant == "b', "year": 2019, "score": 0.0, "open": True,
           "tags": {"lang": "en"}}, "A record whose author field tries to close its quote."),
}  # fmt: skip
FILTERS = [
    {"author": "ann"},
    {"author": {"$eq": "bob"}},
    {"author": {"$ne": "ann"}},
    {"year": {"$gt": 2020}},
    {"year": {"$gte": 2020}},
    {"score": {"$lt": 0.5}},
    {"score": {"$lte": 0.5}},
    {"year": {"$in": [2018, 2023, 1999]}},
    {"author": {"$nin": ["ann", "cy"]}},
    {"open": True},
    {"tags.lang": "en"},
    {"author": "ann", "year": {"$gte": 2020}},
    {"$and": [{"open": False}, {"tags.lang": {"$ne": "fr"}}]},
    {"$or": [{"year": {"$lt": 2019}}, {"author": "cy"}]},
    {"$or": [{"$and": [{"author": "ann"}, {"open": True}]}, {"score": {"$gt": 2}}]},
    {"year": {"$gte": 2019, "$lt": 2021}},
    {"author": 'x" or tenant == "b'},
    {"missing": "x"},
]


def matches(metadata: dict, where: dict) -> bool:
    """The reference semantics: a document without a key matches no condition on it."""
    for key, condition in where.items():
        if key == "$and":
            ok = all(matches(metadata, c) for c in condition)
        elif key == "$or":
            ok = any(matches(metadata, c) for c in condition)
        else:
            value = metadata
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            ops = condition if isinstance(condition, dict) else {"$eq": condition}
            ok = value is not None and all(_holds(value, op, arg) for op, arg in ops.items())
        if not ok:
            return False
    return True


def _holds(value, op, arg) -> bool:
    if op in ("$in", "$nin"):
        found = any(type(value) is type(a) and value == a for a in arg)
        return found if op == "$in" else not found
    if type(value) is not type(arg) and not {type(value), type(arg)} <= {int, float}:
        return False
    return {"$eq": value == arg, "$ne": value != arg, "$gt": value > arg, "$gte": value >= arg,
            "$lt": value < arg, "$lte": value <= arg}[op]  # fmt: skip


@pytest.fixture(scope="module", params=["lite", pytest.param("server", marks=pytest.mark.server)])
def library(request, minilm, tmp_path_factory):
    """LIBRARY under the same ids in tenants t1 and t2; shared by the tests that only read it."""
    if request.param == "lite":
        uri = str(tmp_path_factory.mktemp("library") / "jrag.db")
    else:
        uri = request.getfixturevalue("milvus_server_uri")
    collection = f"lib_{uuid.uuid4().hex[:12]}"
    with MilvusStore(uri, collection, model=minilm.name, dim=minilm.dim) as store:
        for tenant in ("t1", "t2"):
            add_texts(store, minilm, [t for _, t in LIBRARY.values()],
                      [m for m, _ in LIBRARY.values()], ids=list(LIBRARY), tenant=tenant,
                      options=IngestOptions(mode="late"))  # fmt: skip
        yield store
        store.drop()


def test_every_filter_operator_selects_exactly_the_matching_documents(library, minilm):
    # Every filter lists; searches (slow on the 2.3.5 server, which has no grouped search)
    # try every filter on Lite and every sixth on the server.
    searched = FILTERS if library.is_lite else FILTERS[::6]
    for where in FILTERS:
        expected = sorted(k for k, (meta, _) in LIBRARY.items() if matches(meta, where))
        listed = [d.id for d in list_documents(library, where, tenant="t1")]
        assert listed == expected, where
        if where not in searched:
            continue
        options = SearchOptions(k=10, where=where, tenant="t1", mode="auto")
        found = sorted(r.source for r in search("notes", library, minilm, options))
        assert found == expected, where
    assert sum(1 for w in FILTERS if 0 < len(list_documents(library, w, tenant="t1")) < 5) >= 12


HOSTILE_VALUES = [
    'ann" or tenant == "t2',
    'ann") or (kind == "text',
    "ann\\",
    'x" or tenant == "b',  # the stored value of e: matches e alone
    "\x1b[31m\u202eann",
]


def test_filters_cannot_reach_other_tenants_or_kinds(library, minilm):
    for value in HOSTILE_VALUES:
        where = {"$or": [{"author": value}, {"$and": [{"tags.lang": {"$in": [value, "zz"]}}]}]}
        for tenant in ("t1", "t2"):
            expected = ["e"] if value == LIBRARY["e"][0]["author"] else []
            assert [d.id for d in list_documents(library, where, tenant=tenant)] == expected
            results = search("notes", library, minilm, SearchOptions(k=10, where=where,
                                                                     tenant=tenant))  # fmt: skip
            assert [r.source for r in results] == expected
            assert all(r.kind in ("doc", "late") for r in results)
    for key in ['author"] == "ann" or true or metadata["x', "a) or (true", "tenant ", "a..b", "1a",
                "", 'tags["lang"]']:  # fmt: skip
        with pytest.raises(InputError, match="metadata filter key"):
            list_documents(library, {key: "ann"}, tenant="t1")
        with pytest.raises(InputError, match="metadata filter key"):
            SearchOptions(where={"$or": [{"year": 1}, {key: "ann"}]})
    # A raw --filter still only narrows, beside a structured one.
    escape = SearchOptions(where={"author": "ann"}, filter='true) or (tenant == "t2"')
    with pytest.raises(InputError, match="unmatched"):
        search("notes", library, minilm, escape)
    year = 'metadata["user"]["year"] > 2020'
    options = SearchOptions(k=10, where={"author": "ann"}, tenant="t1", filter=year)
    narrowed = search("notes", library, minilm, options)
    assert [r.source for r in narrowed] == ["c"]


def _nested(depth: int) -> dict:
    where: dict = {"year": 1}
    for _ in range(depth):
        where = {"$or": [where]}
    return where


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"year": {"$regex": "x"}}, "unknown metadata filter operator '\\$regex' on 'year'"),
        ({"$not": {"year": 1}}, "unknown metadata filter operator '\\$not'"),
        ({"year": None}, "unsupported value None"),
        ({"year": {"$gt": [1]}}, "unsupported value \\[1\\]"),
        ({"year": {"$gt": math.inf}}, "unsupported value inf"),
        ({"year": {"$in": []}}, "takes a non-empty list"),
        ({"year": {"$in": [{"a": 1}]}}, "unsupported value"),
        ({"year": 2**70}, "unsupported value"),
        ({"$or": {"year": 1}}, "takes a non-empty list"),
        ({"year": {}}, "has no operator"),
        ({"year": {"$in": list(range(2000))}}, "more than 1024 conditions"),
        (_nested(40), "nested deeper than 32 levels"),
    ],
)
def test_a_filter_it_cannot_take_is_an_input_error_naming_it(where, message):
    with pytest.raises(InputError, match=message):
        compile_where(where, params=False)


def test_filter_templating_passes_values_apart_from_the_expression():
    where = {"author": 'x" or true', "$or": [{"year": {"$in": [1, 2]}}, {"open": True}]}
    expr, params = compile_where(where, params=True)
    assert 'x" or true' not in expr and "true" not in expr.replace("jrag_p", "")
    assert list(params.values()) == ['x" or true', 1, 2, True]
    assert all("{" + name + "}" in expr for name in params)
    quoted, none = compile_where(where, params=False)
    assert none == {} and quote('x" or true') in quoted


# -- MMR -------------------------------------------------------------------------------------------


def test_mmr_picks_by_relevance_then_difference():
    query = np.array([1.0, 0.0, 0.0])
    candidates = np.array([[0.9, 0.1, 0.0], [0.89, 0.11, 0.0], [0.7, 0.0, 0.7], [0.0, 0.0, 1.0]])
    assert maximal_marginal_relevance(query, candidates, 3, 1.0) == [0, 1, 2]
    assert maximal_marginal_relevance(query, candidates, 2, 0.5) == [0, 2]


def test_search_with_mmr_returns_different_documents_rather_than_near_duplicates(
    lite_store, minilm
):
    store = lite_store
    owl = "The barn owl hunts voles at night over the water meadows near the river."
    texts = [owl, owl.replace("voles", "mice"), owl.replace("river", "stream"),
             "Owls nest in church towers; the tawny owl calls at dusk in the woods."]  # fmt: skip
    add_texts(store, minilm, texts, ids=["owl1", "owl2", "owl3", "tawny"])
    plain = search("barn owl hunting voles at night", store, minilm, SearchOptions(k=2))
    assert {r.source for r in plain} <= {"owl1", "owl2", "owl3"}
    diverse = search("barn owl hunting voles at night", store, minilm,
                     SearchOptions(k=2, mmr=True, mmr_lambda=0.3))  # fmt: skip
    assert diverse[0].source == plain[0].source and diverse[1].source == "tawny"


# -- files as documents ------------------------------------------------------------------------


def test_a_text_added_by_id_and_the_same_text_in_a_file_make_the_same_rows(
    milvus_lite_uri, minilm, tmp_path
):
    # Past the window (several doc rows), and as parsing leaves it (no trailing blanks).
    text = " ".join(["Lantern keepers logged every ship."] * 400)
    path = tmp_path / "keeper.txt"
    path.write_text(text, encoding="utf-8")
    with MilvusStore(milvus_lite_uri, "same", model=minilm.name, dim=minilm.dim) as store:
        report = ingest([path], store, minilm, options=IngestOptions(mode="late"))
        assert len(report.added) == 1
        assert list_documents(store)[0].text == text
        add_texts(store, minilm, [text], ids=["keeper"], options=IngestOptions(mode="late"))
        from_file, from_api = document_id(str(path)), document_id("keeper")
        states = store.states([from_file, from_api])
        assert states[from_file].content_hash == states[from_api].content_hash
        assert states[from_file].kinds == states[from_api].kinds
        for kind in ("doc", "late"):
            a, b = store.get_rows([from_file], kind), store.get_rows([from_api], kind)
            assert len(a) == len(b) > 1
            assert [(r.start, r.end, r.text) for r in a] == [(r.start, r.end, r.text) for r in b]
            va = {r["id"].split(":", 1)[1]: r["vector"] for r in store.fetch(
                [r.id for r in a], ["id", "vector"])}  # fmt: skip
            vb = {r["id"].split(":", 1)[1]: r["vector"] for r in store.fetch(
                [r.id for r in b], ["id", "vector"])}  # fmt: skip
            assert va.keys() == vb.keys()
            assert all(np.allclose(va[k], vb[k], atol=1e-6) for k in va)


def test_json_lines_and_front_matter_become_metadata_that_filters(
    milvus_lite_uri, minilm, tmp_path
):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "records.jsonl").write_text(
        '{"id": "r1", "text": "Bell ringers practise on Tuesdays.", "team": "bells", "n": 3}\n'
        "\n"
        '{"text": "The choir sings evensong.", "team": "choir", "meta": {"size": 12}}\n'
        "{not json}\n"
        '{"id": "r4", "body": "no text field here"}\n'
        '{"id": "r1", "text": "a second r1"}\n'
        '{"id": 7, "text": "The verger locks the vestry.", "team": "staff"}\n',
        encoding="utf-8",
    )
    (folder / "notes.md").write_text(
        "---\ntitle: Organ notes\nteam: music\ndate: 2024-03-01\ntags: [organ, pipes]\n---\n\n"
        "# Organ\n\nThe organ's pipes were cleaned in spring.\n",
        encoding="utf-8",
    )
    (folder / "broken.md").write_text("---\nteam: [unclosed\n---\n\nBody text.\n", "utf-8")
    (folder / "zz.jsonl").write_text('{"id": "r1", "text": "Another r1."}\n', "utf-8")
    with MilvusStore(milvus_lite_uri, "records", model=minilm.name, dim=minilm.dim) as store:
        report = ingest([folder], store, minilm, metadata={"batch": "one", "team": "default"})
        failed = dict(report.failed)
        assert sorted(failed) == sorted(
            [f"{folder / 'records.jsonl'}:4", f"{folder / 'records.jsonl'}:5",
             f"{folder / 'records.jsonl'}:6", str(folder / "broken.md"),
             f"{folder / 'zz.jsonl'}: id 'r1'"]
        )  # fmt: skip
        assert "no text in field 'text'" in failed[f"{folder / 'records.jsonl'}:5"]
        assert "also on line 1" in failed[f"{folder / 'records.jsonl'}:6"]
        assert "is also in" in failed[f"{folder / 'zz.jsonl'}: id 'r1'"]
        assert "malformed YAML front matter" in failed[str(folder / "broken.md")]
        documents = {d.id: d for d in list_documents(store)}
        assert len(documents) == 4
        assert documents["r1"].metadata == {"team": "bells", "n": 3, "batch": "one"}
        assert documents["7"].text == "The verger locks the vestry."
        notes = documents[str(folder / "notes.md")]
        assert notes.title == "Organ notes"
        assert notes.metadata == {"title": "Organ notes", "team": "music", "date": "2024-03-01",
                                  "tags": ["organ", "pipes"], "batch": "one"}  # fmt: skip
        assert [d.id for d in list_documents(store, {"team": "music"})] == [notes.id]
        assert [d.text for d in list_documents(store, {"meta.size": {"$gt": 10}})] == [
            "The choir sings evensong."
        ]
        hits = search("pipes", store, minilm, SearchOptions(k=5, where={"date": {"$gte": "2024"}}))
        assert [h.source for h in hits] == [notes.id]
        # Unchanged input is skipped; a changed --metadata replaces every document.
        again = ingest([folder], store, minilm, metadata={"batch": "one", "team": "default"})
        assert again.stored == 0 and len(again.skipped) == 4
        changed = ingest([folder], store, minilm, metadata={"batch": "two"})
        assert len(changed.updated) == 4 and not changed.added
        assert len(list_documents(store, {"batch": "two"})) == 4 == len(list_documents(store))


def test_cli_ingest_metadata_and_search_where(tmp_path):
    from typer.testing import CliRunner

    from jrag.cli import app

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(
        '{"key": "k1", "body": "Swifts scream over the rooftops in June.", "site": "north"}\n'
        '{"key": "k2", "body": "Swifts nest under the eaves of the church.", "site": "south"}\n',
        encoding="utf-8",
    )
    db = str(tmp_path / "cli.db")
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(tmp_path / "in"), "--uri", db, "--model", MINILM_ID,
                                 "--text-field", "body", "--id-field", "key",
                                 "--metadata", "run=r1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["search", "swifts", "--uri", db, "--json",
                                 "--where", '{"site": "south", "run": "r1"}', "--mmr"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert '"source": "k2"' in result.stdout and '"k1"' not in result.stdout
    result = runner.invoke(app, ["ask", "Where do swifts live?", "--uri", db, "--json", "--no-llm",
                                 "--where", '{"site": "north"}', "--mmr"])  # fmt: skip
    assert result.exit_code == 0, result.output
    sources = {c["source"] for c in json.loads(result.stdout)["citations"]}
    assert sources == {"k1"}, result.stdout
    result = runner.invoke(app, ["search", "swifts", "--uri", db, "--where", '{"a b": 1}'])
    assert result.exit_code == 1 and "metadata filter key 'a b'" in result.output
    deep = '{"$or": [' * 100_000 + "{}" + "]}" * 100_000
    result = runner.invoke(app, ["search", "swifts", "--uri", db, "--where", deep])
    assert result.exit_code == 1 and "--where is not JSON" in result.output


@pytest.mark.parametrize(
    ("front", "message"),
    [
        ("team: [unclosed", "malformed YAML front matter"),
        ("a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]", "YAML aliases"),
        ("n: .nan", "JSON cannot hold"),
        ("code: !!python/object/apply:os.system ['true']", "malformed YAML front matter"),
    ],
)
def test_hostile_front_matter_fails_its_file_by_name(tmp_path, front, message):
    from jrag.errors import ParseError
    from jrag.parse import parse_file

    path = tmp_path / "post.md"
    path.write_text(f"---\n{front}\n---\n\nBody text.\n", encoding="utf-8")
    with pytest.raises(ParseError, match=message) as caught:
        parse_file(path)
    assert "post.md" in str(caught.value)


def test_texts_embedded_elsewhere_are_stored_by_id_and_found_by_their_vectors(lite_store):
    store = lite_store
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(3, store.dim)).astype(np.float32)
    texts = ["Swifts sleep on the wing.", "Herons stand in the shallows.", "Rooks nest early."]
    ids = add_embedded(store, texts, vectors, [{"k": i} for i in range(3)], ids=["s", "h", "r"])
    before = store.states([document_id("h")])[document_id("h")]
    assert add_embedded(store, texts[1:2], vectors[1:2], [{"k": 1}], ids=["h"]) == ["h"]
    assert store.states([document_id("h")])[document_id("h")] == before  # skipped
    options = SearchOptions(k=2, content="document", where={"k": {"$gte": 1}})
    found = search("herons", store, None, options, vector=vectors[1])
    assert [r.source for r in found] == ["h", "r"] and found[0].text == texts[1]
    add_embedded(store, ["Herons fish at dawn."], vectors[1:2], ids=["h"])
    assert get_by_ids(store, ["h"])[0] == StoredDocument("h", "Herons fish at dawn.", {}, "h", "h")
    for key in ids:
        assert_one_version(store, key)
    with pytest.raises(InputError, match=f"vectors must be 1 rows of {store.dim} numbers"):
        add_embedded(store, ["x"], vectors[:, :5][:1])
