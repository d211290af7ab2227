"""Your own evaluation data: a BEIR-style folder, or a folder of documents plus a queries file.

BEIR layout: ``corpus.jsonl`` ({"_id", "title", "text"}), ``queries.jsonl`` ({"_id", "text"})
and ``qrels/<split>.tsv`` (or ``qrels.tsv``): ``query-id <tab> corpus-id <tab> score`` with an
optional header line. Only queries with at least one relevant document are evaluated.

Documents layout: any folder ``jrag ingest`` reads (parsed with :mod:`jrag.parse`) and a JSONL
file with one query per line: ``{"query": "...", "relevant": ["a.md", "sub/b.pdf"]}``
(``question`` and ``document``/``documents`` are accepted too). Names are paths relative to the
folder, or bare file names when those are unique.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from jrag.errors import InputError
from jrag.evaluation.corpus import Corpus, EvalDocument, EvalQuery
from jrag.parse import discover, parse_file


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot be read: {err}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number}: expected a JSON object per line")
        yield number, record


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{path} does not exist ({what})")
    return path


def _field(record: dict, keys: tuple[str, ...], where: str) -> object:
    for key in keys:
        if key in record:
            return record[key]
    raise InputError(f"{where}: missing field {' or '.join(repr(k) for k in keys)}")


def load_beir(folder: str | Path, split: str = "test") -> Corpus:
    """A BEIR-style dataset folder as one corpus."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder (expected a BEIR-style dataset folder)")
    corpus_path = _require(folder / "corpus.jsonl", "the BEIR corpus file")
    queries_path = _require(folder / "queries.jsonl", "the BEIR queries file")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        qrels_path = _require(folder / "qrels.tsv", f"nor is {folder / 'qrels' / f'{split}.tsv'}")

    documents: dict[str, EvalDocument] = {}
    for number, record in _read_jsonl(corpus_path):
        where = f"{corpus_path}:{number}"
        doc_id = str(_field(record, ("_id",), where))
        title = str(record.get("title") or "")
        body = str(_field(record, ("text",), where))
        text = f"{title}\n\n{body}" if title and body else title or body
        if not text.strip():
            raise InputError(f"{where}: document {doc_id!r} has no text")
        documents[doc_id] = EvalDocument(doc_id, text, title)
    query_texts = {}
    for number, record in _read_jsonl(queries_path):
        where = f"{queries_path}:{number}"
        query_texts[str(_field(record, ("_id",), where))] = str(_field(record, ("text",), where))

    relevant = _read_qrels(qrels_path, documents, query_texts)
    queries = [EvalQuery(qid, query_texts[qid], rel) for qid, rel in relevant.items() if rel]
    if not queries:
        raise InputError(f"{qrels_path}: no query has a relevant document (score > 0)")
    return Corpus(folder.name, list(documents.values()), queries, {"split": split})


def _read_qrels(
    path: Path, documents: dict[str, EvalDocument], queries: dict[str, str]
) -> dict[str, dict[str, int]]:
    relevant: dict[str, dict[str, int]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.strip().split("\t") if "\t" in line else line.split()
        if not parts:
            continue
        if number == 1 and len(parts) == 3 and not parts[2].lstrip("-").isdigit():
            continue  # the header line
        if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
            raise InputError(
                f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>integer score', "
                f"got {line.strip()!r}"
            )
        query_id, doc_id, score = parts[0], parts[1], int(parts[2])
        if query_id not in queries:
            raise InputError(f"{path}:{number}: query {query_id!r} is not in queries.jsonl")
        if doc_id not in documents:
            raise InputError(f"{path}:{number}: document {doc_id!r} is not in corpus.jsonl")
        relevant.setdefault(query_id, {})
        if score > 0:
            relevant[query_id][doc_id] = score
    return relevant


def load_documents(folder: str | Path, queries_file: str | Path) -> Corpus:
    """A folder of documents (parsed like ``jrag ingest`` does) and a JSONL queries file."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of documents")
    queries_path = _require(Path(queries_file).expanduser(), "the queries file")
    root = folder.resolve()
    documents = []
    for path in discover([folder]):
        parsed = parse_file(path)
        documents.append(EvalDocument(path.relative_to(root).as_posix(), parsed.text, parsed.title))
    if not documents:
        raise InputError(f"{folder} holds no document jrag can parse")
    by_path = {d.doc_id: d.doc_id for d in documents}
    by_name: dict[str, list[str]] = {}
    for doc in documents:
        by_name.setdefault(Path(doc.doc_id).name, []).append(doc.doc_id)

    queries = []
    for number, record in _read_jsonl(queries_path):
        where = f"{queries_path}:{number}"
        text = _field(record, ("query", "question"), where)
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: the query is empty")
        names = _field(record, ("relevant", "documents", "document"), where)
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names:
            raise InputError(f"{where}: 'relevant' must name at least one document file")
        relevant = {}
        for name in names:
            matches = [by_path[name]] if name in by_path else by_name.get(str(name), [])
            if len(matches) != 1:
                problem = "matches several files" if matches else f"is not a document in {folder}"
                raise InputError(f"{where}: {name!r} {problem}")
            relevant[matches[0]] = 1
        queries.append(EvalQuery(str(record.get("id", f"q{number}")), text, relevant))
    if not queries:
        raise InputError(f"{queries_path} holds no queries")
    return Corpus(folder.name, documents, queries, {"queries": str(queries_path)})
