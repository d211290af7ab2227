"""The full synthetic evaluation: passkey and needle at 256…8,192 tokens, 100 documents each.

It runs ``jrag eval passkey`` and ``jrag eval needle`` at full size (the CI tests run them small).
Add ``--long`` for 16k and 32k tokens, which an 8k model covers with overlapping macro-windows.

    python benchmarks/bench_synthetic.py --model sentence-transformers/all-MiniLM-L6-v2
    python benchmarks/bench_synthetic.py --model PATH --long --out /tmp/synthetic
"""

from __future__ import annotations

import argparse
import time

from jrag.cli import app
from jrag.evaluation.runner import DEFAULT_VARIANTS, MODES
from jrag.evaluation.tasks import DEFAULT_DOCS, DEFAULT_LENGTHS, LONG_LENGTHS
from jrag.loading import DEFAULT_MODEL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    parser.add_argument("--long", action="store_true", help="Add 16,384 and 32,768 tokens.")
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS)
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(MODES))
    parser.add_argument("--tasks", nargs="+", default=["passkey", "needle"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="jrag-eval")
    args = parser.parse_args()
    lengths = args.lengths + (list(LONG_LENGTHS) if args.long else [])
    for task in args.tasks:
        started = time.perf_counter()
        app(
            ["eval", task, "--model", args.model, "--lengths", *map(str, lengths),
             "--docs", str(args.docs), "--modes", *args.modes, "--seed", str(args.seed),
             "--out", args.out],
            standalone_mode=False,
        )  # fmt: skip
        print(f"{task}: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
