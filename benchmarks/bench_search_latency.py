"""Search latency at scale: the default hybrid search against each of its legs alone, and the
passage step that ``jrag search`` adds, on Milvus Lite with a FLAT and an HNSW dense index.

Rows are generated (no model pass): each document has 2 whole windows and 8 late chunks, with
random unit vectors (dense search costs the same whatever the vectors mean) and text drawn from
a Zipf-like vocabulary, so BM25 has common and rare words to weigh, and each document has one
word of its own. A query is one document's late-chunk vector plus noise, and five of its words.
The same search for the document's own word alone (one row to score) shows what a Milvus Lite
search costs before it scores anything: the floor of any fusion that runs two legs. Every figure
comes from the same collection in the same run; ``rank`` is what ``jrag eval`` times,
``search`` adds the passage step and reading the text.

    python benchmarks/bench_search_latency.py                      # 5k and 50k rows, 40 queries
    python benchmarks/bench_search_latency.py --rows 5000 --queries 20 --json /tmp/latency.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from pymilvus import MilvusClient
from rich.console import Console
from rich.table import Table

from jrag import Encoder
from jrag.loading import MINILM_ID
from jrag.modes import DEFAULT_RANKER, DEFAULT_WEIGHTS
from jrag.retrieval import search
from jrag.store import DocumentVersion, Identity, MilvusStore, Query
from jrag.store.manifest import HNSW_PARAMS
from jrag.store.rows import Row, document_id
from jrag.store.search import FUSION_DEPTH, FUSION_ROWS

DIM = 384  # all-MiniLM-L6-v2
WINDOWS, LATE = 2, 8
ROWS_PER_DOC = WINDOWS + LATE
LATE_CHARS = 300


def vocabulary(rng: np.random.Generator, size: int = 20000) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(size)]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build(store: MilvusStore, docs: int, rng: np.random.Generator, vocab: list[str]):
    """Write ``docs`` generated documents; returns (late vector, words) of each document."""
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    probes = []
    for d in range(docs):
        words = [vocab[i] for i in rng.choice(len(vocab), size=LATE * 50, p=weights)]
        text = " ".join(words) + f" {own_word(d)}"
        source = f"doc-{d:06d}.txt"
        digest = hashlib.sha256(text.encode()).hexdigest()
        version = DocumentVersion(source, document_id(source), digest, text, source)
        vectors = unit(rng, ROWS_PER_DOC)
        rows, step = [], len(text) // LATE
        for i in range(LATE):
            start, end = i * step, (i + 1) * step if i < LATE - 1 else len(text)
            rows.append(_row(version, "late", i, LATE, start, end, vectors[i]))
        half = len(text) // WINDOWS
        for i in range(WINDOWS):
            start, end = i * half, len(text) if i == WINDOWS - 1 else (i + 1) * half + step
            rows.append(_row(version, "doc", i, WINDOWS, start, end, vectors[LATE + i]))
        store.write_document(version, rows, {"doc": {}, "late": {}}, committed=None)
        probes.append((vectors[3], words[150:155], own_word(d)))
    store.flush()
    return probes


def own_word(d: int) -> str:
    """A word found in document ``d`` alone (in its last window only)."""
    return f"own{d:06d}"


def _row(version: DocumentVersion, kind, index, count, start, end, vector) -> Row:
    return Row(
        version.doc_id, kind, index, count, start, end, version.text[start:end], version.source,
        version.title, {"doc_type": "txt"}, version.content_hash, vector,
    )  # fmt: skip


def use_hnsw(store: MilvusStore) -> None:
    """Swap the collection's dense index from Lite's FLAT to HNSW (same parameters as a
    server's)."""
    # A second client of the same Lite folder (same process), for what jrag never does itself.
    client, name = MilvusClient(uri=store.uri), store.collection
    client.release_collection(name)
    client.drop_index(name, "vector")
    params = client.prepare_index_params()
    params.add_index("vector", index_type="HNSW", metric_type="COSINE", params=HNSW_PARAMS)
    client.create_index(name, params)
    client.load_collection(name)


def measure(store: MilvusStore, encoder: Encoder, queries) -> dict[str, float]:
    """Median ms per query of each way to search, interleaved so that load drift hits all."""
    kinds, text = ("doc", "late"), ("doc",)
    base = [
        (Query(v, " ".join(w), 10, kinds, text, DEFAULT_RANKER, DEFAULT_WEIGHTS), word)
        for v, w, word in queries
    ]
    legs = FUSION_ROWS * FUSION_DEPTH  # the rows each leg of the default fusion searches for
    ways: dict[str, Callable[[Query, str], object]] = {
        "dense leg (rank)": lambda q, _: store.rank(replace(q, full_text_kinds=())),
        "BM25 leg (rank)": lambda q, _: store.rank(replace(q, kinds=())),
        # The BM25 search the fusion runs, for a word in one row: what Lite costs before scoring.
        "BM25 search, one row to score": lambda q, word: store.top_rows(
            replace(q, kinds=(), text=word), legs
        ),
        f"default: {DEFAULT_RANKER} (rank)": lambda q, _: store.rank(q),
        "rrf, one hybrid_search (rank)": lambda q, _: store.rank(replace(q, ranker="rrf")),
        "default: jrag search (rank + passages + text)": lambda q, _: search(
            q.text, store, encoder, vector=q.vector, k=10
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(2):  # warm-up
        for way in ways.values():
            way(*base[0])
    for q, word in base:
        for name, way in ways.items():
            tick = time.perf_counter()
            way(q, word)
            samples[name].append(1000 * (time.perf_counter() - tick))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console()
    encoder = Encoder.from_pretrained(MINILM_ID)  # search() needs its tokenizer for context
    identity = Identity(model="bench-latency", dim=DIM, fingerprint="0" * 64)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="jrag-latency-") as tmp:
        for rows in args.rows:
            rng = np.random.default_rng(args.seed)
            vocab = vocabulary(rng)
            uri = str(Path(tmp) / f"latency{rows}.db")
            with MilvusStore(uri, "latency", identity=identity, flush_each_write=False) as store:
                tick = time.perf_counter()
                probes = build(store, rows // ROWS_PER_DOC, rng, vocab)
                console.print(f"{rows:,} rows written in {time.perf_counter() - tick:.0f} s")
                picks = rng.choice(len(probes), size=args.queries, replace=False)
                queries = [(probes[i][0] + 0.5 * unit(rng, 1)[0], *probes[i][1:]) for i in picks]
                results[f"{rows:,} rows, FLAT"] = measure(store, encoder, queries)
                use_hnsw(store)
                results[f"{rows:,} rows, HNSW"] = measure(store, encoder, queries)
                store.drop()
    table = Table(title=f"search latency, median ms/query ({args.queries} queries, Milvus Lite)")
    table.add_column("")
    for column in results:
        table.add_column(column, justify="right")
    ways = list(next(iter(results.values())))
    for way in ways:
        table.add_row(way, *(f"{results[c][way]:.1f}" for c in results))
    dense, floor, default = ways[0], ways[2], ways[3]  # the order of measure()'s ways

    def ratio(name: str, cost: Callable[[dict[str, float]], float]) -> None:
        table.add_row(name, *(f"{cost(results[c]) / results[c][dense]:.2f}x" for c in results))

    ratio("default / dense leg", lambda r: r[default])
    # Lite runs the legs one after the other (Python threads share the GIL).
    ratio("floor of a two-leg fusion / dense leg", lambda r: r[dense] + r[floor])
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
