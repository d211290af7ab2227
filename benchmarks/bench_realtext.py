"""Whole vs late vs chunked retrieval on long real manuals, with queries answered past token 512.

The corpus is built at run time and never stored in the repository: the Git documentation
sources (AsciiDoc text, the Debian package ``git-doc``), taken from ``/usr/share/doc/git-doc``
when installed, else fetched with ``apt-get download git-doc`` and unpacked with ``dpkg -x`` into
a temporary folder.

Queries: section headings found deep inside the manuals. A heading qualifies when it starts
past token 512 of its document, has at least three words, is not an all-capitals man-page
section (NAME, OPTIONS, ...) and occurs in no other manual. The heading line (and its AsciiDoc
underline) is removed from the document, so the query is never a verbatim line of it: the
document has to be found through the section's own text. Each query's one relevant document
is the manual it came from; manuals without a chosen query stay in as distractors.

    python benchmarks/bench_realtext.py                      # MiniLM, 60 manuals, up to 100 queries
    python benchmarks/bench_realtext.py --model PATH --max-docs 60 --out /tmp/realtext
"""

from __future__ import annotations

import argparse
import bisect
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from jrag import Encoder
from jrag.evaluation.corpus import Corpus, EvalDocument, EvalQuery
from jrag.evaluation.metrics import DATASET_METRICS
from jrag.evaluation.report import results_table, write_outputs
from jrag.evaluation.runner import DEFAULT_VARIANTS, MODES, run_evaluation
from jrag.loading import MINILM_ID

INSTALLED = Path("/usr/share/doc/git-doc")
_UNDERLINE = re.compile(r"^([-=~^+])\1{2,}$")
_PREFIXED = re.compile(r"^={1,5} +(.+?)(?: +={1,5})?$")
_ANCHOR = re.compile(r"\[\[[^\]]*\]\]")
MIN_TOKENS = 1200
MAX_TOKENS = 8000
PAST_TOKEN = 512


def fetch_manuals(workdir: Path) -> Path:
    """The git-doc folder: installed, or downloaded and unpacked under ``workdir``."""
    if any(INSTALLED.glob("*.txt")):
        return INSTALLED
    subprocess.run(["apt-get", "download", "git-doc"], cwd=workdir, check=True,
                   capture_output=True)  # fmt: skip
    package = next(workdir.glob("git-doc_*.deb"))
    subprocess.run(["dpkg", "-x", str(package), str(workdir / "root")], check=True)
    return workdir / "root" / INSTALLED.relative_to("/")


def headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """(first line, line count, title) of each section heading worth asking about."""
    found = []
    for i, line in enumerate(lines):
        title, count = line.strip(), 0
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if title and _UNDERLINE.match(nxt) and abs(len(nxt) - len(title)) <= 2:
            count = 2
        elif (match := _PREFIXED.match(title)) is not None:
            title, count = match.group(1), 1
        title = _ANCHOR.sub("", title).strip(" `'\"")
        words = re.findall(r"[A-Za-z]{2,}", title)
        letters = sum(c.isalpha() or c == " " for c in title) / max(len(title), 1)
        plain = title[:1].isalnum() and not title.endswith((":", ".", ",")) and letters > 0.8
        if count and plain and min(len(words), len(title.split())) >= 3 and not title.isupper():
            found.append((i, count, title))
    return found


def build_corpus(folder: Path, encoder: Encoder, max_docs: int, max_queries: int, seed: int):
    """Documents with their query headings removed, and one query per chosen heading."""
    manuals = {}
    for path in sorted(folder.rglob("*.txt")):
        manuals[path.relative_to(folder).as_posix()] = path.read_text(errors="replace").splitlines()
    title_owners: dict[str, set[str]] = {}
    for name, lines in manuals.items():
        for _, _, title in headings(lines):
            title_owners.setdefault(title.lower(), set()).add(name)

    candidates = []  # (name, text without query headings, [query titles])
    for name, lines in manuals.items():
        full = "\n".join(lines)
        tokens = encoder.count_tokens([full])[0]
        if not MIN_TOKENS <= tokens <= MAX_TOKENS:
            continue
        offsets = encoder.tokenizer.encode(full, add_special_tokens=False).offsets
        token_starts = [start for start, _ in offsets]
        line_starts = [0]
        for line in lines:
            line_starts.append(line_starts[-1] + len(line) + 1)
        chosen, drop = [], set()
        for first, count, title in headings(lines):
            position = bisect.bisect_left(token_starts, line_starts[first])
            if position >= PAST_TOKEN and len(title_owners[title.lower()]) == 1:
                chosen.append(title)
                drop.update(range(first, first + count))
        text = "\n".join(line for i, line in enumerate(lines) if i not in drop)
        candidates.append((name, text, chosen))

    rng = random.Random(seed)
    rng.shuffle(candidates)
    with_queries = [c for c in candidates if c[2]]
    without = [c for c in candidates if not c[2]]
    documents, queries = [], []
    for name, text, titles in with_queries + without:
        if len(documents) >= max_docs:
            break
        documents.append(EvalDocument(name, text, name))
        for title in rng.sample(titles, min(len(titles), 3)):
            if len(queries) < max_queries:
                queries.append(EvalQuery(f"q{len(queries):03d}", title, {name: 1}))
    return Corpus("git-doc", documents, queries, {"source": str(folder)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM_ID)
    parser.add_argument("--max-docs", type=int, default=60)
    parser.add_argument("--max-queries", type=int, default=100)
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(MODES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("jrag-eval"))
    args = parser.parse_args()
    console = Console()
    started = time.perf_counter()
    encoder = Encoder.from_pretrained(args.model)
    workdir = Path(tempfile.mkdtemp(prefix="jrag-realtext-"))
    try:
        folder = fetch_manuals(workdir)
        corpus = build_corpus(folder, encoder, args.max_docs, args.max_queries, args.seed)
        tokens = encoder.count_tokens([d.text for d in corpus.documents])
        console.print(
            f"{len(corpus.documents)} manuals ({sum(tokens):,} tokens, median "
            f"{sorted(tokens)[len(tokens) // 2]:,}, max {max(tokens):,}), "
            f"{len(corpus.queries)} heading queries past token {PAST_TOKEN}"
        )
        result = run_evaluation(
            "realtext", [corpus], encoder, args.modes, DATASET_METRICS,
            on_step=lambda step: console.print(f"[dim]{step}[/]"),
        )  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.info.update(
        docs=len(corpus.documents), queries=len(corpus.queries), tokens=sum(tokens),
        window=encoder.max_length, seconds=round(time.perf_counter() - started, 1),
    )  # fmt: skip
    console.print(results_table(result))
    json_path, png_path = write_outputs(result, args.out)
    console.print(f"wrote {json_path} and {png_path} in {result.info['seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
