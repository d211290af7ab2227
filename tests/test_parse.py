"""Tests for jrag.parse: real documents, generated at test time, parsed by unstructured offline."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jrag.errors import ParseError
from jrag.parse import SUPPORTED_SUFFIXES, ParsedDocument, discover, parse_file
from tests import docs_factory as factory

REPO_ROOT = Path(__file__).resolve().parent.parent


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_common(doc: ParsedDocument, path: Path, doc_type: str) -> None:
    assert doc.doc_type == doc_type
    assert doc.source == str(path.resolve())
    assert doc.size == path.stat().st_size
    assert doc.mtime == path.stat().st_mtime
    assert doc.content_hash == _sha256(path)
    for sentence in factory.SENTENCES:
        assert sentence in doc.text


@contextlib.contextmanager
def _unprivileged() -> Iterator[None]:
    """Drop the effective uid to `nobody` while root, since root reads a chmod-000 file anyway."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


# --- each format yields its text ---------------------------------------------------------------


def test_pdf_yields_its_text_title_and_pages(tmp_path: Path) -> None:
    path = factory.make_pdf(tmp_path / "survey.pdf")

    doc = parse_file(path)

    assert doc.text.strip(), "a PDF that parses to no text is a failure"
    _assert_common(doc, path, "pdf")
    assert factory.PAGE_TWO_SENTENCE in doc.text
    assert doc.title == factory.TITLE
    assert doc.page_count == 2
    page_two = doc.text.index(factory.PAGE_TWO_SENTENCE)
    assert doc.page_starts == (0, page_two)
    assert doc.page_at(0) == 1
    assert doc.page_at(doc.text.index(factory.SENTENCES[2])) == 1
    assert doc.page_at(page_two - 1) == 1
    assert doc.page_at(page_two) == 2
    assert doc.page_at(len(doc.text)) == 2
    assert doc.page_at(-1) is None
    assert doc.page_at(len(doc.text) + 1) is None


def test_pdf_page_without_text_keeps_page_numbers_right(tmp_path: Path) -> None:
    pages = (("Alpha page speaks first.",), (), ("Gamma page speaks last.",))
    path = factory.make_pdf(tmp_path / "gap.pdf", pages=pages)

    doc = parse_file(path)

    assert doc.page_count == 3
    assert len(doc.page_starts) == 3
    assert doc.page_at(doc.text.index("Alpha page")) == 1
    assert doc.page_at(doc.text.index("Gamma page")) == 3


def test_html_yields_its_text_and_h1_title(tmp_path: Path) -> None:
    path = factory.make_html(tmp_path / "survey.html")

    doc = parse_file(path)

    _assert_common(doc, path, "html")
    assert doc.title == factory.TITLE
    assert doc.page_count is None
    assert doc.page_starts == ()
    assert doc.page_at(0) is None


def test_docx_yields_its_text_and_title(tmp_path: Path) -> None:
    path = factory.make_docx(tmp_path / "survey.docx")

    doc = parse_file(path)

    _assert_common(doc, path, "docx")
    assert doc.title == factory.TITLE


def test_markdown_yields_its_text_and_heading_title(tmp_path: Path) -> None:
    path = factory.make_markdown(tmp_path / "survey.md")

    doc = parse_file(path)

    _assert_common(doc, path, "md")
    assert doc.title == factory.TITLE
    assert "#" not in doc.text


def test_text_yields_its_paragraphs_and_first_line_title(tmp_path: Path) -> None:
    path = factory.make_text(tmp_path / "survey.txt")

    doc = parse_file(path)

    _assert_common(doc, path, "txt")
    assert doc.title == factory.TITLE
    assert doc.text == "\n\n".join((factory.TITLE, *factory.SENTENCES))
    assert doc.page_count is None


def test_text_keeps_line_breaks_and_indentation_inside_paragraphs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "notes.rst"
    path.write_bytes(
        b"first line\r\nsecond line\r\n\r\n\r\n\r\n    indented code\r\n  \r\nend.\r\n"
    )

    doc = parse_file(path)

    assert doc.text == "first line\nsecond line\n\n    indented code\n\nend."
    assert doc.title == "notes"  # a two-line first paragraph is not a title


def test_cp1252_text_decodes_with_the_right_characters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    phrase = "Le café servait une crème brûlée – “très” bonne – pour 5 €."
    path = tmp_path / "menu.txt"
    path.write_bytes(phrase.encode("cp1252"))

    with caplog.at_level(logging.WARNING, logger="jrag.parse"):
        doc = parse_file(path)

    assert doc.text == phrase
    assert any(str(path) in r.getMessage() and "cp1252" in r.getMessage() for r in caplog.records)


def test_utf16_text_with_bom_decodes(tmp_path: Path) -> None:
    path = tmp_path / "wide.txt"
    path.write_bytes("Grüße aus Köln.".encode("utf-16"))

    assert parse_file(path).text == "Grüße aus Köln."


def test_hundred_thousand_token_text_parses_quickly(tmp_path: Path) -> None:
    text = factory.long_text(100_000)
    path = tmp_path / "long.txt"
    path.write_text(text, encoding="utf-8")
    assert path.stat().st_size > 400_000

    start = time.perf_counter()
    doc = parse_file(path)
    elapsed = time.perf_counter() - start

    assert doc.text == text.strip()
    assert elapsed < 3.0, f"parsing {path.stat().st_size} bytes took {elapsed:.1f}s"


def test_relative_path_reports_absolute_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory.make_text(tmp_path / "rel.txt")
    monkeypatch.chdir(tmp_path)

    assert parse_file("rel.txt").source == str((tmp_path / "rel.txt").resolve())


# --- offline -----------------------------------------------------------------------------------


_OFFLINE_SCRIPT = """
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network blocked by test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from jrag.parse import parse_file
for name in sys.argv[1:]:
    doc = parse_file(name)
    assert "forty-two gulls" in doc.text, (name, doc.text)
from unstructured.nlp import tokenize
assert tokenize._get_nlp().pipe_names == ["sentencizer"], tokenize._get_nlp().pipe_names
assert not attempts, attempts
print("OFFLINE-OK")
"""


def test_parsing_needs_no_network_and_no_spacy_model(tmp_path: Path) -> None:
    """A fresh interpreter with sockets blocked parses every unstructured format.

    unstructured would download spaCy's en_core_web_sm on first use, and its PDF path would
    swallow the failure and return nothing; the blank sentencizer pipeline avoids both.
    """
    if importlib.util.find_spec("en_core_web_sm") is not None:
        pytest.skip("en_core_web_sm is installed, so a download could not be noticed here")
    files = [
        factory.make_pdf(tmp_path / "a.pdf"),
        factory.make_html(tmp_path / "a.html"),
        factory.make_docx(tmp_path / "a.docx"),
        factory.make_markdown(tmp_path / "a.md"),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("DO_NOT_TRACK", "SCARF_NO_ANALYTICS")}
    env["PYTHONPATH"] = str(REPO_ROOT)

    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, *map(str, files)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "OFFLINE-OK" in result.stdout
    assert "Thank you for using Unstructured" not in result.stdout + result.stderr


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.txt", b""),
        ("blank.md", b"  \n\t\n  "),
        ("empty.pdf", b""),
        ("blank.html", b"\n"),
    ],
)
def test_empty_file_is_an_error_naming_it(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(ParseError, match=r"empty") as info:
        parse_file(path)
    assert str(path) in str(info.value)


def test_corrupt_pdf_is_not_a_readable_pdf(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pdf"
    path.write_bytes(random.Random(7).randbytes(4096))

    with pytest.raises(ParseError, match=r"is not a readable PDF: ") as info:
        parse_file(path)
    assert str(path) in str(info.value)


def test_pdf_without_text_yielded_no_text(tmp_path: Path) -> None:
    path = factory.make_blank_pdf(tmp_path / "drawing.pdf")

    with pytest.raises(ParseError, match=r"yielded no text") as info:
        parse_file(path)
    assert str(path) in str(info.value)


def test_corrupt_docx_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.docx"
    path.write_bytes(b"PK\x03\x04 this is not really a zip archive")

    with pytest.raises(ParseError, match=r"is not a readable DOCX") as info:
        parse_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["junk.txt", "junk.md", "junk.html"])
def test_binary_junk_with_text_suffix_is_rejected(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(random.Random(11).randbytes(8192))

    with pytest.raises(ParseError, match=r"looks like binary data, not text") as info:
        parse_file(path)
    assert str(path) in str(info.value)


def test_unreadable_file_is_permission_denied(tmp_path: Path) -> None:
    path = factory.make_text(tmp_path / "secret.txt")
    path.chmod(0)
    try:
        with (
            _unprivileged(),
            pytest.raises(ParseError, match="cannot be read: permission denied"),
        ):
            parse_file(path)
    finally:
        path.chmod(0o644)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "folder.md"
    folder.mkdir()

    with pytest.raises(ParseError, match=r"is a directory"):
        parse_file(folder)


def test_missing_and_broken_symlink_are_errors_naming_them(tmp_path: Path) -> None:
    link = tmp_path / "dangling.txt"
    link.symlink_to(tmp_path / "gone.txt")

    with pytest.raises(ParseError, match=r"dangling\.txt does not exist \(a broken symlink\)"):
        parse_file(link)
    with pytest.raises(ParseError, match=r"nowhere\.txt does not exist"):
        parse_file(tmp_path / "nowhere.txt")


def test_unsupported_suffix_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "sheet.xlsx"
    path.write_bytes(b"not supported")

    with pytest.raises(ParseError, match=r"sheet\.xlsx has an unsupported file type \.xlsx"):
        parse_file(path)


# --- discover ----------------------------------------------------------------------------------


def _tree(root: Path) -> None:
    for rel in (
        "a.md",
        "b.TXT",
        "sub/c.pdf",
        "sub/deeper/d.html",
        "sub/e.png",
        ".git/f.md",
    ):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x", encoding="utf-8")


def test_discover_expands_folders_recursively_sorted_and_deduplicated(
    tmp_path: Path,
) -> None:
    _tree(tmp_path)

    found = discover([tmp_path / "sub", tmp_path, tmp_path / "a.md"])

    expected = ["a.md", "b.TXT", "sub/c.pdf", "sub/deeper/d.html"]
    assert found == sorted((tmp_path / rel).resolve() for rel in expected)
    assert all(p.is_absolute() for p in found)


def test_discover_glob_filters_names(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "sub" / "g.md").write_text("x", encoding="utf-8")

    found = discover([str(tmp_path)], glob="*.md")

    assert found == [
        (tmp_path / "a.md").resolve(),
        (tmp_path / "sub" / "g.md").resolve(),
    ]


def test_discover_missing_path_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"

    with pytest.raises(ParseError, match=r"no-such-folder does not exist"):
        discover([tmp_path, missing])


def test_discover_rejects_a_named_unsupported_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"x")

    with pytest.raises(ParseError, match=r"photo\.png has an unsupported file type"):
        discover([path])


def test_supported_suffixes_map_to_doc_types() -> None:
    assert SUPPORTED_SUFFIXES == {
        ".pdf": "pdf",
        ".html": "html",
        ".htm": "html",
        ".docx": "docx",
        ".md": "md",
        ".markdown": "md",
        ".txt": "txt",
        ".text": "txt",
        ".rst": "txt",
        ".jsonl": "jsonl",
    }
