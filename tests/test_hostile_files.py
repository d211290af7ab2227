"""Malformed and hostile files: each is parsed right, or refused in one line that names it.

The corpus lives in :mod:`tests.hostile_files` and is generated in ``tmp_path``; every file goes
through :func:`jrag.parse.discover_files` and :func:`jrag.parse.parse_file`, as ingest does.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jrag.errors import ParseError
from jrag.parse import (
    discover,
    discover_files,
    display_path,
    parse_file,
    read_file,
    resolve_root,
)
from tests import docs_factory as factory
from tests.hostile_files import CORPUS, OUTSIDE_PHRASE, PHRASE, HostileFile, build_all


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: a FIFO opened for reading blocks until a writer comes."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = (tmp_path / "corpus").resolve()
    folder.mkdir()
    return folder


def test_the_corpus_holds_at_least_twenty_kinds() -> None:
    assert len(CORPUS) >= 20
    assert len({case.kind for case in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=lambda case: case.kind)
def test_hostile_file_is_parsed_or_refused_in_one_line(root: Path, case: HostileFile) -> None:
    path = case.make(root)

    with _deadline(60):
        found = discover_files([root])
    skipped = dict(found.skipped)

    if case.outcome == "skipped":
        assert path not in found.files
        assert str(path) in skipped, found.skipped
        assert re.search(case.expect, skipped[str(path)]), skipped[str(path)]
        assert "\n" not in skipped[str(path)]
        return
    assert (path in found.files) == case.listed, found
    assert str(path) not in skipped
    if case.before_parse:
        case.before_parse(path)
    if case.outcome == "parsed":
        with _deadline(60):
            doc = parse_file(path)
        assert case.expect in doc.text
        assert "\x00" not in doc.text
        assert doc.source == str(path)
    else:
        with _deadline(60), pytest.raises(ParseError) as info:
            parse_file(path)
        message = str(info.value)
        assert "\n" not in message and "Traceback" not in message
        assert display_path(path) in message
        assert re.search(case.expect, message), message


def test_whole_corpus_in_one_folder_every_supported_name_is_listed_or_skipped(root: Path) -> None:
    paths = build_all(root)

    with _deadline(60):
        found = discover_files([root])

    skipped = dict(found.skipped)
    for case in CORPUS:
        path = paths[case.kind]
        if case.outcome == "skipped":
            assert str(path) in skipped, case.kind
        else:
            assert (path in found.files) == case.listed, case.kind
    assert set(found.files).isdisjoint(Path(p) for p in skipped)
    assert found.files == sorted(found.files)
    assert discover([root]) == found.files


# --- names in messages -------------------------------------------------------------------------


def test_a_newline_in_a_file_name_is_escaped_in_the_message(root: Path) -> None:
    path = root / "quarterly\nreport.pdf"
    path.write_bytes(b"%PDF-1.4 not really")

    with pytest.raises(ParseError) as info:
        parse_file(path)

    assert str(info.value).splitlines() == [str(info.value)]
    assert f"{root}/quarterly\\nreport.pdf is not a readable PDF" in str(info.value)


# --- text decoding -----------------------------------------------------------------------------


def test_nul_bytes_inside_text_are_dropped_with_a_warning(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = root / "log.txt"
    path.write_bytes(f"{PHRASE}\n\nDisk check passed.\x00\x00 Next run at noon.\n".encode())

    with caplog.at_level(logging.WARNING, logger="jrag.parse"):
        doc = parse_file(path)

    assert doc.text == f"{PHRASE}\n\nDisk check passed. Next run at noon."
    assert any("NUL" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_invalid_utf8_keeps_the_valid_characters(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = root / "mostly-utf8.txt"
    path.write_bytes("Grüße aus Köln, déjà vu.".encode() + b" \xff tail")

    with caplog.at_level(logging.WARNING, logger="jrag.parse"):
        doc = parse_file(path)

    assert doc.text == "Grüße aus Köln, déjà vu. \ufffd tail"
    assert any("not valid UTF-8" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_decodes(root: Path, encoding: str) -> None:
    path = root / "wide.txt"
    path.write_bytes(f"Grüße aus Köln. {PHRASE}".encode(encoding))

    assert parse_file(path).text == f"Grüße aus Köln. {PHRASE}"


# --- HTML and Markdown that unstructured cannot read ---------------------------------------------


@pytest.mark.parametrize("depth", [500, 10_000])
def test_deeply_nested_html_keeps_all_its_text(
    root: Path, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    nested = "<div>" * depth + f"<p>{PHRASE}</p>" + "</div>" * depth
    path = root / "nested.html"
    path.write_text(
        f"<html><body><h1>Deep Page</h1><p>Before the nest.</p>{nested}"
        "<p>After the nest.</p><script>var hidden = 1;</script></body></html>",
        encoding="utf-8",
    )

    with caplog.at_level(logging.WARNING, logger="jrag.parse"):
        doc = parse_file(path)

    assert doc.text == f"Deep Page\n\nBefore the nest.\n\n{PHRASE}\n\nAfter the nest."
    assert doc.title == "Deep Page"
    assert sys.getrecursionlimit() <= 10_000  # the text did not come from raising the limit
    assert any(f"nests {depth} levels deep" in r.getMessage() for r in caplog.records)


def test_shallow_html_still_goes_through_unstructured(root: Path) -> None:
    path = factory.make_html(root / "plain.html")

    doc = parse_file(path)

    assert doc.title == factory.TITLE
    assert doc.text == "\n\n".join((factory.TITLE, *factory.SENTENCES))


def test_markdown_front_matter_is_metadata_not_text(root: Path) -> None:
    path = root / "post.md"
    path.write_text(f'---\ntitle: "Tide Tables"\ntags: [sea]\n---\n\n{PHRASE}\n', encoding="utf-8")

    doc = parse_file(path)

    assert doc.text == PHRASE
    assert doc.title == "Tide Tables"


def test_markdown_opening_with_a_horizontal_rule_keeps_its_text(root: Path) -> None:
    path = root / "rule.md"
    path.write_text(f"---\n\n{PHRASE}\n\n---\n\nThe end.\n", encoding="utf-8")

    doc = parse_file(path)

    assert PHRASE in doc.text and "The end." in doc.text


# --- PDFs without text -------------------------------------------------------------------------


def test_image_only_pdf_says_it_has_no_text_layer(root: Path) -> None:
    path = factory.make_image_only_pdf(root / "scan.pdf")

    with pytest.raises(ParseError) as info:
        parse_file(path)

    assert str(info.value) == f"{path} has no text layer (scanned? jrag does not do OCR)"


# --- symlinks ----------------------------------------------------------------------------------


def _outside(root: Path) -> Path:
    outside = root.parent / "elsewhere"
    outside.mkdir()
    (outside / "secret.txt").write_text(OUTSIDE_PHRASE, encoding="utf-8")
    (outside / "sub").mkdir()
    (outside / "sub" / "notes.md").write_text(f"# Notes\n\n{PHRASE}\n", encoding="utf-8")
    return outside


def test_a_link_inside_the_folder_is_stored_under_its_own_path(root: Path) -> None:
    (root / "real.txt").write_text(PHRASE, encoding="utf-8")
    (root / "alias.txt").symlink_to("real.txt")

    files = discover([root])

    assert files == [root / "alias.txt", root / "real.txt"]
    assert parse_file(root / "alias.txt").source == str(root / "alias.txt")


def test_links_leaving_the_folder_are_refused_by_default(root: Path) -> None:
    outside = _outside(root)
    (root / "escape.txt").symlink_to(outside / "secret.txt")
    (root / "ext").symlink_to(outside, target_is_directory=True)
    (root / "own.txt").write_text(PHRASE, encoding="utf-8")

    found = discover_files([root])

    assert found.files == [root / "own.txt"]
    assert found.skipped == [
        (str(root / "escape.txt"), f"links to {outside / 'secret.txt'}, outside the folder"),
        (str(root / "ext"), f"links to {outside}, outside the folder"),
    ]


def test_follow_links_includes_them_under_their_path_in_the_folder(root: Path) -> None:
    outside = _outside(root)
    (root / "escape.txt").symlink_to(outside / "secret.txt")
    (root / "ext").symlink_to(outside, target_is_directory=True)

    found = discover_files([root], follow_links=True)

    assert found.files == [root / "escape.txt", root / "ext/secret.txt", root / "ext/sub/notes.md"]
    assert found.skipped == []
    doc = parse_file(root / "ext/sub/notes.md")
    assert doc.source == str(root / "ext/sub/notes.md") and PHRASE in doc.text


def test_a_removed_link_disappears_from_discovery_so_prune_can_delete_it(root: Path) -> None:
    outside = _outside(root)
    link = root / "escape.txt"
    link.symlink_to(outside / "secret.txt")
    before = discover([root], follow_links=True)
    stored_source = parse_file(before[0]).source

    link.unlink()

    assert stored_source == str(link)
    assert Path(stored_source).is_relative_to(root)  # prune only deletes under its roots
    assert discover([root], follow_links=True) == []


@pytest.mark.parametrize("follow_links", [False, True])
def test_symlink_loops_end_with_a_reason(root: Path, follow_links: bool) -> None:
    outside = _outside(root)
    (root / "a").mkdir()
    (root / "a" / "up").symlink_to(root, target_is_directory=True)
    (root / "a" / "me.txt").symlink_to(root / "a" / "me.txt")
    (root / "ext").symlink_to(outside, target_is_directory=True)
    (outside / "back").symlink_to(root, target_is_directory=True)
    (outside / "self").symlink_to(outside, target_is_directory=True)
    (root / "ext2").symlink_to(outside, target_is_directory=True)

    with _deadline(30):
        found = discover_files([root], follow_links=follow_links)

    reasons = dict(found.skipped)
    assert reasons[str(root / "a/up")].startswith("a symlink loop")
    assert reasons[str(root / "a/me.txt")] == "a symlink loop"
    if follow_links:
        assert found.files == [root / "ext/secret.txt", root / "ext/sub/notes.md"]
        assert reasons[str(root / "ext/back")] == (
            f"links to {root}, inside the folder, whose files are found there"
        )
        assert reasons[str(root / "ext/self")].startswith("a symlink loop")
        assert reasons[str(root / "ext2")] == f"links to {outside}, which was walked already"
    else:
        assert found.files == []


def test_a_named_link_keeps_its_own_name(root: Path) -> None:
    outside = _outside(root)
    link = root / "escape.txt"
    link.symlink_to(outside / "secret.txt")

    alias_of_root = root.parent / "alias-of-corpus"
    alias_of_root.symlink_to(root, target_is_directory=True)

    assert discover([link]) == [link]
    assert resolve_root(link) == link  # what prune compares stored sources against
    assert resolve_root(alias_of_root) == root
    assert discover([alias_of_root]) == []  # the link out of the folder is still refused


# --- read once ---------------------------------------------------------------------------------


def test_read_file_returns_the_bytes_and_their_sha256(root: Path) -> None:
    path = factory.make_pdf(root / "a.pdf")

    data, content_hash = read_file(path)

    assert data == path.read_bytes()
    assert content_hash == hashlib.sha256(data).hexdigest()


def test_parse_file_with_data_does_not_read_the_file_again(root: Path) -> None:
    path = root / "moved.pdf"
    data = factory.pdf_bytes()
    path.write_bytes(b"%PDF-1.4 overwritten after it was read")

    doc = parse_file(path, data=data, content_hash="f" * 64)

    assert factory.SENTENCES[0] in doc.text
    assert doc.content_hash == "f" * 64
    assert doc.size == len(data)
    path.with_suffix(".txt").write_text("other words", encoding="utf-8")
    assert parse_file(path.with_suffix(".txt"), data=b"plain words").text == "plain words"


def test_parse_file_with_data_hashes_it_when_no_hash_is_given(root: Path) -> None:
    path = root / "a.md"
    path.write_text("# A\n\nOld text.\n", encoding="utf-8")

    doc = parse_file(path, data=b"# A\n\nNew text.\n")

    assert doc.text == "A\n\nNew text."
    assert doc.content_hash == hashlib.sha256(b"# A\n\nNew text.\n").hexdigest()


def test_read_file_refuses_a_fifo_at_once_instead_of_hanging(root: Path) -> None:
    path = root / "x.txt"
    os.mkfifo(path)

    with _deadline(10):
        with pytest.raises(ParseError, match=r"x\.txt is not a regular file \(a FIFO\)"):
            read_file(path)
        with pytest.raises(ParseError, match=r"x\.txt is not a regular file \(a FIFO\)"):
            parse_file(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), r"is a directory, not a file"),
        (lambda p: None, r"does not exist$"),
        (lambda p: p.symlink_to(p.with_name("gone.md")), r"does not exist \(a broken symlink\)"),
    ],
    ids=["directory", "missing", "broken-link"],
)
def test_read_file_names_the_file_it_cannot_read(root: Path, make, message: str) -> None:
    path = root / "x.md"
    make(path)

    with pytest.raises(ParseError, match=message) as info:
        read_file(path)
    assert str(path) in str(info.value)
