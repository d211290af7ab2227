"""Turn documents on disk into plain text with page offsets.

PDF, HTML, DOCX and Markdown go through ``unstructured``'s partitioners, run offline (see
:mod:`jrag._spacy_offline`); plain text is decoded here, so that its line breaks and indentation
survive. Every failure is a :class:`~jrag.errors.ParseError` whose message names the file.
"""

from __future__ import annotations

import bisect
import codecs
import hashlib
import importlib
import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jrag.errors import ParseError

if TYPE_CHECKING:
    from unstructured.documents.elements import Element

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES: dict[str, str] = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".docx": "docx",
    ".md": "md",
    ".markdown": "md",
    ".txt": "txt",
    ".text": "txt",
    ".rst": "txt",
}

_SEPARATOR = "\n\n"
# Bytes that never appear in text: C0 controls other than \t \n \v \f \r and ESC, plus DEL.
_CONTROL_BYTES = bytes([*range(0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
_BINARY_SAMPLE = 64 * 1024
_BINARY_CONTROL_RATIO = 0.05
_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_BLANK_LINES = re.compile(r"\n[ \t\f\v]*\n(?:[ \t\f\v]*\n)*")
_TITLE_MAX_WORDS = 12
_PDF_RUNTIME_MODULES = ("pikepdf", "pypdf")


@dataclass(frozen=True)
class ParsedDocument:
    """One parsed file: its text plus what a citation needs to point back into it."""

    source: str
    text: str
    title: str
    doc_type: str
    size: int
    mtime: float
    content_hash: str
    page_count: int | None
    page_starts: tuple[int, ...]

    def page_at(self, char_offset: int) -> int | None:
        """The 1-based page holding ``char_offset``; None if pages are unknown or it is outside.

        ``len(text)`` counts as inside, so an exclusive end offset maps to the last page.
        """
        if not self.page_starts or not 0 <= char_offset <= len(self.text):
            return None
        # Pages without text share their start with the next page; bisect_right picks the later.
        return max(1, bisect.bisect_right(self.page_starts, char_offset))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes: the content hash that decides whether a file changed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def discover(paths: Sequence[str | Path], glob: str | None = None) -> list[Path]:
    """Expand files and folders (recursively) into supported files, sorted, deduplicated.

    A path that doesn't exist raises ParseError naming it. `glob` (e.g. "*.md") filters names.
    Inside folders, unsupported files and hidden files or folders (".name") are skipped; a file
    named directly with an unsupported suffix is an error.
    """
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        try:
            exists = path.exists()
        except OSError as exc:
            raise ParseError(f"{raw} cannot be read: {exc.strerror or exc}") from exc
        if not exists:
            broken = " (a broken symlink)" if path.is_symlink() else ""
            raise ParseError(f"{raw} does not exist{broken}")
        if path.is_dir():
            candidates: Iterable[Path] = (
                p for p in path.rglob("*") if p.is_file() and not _is_hidden(p, path)
            )
            candidates = (p for p in candidates if p.suffix.lower() in SUPPORTED_SUFFIXES)
        else:
            _doc_type(path)  # raises for an unsupported suffix
            candidates = [path]
        found.update(p.resolve() for p in candidates if glob is None or p.match(glob))
    return sorted(found)


def parse_file(path: str | Path) -> ParsedDocument:
    """Parse one file through unstructured, offline. Raises ParseError naming the file."""
    path = Path(path).expanduser()
    st = _stat_regular_file(path)
    doc_type = _doc_type(path)
    data = _read_bytes(path)
    if not data.strip():
        raise ParseError(f"{path} is empty")

    page_count: int | None = None
    page_starts: tuple[int, ...] = ()
    if doc_type == "txt":
        text = _normalize_plain_text(_decode_text(path, data))
        title = _plain_text_title(text) or path.stem
    else:
        if doc_type == "pdf":
            page_count = _pdf_page_count(path)
        elements = _partition(path, doc_type, data)
        text, title, starts_by_page = _join_elements(elements)
        if doc_type == "pdf" and page_count:
            page_starts = _fill_page_starts(starts_by_page, page_count, len(text))
        title = title or path.stem
    if not text.strip():
        hint = " (a scanned PDF needs OCR, which jrag does not do)" if doc_type == "pdf" else ""
        raise ParseError(f"{path} yielded no text{hint}")

    return ParsedDocument(
        source=str(path.resolve()),
        text=text,
        title=title,
        doc_type=doc_type,
        size=len(data),
        mtime=st.st_mtime,
        content_hash=hashlib.sha256(data).hexdigest(),
        page_count=page_count,
        page_starts=page_starts,
    )


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _doc_type(path: Path) -> str:
    try:
        return SUPPORTED_SUFFIXES[path.suffix.lower()]
    except KeyError:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        suffix = path.suffix or "(no suffix)"
        raise ParseError(
            f"{path} has an unsupported file type {suffix}; supported: {supported}"
        ) from None


def _stat_regular_file(path: Path) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        broken = " (a broken symlink)" if path.is_symlink() else ""
        raise ParseError(f"{path} does not exist{broken}") from None
    except PermissionError:
        raise ParseError(f"{path} cannot be read: permission denied") from None
    except OSError as exc:
        raise ParseError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise ParseError(f"{path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise ParseError(f"{path} is not a regular file")
    return st


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except PermissionError:
        raise ParseError(f"{path} cannot be read: permission denied") from None
    except OSError as exc:
        raise ParseError(f"{path} cannot be read: {exc.strerror or exc}") from exc


def _decode_text(path: Path, data: bytes) -> str:
    """Decode a text file: BOM, else UTF-8, else the detected legacy encoding (warned)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise ParseError(
                    f"{path} starts with a {encoding} BOM but is not {encoding}: {exc.reason}"
                ) from exc
    sample = data[:_BINARY_SAMPLE]
    if b"\x00" in sample or (
        len(sample) - len(sample.translate(None, _CONTROL_BYTES))
        > _BINARY_CONTROL_RATIO * len(sample)
    ):
        raise ParseError(f"{path} looks like binary data, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    encoding = _detect_legacy_encoding(data)
    logger.warning("%s is not UTF-8; decoding it as %s", path, encoding)
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        logger.warning("%s does not decode as %s either; decoding it as latin-1", path, encoding)
        return data.decode("latin-1")


def _detect_legacy_encoding(data: bytes) -> str:
    """Best guess at a non-UTF-8 encoding, preferring cp1252 when it reads as well as the best.

    The detector cannot tell Western single-byte encodings apart on short texts (it picks cp1250
    or mac_iceland for plain French or German); cp1252 is by far the most common of them, and
    its strict decoding rejects text that really is in another code page.
    """
    from charset_normalizer import from_bytes
    from charset_normalizer.md import mess_ratio

    best = from_bytes(data).best()
    if best is None:
        return "cp1252"
    try:
        as_cp1252 = data.decode("cp1252")
    except UnicodeDecodeError:
        return best.encoding
    if mess_ratio(as_cp1252, maximum_threshold=1.0) <= best.chaos + 0.1:
        return "cp1252"
    return best.encoding


def _normalize_plain_text(text: str) -> str:
    """Unify line ends and blank-line runs; keep each paragraph's lines and indentation."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = []
    for block in _BLANK_LINES.split(text):
        lines = [line.rstrip() for line in block.split("\n")]
        paragraph = "\n".join(lines).strip("\n")
        if paragraph.strip():
            paragraphs.append(paragraph)
    return _SEPARATOR.join(paragraphs)


def _plain_text_title(text: str) -> str | None:
    """A first paragraph that is one short line without closing punctuation reads as a title."""
    first = text.split(_SEPARATOR, 1)[0].strip()
    if "\n" in first or not first or len(first.split()) > _TITLE_MAX_WORDS:
        return None
    if first[-1] in ".,;:!?" or not any(c.isalpha() for c in first):
        return None
    return first


def _pdf_page_count(path: Path) -> int:
    """Open the PDF with pdfminer, which unstructured uses too, and count its pages.

    unstructured swallows pdfminer's errors and returns no elements, so a corrupt or encrypted
    file has to be caught here to get a useful message.
    """
    from pdfminer.pdfdocument import PDFDocument, PDFPasswordIncorrect
    from pdfminer.pdfpage import PDFPage
    from pdfminer.pdfparser import PDFParser

    try:
        with path.open("rb") as fp:
            document = PDFDocument(PDFParser(fp))
            if not document.is_extractable:
                raise ParseError(f"{path} is not a readable PDF: text extraction is not allowed")
            return sum(1 for _ in PDFPage.create_pages(document))
    except ParseError:
        raise
    except PDFPasswordIncorrect:
        raise ParseError(f"{path} is not a readable PDF: it is password-protected") from None
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise ParseError(f"{path} is not a readable PDF: {reason}") from exc


def _partition(path: Path, doc_type: str, data: bytes) -> list[Element]:
    from jrag._spacy_offline import prepare_unstructured

    prepare_unstructured()
    # languages=["eng"] skips per-document language detection and its "no languages" warning.
    try:
        if doc_type == "pdf":
            # Without these, partition_pdf swallows the ImportError and returns no elements.
            for module in _PDF_RUNTIME_MODULES:
                importlib.import_module(module)
            from unstructured.partition.pdf import partition_pdf

            return partition_pdf(filename=str(path), strategy="fast", languages=["eng"])
        if doc_type == "docx":
            from unstructured.partition.docx import partition_docx

            return partition_docx(filename=str(path), languages=["eng"])
        text = _decode_text(path, data)
        if not text.strip():
            raise ParseError(f"{path} is empty")
        if doc_type == "html":
            from unstructured.partition.html import partition_html

            return partition_html(text=text, languages=["eng"])
        from unstructured.partition.md import partition_md

        return partition_md(text=text, languages=["eng"])
    except ParseError:
        raise
    except ImportError as exc:
        raise ParseError(
            f"{path} cannot be parsed: {doc_type.upper()} support is not installed ({exc})"
        ) from exc
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise ParseError(f"{path} is not a readable {doc_type.upper()}: {reason}") from exc


def _join_elements(elements: Sequence[Element]) -> tuple[str, str, dict[int, int]]:
    """Join element texts; return the text, the first Title, and where each page starts."""
    parts: list[str] = []
    title = ""
    starts_by_page: dict[int, int] = {}
    offset = 0
    for element in elements:
        piece = (element.text or "").strip()
        if not piece:
            continue
        if not title and element.category == "Title":
            title = piece
        if parts:
            offset += len(_SEPARATOR)
        page = element.metadata.page_number
        if page is not None:
            starts_by_page.setdefault(page, offset)
        parts.append(piece)
        offset += len(piece)
    return _SEPARATOR.join(parts), title, starts_by_page


def _fill_page_starts(starts_by_page: dict[int, int], page_count: int, end: int) -> tuple[int, ...]:
    """One start per page; a page without text starts where the next page with text does."""
    starts = [end] * page_count
    following = end
    for page in range(page_count, 0, -1):
        following = starts_by_page.get(page, following)
        starts[page - 1] = following
    # Keep the sequence sorted even if elements came out of page order.
    for i in range(1, page_count):
        starts[i] = max(starts[i], starts[i - 1])
    starts[0] = 0
    return tuple(starts)
