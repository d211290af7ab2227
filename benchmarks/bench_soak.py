"""Soak: readers and a writer on one served Milvus Lite ``.db`` for minutes, checked throughout.

``jrag serve`` serves a fresh ``.db`` on 127.0.0.1. One writer process re-ingests changed files in
a loop (each round flips a quarter of the documents between two versions of their text); four
reader processes search with MiniLM query vectors embedded once up front, and check every result:
it must be one whole version of its document, never a mix, each document at most once. At the
end every document must be stored exactly once, in the version its file holds:

    python benchmarks/bench_soak.py                 # 5 minutes, 4 readers, 20 documents
    python benchmarks/bench_soak.py --minutes 1 --readers 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jrag.embedding import identity_of, load_encoder
from jrag.pipeline import IngestOptions, content_sha256, ingest
from jrag.retrieval import search
from jrag.serve import start_server
from jrag.store import MilvusStore
from tests.test_serve import (
    MINILM,
    QUERIES,
    STALE,
    audit,
    check_result,
    version_text,
    write_versions,
)

COLLECTION = "c"
MAX_QUERIES_PER_READER = 1_000_000  # a bound; the deadline ends the loop long before


def writer(uri: str, folder: str, documents: int, seconds: float, ready, out) -> None:
    """Re-ingest changed files for ``seconds``: each round flips a quarter of the documents."""
    encoder = load_encoder(MINILM)
    rng = random.Random(1)
    versions = ["A"] * documents
    rounds = rewritten = 0
    errors: list[str] = []
    with MilvusStore(uri, COLLECTION, identity=identity_of(encoder)) as store:
        write_versions(Path(folder), documents, "A")
        ingest([folder], store, encoder, options=IngestOptions(mode="late"))
        ready.set()
        deadline = time.time() + seconds
        while time.time() < deadline and rounds < 100_000:
            for doc in rng.sample(range(documents), max(1, documents // 4)):
                versions[doc] = "B" if versions[doc] == "A" else "A"
                path = Path(folder) / f"doc-{doc:03}.txt"
                path.write_text(version_text(doc, versions[doc]), encoding="utf-8")
            try:
                report = ingest([folder], store, encoder, options=IngestOptions(mode="late"))
                rewritten += len(report.updated)
                errors += [message for _, message in report.failed]
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
            rounds += 1
    out.put({"role": "writer", "rounds": rounds, "rewritten": rewritten, "errors": errors})


def reader(uri: str, folder: str, documents: int, vectors: np.ndarray, seconds: float, ready,
           out) -> None:  # fmt: skip
    """Search with pre-embedded queries for ``seconds`` once the writer is ready; check all."""
    versions = {
        str(Path(folder) / f"doc-{d:03}.txt"): {v: version_text(d, v) for v in "AB"}
        for d in range(documents)
    }
    ready.wait(timeout=300)
    started_at = time.time()
    deadline = started_at + seconds
    latencies: list[float] = []
    problems: Counter[str] = Counter()
    samples: list[str] = []
    with MilvusStore(uri, COLLECTION, create=False) as store:
        for i in range(MAX_QUERIES_PER_READER):
            if time.time() >= deadline:
                break
            q = i % len(QUERIES)
            started = time.perf_counter()
            try:
                results = search(QUERIES[q], store, None, vector=vectors[q], k=5,
                                 content="document")  # fmt: skip
            except Exception as e:
                problems["error"] += 1
                samples.append(f"{type(e).__name__}: {e}"[:300])
                continue
            latencies.append(time.perf_counter() - started)
            if len({r.doc_id for r in results}) != len(results):
                problems["duplicate in results"] += 1
            for r in results:
                problem = check_result(r, versions)
                if problem:
                    problems["stale" if problem.startswith(STALE) else "mixed"] += 1
                    samples.append(problem[:300])
    out.put({"role": "reader", "latencies": latencies, "problems": problems,
             "samples": samples[:5], "seconds": time.time() - started_at})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--documents", type=int, default=20)
    args = parser.parse_args()
    encoder = load_encoder(MINILM)
    vectors = encoder.encode(list(QUERIES))
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, start_server(Path(tmp) / "soak.db") as served:
        folder = str(Path(tmp) / "docs")
        ready, out = ctx.Event(), ctx.Queue()
        seconds = args.minutes * 60  # counted from the writer's first ingest, in each child
        procs = [ctx.Process(target=writer, args=(served.uri, folder, args.documents, seconds,
                                                  ready, out))]  # fmt: skip
        reader_args = (served.uri, folder, args.documents, vectors, seconds, ready, out)
        procs += [ctx.Process(target=reader, args=reader_args) for _ in range(args.readers)]
        for p in procs:
            p.start()
        reports = [out.get(timeout=seconds + 900) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        with MilvusStore(served.uri, COLLECTION, create=False) as store:
            sources = [str(Path(folder) / f"doc-{d:03}.txt") for d in range(args.documents)]
            problems = audit(store, sources)
            states = store.states([s.doc_id for s in store.all_states()])
            current = {s: content_sha256(Path(s).read_bytes()) for s in sources}
            behind = [s.source for s in states.values() if current[s.source] != s.content_hash]
    writer_report = next(r for r in reports if r["role"] == "writer")
    latencies = np.array([t for r in reports if r["role"] == "reader" for t in r["latencies"]])
    measured_s = float(np.mean([r["seconds"] for r in reports if r["role"] == "reader"]))
    read_problems: Counter[str] = Counter()
    for r in reports:
        read_problems.update(r.get("problems", {}))
    print(f"soak: {args.minutes:g} min, {args.readers} readers, 1 writer, {args.documents} docs")
    print(
        f"queries {latencies.size} ({latencies.size / measured_s:.1f}/s), latency p50 "
        f"{np.percentile(latencies, 50) * 1000:.0f} ms, "
        f"p99 {np.percentile(latencies, 99) * 1000:.0f} ms, max {latencies.max() * 1000:.0f} ms"
    )
    print(
        f"writer: {writer_report['rounds']} rounds, {writer_report['rewritten']} documents "
        f"re-ingested, {len(writer_report['errors'])} errors {writer_report['errors'][:3]}"
    )
    print(f"read errors and inconsistencies: {dict(read_problems) or 0}")
    for r in reports:
        for sample in r.get("samples", [])[:2]:
            print(f"  e.g. {sample}")
    print(f"stored: {len(problems)} problems (lost or duplicated rows) {problems[:5]}")
    print(f"documents not in their file's last version: {len(behind)}")


if __name__ == "__main__":
    main()
