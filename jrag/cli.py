"""The ``jrag`` command line: ingest documents into Milvus, search them, ask them.

Every command is a thin shell over :mod:`jrag.pipeline` and :class:`jrag.store.MilvusStore`.
Errors print as one line naming the file or setting at fault; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from jrag.console import console, errors, loading, one_line_errors, safe, state, warn
from jrag.defaults import DEFAULT_MODEL
from jrag.diversity import DEFAULT_MMR_LAMBDA
from jrag.errors import CollectionNotFound, InputError
from jrag.modes import (
    DEFAULT_CONTENT,
    DEFAULT_INGEST_MODE,
    DEFAULT_K,
    DEFAULT_RANKER,
    DEFAULT_RERANK_DEPTH,
    DEFAULT_SEARCH_MODE,
    RANKER_WEIGHTS,
)
from jrag.terminal import printable

if TYPE_CHECKING:
    from jrag.distributed import Progress as RayProgress
    from jrag.parse import Discovery
    from jrag.pipeline import IngestOptions, IngestReport
    from jrag.records import RecordFormat

os.environ.setdefault("DO_NOT_TRACK", "1")

EVAL_HELP = "Evaluate long-document retrieval: whole vs late vs chunked."


class _Commands(TyperGroup):
    """The top-level commands; ``eval`` (which imports torch) is loaded only when it runs, so
    ``jrag --help`` and commands that talk to a server start without torch."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "eval"})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name != "eval":
            return super().get_command(ctx, name)
        if self._listing:
            return click.Command("eval", help=EVAL_HELP)
        from jrag.evaluation.cli import app as eval_app

        command = typer.main.get_command(eval_app)
        command.name = "eval"
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    cls=_Commands,
    help="Whole-document retrieval over long documents: ingest PDF, HTML, DOCX, Markdown and text "
    "into Milvus with an 8,192-token JinaBERT encoder, then search or ask.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _ranker_weights() -> str:
    return ", ".join(f"{name} {d} {b}" for name, (d, b) in RANKER_WEIGHTS.items())


CollectionOpt = Annotated[
    str,
    typer.Option("--collection", "-c", envvar="JRAG_COLLECTION", help="Milvus collection name."),
]
UriOpt = Annotated[
    str,
    typer.Option(
        envvar="JRAG_URI",
        help="Milvus Lite file (a local path, the default) or a server URL such as "
        "http://localhost:19530.",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="JRAG_TOKEN", show_default=False,
        help="Milvus server token ('user:password' or an API key). Prefer the JRAG_TOKEN variable.",
    ),
]  # fmt: skip
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", envvar="JRAG_MODEL", show_default=False,
        help=f"Model folder or hub id. Ingest defaults to {DEFAULT_MODEL}; search and ask default "
        "to the model the collection was built with.",
    ),
]  # fmt: skip
IngestModeOpt = Annotated[
    str,
    typer.Option(
        help="whole: one vector per document (overlapping 8k windows past the limit); late: whole "
        "+ late-chunk vectors from the same pass; chunked: naive 512-token chunks (baseline). "
        "Ingesting again with another mode adds its rows and keeps the others."
    ),
]
SearchModeOpt = Annotated[
    str,
    typer.Option(
        help="auto: every kind of row the collection holds; whole / late / chunked: only "
        "that mode's rows."
    ),
]
TenantOpt = Annotated[
    str,
    typer.Option(envvar="JRAG_TENANT", help="Store and read this tenant's documents only."),
]
HybridOpt = Annotated[
    bool,
    typer.Option(
        "--hybrid/--no-hybrid",
        help="Fuse vector search with BM25 full-text search where the collection has it.",
    ),
]
RankerOpt = Annotated[
    str,
    typer.Option(
        help="How hybrid results are fused: adaptive-max (scores scaled per leg, BM25 weighted "
        "by how far its winner stands out of its second or of the median of its candidates, "
        "whichever is further), adaptive (its lead over its second only), adaptive-median (over "
        "the median only), relative (scores scaled per leg, then weighted), dbsf (each leg by "
        "mean +- 3 std), rrf (reciprocal rank fusion) or weighted (Milvus' WeightedRanker)."
    ),
]
WeightsOpt = Annotated[
    tuple[float, float] | None,
    typer.Option(
        show_default=False,
        help="The dense and BM25 weights: with --ranker relative or weighted, fixed; with "
        "the adaptive rankers, those reached when BM25 has a clear winner (BM25 weighs less, "
        "as its winner stands out less). Default: the "
        f"ranker's own ({_ranker_weights()}).",
    ),
]
RerankOpt = Annotated[
    str | None,
    typer.Option(
        help="A cross-encoder (folder or hub id, e.g. a ms-marco MiniLM or jina-reranker-v1) "
        "that re-scores the top --rerank-depth documents on their best passage. Off by default."
    ),
]
RerankDepthOpt = Annotated[
    int, typer.Option(min=1, max=1000, help="With --rerank: how many documents it scores.")
]
ContentOpt = Annotated[
    str,
    typer.Option(
        help="passage: the best passage with its context; document: the whole window holding it."
    ),
]
FilterOpt = Annotated[
    str | None,
    typer.Option(
        help='Milvus filter expression that narrows the search, e.g. \'metadata["doc_type"] == '
        '"pdf"\' or \'source like "%/manuals/%"\'.'
    ),
]
WhereOpt = Annotated[
    str | None,
    typer.Option(
        show_default=False,
        help='A metadata filter as JSON: {"author": "ann", "year": {"$gte": 2020}, '
        '"$or": [...]} ($eq $ne $gt $gte $lt $lte $in $nin $and $or; a.b for nested keys).',
    ),
]
MmrOpt = Annotated[
    bool,
    typer.Option("--mmr", help="Re-rank by maximal marginal relevance: k different documents."),
]
MmrLambdaOpt = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="With --mmr: 1 relevance only, 0 diversity.")
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        envvar="JRAG_DTYPE",
        help="Compute dtype: auto (bfloat16 on GPUs and on CPUs that compute it natively, else "
        "float32), float32, bfloat16, float16, or int8 (CPU only: int8 linear layers, faster, "
        "slightly lower retrieval quality). A collection records the dtype it was built with; "
        "searching it in another dtype works.",
    ),
]
QueryPromptOpt = Annotated[
    str | None,
    typer.Option(
        show_default=False,
        help="Text put before the query, overriding the model's query prompt "
        "(config_sentence_transformers.json); '' for none.",
    ),
]
DocumentPromptOpt = Annotated[
    str | None,
    typer.Option(
        show_default=False,
        help="Text put before each document, overriding the model's document prompt; '' for "
        "none. A collection records it, and searching with another one is refused.",
    ),
]
ServerOpt = Annotated[
    str | None,
    typer.Option(
        envvar="JRAG_SERVER", show_default=False,
        help="A `jrag serve` URL, e.g. http://127.0.0.1:8000: ask it instead of loading the "
        "model here (--uri, --model and --dtype are then the server's).",
    ),
]  # fmt: skip
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        envvar="JRAG_API_KEY", show_default=False,
        help="With --server: its API key. Prefer the JRAG_API_KEY variable.",
    ),
]  # fmt: skip
DEFAULT_URI = "./jrag.db"
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")
ENGINES = ("local", "ray")


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_path=False, show_time=False)],
    )


def _open_existing(uri: str, collection: str, token: str | None):
    from jrag.store import MilvusStore

    return MilvusStore(uri, collection, token=token, create=False)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (searched recursively).")],
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    model: ModelOpt = None,
    mode: IngestModeOpt = DEFAULT_INGEST_MODE,
    glob: Annotated[
        str | None, typer.Option(help="Only files whose name matches, e.g. '*.pdf'.")
    ] = None,
    prune: Annotated[
        bool,
        typer.Option(
            help="Delete stored documents under PATHS whose files are gone (with --glob: only "
            "those the glob matches)."
        ),
    ] = False,
    follow_links: Annotated[
        bool,
        typer.Option(
            "--follow-links",
            help="Follow symbolic links that point outside the folder; by default they are "
            "skipped and reported.",
        ),
    ] = False,
    tenant: TenantOpt = "",
    dtype: DtypeOpt = "auto",
    document_prompt: DocumentPromptOpt = None,
    engine: Annotated[
        str,
        typer.Option(
            help="local: parse and embed in this process; ray: on a Ray cluster (a local one "
            "on this machine's cores unless --ray-address)."
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="With --engine ray: the cluster to join, e.g. 'auto' or ray://head:10001.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="With --engine ray: embedding actors (default: one per GPU with "
            "--gpus-per-worker, else one per two CPUs).",
        ),
    ] = None,
    gpus_per_worker: Annotated[
        float,
        typer.Option(min=0, help="With --engine ray: GPUs per embedding actor (0: CPU only)."),
    ] = 0,
    batch_tokens: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="Tokens in one forward batch (rows × longest row); default 16384.",
        ),
    ] = None,
    max_file_size: Annotated[
        float,
        typer.Option(
            min=0,
            help="Fail (alone) any file larger than this many MB; 0: no limit. A large text "
            "file takes minutes (about 5 windows of 8k tokens a second on 2 CPU cores).",
        ),
    ] = 100,
    bulk: Annotated[
        bool,
        typer.Option(
            "--bulk",
            help="With --engine ray and a Milvus server: write rows through Milvus bulk import "
            "(needs JRAG_BULK_DIR or the JRAG_BULK_S3_* settings; otherwise upserts).",
        ),
    ] = False,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            help="key=value: a field added to every document of this run (repeatable; a "
            "document's own front matter or JSON Lines fields win).",
        ),
    ] = None,
    text_field: Annotated[
        str, typer.Option(help="JSON Lines (.jsonl): the field that holds a document's text.")
    ] = "text",
    id_field: Annotated[
        str,
        typer.Option(
            help="JSON Lines: the field that holds a document's id (none: derived from the "
            "content). The other fields become the document's metadata."
        ),
    ] = "id",
) -> None:
    """Parse, embed and store documents. Unchanged files are skipped; changed ones replaced."""
    from jrag.encoder import DEFAULT_BATCH_TOKENS
    from jrag.parse import DEFAULT_LIMITS, discover_files
    from jrag.pipeline import IngestOptions
    from jrag.records import RecordFormat

    with one_line_errors():
        limits = replace(DEFAULT_LIMITS, max_file_bytes=int(max_file_size * 2**20))
        options = IngestOptions(mode=mode, limits=limits)
        _check_dtype(dtype)
        _check_engine(engine, ray_address=ray_address, workers=workers,
                      gpus_per_worker=gpus_per_worker, bulk=bulk)  # fmt: skip
        fields = _metadata_fields(metadata or [])
        if fields and engine == "ray":
            raise InputError("--metadata is not taken by --engine ray yet; use --engine local")
        run = _IngestRun(
            paths=paths, uri=uri, collection=collection, token=token, model=model,
            options=options, glob=glob, prune=prune, tenant=tenant, follow_links=follow_links,
            dtype=dtype, batch_tokens=batch_tokens or DEFAULT_BATCH_TOKENS,
            document_prompt=document_prompt, metadata=fields,
            records=RecordFormat(text_field=text_field, id_field=id_field),
        )  # fmt: skip
        if engine == "ray":
            report, where = run.ray(ray_address, workers, gpus_per_worker, bulk)
        else:
            report, where = run.local(discover_files(paths, glob, follow_links=follow_links))
    _print_ingest_report(report, f"ingest → {collection} @ {where} ({mode})")
    if report.failed:
        raise typer.Exit(code=2)


def _metadata_fields(pairs: list[str]) -> dict[str, str]:
    """``--metadata key=value`` options as a dict (values are text)."""
    fields = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--metadata takes key=value, not {pair!r}")
        fields[key.strip()] = value
    return fields


def _where(text: str | None) -> dict | None:
    """``--where`` JSON as a structured metadata filter."""
    if text is None or not text.strip():
        return None
    try:
        where = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise InputError(f"--where is not JSON: {err}") from None
    if not isinstance(where, dict):
        raise InputError('--where must be a JSON object, e.g. \'{"author": "ann"}\'')
    return where


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InputError(
            f"--dtype (or JRAG_DTYPE) must be one of {', '.join(DTYPES)}, not {dtype!r}"
        )


def _check_engine(
    engine: str,
    *,
    ray_address: str | None,
    workers: int | None,
    gpus_per_worker: float,
    bulk: bool,
) -> None:
    """Refuse an unknown engine, and Ray-only flags without ``--engine ray``."""
    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "ray":
        return
    if bulk:
        raise InputError("--bulk needs --engine ray: bulk import is written by the Ray engine")
    given = {
        "--ray-address": ray_address is not None,
        "--workers": workers is not None,
        "--gpus-per-worker": gpus_per_worker != 0,
    }
    for flag, used in given.items():
        if used:
            raise InputError(f"{flag} needs --engine ray")


@dataclass
class _IngestRun:
    """One ``jrag ingest``: its settings, and the two engines that carry it out."""

    paths: list[Path]
    uri: str
    collection: str
    token: str | None
    model: str | None
    options: IngestOptions
    glob: str | None
    prune: bool
    tenant: str
    follow_links: bool
    dtype: str
    batch_tokens: int
    document_prompt: str | None = None
    metadata: dict[str, str] | None = None  # --metadata: fields for every document
    records: RecordFormat | None = None  # how JSON Lines records are read
    stored: int = 0  # documents stored completely so far, for the interrupt message

    def _progress(self) -> Progress:
        description = TextColumn("{task.description}", markup=False)
        columns = (description, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        return Progress(*columns, console=console, transient=True)

    def _count(self, outcome: str) -> None:
        if outcome not in ("failed", "skipped"):
            self.stored += 1

    def _interrupted(self, progress: Progress) -> typer.Exit:
        progress.stop()
        warn(
            "interrupted",
            f"{self.stored} document(s) were stored completely in this run; every stored "
            "document is intact. Run the same command again to resume.",
        )
        return typer.Exit(code=130)

    def local(self, discovery: Discovery) -> tuple[IngestReport, str]:
        """Ingest in this process; returns the report and the store as displayed."""
        from jrag.embedding import identity_of, load_encoder
        from jrag.pipeline import ingest as run_ingest
        from jrag.store import MilvusStore

        # The store opens first: a locked or unreachable store is reported before any model
        # loads, and an existing collection's own model is the default.
        try:
            store = _open_existing(self.uri, self.collection, self.token)
        except CollectionNotFound:
            store = None
        try:
            model = self.model or (store.model if store else DEFAULT_MODEL)
            with loading(model):
                encoder = load_encoder(
                    model, dtype=self.dtype, document_prompt=self.document_prompt
                )
            if store is None:
                store = MilvusStore(
                    self.uri, self.collection, token=self.token, identity=identity_of(encoder)
                )
            else:
                store.check_model(identity_of(encoder))
        except BaseException:
            if store is not None:
                store.close()
            raise
        with store, self._progress() as progress:
            task = progress.add_task("ingesting", total=len(discovery.files))

            def on_file(path: str, outcome: str) -> None:
                self._count(outcome)
                name = printable(Path(path).name)
                progress.update(task, advance=1, description=f"{outcome}: {name}")

            started: dict[str, float] = {}

            def on_windows(path: str, done: int, total: int) -> None:
                name = printable(Path(path).name)
                first = started.setdefault(path, time.monotonic())
                text = f"embedding {name}: window {done} of {total}"
                if done:  # an estimate from this file's own pace so far
                    left = (time.monotonic() - first) / done * (total - done)
                    text += f", about {_duration(left)} left"
                progress.update(task, description=text)

            try:
                report = run_ingest(
                    self.paths, store, encoder, options=self.options, glob=self.glob,
                    prune=self.prune, tenant=self.tenant, batch_tokens=self.batch_tokens,
                    discovery=discovery, on_file=on_file, on_windows=on_windows,
                    metadata=self.metadata, records=self.records,
                )  # fmt: skip
            except KeyboardInterrupt:
                raise self._interrupted(progress) from None
            return report, store.uri_for_display

    def ray(
        self, address: str | None, workers: int | None, gpus: float, bulk: bool
    ) -> tuple[IngestReport, str]:
        """Ingest on a Ray cluster; returns the report and the store as displayed."""
        from jrag.distributed import StoreConfig, ingest_ray
        from jrag.store.connection import display_uri

        # An existing collection names the model; a locked or unreachable store fails here,
        # before Ray starts. It is closed again: the driver reopens it.
        try:
            with _open_existing(self.uri, self.collection, self.token) as store:
                recorded = store.model
        except CollectionNotFound:
            recorded = None
        with self._progress() as progress:
            task = progress.add_task("starting Ray", total=None)

            def on_progress(done: RayProgress) -> None:
                self._count(done.outcome)
                text = f"{done.outcome}: {printable(Path(done.source).name)}"
                progress.update(task, total=done.total, completed=done.done, description=text)

            try:
                report = ingest_ray(
                    self.paths, StoreConfig(self.uri, self.collection, self.token),
                    self.model or recorded or DEFAULT_MODEL, options=self.options,
                    glob=self.glob, prune=self.prune, tenant=self.tenant,
                    follow_links=self.follow_links, ray_address=address, workers=workers,
                    gpus_per_worker=gpus, batch_tokens=self.batch_tokens, dtype=self.dtype,
                    document_prompt=self.document_prompt, bulk=bulk, on_progress=on_progress,
                )  # fmt: skip
            except KeyboardInterrupt:
                raise self._interrupted(progress) from None
        return report, display_uri(self.uri)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_ingest_report(report: IngestReport, title: str) -> None:
    """The summary table, then one plain line per file left out or failed."""
    from jrag.parse import display_path

    table = Table(title=Text(title), show_header=False)
    stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in report.stage_seconds.items())
    extended = sorted({kind for _, kinds in report.extended for kind in kinds})
    for label, value in [
        ("added", len(report.added)), ("updated", len(report.updated)),
        ("kinds added", f"{len(report.extended)} ({', '.join(extended)})" if extended else "0"),
        ("skipped (unchanged)", len(report.skipped)), ("failed", len(report.failed)),
        ("left out (links, special files)", len(report.refused)),
        ("pruned", len(report.pruned)), ("tokens embedded", f"{report.tokens:,}"),
        ("time", f"{report.seconds:.1f} s ({stages})"),
    ]:  # fmt: skip
        table.add_row(label, Text(str(value)))
    console.print(table)
    for path, reason in report.refused:
        errors.print(Text(f"skipped {display_path(path)}: {reason}"), soft_wrap=True)
    for _path, message in report.failed:
        warn("failed", message)


def _search_options(arguments: dict):
    """The search options among a command's ``arguments`` (its ``locals()``), by name."""
    from jrag.retrieval import SearchOptions

    return SearchOptions.pick(arguments, where=_where(arguments.get("where")))


def _server_request(arguments: dict) -> dict:
    """The ``--server`` request among a command's ``arguments`` (its ``locals()``); the options
    that belong to this process's model are refused: the server cannot honour them."""
    if arguments["rerank"]:
        raise InputError("--rerank loads its model in this process; it does not go with --server")
    if arguments["query_prompt"] is not None or arguments["document_prompt"] is not None:
        raise InputError("--query-prompt/--document-prompt are the server's; not with --server")
    names = ("k", "mode", "filter", "hybrid", "ranker", "tenant", "collection", "mmr", "mmr_lambda")
    fields = {name: arguments[name] for name in names}
    weights = arguments["weights"] and list(arguments["weights"])  # None: the ranker's own
    return fields | {"weights": weights, "where": _where(arguments["where"])}


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="How many documents.")] = DEFAULT_K,
    filter: FilterOpt = None,
    mode: SearchModeOpt = DEFAULT_SEARCH_MODE,
    hybrid: HybridOpt = True,
    ranker: RankerOpt = DEFAULT_RANKER,
    weights: WeightsOpt = None,
    content: ContentOpt = DEFAULT_CONTENT,
    rerank: RerankOpt = None,
    rerank_depth: RerankDepthOpt = DEFAULT_RERANK_DEPTH,
    where: WhereOpt = None,
    mmr: MmrOpt = False,
    mmr_lambda: MmrLambdaOpt = DEFAULT_MMR_LAMBDA,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    model: ModelOpt = None,
    tenant: TenantOpt = "",
    dtype: DtypeOpt = "auto",
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    query_prompt: QueryPromptOpt = None,
    document_prompt: DocumentPromptOpt = None,
) -> None:
    """Find the documents that best match a query, each with its best passage."""
    with one_line_errors():
        if server:
            from types import SimpleNamespace

            from jrag.client import Client

            request = _server_request(locals())
            with Client(server, api_key=api_key) as client:
                found = client.search(query, content=content, **request)
            results = [SimpleNamespace(**r) for r in found]
        else:
            from jrag.retrieval import search as run_search

            options = _search_options(locals())
            store, encoder = _store_and_encoder(uri, collection, token, model, dtype,
                                                query_prompt, document_prompt)  # fmt: skip
            with store:
                results = run_search(query, store, encoder, options)
    if as_json:
        rows = [r.__dict__ | {"page": r.page} for r in results]  # results from --server too
        print(json.dumps(rows, indent=2, allow_nan=False))  # ASCII: exact, and terminal-safe
        return
    table = Table(title=safe(f"{_shortened(query)!r} in {collection}"))
    for column in ("#", "score", "document", "page", "best passage"):
        table.add_column(column, overflow="fold")
    for rank, r in enumerate(results, 1):
        passage = r.text[r.passage_start - r.start : r.passage_end - r.start]
        snippet = " ".join(passage.split())[:160]
        document = Text.assemble(safe(r.title), "\n", safe(r.source, style="dim"))
        table.add_row(str(rank), f"{r.score:.3f}", document, str(r.page or ""), safe(snippet))
    console.print(table if results else "no results")


QUERY_ECHO_CHARS = 200  # a query longer than this is shortened in a table's title


def _shortened(query: str) -> str:
    if len(query) <= QUERY_ECHO_CHARS:
        return query
    return f"{query[:QUERY_ECHO_CHARS]}… ({len(query):,} characters)"


def _store_and_encoder(
    uri: str, collection: str, token: str | None, model: str | None, dtype: str,
    query_prompt: str | None = None, document_prompt: str | None = None,
):  # fmt: skip
    """Open an existing collection and load the model it was built with (or ``model``).

    The model may run in another dtype than the collection was built with: the vectors differ
    too little to matter (measured), so that is allowed.
    """
    from jrag.embedding import open_collection

    _check_dtype(dtype)
    with console.status("opening the collection and its model"):
        return open_collection(
            uri, collection, token=token, model=model, dtype=dtype, query_prompt=query_prompt,
            document_prompt=document_prompt,
        )  # fmt: skip


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="A question, in plain words.")],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="How many documents to read.")] = 3,
    passages: Annotated[
        int, typer.Option("--passages", "-p", min=1, help="How many passages to cite.")
    ] = 3,
    filter: FilterOpt = None,
    mode: SearchModeOpt = DEFAULT_SEARCH_MODE,
    hybrid: HybridOpt = True,
    ranker: RankerOpt = DEFAULT_RANKER,
    weights: WeightsOpt = None,
    rerank: RerankOpt = None,
    rerank_depth: RerankDepthOpt = DEFAULT_RERANK_DEPTH,
    where: WhereOpt = None,
    mmr: MmrOpt = False,
    mmr_lambda: MmrLambdaOpt = DEFAULT_MMR_LAMBDA,
    no_llm: Annotated[
        bool,
        typer.Option("--no-llm", help="Quote passages even when JRAG_LLM_BASE_URL is set."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    model: ModelOpt = None,
    tenant: TenantOpt = "",
    dtype: DtypeOpt = "auto",
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    query_prompt: QueryPromptOpt = None,
    document_prompt: DocumentPromptOpt = None,
) -> None:
    """Answer a question from the best documents, citing file and span (or page).

    With JRAG_LLM_BASE_URL and JRAG_LLM_MODEL set, an OpenAI-compatible endpoint answers (with
    --server: the server's).

    Otherwise (or with --no-llm) the best passages are quoted. JRAG_LLM_API_KEY: the key, if any.
    """
    with one_line_errors(), ExitStack() as stack:
        if server:
            from jrag.client import Client

            request = _server_request(locals())
            client = stack.enter_context(Client(server, api_key=api_key))
            events = client.ask_stream(question, passages=passages, llm=not no_llm, **request)
            waiting = "asking the server"
        else:
            from jrag.llm import from_env
            from jrag.qa import answer_events, retrieve_passages

            options = _search_options(locals())
            llm = None if no_llm else from_env()
            store, encoder = _store_and_encoder(uri, collection, token, model, dtype,
                                                query_prompt, document_prompt)  # fmt: skip
            with store, console.status("finding passages"):
                context = retrieve_passages(
                    question, store=store, encoder=encoder, passages=passages, options=options
                )
            events = answer_events(question, context, llm)
            waiting = "answering"
        answer, shown = _read_answer(events, waiting, echo=not as_json)
    if as_json:
        print(json.dumps(answer, indent=2, ensure_ascii=False, allow_nan=False))
        return
    if not shown:
        console.print(safe(answer["text"], newlines=True), highlight=False, soft_wrap=True)
    if not answer["citations"]:
        return
    table = Table(title=Text(f"sources ({answer['backend']})"))
    for column in ("#", "score", "document", "where"):
        table.add_column(column, overflow="fold")
    for c in answer["citations"]:
        document = Text.assemble(safe(c["title"]), "\n", safe(c["source"], style="dim"))
        table.add_row(Text(f"[{c['number']}]"), f"{c['score']:.3f}", document, safe(c["location"]))
    console.print(table)


def _read_answer(
    events: Iterator[tuple[str, dict]], waiting: str, *, echo: bool
) -> tuple[dict, bool]:
    """The answer that ``ask``'s events end with (:func:`jrag.qa.answer_events`). With
    ``echo``, the reply is printed piece by piece as the LLM writes it; also returns whether it
    was."""
    from jrag.llm import LLMError

    shown = False
    status = console.status(waiting)
    status.start()
    try:
        for name, data in events:
            if name == "delta" and echo:
                status.stop()
                console.print(safe(data["text"], newlines=True), end="", highlight=False,
                              soft_wrap=True)  # fmt: skip
                shown = True
            elif name == "error":
                raise LLMError(data["message"])
            elif name == "answer":
                return data, shown
    finally:
        status.stop()
        if shown:  # the reply's last line, ended (also where it broke off)
            console.print()
    raise LLMError("the answer broke off before it was complete")


@app.command()
def stats(
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Show what a collection holds: its manifest (model, kinds, options) and row counts."""
    with one_line_errors():
        if server:
            from jrag.client import Client

            with Client(server, api_key=api_key) as client:
                info = client.stats()
            collection = info.get("collection", collection)
        else:
            with _open_existing(uri, collection, token) as store:
                info = store.stats()
    table = Table(title=Text(f"collection {collection}"), show_header=False)
    for key, value in info.items():
        shown = json.dumps(value) if isinstance(value, dict) else str(value)
        table.add_row(key, safe(shown))  # a recorded prompt may hold control characters
    console.print(table)


@app.command()
def repair(
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what is left over; delete nothing.")
    ] = False,
) -> None:
    """Delete rows that no stored document accounts for (left by a killed or older writer)."""
    with one_line_errors(), _open_existing(uri, collection, token) as store:
        found = store.repair(dry_run=dry_run)
    verb = "found" if dry_run else "deleted"
    console.print(
        Text(
            f"{found['documents']} documents; {verb} {found['orphan_rows']} orphan rows and "
            f"{found['unfinished_documents']} unfinished first writes"
        )
    )


@app.command()
def drop(
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Don't ask for confirmation.")] = False,
) -> None:
    """Delete a collection and everything in it (also one that jrag did not create)."""
    from jrag.store import Connection, drop_collection

    with one_line_errors(), Connection(uri, token=token, create=False) as conn:
        if not conn.call("list collections", conn.client.has_collection, collection):
            raise CollectionNotFound(f"collection '{collection}' at {conn.display} does not exist")
        if not yes:
            typer.confirm(f"Drop collection {collection!r} at {conn.display}?", abort=True)
        drop_collection(conn, collection)
    console.print(Text(f"dropped {collection}"))


@app.command()
def serve(
    db: Annotated[
        Path, typer.Option(help="The Milvus Lite .db file to serve; created if missing.")
    ] = Path(DEFAULT_URI),
    uri: Annotated[
        str | None,
        typer.Option(show_default=False, help="A Milvus server URL to use instead of --db."),
    ] = None,
    collection: CollectionOpt = "jrag",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="HTTP port (0: any free port).")
    ] = 8000,
    host: Annotated[
        str, typer.Option(help="HTTP address. Anything but loopback needs --api-key.")
    ] = "127.0.0.1",
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="JRAG_API_KEY",
            show_default=False,
            help="Require 'Authorization: Bearer KEY' on every route but /health. Prefer the "
            "JRAG_API_KEY variable.",
        ),
    ] = None,
    milvus_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            show_default=False,
            help="Port on 127.0.0.1 for the .db itself (gRPC, for --uri http://127.0.0.1:PORT). "
            "Default: 19530 if free, else any free port.",
        ),
    ] = None,
    token: TokenOpt = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = "auto",
    max_body_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest request body, in MiB (413 past it).")
    ] = 32.0,
    queue: Annotated[
        int, typer.Option(min=1, help="Requests that may wait for the model (503 past it).")
    ] = 256,
) -> None:
    """Serve a collection over HTTP: OpenAI embeddings, search, ask, documents, a web page.

    One process holds the model and the collection.

    It binds 127.0.0.1 unless --host and an API key are given. A Milvus Lite .db is also served
    itself on a second port on 127.0.0.1 only; other jrag commands reach it with
    --uri http://127.0.0.1:PORT (printed at start). Stop with Ctrl-C.
    """
    from jrag.serve import HttpSettings, serve_http

    with one_line_errors():
        _check_dtype(dtype)
        max_body = int(max_body_mb * 1024 * 1024)
        settings = HttpSettings(host, port, api_key, max_body=max_body, max_queue=queue)
        serve_http(db=db, uri=uri, collection=collection, settings=settings,
                   milvus_port=milvus_port, token=token, model=model, dtype=dtype)  # fmt: skip


if __name__ == "__main__":
    app()
