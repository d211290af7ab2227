"""End-to-end ingest throughput on a generated corpus: docs/s, tokens/s, and where time goes.

It writes a corpus of Markdown, HTML and text documents of 300–7,000 words (generated, seeded),
then runs ``jrag.pipeline.ingest`` into a fresh Milvus Lite collection, once per model:

    python benchmarks/bench_ingest.py                       # 40 docs, jina-v2-small layout + MiniLM
    python benchmarks/bench_ingest.py --docs 100 --mode late
    python benchmarks/bench_ingest.py --dtypes float32 auto   # compare compute dtypes
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from jrag import Encoder
from jrag.checkpoints import jina_v2_config, write_random_checkpoint
from jrag.loading import MINILM_ID
from jrag.pipeline import IngestOptions, ingest
from jrag.store import MilvusStore

SUBJECTS = [
    "harbour",
    "ledger",
    "turbine",
    "orchard",
    "glacier",
    "lantern",
    "archive",
    "canal",
    "furnace",
    "meadow",
]
VERBS = [
    "inspected",
    "recorded",
    "repaired",
    "measured",
    "replaced",
    "painted",
    "surveyed",
    "cleaned",
]
OBJECTS = ["the north gate", "a copper valve", "the east ledger", "the signal lamp", "a cedar beam"]


def generated_text(words: int, rng: random.Random) -> str:
    sentences, count = [], 0
    while count < words:
        sentence = (
            f"In {rng.randint(1850, 2020)} the {rng.choice(SUBJECTS)} crew "
            f"{rng.choice(VERBS)} {rng.choice(OBJECTS)} near {rng.choice(SUBJECTS)} row."
        )
        sentences.append(sentence)
        count += len(sentence.split())
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return "\n\n".join(paragraphs)


CORPUS_KINDS = ("md", "html", "txt")


def write_corpus(folder: Path, docs: int, seed: int, kinds: tuple[str, ...] = CORPUS_KINDS) -> None:
    """``docs`` generated documents, their file kinds taken in turn from ``kinds``."""
    rng = random.Random(seed)
    for i in range(docs):
        text = generated_text(rng.randint(300, 7000), rng)
        kind = kinds[i % len(kinds)]
        if kind == "md":
            content = f"# Record {i}\n\n{text}\n"
        elif kind == "html":
            body = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
            content = f"<html><body><h1>Record {i}</h1>{body}</body></html>"
        else:
            content = text
        (folder / f"doc{i:04}.{kind}").write_text(content, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--mode", default="whole", choices=["whole", "late", "chunked"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtypes", nargs="+", default=["auto"], help="e.g. float32 auto")
    args = parser.parse_args()
    console = Console(width=200)
    table = Table(
        title=f"ingest of {args.docs} generated documents, mode {args.mode}, Milvus Lite, CPU"
    )
    for column in (
        "model",
        "dtype",
        "docs/s",
        "tokens/s",
        "tokens",
        "total s",
        "parse %",
        "embed %",
        "store %",
    ):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        write_corpus(corpus, args.docs, args.seed)
        models = {
            "jina-v2-small layout (random weights)": write_random_checkpoint(
                Path(tmp) / "small", jina_v2_config("small")
            ),
            "all-MiniLM-L6-v2": MINILM_ID,
        }
        runs = [(label, model, dtype) for label, model in models.items() for dtype in args.dtypes]
        for label, model, dtype in runs:
            encoder = Encoder.from_pretrained(model, dtype=dtype)
            uri = str(Path(tmp) / f"{len(table.rows)}.db")
            with MilvusStore(uri, "bench", model=encoder.name, dim=encoder.dim) as store:
                started = time.perf_counter()
                report = ingest([corpus], store, encoder, options=IngestOptions(mode=args.mode))
                total = time.perf_counter() - started
            assert not report.failed, report.failed
            stages = report.stage_seconds
            table.add_row(
                label,
                f"{dtype} ({encoder.dtype_name})",
                f"{len(report.added) / total:.2f}",
                f"{report.tokens / total:,.0f}",
                f"{report.tokens:,}",
                f"{total:.1f}",
                *(f"{100 * stages[s] / total:.0f}" for s in ("parse", "embed", "store")),
            )
            console.print(f"  {label} {dtype}: {report.tokens:,} tokens in {total:.1f} s")
    console.print(table)


if __name__ == "__main__":
    main()
