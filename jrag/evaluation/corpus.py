"""The plain data an evaluation runs on: documents, queries with their relevant documents."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalDocument:
    """One document to index: an id unique within its corpus, and its full text."""

    doc_id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class EvalQuery:
    """One query and the graded relevance of documents to it (``{doc_id: grade}``, grade > 0)."""

    query_id: str
    text: str
    relevant: dict[str, int]


@dataclass
class Corpus:
    """Documents plus queries, evaluated together; ``label`` names it in tables (e.g. "1024")."""

    label: str
    documents: list[EvalDocument]
    queries: list[EvalQuery]
    info: dict = field(default_factory=dict)

    def qrels(self) -> dict[str, dict[str, int]]:
        return {q.query_id: dict(q.relevant) for q in self.queries}
