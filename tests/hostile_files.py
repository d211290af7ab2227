"""A corpus of malformed and hostile files, generated at test time.

Each :class:`HostileFile` writes one file (or link, FIFO, folder) into a folder and says what
jrag must make of it:

- ``parsed``: discovery lists it and ``parse_file`` returns text holding ``expect``;
- ``error``: ``parse_file`` raises a one-line ``ParseError`` that names the file and matches
  ``expect``; ``listed`` says whether discovery lists it (a folder or FIFO is never listed);
- ``skipped``: discovery leaves it out and reports it with a reason matching ``expect``.
"""

from __future__ import annotations

import os
import random
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests import docs_factory as factory

Outcome = Literal["parsed", "error", "skipped"]

PHRASE = "The lantern keeper counted forty-two gulls before noon."
OUTSIDE_PHRASE = "This file lives outside the ingested folder."


@dataclass(frozen=True)
class HostileFile:
    """One hostile input: how to make it and what jrag must do with it."""

    kind: str
    make: Callable[[Path], Path]
    outcome: Outcome
    expect: str
    listed: bool = True
    # Runs after discovery and before parsing (e.g. to delete the file).
    before_parse: Callable[[Path], None] | None = None


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _text(name: str, text: str, encoding: str = "utf-8") -> Callable[[Path], Path]:
    return lambda folder: _write(folder / name, text.encode(encoding))


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    return lambda folder: _write(folder / name, data)


def _pdf_bytes() -> bytes:
    return factory.pdf_bytes()


def _truncated_pdf(folder: Path) -> Path:
    data = _pdf_bytes()
    return _write(folder / "truncated.pdf", data[: len(data) // 2])


def _bad_xref_pdf(folder: Path) -> Path:
    """A PDF whose cross-reference table and startxref point at the wrong offsets."""
    data = _pdf_bytes()
    table_at = data.rindex(b"\nxref\n")
    trailer_at = data.index(b"trailer", table_at)
    rows = data[table_at:trailer_at].split(b"\n")
    broken = [re.sub(rb"^\d{10}", b"0000099999", row) for row in rows]
    data = data[:table_at] + b"\n".join(broken) + data[trailer_at:]
    head, _, _ = data.rpartition(b"startxref")
    return _write(folder / "bad-xref.pdf", head + b"startxref\n99999999\n%%EOF\n")


def _image_only_pdf(folder: Path) -> Path:
    return factory.make_image_only_pdf(folder / "scanned.pdf")


def _zip(name: str, members: dict[str, bytes]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        with zipfile.ZipFile(path, "w") as archive:
            for member, data in members.items():
                archive.writestr(member, data)
        return path

    return make


def _nested_html(depth: int, name: str) -> Callable[[Path], Path]:
    body = "<div>" * depth + f"<p>{PHRASE}</p>" + "</div>" * depth
    return _text(name, f"<html><body>{body}</body></html>")


def _symlink_loop(folder: Path) -> Path:
    link = folder / "loop.txt"
    link.symlink_to(folder / "loop-back.txt")
    (folder / "loop-back.txt").symlink_to(link)
    return link


def _directory_loop(folder: Path) -> Path:
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder, target_is_directory=True)
    return folder / "sub" / "up"


def _link_outside(folder: Path) -> Path:
    outside = folder.parent / "outside"
    outside.mkdir(exist_ok=True)
    target = outside / "secret.txt"
    target.write_text(OUTSIDE_PHRASE, encoding="utf-8")
    link = folder / "escape.txt"
    link.symlink_to(target)
    return link


def _link_inside(folder: Path) -> Path:
    (folder / "real.txt").write_text(PHRASE, encoding="utf-8")
    link = folder / "alias.txt"
    link.symlink_to("real.txt")
    return link


def _broken_link(folder: Path) -> Path:
    link = folder / "dangling.md"
    link.symlink_to(folder / "gone.md")
    return link


def _directory_named_md(folder: Path) -> Path:
    path = folder / "x.md"
    path.mkdir()
    return path


def _fifo(folder: Path) -> Path:
    path = folder / "x.txt"
    os.mkfifo(path)
    return path


def _vanish(path: Path) -> None:
    path.unlink()


def _utf16_no_bom() -> bytes:
    return ("Grüße aus Köln. " + PHRASE).encode("utf-16-le")


def _invalid_utf8() -> bytes:
    return ("Grüße aus Köln. " * 20 + PHRASE).encode("utf-8") + b" \xff\xfe broken tail.\n"


def _random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CORPUS: tuple[HostileFile, ...] = (
    # --- text encodings and bytes ---------------------------------------------------------------
    HostileFile("nul-bytes-in-text", _text("nul.txt", f"{PHRASE}\x00 and more\x00 text."),
                "parsed", PHRASE),
    HostileFile("invalid-utf8", _bytes("invalid.txt", _invalid_utf8()), "parsed", "Grüße aus Köln"),
    HostileFile("utf16-without-bom", _bytes("wide.txt", _utf16_no_bom()), "parsed", PHRASE),
    HostileFile("utf16-be-without-bom", _text("wide-be.md", f"# Title\n\n{PHRASE}", "utf-16-be"),
                "parsed", PHRASE),
    HostileFile("utf8-bom-markdown", _bytes("bom.md", f"\ufeff# Title\n\n{PHRASE}".encode()),
                "parsed", PHRASE),
    HostileFile("cr-only-line-ends", _text("mac.txt", f"Title\r\r{PHRASE}\rnext line"),
                "parsed", PHRASE),
    HostileFile("hundred-thousand-char-word", _text("word.txt", "x" * 100_000 + f" {PHRASE}"),
                "parsed", PHRASE),
    HostileFile("one-megabyte-single-line", _text("line.txt", (PHRASE + " ") * 20_000),
                "parsed", PHRASE),
    HostileFile("one-megabyte-single-line-html",
                _text("line.html", "<p>" + (PHRASE + " ") * 20_000 + "</p>"), "parsed", PHRASE),
    HostileFile("binary-as-txt", _bytes("junk.txt", _random(8192, 1)), "error", "binary data"),
    HostileFile("binary-as-html", _bytes("image.html", _PNG_MAGIC + _random(4096, 2)),
                "error", "binary data"),
    HostileFile("only-nul-bytes", _bytes("zeros.txt", b"\x00" * 4096), "error", "binary data"),
    HostileFile("whitespace-only", _text("blank.txt", " \n\t\r\n  \n"), "error", "is empty"),
    # --- HTML and Markdown ----------------------------------------------------------------------
    HostileFile("html-500-nested-divs", _nested_html(500, "nested-500.html"), "parsed", PHRASE),
    HostileFile("html-10000-nested-divs", _nested_html(10_000, "nested-10k.html"),
                "parsed", PHRASE),
    HostileFile("html-10000-unclosed-tags",
                _text("unclosed.html", "<span>" * 10_000 + PHRASE), "parsed", PHRASE),
    HostileFile("html-only-scripts-and-styles",
                _text("scripts.html", "<html><head><style>p {color: red}</style>"
                      "<script>var x = 'not text';</script></head><body>"
                      "<script>document.write('hi')</script></body></html>"),
                "error", "yielded no text"),
    HostileFile("markdown-only-front-matter",
                _text("front.md", "---\ntitle: Only metadata\ntags: [a, b]\n---\n"),
                "error", "yielded no text"),
    HostileFile("markdown-10000-nested-quotes", _text("quotes.md", ">" * 10_000 + " " + PHRASE),
                "parsed", PHRASE),
    # --- PDF ------------------------------------------------------------------------------------
    HostileFile("zero-byte-pdf", _bytes("zero.pdf", b""), "error", "is empty"),
    HostileFile("truncated-pdf", _truncated_pdf, "error", "not a readable PDF"),
    HostileFile("pdf-with-invalid-xref", _bad_xref_pdf, "parsed", PHRASE),
    HostileFile("image-only-pdf", _image_only_pdf, "error", r"has no text layer \(scanned\?"),
    HostileFile("text-named-pdf", _text("notes.pdf", PHRASE), "error", "not a readable PDF"),
    # --- DOCX -----------------------------------------------------------------------------------
    HostileFile("zip-that-is-not-docx", _zip("archive.docx", {"readme.txt": b"hello"}),
                "error", "not a readable DOCX"),
    HostileFile("non-zip-docx", _text("plain.docx", PHRASE), "error", "not a readable DOCX"),
    HostileFile("docx-with-broken-xml",
                _zip("broken-xml.docx", {"[Content_Types].xml": b"<Types", "word/document.xml":
                                         b"<w:document><w:body>"}),
                "error", "not a readable DOCX"),
    # --- names ----------------------------------------------------------------------------------
    HostileFile("newline-in-name", _text("two\nlines.md", f"# Title\n\n{PHRASE}"),
                "parsed", PHRASE),
    HostileFile("newline-in-name-of-bad-file", _bytes("bad\nname.pdf", b"%PDF-1.4 junk"),
                "error", "not a readable PDF"),
    HostileFile("brackets-quotes-unicode-in-name",
                _text("[draft] \"it's\" Ünïcödé 文件 \\ *?.txt", PHRASE), "parsed", PHRASE),
    HostileFile("long-name", _text("n" * 240 + ".txt", PHRASE), "parsed", PHRASE),
    # --- file system ----------------------------------------------------------------------------
    HostileFile("symlink-loop", _symlink_loop, "skipped", "symlink loop"),
    HostileFile("directory-symlink-loop", _directory_loop, "skipped", "symlink loop"),
    HostileFile("symlink-outside-folder", _link_outside, "skipped", "outside the folder"),
    HostileFile("symlink-inside-folder", _link_inside, "parsed", PHRASE),
    HostileFile("broken-symlink", _broken_link, "skipped", "broken symlink"),
    HostileFile("directory-named-x-md", _directory_named_md, "error", "is a directory",
                listed=False),
    HostileFile("fifo-named-x-txt", _fifo, "skipped", "not a regular file"),
    HostileFile("vanishes-before-parse", _text("vanishing.txt", PHRASE), "error", "does not exist",
                before_parse=_vanish),
)  # fmt: skip


def build_all(folder: Path) -> dict[str, Path]:
    """Make every corpus entry in ``folder``; return each kind's path."""
    folder.mkdir(parents=True, exist_ok=True)
    return {case.kind: case.make(folder) for case in CORPUS}
