"""Scale-out throughput: the local engine against Ray with 1 and 2 CPU workers, one run.

The same generated documents (see ``bench_ingest.py``) go into a fresh Milvus Lite collection
per engine; documents/s and tokens/s are reported with their ratio to the local engine. Ray's
start-up (``ray.init``) is measured on its own; each Ray run still includes its actors' start
and model load, which a long job pays once.

    python benchmarks/bench_scale.py                  # 40 docs, MiniLM, CPU
    python benchmarks/bench_scale.py --gpu            # + 1 GPU actor: v2-small and v2-base layouts

Without ``unstructured`` (or the MiniLM package) installed, ``--kinds txt`` generates plain text
only, ``--model`` takes a local folder and ``--tokenizer-from`` a folder of tokenizer files.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch
from bench_ingest import CORPUS_KINDS, write_corpus
from rich.console import Console
from rich.table import Table

from jrag.checkpoints import jina_v2_config, write_random_checkpoint
from jrag.distributed import StoreConfig, allowed_cpus, ingest_ray
from jrag.embedding import identity_of, load_encoder
from jrag.loading import MINILM_ID
from jrag.pipeline import IngestOptions, IngestReport, ingest
from jrag.store import MilvusStore


def run_local(
    corpus: Path, db: Path, model: str, options: IngestOptions
) -> tuple[float, IngestReport]:
    encoder = load_encoder(model, device="cpu")
    with MilvusStore(str(db), "bench", identity=identity_of(encoder)) as store:
        started = time.perf_counter()
        report = ingest([corpus], store, encoder, options=options)
        return time.perf_counter() - started, report


def run_ray(
    corpus: Path, db: Path, model: str, options: IngestOptions, **kwargs: object
) -> tuple[float, IngestReport]:
    started = time.perf_counter()
    report = ingest_ray([corpus], StoreConfig(str(db), "bench"), model, options=options, **kwargs)
    return time.perf_counter() - started, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--mode", default="whole", choices=["whole", "late", "chunked"])
    parser.add_argument("--model", default=MINILM_ID)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", action="store_true", help="also run 1 GPU actor (v2 layouts)")
    parser.add_argument(
        "--kinds", nargs="+", default=list(CORPUS_KINDS), choices=CORPUS_KINDS,
        help="file kinds of the generated documents, taken in turn",
    )  # fmt: skip
    parser.add_argument(
        "--tokenizer-from", default=MINILM_ID,
        help="tokenizer folder for the GPU rows' random checkpoints",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=200)
    options = IngestOptions(mode=args.mode)
    cpus = allowed_cpus()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        write_corpus(corpus, args.docs, args.seed, tuple(args.kinds))

        import ray

        seconds, report = run_local(corpus, Path(tmp) / "local.db", args.model, options)
        results["local"] = {"seconds": seconds, "report": report}
        started = time.perf_counter()
        ray.init(
            num_cpus=cpus, include_dashboard=False, log_to_driver=False,
            logging_level=logging.WARNING, _node_ip_address="127.0.0.1",
        )  # fmt: skip
        ray_start = time.perf_counter() - started
        for workers in (1, 2):
            db = Path(tmp) / f"ray{workers}.db"
            seconds, report = run_ray(corpus, db, args.model, options, workers=workers)
            results[f"ray, {workers} CPU worker{'s' if workers > 1 else ''}"] = {
                "seconds": seconds, "report": report,
            }  # fmt: skip
        gpu_rows = []
        if args.gpu:
            if not torch.cuda.is_available():
                console.print("--gpu: no CUDA device here; skipping the GPU runs")
            for layout in ("small", "base") if torch.cuda.is_available() else ():
                model = write_random_checkpoint(
                    Path(tmp) / layout, jina_v2_config(layout), tokenizer_from=args.tokenizer_from
                )
                db = Path(tmp) / f"gpu-{layout}.db"
                seconds, report = run_ray(
                    corpus, db, str(model), options, workers=1, gpus_per_worker=1
                )
                gpu_rows.append((layout, seconds, report))
        ray.shutdown()

    table = Table(
        title=f"{args.docs} generated documents ({'/'.join(args.kinds)}), mode {args.mode}, "
        f"{args.model}, Milvus Lite, {cpus} CPUs ({platform.processor() or platform.machine()})"
    )
    for column in ("engine", "docs/s", "tokens/s", "× local", "total s", "embed s", "store s"):
        table.add_column(column, justify="right")
    base = results["local"]
    base_rate = base["report"].tokens / base["seconds"]
    summary = {
        "ray_start_s": ray_start, "cpus": cpus, "docs": args.docs, "model": args.model,
        "kinds": args.kinds,
    }  # fmt: skip
    for name, result in results.items():
        report, seconds = result["report"], result["seconds"]
        assert not report.failed, report.failed
        rate = report.tokens / seconds
        table.add_row(
            name,
            f"{report.stored / seconds:.2f}",
            f"{rate:,.0f}",
            f"{rate / base_rate:.2f}",
            f"{seconds:.1f}",
            f"{report.stage_seconds['embed']:.1f}",
            f"{report.stage_seconds['store']:.1f}",
        )
        summary[name] = {
            "docs_per_s": report.stored / seconds,
            "tokens_per_s": rate,
            "ratio": rate / base_rate,
            "seconds": seconds,
            "tokens": report.tokens,
        }
    for layout, seconds, report in gpu_rows:
        rate = report.tokens / seconds
        table.add_row(f"ray, 1 GPU, v2-{layout}", f"{report.stored / seconds:.2f}", f"{rate:,.0f}",
                      "", f"{seconds:.1f}", f"{report.stage_seconds['embed']:.1f}",
                      f"{report.stage_seconds['store']:.1f}")  # fmt: skip
        summary[f"gpu v2-{layout}"] = {"tokens_per_s": rate, "seconds": seconds}
    console.print(table)
    console.print(f"Ray start-up (ray.init, {cpus} CPUs, not in the rows above): {ray_start:.1f} s")
    console.print(
        "embed s = summed over workers; each Ray row includes its actors' start and model load"
    )
    console.print(json.dumps(summary))


if __name__ == "__main__":
    main()
