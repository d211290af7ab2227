"""Fusion variants on questions asked in other words than their answers (the paraphrase set).

The corpus is built at run time from Debian's ``debian-faq`` and ``postgresql-doc-15`` packages
(:mod:`jrag.evaluation.debian_docs`; downloaded into ``.jrag/debian-docs``, nothing stored in
the repository). Every variant runs against the same collection; ``hybrid`` is the default of
``jrag search`` (``jrag.modes``).

    python benchmarks/bench_paraphrase.py                       # MiniLM, every fusion variant
    python benchmarks/bench_paraphrase.py --modes late hybrid --out /tmp/paraphrase
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

from jrag import Encoder
from jrag.evaluation.debian_docs import DEFAULT_CACHE, describe, paraphrase_corpus
from jrag.evaluation.metrics import DATASET_METRICS
from jrag.evaluation.report import results_table, write_outputs
from jrag.evaluation.runner import FUSION_VARIANTS, MODES, run_evaluation
from jrag.loading import MINILM_ID


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM_ID)
    parser.add_argument("--modes", nargs="+", default=list(FUSION_VARIANTS), choices=list(MODES))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--distractors", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("jrag-eval"))
    args = parser.parse_args()
    console = Console()
    started = time.perf_counter()
    encoder = Encoder.from_pretrained(args.model)
    corpus = paraphrase_corpus(
        encoder, args.cache, max_distractors=args.distractors, seed=args.seed
    )
    console.print(describe(corpus, encoder), corpus.info)
    result = run_evaluation(
        "paraphrase", [corpus], encoder, args.modes, DATASET_METRICS,
        on_step=lambda step: console.print(f"[dim]{step}[/]"),
    )  # fmt: skip
    result.info.update(corpus.info, seconds=round(time.perf_counter() - started, 1))
    console.print(results_table(result))
    json_path, png_path = write_outputs(result, args.out)
    console.print(f"wrote {json_path} and {png_path} in {result.info['seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
