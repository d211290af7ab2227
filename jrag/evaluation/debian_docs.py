"""Benchmarks built at run time from Debian's documentation packages (no text is stored here).

:func:`fetch_package` downloads a package with ``apt-get download`` and unpacks it with
``dpkg -x`` into a cache folder (default ``.jrag/debian-docs``, git-ignored), or uses the
installed copy. Two corpora are built from them:

- **paraphrase** (:func:`paraphrase_corpus`): questions asked in other words than the text that
  answers them, over long manuals. From ``debian-faq``: each chapter of the FAQ is a document
  with its question lines removed (and the quoted questions of its cross-references), each
  question a query whose relevant document is its chapter; the other chapters are distractors
  on the same subject. From ``postgresql-doc-15``: each glossary definition that says "for more
  information, see ..." is a query (the definition, without its term) whose relevant document
  is the page it points to; the glossary itself is left out, and other long pages of the manual
  are distractors. Manual headings that are questions are queries too, removed from their page.
- **git-doc** (see ``benchmarks/bench_realtext.py``): the manuals' own section headings, which
  share their words with the text around them.
"""

from __future__ import annotations

import bisect
import gzip
import html
import itertools
import random
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

from jrag.errors import InputError
from jrag.evaluation.corpus import Corpus, EvalDocument, EvalQuery

if TYPE_CHECKING:
    from jrag.encoder import Encoder

DEFAULT_CACHE = Path(".jrag") / "debian-docs"
FAQ_PACKAGE = "debian-faq"
POSTGRES_PACKAGE = "postgresql-doc-15"
FAQ_TEXT = "usr/share/doc/debian/FAQ/debian-faq.en.txt.gz"
POSTGRES_HTML = "usr/share/doc/postgresql-doc-15/html"
PAST_TOKEN = 512  # "deep": the answer starts past the first 512 tokens of its document
MIN_TOKENS = 1200
MAX_TOKENS = 12000

_CHAPTER = re.compile(r"^Chapter\s(\d+)\.\s(\S.*)$")  # \s: the FAQ uses no-break spaces
_QUESTION = re.compile(r"^(\d+(?:\.\d+)+)\.\s(\S.*)$")
# "See Section 14.3, “<the question>” for ...": the quoted question would give it away.
_CROSS_REF = re.compile(r"(Section\s\d+(?:\.\d+)+),\s+“[^”]*”", re.S)


def fetch_package(name: str, cache: Path = DEFAULT_CACHE, installed: str | None = None) -> Path:
    """The root a package's files lie under: ``/`` if ``installed`` (a path inside it) exists,
    else the package downloaded and unpacked into ``cache/<name>`` (kept for the next run)."""
    if installed and (Path("/") / installed).exists():
        return Path("/")
    root = cache / name / "root"
    if root.is_dir():
        return root
    folder = cache / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", name], cwd=folder, check=True, capture_output=True)
        package = next(folder.glob(f"{name}_*.deb"))
        subprocess.run(["dpkg", "-x", str(package), str(root)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError, StopIteration) as err:
        detail = getattr(err, "stderr", b"") or b""
        raise InputError(
            f"could not fetch the Debian package {name!r} into {folder} "
            f"(needs apt-get and dpkg): {detail.decode(errors='replace').strip() or err}"
        ) from None
    return root


def token_position(encoder: Encoder, text: str, char_offset: int) -> int:
    """How many tokens of ``text`` come before character ``char_offset``."""
    offsets = encoder.tokenizer.encode(text, add_special_tokens=False).offsets
    return bisect.bisect_left([start for start, _ in offsets], char_offset)


# -- the FAQ ---------------------------------------------------------------------------------


def faq_chapters(text: str) -> list[tuple[str, str, list[tuple[str, int]]]]:
    """(title, text without question lines, [(question, char offset of its answer)]) per
    chapter of the FAQ's plain-text edition ("Chapter N. ..."; the table of contents before the
    first chapter is left out)."""
    lines = text.splitlines()
    starts: dict[str, int] = {}
    for i, line in enumerate(lines):
        if (match := _CHAPTER.match(line)) is not None:
            starts[match.group(1)] = i
    bounds = [*sorted(starts.values()), len(lines)]
    chapters = []
    for first, end in itertools.pairwise(bounds):
        kept: list[str] = []
        questions: list[tuple[str, int]] = []
        i = first
        while i < end:
            match = _QUESTION.match(lines[i])
            if match is None:
                kept.append(lines[i])
                i += 1
                continue
            words = [match.group(2)]
            i += 1
            while i < end and lines[i].strip() and not lines[i].startswith("    "):
                words.append(lines[i].strip())  # a question wrapped onto the next line
                i += 1
            offset = sum(len(line) + 1 for line in kept)
            questions.append((re.sub(r"\s+", " ", " ".join(words)), offset))
        body = _CROSS_REF.sub(r"\1", "\n".join(kept))
        chapters.append((lines[first], body, questions))
    return chapters


# -- the PostgreSQL manual -------------------------------------------------------------------


class _Text(HTMLParser):
    """The visible text of an HTML page; headings noted with their character offsets."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.headings: list[tuple[str, int, int]] = []  # (title, start, end) in the text
        self._skip = 0
        self._heading: int | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in ("h1", "h2", "h3", "h4"):
            self._heading = self._length()
        elif tag in ("p", "div", "br", "li", "tr", "pre", "dt", "dd", "table"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("h1", "h2", "h3", "h4") and self._heading is not None:
            start, end = self._heading, self._length()
            title = re.sub(r"\s+", " ", "".join(self.parts)[start:end]).strip()
            self.headings.append((title, start, end))
            self._heading = None
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)

    def _length(self) -> int:
        return sum(len(p) for p in self.parts)

    def text(self) -> str:
        return "".join(self.parts)


def html_text(page: str) -> _Text:
    parser = _Text()
    parser.feed(page)
    parser.close()
    return parser


def glossary_questions(page: str) -> list[tuple[str, str]]:
    """(definition without its term, the page it refers to) for each glossary entry that says
    where to read more."""
    found = []
    entries = re.findall(r'<dt id="[^"]+">(.*?)</dt>\s*<dd class="glossdef">(.*?)</dd>', page, re.S)
    for _term, definition in entries:
        more = definition.split("For more information", 1)
        if len(more) < 2:
            continue
        targets = [t for t in re.findall(r'href="([^"#]+)', more[1]) if t != "glossary.html"]
        text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", more[0]))).strip()
        text = re.sub(r"\(Don't confuse.*?\)", "", text).strip()
        if targets and len(text.split()) >= 6:
            found.append((text, targets[0]))
    return found


def paraphrase_corpus(
    encoder: Encoder,
    cache: Path = DEFAULT_CACHE,
    *,
    max_distractors: int = 40,
    seed: int = 0,
) -> Corpus:
    """The paraphrase benchmark (see the module docstring)."""
    faq_root = fetch_package(FAQ_PACKAGE, cache, FAQ_TEXT)
    pg_root = fetch_package(POSTGRES_PACKAGE, cache, POSTGRES_HTML)
    documents: list[EvalDocument] = []
    queries: list[EvalQuery] = []
    deep = 0

    def add_query(text: str, doc_id: str, position: int) -> None:
        nonlocal deep
        deep += position >= PAST_TOKEN
        queries.append(EvalQuery(f"q{len(queries):03d}", text, {doc_id: 1}))

    faq = gzip.decompress((faq_root / FAQ_TEXT).read_bytes()).decode("utf-8", "replace")
    for number, (title, body, questions) in enumerate(faq_chapters(faq), 1):
        doc_id = f"debian-faq/{number:02d}"
        documents.append(EvalDocument(doc_id, body, title))
        for question, offset in questions:
            if len(question.split()) < 3:  # a sub-heading ("Feedback"), not a question
                continue
            add_query(question, doc_id, token_position(encoder, body, offset))

    folder = pg_root / POSTGRES_HTML
    pages: dict[str, str] = {}
    headings: dict[str, list[tuple[str, int, int]]] = {}
    for path in sorted(folder.glob("*.html")):
        if path.name in ("glossary.html", "bookindex.html") or path.name.startswith("release-"):
            continue
        parsed = html_text(path.read_text(encoding="utf-8", errors="replace"))
        pages[path.name], headings[path.name] = parsed.text(), parsed.headings
    sizes = dict(zip(pages, encoder.count_tokens(list(pages.values())), strict=True))
    usable = {name for name, size in sizes.items() if MIN_TOKENS <= size <= MAX_TOKENS}
    chosen: dict[str, str] = {}
    for name in sorted(usable):  # headings that are questions, removed from their page
        asked = [(t, s, e) for t, s, e in headings[name] if t.endswith("?")]
        if not asked:
            continue
        text = pages[name]
        for _title, start, end in reversed(asked):
            text = text[:start] + text[end:]
        chosen[name] = text
        for title, start, _ in asked:
            shift = sum(e - s for _, s, e in asked if s < start)
            question = re.sub(r"^[\d.]+\s+", "", title)
            add_query(question, f"postgresql/{name}", token_position(encoder, text, start - shift))
    glossary = (folder / "glossary.html").read_text(encoding="utf-8", errors="replace")
    for definition, target in glossary_questions(glossary):
        if target in usable:
            chosen.setdefault(target, pages[target])
            add_query(definition, f"postgresql/{target}", 0)
    rng = random.Random(seed)
    others = sorted(usable - set(chosen))
    for name in rng.sample(others, min(max_distractors, len(others))):
        chosen[name] = pages[name]
    documents += [EvalDocument(f"postgresql/{n}", t, n) for n, t in sorted(chosen.items())]
    info = {"sources": [FAQ_PACKAGE, POSTGRES_PACKAGE], "answer_past_token_512": deep}
    return Corpus("paraphrase", documents, queries, info)


def describe(corpus: Corpus, encoder: Encoder) -> str:
    """One line on a corpus' size, for a benchmark's output."""
    tokens = encoder.count_tokens([d.text for d in corpus.documents])
    return (
        f"{len(corpus.documents)} documents ({sum(tokens):,} tokens, median "
        f"{sorted(tokens)[len(tokens) // 2]:,}, max {max(tokens):,}), {len(corpus.queries)} queries"
    )
