"""Every fusion variant on one benchmark, plus the legs of each query saved for fusion sweeps.

``run`` indexes the benchmark once, runs every variant of ``FUSION_VARIANTS`` through
``store.rank`` (as ``jrag eval`` does; writes ``<task>.json``), then saves each query's two leg
candidate lists (``DocumentRanker.candidates``, what a score fusion fuses) to ``<task>.legs``.
``sweep`` re-fuses saved legs with jrag's own fusion (``_score_fusion``) under other settings,
in milliseconds, so that a fusion's parameters are chosen on every benchmark at once (its best
per benchmark is the best of these fusions; the end-to-end variants are in ``<task>.json``).

    python benchmarks/fusion_sweep.py run paraphrase --out /tmp/fusion
    python benchmarks/fusion_sweep.py run gitdoc --out /tmp/fusion
    python benchmarks/fusion_sweep.py run needle --docs 25 --out /tmp/fusion  # 2k, 4k, 8k
    python benchmarks/fusion_sweep.py run needle --docs 100 --seed 1 --out /tmp/held-out
    python benchmarks/fusion_sweep.py sweep /tmp/fusion/*.legs

``--late-tokens`` and ``--late-strategy`` index the late chunks otherwise than `jrag ingest`'s
defaults (the dense leg's size and strategy study).
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import bench_realtext
from rich.console import Console

from jrag import Encoder
from jrag.evaluation.datasets import load_documents
from jrag.evaluation.debian_docs import fetch_package, paraphrase_corpus
from jrag.evaluation.metrics import DATASET_METRICS, SYNTHETIC_METRICS, evaluate
from jrag.evaluation.report import results_table, write_outputs
from jrag.evaluation.runner import DEPTH, FUSION_VARIANTS, VARIANTS, run_evaluation
from jrag.evaluation.tasks import needle_corpora
from jrag.loading import MINILM_ID
from jrag.modes import DEFAULT_RANKER, DEFAULT_WEIGHTS
from jrag.pipeline import LATE_STRATEGIES, IngestOptions
from jrag.retrieval import build_query
from jrag.store import Query
from jrag.store.search import Lead, RankedRow, _score_fusion, fusion_weights

Shape = tuple[float, tuple[Lead, ...]]  # an adaptive fusion's floor and leads


class _LegsUnpickler(pickle.Unpickler):
    """Reads legs saved by older versions too: their rows were ``_Row``, a ``RankedRow``
    subclass that is gone (its fields are the same)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("jrag.store.search", "_Row"):
            return RankedRow
        return super().find_class(module, name)


def load_legs(path: Path) -> dict:
    with open(path, "rb") as f:
        return _LegsUnpickler(f).load()


def corpora(task: str, encoder: Encoder, args):
    if task == "paraphrase":
        return [paraphrase_corpus(encoder)], DATASET_METRICS
    if task == "gitdoc":
        root = fetch_package("git-doc", installed=str(bench_realtext.INSTALLED)[1:])
        folder = root / str(bench_realtext.INSTALLED)[1:]
        return [bench_realtext.build_corpus(folder, encoder, 60, 100, 0)], DATASET_METRICS
    if task == "samples":
        root = Path(__file__).parents[1]
        corpus = load_documents(root / "samples", root / "samples-src" / "questions.jsonl")
        return [corpus], DATASET_METRICS
    return needle_corpora(encoder.tokenizer, args.lengths, args.docs, args.seed), SYNTHETIC_METRICS


def run(args) -> None:
    console = Console()
    encoder = Encoder.from_pretrained(MINILM_ID)
    made, metrics = corpora(args.task, encoder, args)
    legs: dict[str, dict] = {}
    base = replace(VARIANTS["hybrid"], k=DEPTH)

    def keep_legs(store, corpus, vectors) -> None:
        per_query = []
        for query, vector in zip(corpus.queries, vectors, strict=True):
            dense, text = store.candidates(build_query(store, query.text, vector, base))
            per_query.append((query.query_id, dense, text))
        ids = {r.doc_id for _, dense, text in per_query for r in (*dense, *text)}
        sources = {d: s.source for d, s in store.states(sorted(ids)).items()}
        legs[corpus.label] = {"queries": per_query, "sources": sources, "qrels": corpus.qrels()}

    ingest = IngestOptions(late_chunk_tokens=args.late_tokens, late_strategy=args.late_strategy)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jrag-sweep-") as tmp:
        result = run_evaluation(
            args.task, made, encoder, args.modes, metrics, uri=str(Path(tmp) / "sweep.db"),
            on_step=lambda step: console.print(f"[dim]{step}[/]"), inspect=keep_legs,
            ingest_options=ingest,
        )  # fmt: skip
    result.info.update(
        seconds=round(time.perf_counter() - started, 1), docs=len(made[0].documents),
        late_chunk_tokens=ingest.late_chunk_tokens, late_strategy=ingest.late_strategy,
    )  # fmt: skip
    console.print(results_table(result))
    write_outputs(result, args.out)
    with open(args.out / f"{args.task}.legs", "wb") as f:
        pickle.dump({"task": args.task, "metrics": metrics, "legs": legs}, f)


def fused_score(saved: dict, label: str, query: Query, adaptive: Shape | None = None) -> float:
    """The benchmark's first metric when ``query``'s ranker and weights fuse the saved legs;
    ``adaptive`` (floor, leads) sets an adaptive fusion's shape (see ``ADAPTIVE``)."""
    data = saved["legs"][label]
    run_ = {}
    for query_id, dense, text in data["queries"]:
        q = query
        if adaptive:
            q = replace(
                query, ranker="relative", weights=fusion_weights(query, dense, text, adaptive)
            )
        fused = _score_fusion(q, dense, text, DEPTH, True)
        run_[query_id] = {
            data["sources"][r.doc_id]: float(len(fused) - i) for i, r in enumerate(fused)
        }
    metric = saved["metrics"][0]
    return evaluate(data["qrels"], run_, (metric,))[metric]


def sweep(args) -> None:
    saved = [load_legs(p) for p in args.files]
    template = Query(None, "", DEPTH, (), ())
    grid: dict[str, tuple[Query, Shape | None]] = {}
    grid["default"] = (replace(template, ranker=DEFAULT_RANKER, weights=DEFAULT_WEIGHTS), None)
    for variant in ("hybrid-adaptive", "hybrid-adaptive-median", "hybrid-adaptive-median-w19"):
        options = VARIANTS[variant]
        grid[variant] = (replace(template, ranker=options.ranker, weights=options.weights), None)
    for top in (0.9, 0.975, 1.0):
        ceiling = replace(template, weights=(1 - top, top))
        for floor in (0.0, 0.1, 0.2):
            for start, full in ((0.0, 0.2), (0.05, 0.15), (0.1, 0.15), (0.1, 0.2), (0.15, 0.25)):
                second = ("second", start, full)
                grid[f"second {start}-{full}, {floor}-{top}"] = (ceiling, (floor, (second,)))
                for m_start, m_full in ((0.5, 0.6), (0.5, 0.65), (0.6, 0.8)):
                    both = (second, ("median", m_start, m_full))
                    name = f"max: second {start}-{full}, median {m_start}-{m_full}, {floor}-{top}"
                    grid[name] = (ceiling, (floor, both))
            for full in (0.75, 0.85):
                median = ("median", 0.0, full)
                grid[f"median 0-{full}, {floor}-{top}"] = (ceiling, (floor, (median,)))
    for w in (0.0, 0.3, 0.5, 0.7, 0.8, 1.0):
        query = replace(template, ranker="relative", weights=(1 - w, w))
        grid[f"relative {1 - w:.1f}/{w:.1f}"] = (query, None)  # 1.0/0.0: the dense leg alone
    grid["dbsf"] = (replace(template, ranker="dbsf"), None)
    table: dict[str, dict[str, float]] = {name: {} for name in grid}
    columns = []
    for data in saved:
        for label in data["legs"]:
            column = data["task"] if len(data["legs"]) == 1 else f"{data['task']} {label}"
            columns.append(column)
            for name, (query, adaptive) in grid.items():
                table[name][column] = fused_score(data, label, query, adaptive)
    best = {c: max(table[n][c] for n in grid) for c in columns}
    print("| fusion | " + " | ".join(columns) + " | worst gap | on |")
    print("|---" * (len(columns) + 3) + "|")
    for name in sorted(grid, key=lambda n: -min(table[n][c] - best[c] for c in columns)):
        worst = min(columns, key=lambda c: table[name][c] - best[c])
        cells = " | ".join(f"{table[name][c]:.3f}" for c in columns)
        print(f"| {name} | {cells} | {table[name][worst] - best[worst]:+.3f} | {worst} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("task", choices=["paraphrase", "gitdoc", "needle", "samples"])
    one.add_argument("--modes", nargs="+", default=list(FUSION_VARIANTS), choices=list(VARIANTS))
    one.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096, 8192])
    one.add_argument("--docs", type=int, default=25)
    one.add_argument("--seed", type=int, default=0, help="needle: another seed, a held-out set")
    one.add_argument("--out", type=Path, default=Path("jrag-eval"))
    defaults = IngestOptions()
    one.add_argument("--late-tokens", type=int, default=defaults.late_chunk_tokens)
    one.add_argument("--late-strategy", choices=LATE_STRATEGIES, default=defaults.late_strategy)
    many = sub.add_parser("sweep")
    many.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    run(args) if args.command == "run" else sweep(args)


if __name__ == "__main__":
    main()
