"""Documents that arrive as text rather than as files: texts handed over by id, and JSON Lines.

Each becomes a :class:`~jrag.parse.ParsedDocument` like a parsed file, so that it is planned,
embedded and written by the same code as a file (:mod:`jrag.pipeline`). Its ``source`` is its id.

A document's content hash covers its text and its user metadata: changing only the metadata
makes a new version (written and committed as any change is), and re-adding the same text with
the same metadata is skipped. Without metadata the hash is the SHA-256 of the text's UTF-8
bytes, which is what a file holding that text hashes to: a text added by id and the same text
in a file make the same rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jrag.errors import InputError, ParseError
from jrag.parse import DEFAULT_LIMITS, ParsedDocument, ParseLimits, display_path, read_file
from jrag.store.metadata import check_metadata

# How many hex digits of the content hash make a content-derived id.
CONTENT_ID_CHARS = 32


@dataclass(frozen=True)
class RecordFormat:
    """Which fields of a JSON Lines record hold its text and its id; the others are metadata."""

    text_field: str = "text"
    id_field: str = "id"


def content_hash(base_hash: str, metadata: Mapping[str, Any] | None) -> str:
    """``base_hash`` (of the text or file bytes) combined with ``metadata``; unchanged without."""
    if not metadata:
        return base_hash
    canonical = json.dumps(metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{base_hash}\0{canonical}".encode()).hexdigest()


def content_id(text: str) -> str:
    """The id of a document given without one: derived from its text alone, so that adding the
    same text with other metadata replaces its metadata."""
    return text_hash(text)[:CONTENT_ID_CHARS]


def text_hash(text: str, metadata: Mapping[str, Any] | None = None) -> str:
    return content_hash(hashlib.sha256(text.encode("utf-8")).hexdigest(), metadata)


def text_document(
    key: str | None,
    text: str,
    title: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> ParsedDocument:
    """A document handed over as text under ``key``, its source (None: an id derived from the
    content). ``metadata`` is the user's own fields (see :mod:`jrag.store.metadata`)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"document {key!r} has no text")
    fields = check_metadata(metadata, f"metadata of document {key!r}")
    if key is None:
        key = content_id(text)
    if not isinstance(key, str) or not key.strip():
        raise InputError("a document's id must be a non-empty string")
    return ParsedDocument(
        source=key, text=text, title=title or key, doc_type="text",
        size=len(text.encode("utf-8")), mtime=time.time(), content_hash=text_hash(text, fields),
        page_count=None, page_starts=(), metadata=fields,
    )  # fmt: skip


def read_jsonl(
    path: str | Path,
    record_format: RecordFormat = RecordFormat(),
    limits: ParseLimits = DEFAULT_LIMITS,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[list[ParsedDocument], list[tuple[str, str]]]:
    """The documents of a JSON Lines file, one per non-blank line, and the lines that failed
    as ``(file:line, message)``: a bad line fails alone. ``metadata`` fills in fields a record
    does not have. Raises ParseError if the file cannot be read at all."""
    shown = display_path(str(path))
    data, _ = read_file(path, limits)
    try:
        lines = data.decode("utf-8-sig").split("\n")
    except UnicodeDecodeError as err:
        raise ParseError(f"{shown} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    documents: list[ParsedDocument] = []
    failed: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}  # id -> the line that holds it
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{shown}:{number}"
        try:
            document = _record(json.loads(line), record_format, metadata)
            if document.source in first_line:
                raise InputError(
                    f"id {document.source!r} is also on line {first_line[document.source]}"
                )
        except (ValueError, InputError) as err:  # json.JSONDecodeError is a ValueError
            failed.append((where, f"{where}: {err}"))
            continue
        first_line[document.source] = number
        documents.append(document)
    return documents, failed


def _record(
    record: Any, record_format: RecordFormat, extra: Mapping[str, Any] | None
) -> ParsedDocument:
    if not isinstance(record, dict):
        raise InputError("a line must hold a JSON object")
    fields = dict(record)
    text = fields.pop(record_format.text_field, None)
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"no text in field {record_format.text_field!r}")
    key = fields.pop(record_format.id_field, None)
    if isinstance(key, bool) or (key is not None and not isinstance(key, str | int)):
        raise InputError(f"field {record_format.id_field!r} must be a string or a whole number")
    fields = {**(extra or {}), **fields}
    return text_document(None if key is None else str(key), text, metadata=fields)
