"""`jrag serve` under load, against infinity-emb serving the same MiniLM folder, in one run.

- `/v1/embeddings`: throughput (texts/s) and p50/p99 latency at 1, 8 and 32 concurrent clients,
  for short texts (8–64 tokens) and 2k-token texts (MiniLM's limit is 256 tokens, so long
  texts are sent with ``"truncate": true``; infinity-emb truncates by itself);
- `/search`: p50/p99 at 1 and 8 clients on ``--documents`` documents, against the same search
  in process (the server process is the only one that may open the Lite ``.db``, so the
  in-process figure comes from a second collection built the same way);
- ``--soak S``: S seconds of 8 clients mixing embeddings, searches and document writes; every
  written document must be stored once, and every error must be an intended 503.

Every loop is bounded by a count and by time, on 127.0.0.1 only. infinity-emb runs from its own
virtual environment (``--infinity``, default ``.venv-infinity/bin/infinity_emb``; skipped if it is
not there):

    python benchmarks/bench_serve.py --requests 64 --documents 2000 --soak 120
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
WORDS = [
    "lighthouse",
    "keeper",
    "lens",
    "prism",
    "bakery",
    "rye",
    "oven",
    "railway",
    "tunnel",
    "granite",
    "moth",
    "orchard",
    "ledger",
    "harbour",
    "rope",
    "tar",
    "barrel",
    "survey",
    "owl",
    "barn",
    "meadow",
    "river",
    "ferry",
    "dawn",
]


def text_of(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(url: str, bodies: list[dict], clients: int, seconds: float) -> dict:
    """``clients`` concurrent clients POST ``bodies`` round robin until all are sent or time."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(reversed(bodies))
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while queue and time.perf_counter() < deadline:
            body = queue.pop()
            started = time.perf_counter()
            response = await http.post(url, json=body)
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - started
    return {
        "n": len(latencies),
        "wall": wall,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "statuses": statuses,
    }


def wait_http(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f} s")


def free_port() -> int:
    from jrag.serve import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    return port


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    }


def start_jrag(db: str, port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "jrag.cli",
        "serve",
        "--db",
        db,
        "-c",
        "bench",
        "--port",
        str(port),
        "--milvus-port",
        "0",
        "--model",
        MINILM,
        "--queue",
        "1024",
    ]
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env()
    )


def start_infinity(binary: str, port: int) -> subprocess.Popen:
    from jrag.loading import resolve_model_dir

    folder = str(resolve_model_dir(MINILM))
    command = [
        binary,
        "v2",
        "--model-id",
        folder,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--no-bettertransformer",
    ]
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env()
    )


def embeddings_table(args: argparse.Namespace, targets: dict[str, str]) -> None:
    rng = random.Random(0)
    short = [text_of(rng.randint(6, 50), rng) for _ in range(args.requests)]
    long = [text_of(1600, rng) for _ in range(max(8, args.requests // 4))]
    print(f"\n/v1/embeddings, one text per request ({args.requests} short, {len(long)} long)")
    print(
        f"{'server':10} {'texts':6} {'clients':>7} {'texts/s':>9} {'p50 ms':>9} {'p99 ms':>9}",
        " statuses",
    )
    for kind, texts in (("short", short), ("2k", long)):
        for clients in (1, 8, 32):
            for name, url in targets.items():
                bodies = [{"input": t, "model": args.model_name.get(name, MINILM)} for t in texts]
                if name == "jrag":
                    for body in bodies:
                        body["truncate"] = True
                r = asyncio.run(load(url, bodies, clients, args.seconds))
                print(
                    f"{name:10} {kind:6} {clients:7} {r['n'] / r['wall']:9.1f} "
                    f"{r['p50'] * 1000:9.1f} {r['p99'] * 1000:9.1f}  {r['statuses']}"
                )


def build_collection(uri: str, documents: int) -> None:
    from jrag.embedding import identity_of, load_encoder
    from jrag.pipeline import IngestOptions, ingest_documents, text_document
    from jrag.store import MilvusStore

    rng = random.Random(1)
    encoder = load_encoder(MINILM)
    docs = [
        text_document(f"doc-{i:05}", text_of(rng.randint(60, 200), rng)) for i in range(documents)
    ]
    with MilvusStore(uri, "bench", identity=identity_of(encoder)) as store:
        for start in range(0, documents, 500):
            ingest_documents(
                docs[start : start + 500], store, encoder, options=IngestOptions(mode="late")
            )


def search_table(args: argparse.Namespace, base: str, db_copy: str) -> None:
    from jrag.embedding import load_encoder
    from jrag.retrieval import SearchOptions, search
    from jrag.store import MilvusStore

    rng = random.Random(2)
    queries = [text_of(rng.randint(3, 8), rng) for _ in range(args.requests)]
    print(f"\n/search on {args.documents} documents ({len(queries)} queries, k=5)")
    print(f"{'where':16} {'clients':>7} {'q/s':>7} {'p50 ms':>9} {'p99 ms':>9}")
    for clients in (1, 8):
        r = asyncio.run(
            load(
                f"{base}/search",
                [{"query": q, "collection": "bench"} for q in queries],
                clients,
                args.seconds,
            )
        )
        print(
            f"{'jrag serve':16} {clients:7} {r['n'] / r['wall']:7.1f} {r['p50'] * 1000:9.1f} "
            f"{r['p99'] * 1000:9.1f}  {r['statuses']}"
        )
    encoder = load_encoder(MINILM)
    latencies = []
    with MilvusStore(db_copy, "bench", create=False) as store:
        search(queries[0], store, encoder, SearchOptions())  # warm
        for q in queries:
            started = time.perf_counter()
            search(q, store, encoder, SearchOptions())
            latencies.append(time.perf_counter() - started)
    print(
        f"{'in process':16} {1:7} {len(latencies) / sum(latencies):7.1f} "
        f"{statistics.median(latencies) * 1000:9.1f} {percentile(latencies, 0.99) * 1000:9.1f}"
    )


def soak(base: str, seconds: float, clients: int = 8) -> None:
    """Mixed load; every written document must be stored once; only 503s may fail."""
    rng = random.Random(3)
    written: list[str] = []
    failures: dict[int, int] = {}
    counts = {"embed": 0, "search": 0, "write": 0}
    before = httpx.get(f"{base}/stats", timeout=60).json()["documents"]
    deadline = time.perf_counter() + seconds

    async def client(who: int, http: httpx.AsyncClient) -> None:
        n = 0
        while time.perf_counter() < deadline and n < 100_000:
            n += 1
            kind = rng.choice(("embed", "embed", "search", "search", "write"))
            if kind == "embed":
                response = await http.post("/v1/embeddings", json={"input": [text_of(20, rng)] * 4})
            elif kind == "search":
                response = await http.post(
                    "/search", json={"query": text_of(5, rng), "collection": "bench"}
                )
            else:
                ids = [f"soak/{who}/{n}/{i}" for i in range(3)]
                docs = [{"id": i, "text": text_of(80, rng)} for i in ids]
                response = await http.post(
                    "/documents", json={"documents": docs, "collection": "bench"}
                )
                if response.status_code == 200:
                    written.extend(ids)
            if response.status_code == 200:
                counts[kind] += 1
            else:
                failures[response.status_code] = failures.get(response.status_code, 0) + 1
                await asyncio.sleep(1)  # Retry-After

    async def run() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=300) as http:
            await asyncio.gather(*(client(i, http) for i in range(clients)))

    asyncio.run(run())
    stored = httpx.get(f"{base}/stats", timeout=60).json()["documents"] - before
    wrong = abs(stored - len(set(written))) + len(written) - len(set(written))
    print(
        f"\nsoak {seconds:.0f} s, {clients} clients: {counts} requests ok, failures {failures}; "
        f"{len(written)} documents written, {stored} more stored: {wrong} lost or duplicated"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per measurement")
    parser.add_argument("--seconds", type=float, default=60, help="time bound per measurement")
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--soak", type=float, default=0, help="seconds of mixed load (0: none)")
    parser.add_argument("--infinity", default=str(ROOT / ".venv-infinity/bin/infinity_emb"))
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    args.model_name = {}
    tmp = Path(tempfile.mkdtemp(prefix="jrag-bench-serve-"))
    processes = []
    try:
        db = str(tmp / "bench.db")
        if not args.skip_search:
            started = time.perf_counter()
            build_collection(db, args.documents)
            shutil.copytree(db, tmp / "copy.db")
            print(f"built {args.documents} documents in {time.perf_counter() - started:.0f} s")
        port = free_port()
        processes.append(start_jrag(db, port))
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health")
        targets = {"jrag": f"{base}/v1/embeddings"}
        if Path(args.infinity).exists():
            inf_port = free_port()
            processes.append(start_infinity(args.infinity, inf_port))
            wait_http(f"http://127.0.0.1:{inf_port}/health")
            models = httpx.get(f"http://127.0.0.1:{inf_port}/models").json()["data"]
            args.model_name["infinity"] = models[0]["id"]
            targets["infinity"] = f"http://127.0.0.1:{inf_port}/embeddings"
        else:
            print(f"infinity-emb not found at {args.infinity}: jrag alone")
        embeddings_table(args, targets)
        if len(processes) > 1:
            processes.pop().terminate()  # the soak and the searches run without a peer
        if not args.skip_search:
            search_table(args, base, str(tmp / "copy.db"))
        if args.soak:
            soak(base, args.soak)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
