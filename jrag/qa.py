"""Question answering with cited sources: retrieve documents, find their best passages, answer.

:func:`ask` retrieves the ``k`` best documents (:func:`jrag.pipeline.search`), then locates the
best passages *inside* them by late-chunk spans:

- where the collection holds ``late`` rows for a document, their stored vectors are searched
  (restricted to that document);
- otherwise (``whole`` or ``chunked`` collections) the document's text is put back together from
  its stored rows, embedded again in one pass, and cut into late-chunk spans, exactly as a
  ``late`` ingest would have done.

Each passage is cited by file, character span in the parsed text, and page where known. With an
LLM (see :mod:`jrag.llm`) the passages are numbered in the prompt and the answer cites them as
[n]; without one the answer is extractive: the passages themselves, quoted with their sources.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from jrag.chunking import late_chunk_spans, pool_spans
from jrag.encoder import Encoder
from jrag.errors import InputError
from jrag.llm import ChatBackend, resolve_llm
from jrag.pipeline import IngestOptions, SearchResult, search
from jrag.store import Hit, MilvusStore, quote

SYSTEM_PROMPT = (
    "You answer questions about a collection of documents. Use only the numbered context "
    "passages you are given. Cite the passage that supports each statement with its number in "
    "square brackets, like [1] or [2][3]. If the passages do not contain the answer, say so "
    "plainly instead of guessing."
)
EXTRACTIVE_HEADER = "No LLM is configured, so here are the best-matching passages, quoted:"
_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass
class Citation:
    """One numbered passage: where it lies in its document's parsed text, and its words.

    ``start``/``end`` are character offsets into the text :func:`jrag.parse.parse_file` gives
    for ``source``, so ``parse_file(source).text[start:end] == quote``.
    """

    number: int
    source: str
    title: str
    start: int
    end: int
    page: int | None
    page_end: int | None
    quote: str
    score: float
    doc_id: str

    @property
    def location(self) -> str:
        """``pages 3–4, chars 1200–2250`` (pages only where known)."""
        chars = f"chars {self.start}–{self.end}"
        if self.page is None:
            return chars
        pages = (
            f"page {self.page}"
            if self.page_end in (None, self.page)
            else f"pages {self.page}–{self.page_end}"
        )
        return f"{pages}, {chars}"


@dataclass
class Answer:
    """An answer with the passages it rests on.

    ``text`` carries inline markers ([1], [2]) that match ``Citation.number``. ``citations``
    holds the passages the answer cites (all of them if it cites none — the answer still rests
    on them); ``passages`` holds every passage given as context. ``prompt`` is the user message
    sent after :data:`SYSTEM_PROMPT`, None for an extractive answer.
    """

    question: str
    text: str
    citations: list[Citation]
    passages: list[Citation] = field(default_factory=list)
    prompt: str | None = None
    backend: str = "extractive"

    def sources(self) -> str:
        """The ``Sources:`` list, one line per cited passage."""
        lines = ["Sources:"]
        for c in self.citations:
            lines.append(f"[{c.number}] {c.title} — {c.source}, {c.location}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.text}\n\n{self.sources()}" if self.citations else self.text

    def to_dict(self) -> dict:
        return asdict(self)


def ask(
    question: str,
    *,
    store: MilvusStore,
    encoder: Encoder,
    k: int = 3,
    mode: str = "whole",
    filter: str | None = None,
    passages: int = 3,
    llm: object | None = None,
) -> Answer:
    """Answer ``question`` from the ``k`` best documents, citing ``passages`` passages.

    ``llm`` is a LangChain model, a LlamaIndex LLM, a :class:`jrag.llm.ChatBackend` (such as
    ``jrag.llm.from_env()``), or None for an extractive answer that needs no LLM.
    """
    backend = resolve_llm(llm)
    if passages < 1:
        raise InputError(f"passages must be at least 1, not {passages}")
    results = search(question, store, encoder, k=k, mode=mode, filter=filter)
    context = find_passages(question, results, store, encoder, limit=passages)
    if not context:
        return Answer(question, "No documents matched the question.", [], [], None, _name(backend))
    if backend is None:
        return _extractive(question, context)
    prompt = build_prompt(question, context)
    reply = backend.chat(SYSTEM_PROMPT, prompt)
    return Answer(question, reply, cited(reply, context), context, prompt, backend.name)


def find_passages(
    question: str,
    results: Sequence[SearchResult],
    store: MilvusStore,
    encoder: Encoder,
    *,
    limit: int = 3,
) -> list[Citation]:
    """The ``limit`` passages of the retrieved documents closest to ``question``, numbered from 1.

    Each document contributes its best late-chunk spans; all are then ranked by cosine with the
    question, best first.
    """
    if not results:
        return []
    query = encoder.encode([question])[0]
    candidates: list[Citation] = []
    without_late_rows = []
    for result in results:
        found = _stored_late_passages(query, result, store, limit)
        candidates += found
        if not found:
            without_late_rows.append(result)
    candidates += _embedded_passages(query, without_late_rows, store, encoder, limit)
    candidates.sort(key=lambda c: -c.score)
    best = candidates[:limit]
    for number, citation in enumerate(best, 1):
        citation.number = number
    return best


def build_prompt(question: str, passages: Sequence[Citation]) -> str:
    """The user message: numbered passages, each with its source, then the question."""
    blocks = [
        f"[{p.number}] {p.title} ({p.source}, {p.location})\n{p.quote.strip()}" for p in passages
    ]
    return "Context passages:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question.strip()}"


def cited(answer: str, passages: Sequence[Citation]) -> list[Citation]:
    """The passages whose numbers the answer cites ([2], [1][3], [1, 3]); all if it cites none.

    Numbers that match no passage are ignored.
    """
    numbers = {int(n) for group in _MARKER.findall(answer) for n in group.split(",")}
    chosen = [p for p in passages if p.number in numbers]
    return chosen or list(passages)


def _extractive(question: str, context: list[Citation]) -> Answer:
    quotes = [f'[{c.number}] "{c.quote.strip()}"' for c in context]
    text = "\n\n".join([EXTRACTIVE_HEADER, *quotes])
    return Answer(question, text, list(context), list(context), None, "extractive")


def _name(backend: ChatBackend | None) -> str:
    return backend.name if backend is not None else "extractive"


# -- passages from stored late-chunk rows -------------------------------------------------------


def _stored_late_passages(
    query: np.ndarray, result: SearchResult, store: MilvusStore, limit: int
) -> list[Citation]:
    hits = store.search(query, k=limit, kind="late", filter=f"doc_id == {quote(result.doc_id)}")
    return [
        _citation(result, h.start, h.end, h.text, h.score, h.metadata.get("page"),
                  h.metadata.get("page_end"))
        for h in hits
    ]  # fmt: skip


# -- passages by embedding the stored document again ---------------------------------------------


def _embedded_passages(
    query: np.ndarray,
    results: Sequence[SearchResult],
    store: MilvusStore,
    encoder: Encoder,
    limit: int,
) -> list[Citation]:
    """Late-chunk each document put back together from its ``doc`` (or ``chunk``) rows.

    The documents are embedded in one batched call; each yields its ``limit`` best spans.
    """
    documents = []
    for result in results:
        rows = _one_version(store.get_rows([result.doc_id], "doc"))
        rows = rows or _one_version(store.get_rows([result.doc_id], "chunk"))
        text = _stitch(rows)
        if text.strip():
            documents.append((result, rows, text))
    if not documents:
        return []
    windows_per_doc = encoder.encode_windows([text for _, _, text in documents])
    citations = []
    for (result, rows, text), windows in zip(documents, windows_per_doc, strict=True):
        encoding = encoder.tokenizer.encode(text, add_special_tokens=False)
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        spans = late_chunk_spans(text, offsets, chunk_tokens=IngestOptions.late_chunk_tokens)
        vectors, kept = pool_spans(windows, spans)
        scores = vectors @ query
        pages = _PageAnchors(rows)
        for index in np.argsort(-scores)[:limit]:
            start, end = spans[kept[index]]
            citations.append(
                _citation(result, start, end, text[start:end], float(scores[index]),
                          pages.at(start), pages.at(end))
            )  # fmt: skip
    return citations


def _one_version(rows: list[Hit]) -> list[Hit]:
    """Rows of one content version (an interrupted re-ingest can leave two): the fuller one."""
    if not rows:
        return rows
    version = Counter(r.content_hash for r in rows).most_common(1)[0][0]
    return [r for r in rows if r.content_hash == version]


def _stitch(rows: Sequence[Hit]) -> str:
    """The document's text from rows that cover it, each placed at its own offset.

    ``doc`` windows overlap and cover the text from its first to its last token; ``chunk`` rows
    leave the whitespace between them out, which comes back as spaces, so offsets stay exact.
    """
    length = max((r.start + len(r.text) for r in rows), default=0)
    chars = [" "] * length
    for row in rows:
        chars[row.start : row.start + len(row.text)] = row.text
    return "".join(chars)


class _PageAnchors:
    """Pages known from row boundaries: a row's start lies on its ``page``, its end on
    ``page_end``. An offset's page is known when the anchors around it agree."""

    def __init__(self, rows: Sequence[Hit]):
        anchors = sorted(
            (offset, page)
            for r in rows
            for offset, page in ((r.start, r.metadata.get("page")),
                                 (r.end, r.metadata.get("page_end")))
            if page is not None
        )  # fmt: skip
        self.offsets = [offset for offset, _ in anchors]
        self.pages = [page for _, page in anchors]

    def at(self, offset: int) -> int | None:
        after = bisect.bisect_left(self.offsets, offset)
        if after < len(self.offsets) and self.offsets[after] == offset:
            return self.pages[after]
        if 0 < after < len(self.offsets) and self.pages[after - 1] == self.pages[after]:
            return self.pages[after]
        return None


def _citation(
    result: SearchResult,
    start: int,
    end: int,
    text: str,
    score: float,
    page: int | None,
    page_end: int | None,
) -> Citation:
    return Citation(
        number=0,
        source=result.source,
        title=result.title,
        start=start,
        end=end,
        page=page,
        page_end=page_end,
        quote=text,
        score=score,
        doc_id=result.doc_id,
    )
