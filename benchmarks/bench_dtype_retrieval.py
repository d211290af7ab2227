"""Retrieval with float32 vs bfloat16 encoders, including mixed dtypes (MiniLM by default).

Documents are embedded once per dtype and queries once per dtype; every (documents, queries)
pair is then searched, so the table shows both "all bfloat16" and what happens when a query
embedded in one dtype meets vectors built in the other. Corpora: the sample folder with its
questions, the needle task and the Git manuals of ``bench_realtext.py``.

    python benchmarks/bench_dtype_retrieval.py
    python benchmarks/bench_dtype_retrieval.py --tasks samples needle --modes whole late
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from jrag import Encoder
from jrag.evaluation.datasets import load_documents
from jrag.evaluation.metrics import DATASET_METRICS, SYNTHETIC_METRICS, evaluate
from jrag.evaluation.runner import index_corpus, rank_documents
from jrag.evaluation.tasks import needle_corpora
from jrag.loading import MINILM_ID
from jrag.pipeline import MODES, SEARCH_KIND, IngestOptions
from jrag.store import MilvusStore

REPO = Path(__file__).resolve().parent.parent
DTYPES = ("float32", "bfloat16")


def corpora(tasks, encoder: Encoder, args, workdir: Path) -> list[tuple[str, object, tuple]]:
    found = []
    if "samples" in tasks:
        corpus = load_documents(REPO / "samples", REPO / "samples-src" / "questions.jsonl")
        found.append(("samples", corpus, DATASET_METRICS))
    if "needle" in tasks:
        for corpus in needle_corpora(encoder.tokenizer, args.needle_lengths, args.needle_docs):
            found.append((f"needle {corpus.label}", corpus, SYNTHETIC_METRICS))
    if "realtext" in tasks:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_realtext import build_corpus, fetch_manuals

        folder = fetch_manuals(workdir)
        corpus = build_corpus(folder, encoder, args.realtext_docs, args.realtext_queries, 0)
        found.append(("git-doc", corpus, DATASET_METRICS))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM_ID)
    parser.add_argument("--tasks", nargs="+", default=["samples", "needle", "realtext"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--needle-lengths", nargs="+", type=int, default=[256, 1024, 4096])
    parser.add_argument("--needle-docs", type=int, default=50)
    parser.add_argument("--realtext-docs", type=int, default=60)
    parser.add_argument("--realtext-queries", type=int, default=100)
    args = parser.parse_args()
    console = Console(width=200)
    encoders = {d: Encoder.from_pretrained(args.model, device="cpu", dtype=d) for d in DTYPES}
    workdir = Path(tempfile.mkdtemp(prefix="jrag-dtype-"))
    table = Table(title=f"retrieval, {args.model}: documents dtype / queries dtype")
    for column in ("corpus", "mode", "metric", *(f"{d}/{q}" for d in DTYPES for q in DTYPES)):
        table.add_column(column, justify="right")
    table.add_column("embed s fp32 → bf16", justify="right")
    try:
        for label, corpus, metrics in corpora(args.tasks, encoders["float32"], args, workdir):
            for mode in args.modes:
                options, kind = IngestOptions(mode=mode), SEARCH_KIND[mode]
                scores, seconds = {}, {}
                for doc_dtype in DTYPES:
                    uri = str(workdir / f"{doc_dtype}.db")
                    with MilvusStore(uri, "bench", model="m", dim=encoders[doc_dtype].dim) as store:
                        started = time.perf_counter()
                        rows = index_corpus(store, corpus, encoders[doc_dtype], options)[kind]
                        seconds[doc_dtype] = time.perf_counter() - started
                        for query_dtype in DTYPES:
                            vectors = encoders[query_dtype].encode([q.text for q in corpus.queries])
                            run = {
                                q.query_id: {
                                    r.source: r.score for r in rank_documents(store, v, kind, rows)
                                }
                                for q, v in zip(corpus.queries, vectors, strict=True)
                            }
                            scores[doc_dtype, query_dtype] = evaluate(corpus.qrels(), run, metrics)
                        store.drop()
                for metric in metrics:
                    cells = [f"{scores[d, q][metric]:.4f}" for d in DTYPES for q in DTYPES]
                    timing = f"{seconds['float32']:.0f} → {seconds['bfloat16']:.0f}"
                    table.add_row(label, mode, metric, *cells, timing)
                console.print(f"  {label} {mode}: {scores}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(table)


if __name__ == "__main__":
    main()
