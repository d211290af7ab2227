"""Retrieval quality and embedding time per compute dtype (float32, bfloat16, int8; MiniLM).

Each dtype embeds the documents and the queries of the same corpora, which are then searched
through the same evaluation runner as ``jrag eval``; the table shows each metric per dtype and
its change against the first dtype. Corpora: the sample folder with its questions, the needle
task and the Git manuals of ``bench_realtext.py`` (git-doc).

    python benchmarks/bench_dtype_retrieval.py
    python benchmarks/bench_dtype_retrieval.py --dtypes float32 int8 --tasks realtext \\
        --modes whole late --realtext-docs 40 --realtext-queries 60
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from jrag import Encoder
from jrag.evaluation.datasets import load_documents
from jrag.evaluation.metrics import DATASET_METRICS, SYNTHETIC_METRICS
from jrag.evaluation.runner import DEFAULT_VARIANTS, MODES, run_evaluation
from jrag.evaluation.tasks import needle_corpora
from jrag.loading import MINILM_ID

REPO = Path(__file__).resolve().parent.parent


def corpora(tasks, encoder: Encoder, args, workdir: Path) -> list[tuple[str, list, tuple]]:
    found = []
    if "samples" in tasks:
        corpus = load_documents(REPO / "samples", REPO / "samples-src" / "questions.jsonl")
        found.append(("samples", [corpus], DATASET_METRICS))
    if "needle" in tasks:
        needles = needle_corpora(encoder.tokenizer, args.needle_lengths, args.needle_docs)
        found.append(("needle", list(needles), SYNTHETIC_METRICS))
    if "realtext" in tasks:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_realtext import build_corpus, fetch_manuals

        folder = fetch_manuals(workdir)
        corpus = build_corpus(folder, encoder, args.realtext_docs, args.realtext_queries, 0)
        found.append(("git-doc", [corpus], DATASET_METRICS))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM_ID)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "int8"])
    parser.add_argument("--tasks", nargs="+", default=["samples", "needle", "realtext"])
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_VARIANTS), choices=MODES)
    parser.add_argument("--needle-lengths", nargs="+", type=int, default=[256, 1024, 4096])
    parser.add_argument("--needle-docs", type=int, default=50)
    parser.add_argument("--realtext-docs", type=int, default=60)
    parser.add_argument("--realtext-queries", type=int, default=100)
    args = parser.parse_args()
    console = Console(width=200)
    encoders = {d: Encoder.from_pretrained(args.model, device="cpu", dtype=d) for d in args.dtypes}
    first = args.dtypes[0]
    workdir = Path(tempfile.mkdtemp(prefix="jrag-dtype-"))
    table = Table(title=f"retrieval per dtype, {args.model} (Δ: against {first})")
    for column in ("corpus", "mode", "metric", *args.dtypes, *(f"Δ {d}" for d in args.dtypes[1:])):
        table.add_column(column, justify="right")
    timing = Table(title="indexing seconds (embedding and writing the corpus)")
    for column in ("corpus", *args.dtypes):
        timing.add_column(column, justify="right")
    try:
        for label, corpus_list, metrics in corpora(args.tasks, encoders[first], args, workdir):
            results = {
                d: run_evaluation(label, corpus_list, encoders[d], args.modes, metrics)
                for d in args.dtypes
            }
            for mode in results[first].modes:
                for metric in metrics:
                    means = {d: results[d].mean(mode, metric) for d in args.dtypes}
                    deltas = [f"{means[d] - means[first]:+.4f}" for d in args.dtypes[1:]]
                    table.add_row(
                        label, mode, metric, *(f"{means[d]:.4f}" for d in args.dtypes), *deltas
                    )
            seconds = {  # the documents and queries are embedded once per corpus
                d: sum(step["embed"] for step in results[d].seconds[args.modes[0]].values())
                for d in args.dtypes
            }
            timing.add_row(label, *(f"{seconds[d]:.0f}" for d in args.dtypes))
            console.print(f"  {label}: done")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(table)
    console.print(timing)


if __name__ == "__main__":
    main()
