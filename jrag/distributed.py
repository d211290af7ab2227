"""Ingest at scale with Ray Data: the same rows as :func:`jrag.pipeline.ingest`, spread out.

One document flows one way through four stages:

1. **plan** (driver): :func:`jrag.pipeline.plan_files` reads and hashes each file once and
   keeps the files that need work (not their bytes: the driver never holds the corpus);
2. **parse** (Ray tasks): :meth:`~jrag.pipeline.Planned.parse` reads the file again; one changed
   since its plan is re-planned as new content, with every kind it holds;
   a file that fails becomes a row with an error message, never an exception that sinks the job;
3. **embed** (an actor pool, one :class:`~jrag.encoder.Encoder` per actor, on a GPU each when
   asked): :func:`jrag.pipeline.embed_planned`, in batches bounded by tokens;
4. **write** (driver): :class:`jrag.pipeline.Sink`, the versioned protocol (or bulk import with
   ``bulk=True``), so a killed run can be re-run and every document ends up stored once and
   complete.

Workers never open the store: Milvus Lite allows one process per ``.db``, and a worker needs
only the model's name. The store is reached from the driver through a :class:`StoreConfig`.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jrag.embedding import identity_of, load_encoder
from jrag.encoder import DEFAULT_BATCH_TOKENS, ModelFacts
from jrag.errors import EngineError, InputError, ParseError
from jrag.parse import ParseLimits, discover_files
from jrag.pipeline import (
    Embedded,
    IngestOptions,
    IngestReport,
    Planned,
    Sink,
    check_batch_tokens,
    embed_planned,
    failure_message,
    plan_files,
    prune_missing,
    wanted_kinds,
)
from jrag.store import MilvusStore

logger = logging.getLogger(__name__)

PARSE_TASK_CPUS = 0.25  # parsing is light next to embedding; keep most CPUs for the actors
MAX_DOCS_PER_BATCH = 64


@dataclass(frozen=True)
class StoreConfig:
    """Where the store is, as plain data that can cross to another process (never a client)."""

    uri: str = "./jrag.db"
    collection: str = "jrag"
    token: str | None = field(default=None, repr=False)

    def open(self, **kwargs: Any) -> MilvusStore:
        return MilvusStore(self.uri, self.collection, token=self.token, **kwargs)


@dataclass
class Progress:
    """One document done: what happened to it, and the run's pace so far."""

    source: str
    outcome: str  # added / updated / extended / skipped / failed
    done: int
    total: int
    seconds: float

    @property
    def documents_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def ingest_ray(
    paths: Sequence[str | Path],
    store_config: StoreConfig,
    encoder_name: str,
    *,
    options: IngestOptions | None = None,
    glob: str | None = None,
    prune: bool = False,
    tenant: str = "",
    follow_links: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    dtype: str | None = None,
    document_prompt: str | None = None,
    bulk: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> IngestReport:
    """Bring the store up to date with the files under ``paths``, on a Ray cluster.

    Symlinks that leave a folder are refused (``report.refused``) unless ``follow_links``.
    Without ``ray_address`` a local Ray starts on this machine's allowed cores (loopback only)
    and stops at the end. ``workers`` is the number of embedding actors (default: one per GPU
    with ``gpus_per_worker``, else one per two CPUs); ``batch_tokens`` bounds one forward batch
    and sizes the batches sent to actors. The report's ``stage_seconds`` holds ``ray_start``,
    ``plan`` and ``store`` (driver wall time) and ``parse`` and ``embed`` (summed over workers,
    which run at the same time).
    """
    import ray

    options = options or IngestOptions()
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, not {workers}")
    if gpus_per_worker < 0:
        raise InputError(f"gpus_per_worker must be ≥ 0, not {gpus_per_worker}")
    check_batch_tokens(batch_tokens)
    report = IngestReport()
    report.stage_seconds.update(ray_start=0.0, plan=0.0)
    started = time.perf_counter()
    started_ray = _start_ray(ray_address)
    report.stage_seconds["ray_start"] = time.perf_counter() - started
    try:
        # The driver needs the model's identity and window, not its weights.
        encoder = ModelFacts.read(encoder_name, "cpu", dtype, document_prompt=document_prompt)
        with store_config.open(identity=identity_of(encoder)) as store:
            tick = time.perf_counter()
            discovery = discover_files(paths, glob, follow_links=follow_links)
            report.refused = list(discovery.skipped)
            sources = [str(path) for path in discovery.files]
            done = 0

            def notify(source: str, outcome: str) -> None:
                nonlocal done
                done += 1
                if on_progress:
                    seconds = time.perf_counter() - started
                    on_progress(Progress(source, outcome, done, len(sources), seconds))

            leftovers: list[str] = []
            work = list(plan_files(
                sources, store, wanted_kinds(options, encoder), tenant=tenant,
                limits=options.limits, report=report, notify=notify, leftovers=leftovers,
            ))  # fmt: skip
            for planned in work:  # each parse reads its file again; the driver holds no corpus
                planned.data = None
            report.stage_seconds["plan"] = time.perf_counter() - tick
            if work:
                results = _run_dataset(
                    work, encoder_name, options, tenant, workers, gpus_per_worker, batch_tokens,
                    dtype, document_prompt,
                )  # fmt: skip
                sink = Sink(store, report, notify, bulk=bulk)
                with store.writing():  # one holder of the write lease for the whole run
                    for result in results:
                        report.stage_seconds["parse"] += result["parse_s"]
                        report.stage_seconds["embed"] += result["embed_s"]
                        sink.write(pickle.loads(result["embedded"]))
                    sink.finish()
            if leftovers:
                store.collect_garbage(leftovers)
            if prune:
                tick = time.perf_counter()
                report.pruned = prune_missing(paths, sources, glob, store, tenant, report.refused)
                report.stage_seconds["store"] += time.perf_counter() - tick
            store.flush()
    finally:
        if started_ray:
            ray.shutdown()
    for name in ("added", "updated", "extended", "skipped", "failed"):
        getattr(report, name).sort()
    report.seconds = time.perf_counter() - started
    logger.info(
        "ingested %d documents in %.1f s (%.2f documents/s)",
        report.stored, report.seconds, report.stored / max(report.seconds, 1e-9),
    )  # fmt: skip
    return report


def allowed_cpus() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _start_ray(address: str | None) -> bool:
    """Connect to ``address``, or start a local Ray on the allowed cores; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    # A local Ray's processes may start too slowly on a loaded machine: one more try.
    for attempt in range(1 if address else 2):
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(num_cpus=allowed_cpus(), _node_ip_address="127.0.0.1", **quiet)
            break
        except (RuntimeError, ConnectionError, TimeoutError) as err:
            ray.shutdown()
            what = f"reach the Ray cluster at {address}" if address else "start a local Ray"
            if address or attempt == 1:
                raise EngineError(f"--engine ray: could not {what}: {err}") from None
            logger.warning("a local Ray did not start (%s); trying once more", err)
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return True


# -- stages 2 and 3: parse and embed (Ray) -----------------------------------------------------


def _run_dataset(
    work: list[Planned],
    encoder_name: str,
    options: IngestOptions,
    tenant: str,
    workers: int | None,
    gpus_per_worker: float,
    batch_tokens: int,
    dtype: str | None,
    document_prompt: str | None,
) -> Iterator[dict[str, Any]]:
    """Parse and embed ``work`` on the cluster; yields one result row per document, as they
    finish."""
    import ray
    from ray.data import ActorPoolStrategy

    cpus = int(ray.cluster_resources().get("CPU", 1))
    if workers is None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        workers = max(1, int(gpus // gpus_per_worker) if gpus_per_worker else cpus // 2)
    # Each actor gets an equal share of the CPUs that parsing leaves; torch uses that many.
    actor_cpus = max(0.5, (cpus - PARSE_TASK_CPUS * 2) / workers) if not gpus_per_worker else 1
    actor_args: dict[str, Any] = {"num_cpus": actor_cpus}
    if gpus_per_worker:
        actor_args["num_gpus"] = gpus_per_worker
    items = [{"source": p.source, "planned": pickle.dumps(p)} for p in work]
    docs_per_batch = _docs_per_batch(work, batch_tokens, workers)
    blocks = max(1, min(len(items), 4 * cpus))
    dataset = (
        ray.data.from_items(items, override_num_blocks=blocks)
        .map_batches(
            _parse_batch, batch_size=1, batch_format="pyarrow", num_cpus=PARSE_TASK_CPUS,
            fn_kwargs={"limits": options.limits},
        )
        .map_batches(
            _Embedder,
            fn_constructor_kwargs={
                "encoder_name": encoder_name,
                "options": options,
                "tenant": tenant,
                "batch_tokens": batch_tokens,
                "device": "cuda" if gpus_per_worker else "cpu",
                "dtype": dtype,
                "document_prompt": document_prompt,
                "threads": max(1, math.floor(actor_cpus)),
            },
            batch_size=docs_per_batch,
            batch_format="pyarrow",
            # Ray Data restarts a dead actor and retries its batch (max_restarts=-1 by default).
            compute=ActorPoolStrategy(size=workers),
            **actor_args,
        )
    )  # fmt: skip
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.to_pylist()


def _docs_per_batch(work: list[Planned], batch_tokens: int, workers: int) -> int:
    """Documents per actor call: about ``batch_tokens`` tokens (estimated from file sizes at
    four bytes a token), but never so many that some actor has nothing to do."""
    sizes = [p.size for p in work]
    mean_tokens = max(1.0, sum(sizes) / max(1, len(sizes)) / 4)
    by_tokens = max(1, int(batch_tokens // mean_tokens))
    spread = max(1, math.ceil(len(work) / (2 * workers)))
    return min(by_tokens, spread, MAX_DOCS_PER_BATCH)


def _parse_batch(batch: Any, limits: ParseLimits) -> Any:
    """Parse each planned file from its planned bytes; a failure becomes the row's ``error``,
    so the job goes on."""
    import pyarrow as pa

    out = []
    for item in batch.to_pylist():
        tick = time.perf_counter()
        planned: Planned = pickle.loads(item["planned"])
        error = None
        try:
            planned.parse(limits)
        except (ParseError, OSError) as err:
            error = failure_message(err, planned.source)
        except Exception as err:  # a parser bug on one file must not sink the job
            error = failure_message(err, planned.source) + f" ({type(err).__name__})"
        out.append({"source": planned.source, "planned": pickle.dumps(planned), "error": error,
                    "parse_s": time.perf_counter() - tick})  # fmt: skip
    schema = pa.schema(
        [("source", pa.string()), ("planned", pa.binary()), ("error", pa.string()),
         ("parse_s", pa.float64())]
    )  # fmt: skip
    return pa.Table.from_pylist(out, schema=schema)


class _Embedder:
    """A Ray actor holding one encoder: parsed documents in, pickled rows out."""

    def __init__(
        self,
        encoder_name: str,
        options: IngestOptions,
        tenant: str,
        batch_tokens: int,
        device: str,
        dtype: str | None,
        document_prompt: str | None,
        threads: int,
    ) -> None:
        import torch

        if device == "cpu":
            torch.set_num_threads(threads)
        self.encoder = load_encoder(encoder_name, device=device, dtype=dtype,
                                    document_prompt=document_prompt)  # fmt: skip
        self.options = options
        self.tenant = tenant
        self.batch_tokens = batch_tokens

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        items = batch.to_pylist()
        tick = time.perf_counter()
        planned = [pickle.loads(item["planned"]) for item in items]
        ready = [p for p, item in zip(planned, items, strict=True) if item["error"] is None]
        embedded = iter(embed_planned(ready, self.encoder, self.options, tenant=self.tenant,
                                      batch_tokens=self.batch_tokens) if ready else [])  # fmt: skip
        embed_s = (time.perf_counter() - tick) / max(1, len(items))
        out = []
        for p, item in zip(planned, items, strict=True):
            result = Embedded(p, error=item["error"]) if item["error"] else next(embedded)
            result.planned.document = None  # its text travels in the version
            out.append({"source": p.source, "embedded": pickle.dumps(result),
                        "parse_s": item["parse_s"], "embed_s": embed_s})  # fmt: skip
        return pa.Table.from_pylist(out)
