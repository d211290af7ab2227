"""Three writers on one collection, kill -9 of a random one in every other round, a reader
searching every file throughout; then one quiet run and the audit (see
``tests/concurrent_writers.py``). Prints rounds, kills, searches and misses per backend:

    python benchmarks/bench_concurrent_writes.py                       # served Lite, 10 rounds
    python benchmarks/bench_concurrent_writes.py --backend server --rounds 6 --files 24
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jrag.serve import start_server
from tests.concurrent_writers import run_stress
from tests.milvus_server import MilvusServerProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("lite", "server"), default="lite")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--minutes", type=float, default=15.0, help="no round starts after")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = dict(files=args.files, rounds=args.rounds, max_seconds=args.minutes * 60,
                   seed=args.seed)  # fmt: skip
        if args.backend == "lite":
            with start_server(root / "s.db") as served:
                figures, problems, leftovers = run_stress(served.uri, root / "docs", **run)
        else:
            with MilvusServerProcess(root / "milvus") as server:
                figures, problems, leftovers = run_stress(server.uri, root / "docs", **run)
    result = {"backend": args.backend, **figures.summary(), "problems": len(problems),
              "leftovers": leftovers}  # fmt: skip
    print(json.dumps(result))
    for line in [*figures.misses, *problems, *figures.writer_errors][:20]:
        print("  ", line)
    sys.exit(1 if figures.misses or problems or figures.writer_errors else 0)


if __name__ == "__main__":
    main()
