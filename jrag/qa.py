"""Question answering with cited sources: retrieve documents, find their best passages, answer.

:func:`ask` embeds the question once, retrieves the ``k`` best documents
(:func:`jrag.retrieval.search`), then locates the best passages *inside* them by late-chunk
spans:

- where a document has ``late`` rows, they are searched (dense, plus BM25 where the collection
  has full-text search), restricted to the retrieved documents;
- otherwise (``whole`` or ``chunked`` documents) the document's exact text is read back from the
  store, embedded again in one pass, and cut into late-chunk spans, exactly as a ``late``
  ingest would have done.

Each passage is cited by file, character span in the parsed text, and page where known. With an
LLM (see :mod:`jrag.llm`) the passages are numbered in the prompt and the answer cites them as
[n]; without one the answer is extractive: the passages themselves, quoted with their sources.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from jrag.chunking import late_chunk_spans, pool_spans
from jrag.encoder import Encoder, Tokens
from jrag.errors import InputError
from jrag.llm import ChatBackend, resolve_llm, stream_reply
from jrag.pipeline import IngestOptions
from jrag.retrieval import (
    SearchOptions,
    build_query,
    embed_query,
    late_chunks_of,
    page_at,
    search,
)
from jrag.store import DocumentState, MilvusStore

SYSTEM_PROMPT = (
    "You answer questions about a collection of documents. Use only the numbered context "
    "passages you are given. Cite the passage that supports each statement with its number in "
    "square brackets, like [1] or [2][3]. If the passages do not contain the answer, say so "
    "plainly instead of guessing."
)
NO_MATCH = "No documents matched the question."
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
        if self.page_end in (None, self.page):
            return f"page {self.page}, {chars}"
        return f"pages {self.page}–{self.page_end}, {chars}"


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
        lines = [f"[{c.number}] {c.title} — {c.source}, {c.location}" for c in self.citations]
        return "\n".join(["Sources:", *lines])

    def __str__(self) -> str:
        return f"{self.text}\n\n{self.sources()}" if self.citations else self.text

    def to_dict(self) -> dict:
        """The answer as plain data; each citation also carries its ``location``."""
        data = asdict(self)
        for key in ("citations", "passages"):
            for entry, citation in zip(data[key], getattr(self, key), strict=True):
                entry["location"] = citation.location
        return data


def ask(
    question: str,
    *,
    store: MilvusStore,
    encoder: Encoder,
    k: int = 3,
    passages: int = 3,
    llm: object | None = None,
    options: SearchOptions | None = None,
    vector: np.ndarray | None = None,
    **search_options,
) -> Answer:
    """Answer ``question`` from the ``k`` best documents, citing ``passages`` passages.

    ``llm`` is a LangChain model, a LlamaIndex LLM, a :class:`jrag.llm.ChatBackend` (such as
    ``jrag.llm.from_env()``), or None for an extractive answer that needs no LLM. Further
    keywords (``mode``, ``filter``, ``hybrid``, ``tenant`` …) are search options. ``vector``:
    the question's vector, where the caller already has it.
    """
    backend = resolve_llm(llm)
    options = options or SearchOptions(k=k, **search_options)
    context = retrieve_passages(
        question, store=store, encoder=encoder, passages=passages, options=options, vector=vector
    )
    return answer_from(question, context, backend)


def answer_from(question: str, context: list[Citation], backend: ChatBackend | None) -> Answer:
    """The answer to ``question`` from its ``context`` passages: the LLM's reply, their quotes
    where there is no LLM, or that nothing matched."""
    if not context:
        name = backend.name if backend is not None else "extractive"
        return Answer(question, NO_MATCH, [], [], None, name)
    if backend is None:
        return extractive_answer(question, context)
    prompt = build_prompt(question, context)
    return _replied(question, backend.chat(SYSTEM_PROMPT, prompt), context, prompt, backend)


def answer_events(
    question: str, context: list[Citation], backend: ChatBackend | None
) -> Iterator[tuple[str, dict]]:
    """:func:`answer_from` as it is written, in (event, data) pairs: ``passages``, the reply's
    ``delta`` pieces as the LLM streams them, then the ``answer`` (``Answer.to_dict()``). With
    no LLM or no passages there is nothing to stream: the ``answer`` alone."""
    if backend is None or not context:
        yield "answer", answer_from(question, context, backend).to_dict()
        return
    yield "passages", {"passages": [asdict(c) for c in context]}
    prompt = build_prompt(question, context)
    pieces: list[str] = []
    for piece in stream_reply(backend, SYSTEM_PROMPT, prompt):
        pieces.append(piece)
        yield "delta", {"text": piece}
    reply = "".join(pieces).strip()
    yield "answer", _replied(question, reply, context, prompt, backend).to_dict()


def _replied(
    question: str, reply: str, context: list[Citation], prompt: str, backend: ChatBackend
) -> Answer:
    return Answer(question, reply, cited(reply, context), context, prompt, backend.name)


def retrieve_passages(
    question: str,
    *,
    store: MilvusStore,
    encoder: Encoder,
    passages: int,
    options: SearchOptions,
    vector: np.ndarray | None = None,
) -> list[Citation]:
    """The context :func:`ask` answers from: the best documents' best ``passages`` passages."""
    if isinstance(passages, bool) or not isinstance(passages, int) or passages < 1:
        raise InputError(f"passages must be at least 1, not {passages}")
    if vector is None:
        vector = embed_query(encoder, question)  # once, for the documents and their passages
    if options.rerank is None and not options.mmr:
        ranked, states = store.rank(build_query(store, question, vector, options))
        documents = [states[row.doc_id] for row in ranked]
    else:  # a cross-encoder's order needs each document's best passage, MMR their vectors
        results = search(question, store, encoder, options, vector=vector)
        states = store.states([r.doc_id for r in results])
        documents = [states[r.doc_id] for r in results if r.doc_id in states]
    return find_passages(question, vector, documents, store, encoder, passages, options)


def find_passages(
    question: str,
    vector: np.ndarray,
    documents: Sequence[DocumentState],
    store: MilvusStore,
    encoder: Encoder,
    limit: int = 3,
    options: SearchOptions | None = None,
) -> list[Citation]:
    """The ``limit`` passages of ``documents`` closest to ``question``, numbered from 1: the
    best stored late chunks of documents that have them, the others late-chunked again from
    their exact text; the two lists merged by rank."""
    options = options or SearchOptions()
    with_late = [d for d in documents if "late" in d.kinds]
    without = [d for d in documents if "late" not in d.kinds]
    ranked_lists = [
        _stored_late_passages(question, vector, with_late, store, limit, options),
        _embedded_passages(vector, without, store, encoder, limit),
    ]
    merged = [(rank, c) for cs in ranked_lists for rank, c in enumerate(cs)]
    best = [c for _, c in sorted(merged, key=lambda item: item[0])[:limit]]  # ties: stored first
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
    Numbers that match no passage are ignored."""
    numbers = {int(n) for group in _MARKER.findall(answer) for n in group.split(",")}
    chosen = [p for p in passages if p.number in numbers]
    return chosen or list(passages)


def extractive_answer(question: str, context: list[Citation]) -> Answer:
    """The answer without an LLM: the passages themselves, quoted and numbered."""
    quotes = [f'[{c.number}] "{c.quote.strip()}"' for c in context]
    text = "\n\n".join([EXTRACTIVE_HEADER, *quotes])
    return Answer(question, text, list(context), list(context), None, "extractive")


# -- passages from stored late-chunk rows -------------------------------------------------------


def _stored_late_passages(
    question: str,
    vector: np.ndarray,
    documents: Sequence[DocumentState],
    store: MilvusStore,
    limit: int,
    options: SearchOptions,
) -> list[Citation]:
    if not documents:
        return []
    by_doc = {d.doc_id: d for d in documents}
    inner = late_chunks_of(list(by_doc), options, limit)
    rows = store.top_rows(build_query(store, question, vector, inner), limit)
    quotes = store.document_texts([(by_doc[r.doc_id], r.start, r.end) for r in rows])
    return [
        _citation(by_doc[row.doc_id], row.start, row.end, row.score, quote)
        for row, quote in zip(rows, quotes, strict=True)
    ]


# -- passages by embedding the stored document again ---------------------------------------------


def _embedded_passages(
    vector: np.ndarray,
    documents: Sequence[DocumentState],
    store: MilvusStore,
    encoder: Encoder,
    limit: int,
) -> list[Citation]:
    """Late-chunk each document's exact text, embedded in one batched pass; rank its spans."""
    whole = store.document_texts([(state, 0, None) for state in documents])
    texts = [(state, text) for state, text in zip(documents, whole, strict=True) if text.strip()]
    if not texts:
        return []
    windows_per_doc = encoder.encode_windows([text for _, text in texts])
    scored = []
    for (state, text), windows in zip(texts, windows_per_doc, strict=True):
        spans = late_spans(store, encoder, text)
        vectors, kept = pool_spans(windows, spans)
        scores = vectors @ vector
        for index in np.argsort(-scores)[:limit]:
            start, end = spans[kept[index]]
            scored.append((float(scores[index]), state, start, end, text[start:end]))
    best = sorted(scored, key=lambda item: -item[0])[:limit]
    return [_citation(state, start, end, score, quote) for score, state, start, end, quote in best]


def late_spans(store: MilvusStore, encoder: Encoder, text: str) -> list[tuple[int, int]]:
    """``text``'s late-chunk spans, cut as this collection's late rows were (its recorded
    options; the ingest defaults where it holds no late rows)."""
    recorded = store.manifest.kinds.get("late") or {}
    defaults = IngestOptions()
    encoding = Tokens.from_encoding(encoder.tokenizer.encode(text, add_special_tokens=False))
    return late_chunk_spans(
        text, encoding.offsets,
        chunk_tokens=recorded.get("late_chunk_tokens", defaults.late_chunk_tokens),
        strategy=recorded.get("late_strategy", defaults.late_strategy),
    )  # fmt: skip


def _citation(state: DocumentState, start: int, end: int, score: float, quote: str) -> Citation:
    return Citation(
        number=0,
        source=state.source,
        title=state.title,
        start=start,
        end=end,
        page=page_at(state, start),
        page_end=page_at(state, end),
        quote=quote,
        score=score,
        doc_id=state.doc_id,
    )
