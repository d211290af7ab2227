"""Re-ingesting one changed file must not scan the collection: its time must not grow with size.

For each size it builds a Milvus Lite collection of that many stored documents quickly (rows
written in bulk through the store's own row builders: one whole-document row, its text piece and
its state row each, random unit vectors, tiny texts; no model), then re-ingests one changed file
through ``jrag.pipeline.ingest`` with MiniLM, ``--repeats`` times (the same file, new text each
time), and reports the median and the stage split:

    python benchmarks/bench_reingest.py                     # 1,000 and 20,000 documents
    python benchmarks/bench_reingest.py --sizes 1000 5000 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from jrag.embedding import identity_of, load_encoder
from jrag.pipeline import IngestOptions, ingest
from jrag.store import DocumentVersion, MilvusStore, Row, document_id

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BUILD_BATCH = 500  # documents per bulk upsert


def build(store: MilvusStore, documents: int, seed: int = 0) -> float:
    """Store ``documents`` tiny documents in bulk; returns the seconds it took."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for first in range(0, documents, BUILD_BATCH):
        batch = []
        for doc in range(first, min(first + BUILD_BATCH, documents)):
            source = f"/bench/stored/doc-{doc:06}.txt"
            text = f"Stored document {doc} about item {doc * 7919 % 100003}."
            doc_id, content_hash = document_id(source), f"{doc:064x}"
            version = DocumentVersion(source, doc_id, content_hash, text, title="")
            vector = rng.normal(size=store.dim).astype(np.float32)
            row = Row(doc_id, "doc", 0, 1, 0, len(text), text, source, "", {}, content_hash,
                      vector / np.linalg.norm(vector))  # fmt: skip
            batch.append((version, [row]))
        store.seed(batch)
    store.flush()
    return time.perf_counter() - started


def reingest_times(store: MilvusStore, encoder, folder: Path, repeats: int) -> list[dict]:
    """Re-ingest one file ``repeats`` times, its text changed each time (after one warm-up)."""
    path = folder / "changing.txt"
    runs = []
    for i in range(repeats + 1):
        sentences = (f"Revision {i}, line {s}: the harbour lantern was relit." for s in range(40))
        path.write_text(" ".join(sentences))
        report = ingest([path], store, encoder, options=IngestOptions(mode="late"))
        assert report.stored == 1 and not report.failed, report
        if i:
            runs.append({"total": report.seconds, **report.stage_seconds})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    encoder = load_encoder(MINILM)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            db = str(Path(tmp) / f"size-{size}.db")
            with MilvusStore(db, "bench", identity=identity_of(encoder)) as store:
                build_s = build(store, size)
                runs = reingest_times(store, encoder, Path(tmp), args.repeats)
                stored = len(store.states([document_id(f"/bench/stored/doc-{size - 1:06}.txt")]))
                assert stored == 1
            median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            results.append((size, build_s, median, max(r["total"] for r in runs)))
            print(
                f"{size:>7} documents (built in {build_s:.0f} s): re-ingest one changed file "
                f"median {median['total'] * 1000:.0f} ms (parse {median['parse'] * 1000:.0f}, "
                f"embed {median['embed'] * 1000:.0f}, store {median['store'] * 1000:.0f}), "
                f"max {results[-1][3] * 1000:.0f} ms over {args.repeats}",
                flush=True,
            )
    if len(results) > 1:
        small, large = results[0], results[-1]
        ratio = large[2]["store"] / max(small[2]["store"], 1e-9)
        print(f"store time {large[0]} vs {small[0]} documents: x{ratio:.2f}")


if __name__ == "__main__":
    main()
