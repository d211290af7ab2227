"""Turn documents on disk into plain text with page offsets.

PDF, HTML, DOCX and Markdown go through ``unstructured``'s partitioners, run offline (see
:mod:`jrag._spacy_offline`); plain text is decoded here, so that its line breaks and indentation
survive. Every failure is a :class:`~jrag.errors.ParseError` whose one-line message names the
file. Discovery keeps each file's path as found under the folder given, links included, and walks
without recursion, so links and loops cannot make it leave the folder or run forever.
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import errno
import hashlib
import importlib
import io
import json
import logging
import os
import re
import signal
import stat
import threading
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from jrag.errors import ParseError
from jrag.terminal import printable

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
    ".jsonl": "jsonl",  # one document per line: read by jrag.records, not parsed here
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


@dataclass(frozen=True)
class ParseLimits:
    """What one file may cost to parse; a file past a limit fails alone, by name.

    A DOCX is a zip: ``word/document.xml`` can inflate a thousandfold (a 1.1 MB file held 315 MB
    of XML and 3 GB of memory for minutes). Its members' sizes are checked before any XML is
    read: at most ``max_inflate_ratio`` times the file's size (never less than
    ``min_inflated_bytes``) and at most ``max_inflated_bytes``. Ordinary DOCX files inflate 3-20
    times, so the ratio leaves them a wide margin. ``max_parse_seconds`` bounds the parser's own
    time (where the process can set an alarm: in its main thread).
    """

    max_file_bytes: int = 100 * 1024 * 1024
    max_inflate_ratio: float = 100.0
    min_inflated_bytes: int = 8 * 1024 * 1024
    max_inflated_bytes: int = 200 * 1024 * 1024
    max_parse_seconds: float = 300.0


DEFAULT_LIMITS = ParseLimits()
_TITLE_MAX_WORDS = 12
_PDF_RUNTIME_MODULES = ("pikepdf", "pypdf")
_REASON_MAX_CHARS = 200
_LOOP = "a symlink loop"
BROKEN_LINK = "a broken symlink"  # the reason discovery gives; prune treats it as gone
# libxml2, under lxml and so under unstructured, stops at about 255 nested elements and drops
# the rest of the page; deeper HTML is read flat instead (see _FlatHTMLText).
_HTML_MAX_DEPTH = 240
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)\b[^>]*?(/?)>")
# Void elements, and elements whose end tag HTML lets a page leave out.
_NO_END_TAG_NEEDED = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
    | {"track", "wbr", "html", "head", "body", "p", "li", "dt", "dd", "tr", "td", "th"}
    | {"thead", "tbody", "tfoot", "option", "optgroup", "rt", "rp", "colgroup", "caption"}
)
_SKIPPED_TAGS = frozenset({"script", "style", "template", "noscript", "title"})
_HEADING_TAGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_BLOCK_TAGS = _HEADING_TAGS | frozenset(
    {"address", "article", "aside", "blockquote", "br", "dd", "details", "div", "dl", "dt"}
    | {"figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav", "ol"}
    | {"p", "pre", "section", "summary", "table", "td", "th", "tr", "ul"}
)
_IO_OBJECT = re.compile(r"<_io\.\w+ object at 0x[0-9a-f]+>")  # how a BytesIO names itself
_YAML_KEY = re.compile(r"[A-Za-z_][\w-]*[ \t]*:")


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
    # The user's own fields (front matter, a JSON Lines record's other fields, --metadata):
    # stored apart from jrag's, see jrag.store.metadata.
    metadata: dict = field(default_factory=dict)

    def page_at(self, char_offset: int) -> int | None:
        """The 1-based page holding ``char_offset``; None if pages are unknown or it is outside.

        ``len(text)`` counts as inside, so an exclusive end offset maps to the last page.
        """
        if not self.page_starts or not 0 <= char_offset <= len(self.text):
            return None
        # Pages without text share their start with the next page; bisect_right picks the later.
        return max(1, bisect.bisect_right(self.page_starts, char_offset))


def display_path(path: str | Path) -> str:
    """``path`` for a one-line message, safe for a terminal (:func:`jrag.terminal.printable`)."""
    return printable(str(path))


@dataclass
class Discovery:
    """What :func:`discover_files` found: the files to parse, and what it left out and why."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)


def discover(
    paths: Sequence[str | Path], glob: str | None = None, *, follow_links: bool = False
) -> list[Path]:
    """The files of :func:`discover_files`, for callers that don't report skipped entries."""
    return discover_files(paths, glob, follow_links=follow_links).files


def discover_files(
    paths: Sequence[str | Path], glob: str | None = None, *, follow_links: bool = False
) -> Discovery:
    """Expand files and folders (recursively) into supported files, sorted, deduplicated.

    A path that doesn't exist raises ParseError naming it; one that cannot be looked at is
    skipped with its reason (and raises when it is the only path). `glob` (e.g. "*.md")
    filters names.
    Inside folders, unsupported files and hidden files or folders (".name") are ignored; a file
    named directly with an unsupported suffix is an error.

    Each folder given is resolved once; what lies inside it keeps the path it was found under,
    links included, so that a link's document is stored (and pruned) under the link's own path.
    Symlinks whose target leaves the folder are skipped with a reason unless ``follow_links``;
    symlink loops, broken links and entries that are not regular files (FIFOs, sockets) are
    skipped with a reason too.
    """
    found: set[Path] = set()
    skipped: dict[str, str] = {}
    unreadable: list[ParseError] = []
    for raw in paths:
        path = Path(raw).expanduser()
        try:
            exists = path.exists()
        except OSError as exc:
            # An unreadable path among several fails alone; alone, it is the command's error.
            unreadable.append(ParseError(f"{display_path(raw)} cannot be read: {_reason(exc)}"))
            skipped[str(path)] = f"cannot be read: {_reason(exc)}"
            continue
        if not exists:
            broken = " (a broken symlink)" if path.is_symlink() else ""
            raise ParseError(f"{display_path(raw)} does not exist{broken}")
        if path.is_dir():
            _walk(resolve_root(path), glob, follow_links, found, skipped)
        else:
            _doc_type(path)  # raises for an unsupported suffix
            if glob is None or path.match(glob):
                named = resolve_root(path)
                try:
                    _add_file(named, named.stat(), found, skipped)
                except OSError as exc:
                    skipped[str(named)] = f"cannot be read: {_reason(exc)}"
    if unreadable and len(unreadable) == len(paths):
        raise unreadable[0]
    return Discovery(
        files=sorted(found),
        skipped=sorted((p, r) for p, r in skipped.items() if Path(p) not in found),
    )


def resolve_root(path: str | Path) -> Path:
    """The absolute form of a path given to :func:`discover_files`, as its results start.

    A folder is resolved through links; a file keeps its own name (a link stays the link) in its
    resolved folder. Pruning should compare stored sources against roots in this form.
    """
    path = Path(path).expanduser().absolute()
    return path.resolve() if path.is_dir() else path.parent.resolve() / path.name


def _walk(
    root: Path, glob: str | None, follow_links: bool, found: set[Path], skipped: dict[str, str]
) -> None:
    """Walk ``root`` (resolved) without recursion; each real folder is entered at most once."""
    stack: list[tuple[Path, Path]] = [(root, root)]  # (path as found, real path)
    entered = {root}
    while stack:
        folder, real_folder = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            skipped[str(folder)] = f"cannot be read: {_reason(exc)}"
            continue
        subfolders: list[tuple[Path, Path]] = []  # walked in name order: the first link wins
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = folder / entry.name
            wanted = path.suffix.lower() in SUPPORTED_SUFFIXES and (
                glob is None or path.match(glob)
            )
            try:
                if entry.is_symlink():
                    target = _link_target(path, real_folder)
                    if isinstance(target, str):  # a reason to skip it
                        if wanted or target.startswith(_LOOP):
                            skipped[str(path)] = target
                        continue
                    outside = target != root and root not in target.parents
                    if target.is_dir():
                        reason = _folder_link_refusal(target, outside, follow_links, entered)
                        if reason:
                            skipped[str(path)] = reason
                        else:
                            entered.add(target)
                            subfolders.append((path, target))
                    elif wanted and outside and not follow_links:
                        skipped[str(path)] = f"links to {display_path(target)}, outside the folder"
                    elif wanted:
                        _add_file(path, target.stat(), found, skipped)
                elif entry.is_dir(follow_symlinks=False):
                    entered.add(real_folder / entry.name)
                    subfolders.append((path, real_folder / entry.name))
                elif wanted:
                    _add_file(path, entry.stat(follow_symlinks=False), found, skipped)
            except OSError as exc:
                if wanted:
                    skipped[str(path)] = f"cannot be read: {_reason(exc)}"
        stack.extend(reversed(subfolders))


def _link_target(link: Path, real_folder: Path) -> Path | str:
    """The resolved target of ``link``, or why it cannot be followed."""
    try:
        target = link.resolve(strict=True)
    except FileNotFoundError:
        return BROKEN_LINK
    except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError for a loop
        if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
            return _LOOP
        return f"cannot be read: {_reason(exc)}"
    if target == real_folder or target in real_folder.parents:
        return f"{_LOOP}: links to {display_path(target)}, a folder it is inside"
    return target


def _folder_link_refusal(
    target: Path, outside: bool, follow_links: bool, entered: set[Path]
) -> str | None:
    """Why a symlink to the folder ``target`` is not walked, or None to walk it.

    A link to a folder inside the root would only list the same files twice (and could loop),
    so only links that leave the root are followed, and only on request.
    """
    shown = display_path(target)
    if not outside:
        return f"links to {shown}, inside the folder, whose files are found there"
    if not follow_links:
        return f"links to {shown}, outside the folder"
    if target in entered:
        return f"links to {shown}, which was walked already"
    return None


def _add_file(path: Path, st: os.stat_result, found: set[Path], skipped: dict[str, str]) -> None:
    if stat.S_ISREG(st.st_mode):
        found.add(path)
    else:
        skipped[str(path)] = f"is not a regular file ({_file_kind(st.st_mode)})"


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def read_file(path: str | Path, limits: ParseLimits = DEFAULT_LIMITS) -> tuple[bytes, str]:
    """A file's bytes and their SHA-256 hex digest, read once. Raises ParseError naming it.

    The file is opened without blocking and checked to be a regular file (and no larger than
    ``limits.max_file_bytes``) before it is read, so a FIFO or device named like a document
    fails at once instead of hanging.
    """
    data, _ = _read_regular_file(Path(path).expanduser(), limits.max_file_bytes)
    return data, hashlib.sha256(data).hexdigest()


def _read_regular_file(path: Path, max_bytes: int = 0) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file, and its status from the same open file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    try:
        st = os.fstat(fd)
        _require_regular(path, st.st_mode)
        if max_bytes and st.st_size > max_bytes:
            raise ParseError(
                f"{display_path(path)} is {st.st_size / 2**20:,.1f} MB, over the limit of "
                f"{max_bytes / 2**20:,.0f} MB (--max-file-size)"
            )
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as handle:
            fd = -1  # the handle owns it now
            return handle.read(), st
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    finally:
        if fd != -1:
            os.close(fd)


def _require_regular(path: Path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise ParseError(f"{display_path(path)} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise ParseError(f"{display_path(path)} is not a regular file ({_file_kind(mode)})")


def _unreadable(path: Path, exc: OSError) -> ParseError:
    shown = display_path(path)
    if isinstance(exc, FileNotFoundError):
        broken = " (a broken symlink)" if path.is_symlink() else ""
        return ParseError(f"{shown} does not exist{broken}")
    if isinstance(exc, IsADirectoryError):
        return ParseError(f"{shown} is a directory, not a file")
    if isinstance(exc, PermissionError):
        return ParseError(f"{shown} cannot be read: permission denied")
    return ParseError(f"{shown} cannot be read: {_reason(exc)}")


def parse_file(
    path: str | Path,
    *,
    data: bytes | None = None,
    content_hash: str | None = None,
    limits: ParseLimits = DEFAULT_LIMITS,
) -> ParsedDocument:
    """Parse one file through unstructured, offline. Raises ParseError naming the file.

    Pass ``data`` (and its ``content_hash``) from :func:`read_file` to parse bytes already read:
    the file is then not read or hashed again. The source is the absolute path as given, links
    not resolved, so that it matches what :func:`discover_files` found.
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    shown = display_path(path)
    doc_type = _doc_type(path)
    if doc_type == "jsonl":
        raise ParseError(f"{shown} is JSON Lines (a document per line): use `jrag ingest`")
    if data is None:
        data, st = _read_regular_file(path, limits.max_file_bytes)
    else:
        try:
            st = path.stat()
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        _require_regular(path, st.st_mode)
    if not data.strip():
        raise ParseError(f"{shown} is empty")

    page_count: int | None = None
    page_starts: tuple[int, ...] = ()
    metadata: dict = {}
    if doc_type == "txt":
        text = _normalize_plain_text(_decode_text(path, data))
        title = _plain_text_title(text)
    elif doc_type in ("html", "md"):
        text, title, metadata = _parse_markup(path, doc_type, data)
    else:
        if doc_type == "pdf":
            page_count = _pdf_page_count(path, data)
        if doc_type == "docx":
            _check_inflated_size(path, data, limits)
        with _time_limit(path, limits.max_parse_seconds):
            elements = _partition(path, doc_type, data)
        text, title, starts_by_page = _join_elements(elements)
        if doc_type == "pdf" and page_count:
            page_starts = _fill_page_starts(starts_by_page, page_count, len(text))
    if not text.strip():
        if doc_type == "pdf" and _pdf_has_images(data):
            raise ParseError(f"{shown} has no text layer (scanned? jrag does not do OCR)")
        raise ParseError(f"{shown} yielded no text")

    return ParsedDocument(
        source=str(path),
        text=text,
        title=title or path.stem,
        doc_type=doc_type,
        size=len(data),
        mtime=st.st_mtime,
        content_hash=content_hash or hashlib.sha256(data).hexdigest(),
        page_count=page_count,
        page_starts=page_starts,
        metadata=metadata,
    )


def _reason(exc: BaseException, path: Path | None = None) -> str:
    """An exception as one short line, without the file's path (the message names it)."""
    text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    if path is not None:
        text = text.replace(repr(str(path)), "the file").replace(str(path), "the file")
    text = " ".join(_IO_OBJECT.sub("the file", text).split())
    return text if len(text) <= _REASON_MAX_CHARS else text[: _REASON_MAX_CHARS - 1] + "…"


def _doc_type(path: Path) -> str:
    try:
        return SUPPORTED_SUFFIXES[path.suffix.lower()]
    except KeyError:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        suffix = display_path(path.suffix or "(no suffix)")
        raise ParseError(
            f"{display_path(path)} has an unsupported file type {suffix}; supported: {supported}"
        ) from None


def _decode_text(path: Path, data: bytes) -> str:
    """Decode a text file: BOM, else UTF-16 by its zero bytes, else UTF-8, else the detected
    legacy encoding (warned). NUL characters are dropped (warned)."""
    shown = display_path(path)
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _drop_nul(path, data.decode(encoding))
            except UnicodeDecodeError as exc:
                raise ParseError(
                    f"{shown} starts with a {encoding} BOM but is not {encoding}: {exc.reason}"
                ) from exc
    sample = data[:_BINARY_SAMPLE]
    utf16 = _utf16_without_bom(sample)
    if utf16 is not None:
        try:
            return _drop_nul(path, data.decode(utf16))
        except UnicodeDecodeError:
            pass
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    if controls > _BINARY_CONTROL_RATIO * len(sample):
        raise ParseError(f"{shown} looks like binary data, not text")
    try:
        return _drop_nul(path, data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    lenient = data.decode("utf-8", errors="replace")
    replaced = lenient.count("\ufffd")
    decoded_non_ascii = sum(1 for c in lenient if c > "\x7f") - replaced
    if decoded_non_ascii > replaced:  # more valid multi-byte UTF-8 than broken bytes
        logger.warning(
            "%s is not valid UTF-8: %d undecodable byte sequence(s) replaced by U+FFFD",
            shown,
            replaced,
        )
        return _drop_nul(path, lenient)
    encoding = _detect_legacy_encoding(data)
    logger.warning("%s is not UTF-8; decoding it as %s", shown, encoding)
    try:
        return _drop_nul(path, data.decode(encoding))
    except (UnicodeDecodeError, LookupError):
        logger.warning("%s does not decode as %s either; decoding it as latin-1", shown, encoding)
        return _drop_nul(path, data.decode("latin-1"))


def _utf16_without_bom(sample: bytes) -> str | None:
    """ "utf-16-le" or "utf-16-be" if zero bytes sit in every other byte, as in UTF-16 text
    that is mostly Latin script; else None."""
    pairs = len(sample) // 2
    if pairs < 2 or len(sample) % 2:
        return None
    zeros_even, zeros_odd = sample[0::2].count(0), sample[1::2].count(0)
    if zeros_odd >= 0.4 * pairs and zeros_even <= 0.02 * pairs:
        return "utf-16-le"
    if zeros_even >= 0.4 * pairs and zeros_odd <= 0.02 * pairs:
        return "utf-16-be"
    return None


def _drop_nul(path: Path, text: str) -> str:
    """NUL characters carry no text and break downstream stores; drop them, with a warning."""
    count = text.count("\x00")
    if count:
        logger.warning("%s holds %d NUL character(s); dropping them", display_path(path), count)
        text = text.replace("\x00", "")
    return text


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


def _pdf_page_count(path: Path, data: bytes) -> int:
    """Open the PDF with pdfminer, which unstructured uses too, and count its pages.

    unstructured swallows pdfminer's errors and returns no elements, so a corrupt or encrypted
    file has to be caught here to get a useful message.
    """
    from pdfminer.pdfdocument import PDFDocument, PDFPasswordIncorrect
    from pdfminer.pdfpage import PDFPage
    from pdfminer.pdfparser import PDFParser

    shown = display_path(path)
    try:
        document = PDFDocument(PDFParser(io.BytesIO(data)))
        if not document.is_extractable:
            raise ParseError(f"{shown} is not a readable PDF: text extraction is not allowed")
        return sum(1 for _ in PDFPage.create_pages(document))
    except ParseError:
        raise
    except PDFPasswordIncorrect:
        raise ParseError(f"{shown} is not a readable PDF: it is password-protected") from None
    except Exception as exc:
        raise ParseError(f"{shown} is not a readable PDF: {_reason(exc, path)}") from exc


def _pdf_has_images(data: bytes) -> bool:
    """Whether any page of a (text-less) PDF draws an image: then it is most likely a scan."""
    from pypdf import PdfReader

    try:
        return any(len(page.images) for page in PdfReader(io.BytesIO(data)).pages)
    except Exception:  # only refines a message; the file has already failed to yield text
        return False


def _check_inflated_size(path: Path, data: bytes, limits: ParseLimits) -> None:
    """Refuse a zip whose members would inflate past the limits, from its directory alone
    (zipfile stops a member that inflates past its recorded size, so the record holds)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ParseError(f"{display_path(path)} is not a readable DOCX: {_reason(exc)}") from exc
    allowed = min(
        limits.max_inflated_bytes,
        max(limits.min_inflated_bytes, int(limits.max_inflate_ratio * len(data))),
    )
    if inflated > allowed:
        raise ParseError(
            f"{display_path(path)} would inflate to {inflated / 2**20:,.1f} MB "
            f"({inflated / max(1, len(data)):,.0f} times its size), over the limit of "
            f"{allowed / 2**20:,.1f} MB; not parsed"
        )


class _ParseTimeout(BaseException):  # not caught as a parser failure on its way out
    pass


@contextlib.contextmanager
def _time_limit(path: Path, seconds: float) -> Iterator[None]:
    """Stop the parser after ``seconds`` (main thread only: elsewhere no alarm can be set)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise _ParseTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _ParseTimeout:
        raise ParseError(
            f"{display_path(path)} took longer than {seconds:.0f} s to parse; not parsed"
        ) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _partition(path: Path, doc_type: str, data: bytes | str) -> list[Element]:
    """The elements of a file, from its bytes (PDF, DOCX) or its decoded text (HTML, Markdown).

    What a partitioner raises becomes a one-line ParseError naming the file.
    """
    from jrag._spacy_offline import prepare_unstructured

    prepare_unstructured()
    # languages=["eng"] skips per-document language detection and its "no languages" warning.
    try:
        if doc_type == "pdf":
            # Without these, partition_pdf swallows the ImportError and returns no elements.
            for module in _PDF_RUNTIME_MODULES:
                importlib.import_module(module)
            from unstructured.partition.pdf import partition_pdf

            return partition_pdf(file=io.BytesIO(data), strategy="fast", languages=["eng"])
        if doc_type == "html":
            from unstructured.partition.html import partition_html

            return partition_html(text=data, languages=["eng"])
        if doc_type == "md":
            from unstructured.partition.md import partition_md

            return partition_md(text=data, languages=["eng"])
        from unstructured.partition.docx import partition_docx

        return partition_docx(file=io.BytesIO(data), languages=["eng"])
    except ParseError:
        raise
    except ImportError as exc:
        raise ParseError(
            f"{display_path(path)} cannot be parsed: {doc_type.upper()} support is not installed "
            f"({_reason(exc)})"
        ) from exc
    except Exception as exc:
        raise ParseError(
            f"{display_path(path)} is not a readable {doc_type.upper()}: {_reason(exc, path)}"
        ) from exc


def _parse_markup(path: Path, doc_type: str, data: bytes) -> tuple[str, str, dict]:
    """The text, title and front matter (Markdown's, as metadata) of an HTML or Markdown file.

    unstructured's elements are used where it can read the file. HTML nested deeper than lxml
    parses, or markup in which unstructured finds no text (or hits Python's recursion limit), is
    read flat instead, so that its text is not lost; a warning says so.
    """
    shown = display_path(path)
    text = _decode_text(path, data)
    if not text.strip():
        raise ParseError(f"{shown} is empty")
    front_title, front = "", {}
    if doc_type == "md":
        text, front = _split_front_matter(text, shown)
        front_title = front["title"] if isinstance(front.get("title"), str) else ""
        if not text.strip():
            raise ParseError(f"{shown} yielded no text: it holds only front matter")
    depth = _html_depth(text) if doc_type == "html" else 0
    if depth > _HTML_MAX_DEPTH:
        why = f"its HTML nests {depth} levels deep, deeper than lxml parses"
    else:
        try:
            elements = _partition(path, doc_type, text)
            why = "unstructured found no text in it"
        except ParseError as err:
            if not isinstance(err.__cause__, RecursionError):
                raise
            elements, why = [], "unstructured hit Python's recursion limit"
        joined, title, _ = _join_elements(elements)
        if joined.strip():
            return joined, front_title or title, front
    html = text if doc_type == "html" else _render_markdown(text)
    flat, title = _flat_html_text(html) if html is not None else (_normalize_plain_text(text), "")
    if flat.strip():
        logger.warning("%s: %s; reading its text without structure", shown, why)
    return flat, front_title or title, front


def _split_front_matter(markdown: str, shown: str) -> tuple[str, dict]:
    """Markdown without a leading YAML front matter block, and the block's fields as plain JSON
    (dates as ISO text). Malformed front matter is a ParseError naming the file ``shown``."""
    lines = markdown.split("\n")
    if lines[0].strip() != "---":
        return markdown, {}
    end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
    if end is None:
        return markdown, {}
    block = [line for line in lines[1:end] if line.strip()]
    if block and not _YAML_KEY.match(block[0]):
        return markdown, {}  # a horizontal rule, not front matter
    block_text = "\n".join(lines[1:end])
    try:
        # An alias (*name) can make a few lines expand exponentially once written out as JSON.
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(block_text, yaml.SafeLoader)):
            raise ParseError(f"{shown} has front matter with YAML aliases (*name); spell them out")
        fields = yaml.safe_load(block_text) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 2})" if where is not None else ""
        raise ParseError(f"{shown} has malformed YAML front matter{at}: {_reason(err)}") from None
    if not isinstance(fields, dict):
        raise ParseError(f"{shown} has front matter that is not a set of `name: value` fields")
    try:
        plain = json.dumps({str(k): v for k, v in fields.items()}, default=str, allow_nan=False)
        front = json.loads(plain)
    except ValueError as err:  # NaN or infinity (.nan / .inf in YAML)
        raise ParseError(f"{shown} has front matter JSON cannot hold: {err}") from None
    return "\n".join(lines[end + 1 :]), front


def _render_markdown(text: str) -> str | None:
    """Markdown as HTML, as unstructured renders it; None if the renderer fails."""
    try:
        import markdown

        return markdown.markdown(text, extensions=["tables"])
    except Exception:
        return None


def _html_depth(html: str) -> int:
    """How deep elements nest, counting only tags that must be closed (a cheap regex scan)."""
    depth = deepest = 0
    for match in _TAG.finditer(html):
        closing, name, self_closing = match.group(1), match.group(2).lower(), match.group(3)
        if self_closing or name in _NO_END_TAG_NEEDED:
            continue
        if closing:
            depth = max(0, depth - 1)
        else:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


class _FlatHTMLText(HTMLParser):
    """Text of an HTML page in document order, a paragraph per block element, with no tree.

    The standard library's parser is event-driven, so nesting depth costs nothing.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.title = ""
        self._pieces: list[str] = []
        self._skipping = 0
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping += 1
        elif tag in _BLOCK_TAGS:
            self._flush()
            self._in_heading = tag in _HEADING_TAGS

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._pieces.append(data)

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        paragraph = " ".join("".join(self._pieces).split())
        self._pieces = []
        if paragraph:
            self.paragraphs.append(paragraph)
            if self._in_heading and not self.title:
                self.title = paragraph
        self._in_heading = False


def _flat_html_text(html: str) -> tuple[str, str]:
    """The paragraphs of ``html`` joined, and its first heading."""
    parser = _FlatHTMLText()
    parser.feed(html)
    parser.close()
    return _SEPARATOR.join(parser.paragraphs), parser.title


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
