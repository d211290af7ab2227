"""Start-up cost of the CLI: `jrag --help`, `jrag stats`, a cold `jrag search`, and the same
search through `jrag search --server` against a running `jrag serve`.

The collection is the demo's (the text and Markdown samples, MiniLM, late chunks), built in a
temporary folder. Each command runs ``--repeat`` times in a fresh interpreter; the median wall
time is printed:

    python benchmarks/bench_cli.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
QUERY = "Who re-ground the Fresnel lens at Gull Point?"
SAMPLES = [
    "harrowmere-lighthouse-society.md",
    "marrow-language-manual.md",
    "tidewright-rulebook.md",
    "carrow-fell-instrument-log.txt",
    "vellach-pass-railway.txt",
]


def env() -> dict[str, str]:
    path = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "connectors"), os.environ.get("PYTHONPATH")) if p
    )
    return {**os.environ, "PYTHONPATH": path}


def jrag(*args: str) -> list[str]:
    return [sys.executable, "-m", "jrag.cli", *args]


def timed(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env(), timeout=300)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jrag-bench-cli-") as tmp:
        db = str(Path(tmp) / "demo.db")
        files = [str(ROOT / "samples" / name) for name in SAMPLES]
        subprocess.run(
            jrag("ingest", *files, "--uri", db, "-c", "demo", "--model", MINILM, "--mode", "late"),
            check=True,
            capture_output=True,
            env=env(),
        )
        rows = [
            ("jrag --help", timed(jrag("--help"), args.repeat)),
            ("jrag stats", timed(jrag("stats", "--uri", db, "-c", "demo"), args.repeat)),
            (
                "jrag search (cold)",
                timed(jrag("search", QUERY, "--uri", db, "-c", "demo"), args.repeat),
            ),
        ]
        server = subprocess.Popen(
            jrag("serve", "--db", db, "-c", "demo", "--port", "0", "--milvus-port", "0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env(),
        )
        try:
            url = ""
            for line in server.stdout:
                if line.startswith("jrag serve: http "):
                    url = line.split()[-1]
                    break
            rows.append(
                (
                    "jrag search --server",
                    timed(jrag("search", QUERY, "-c", "demo", "--server", url), args.repeat),
                )
            )
            rows.append(("jrag stats --server", timed(jrag("stats", "--server", url), args.repeat)))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"median of {args.repeat} runs, each in a fresh interpreter")
    for name, seconds in rows:
        print(f"  {name:24} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
