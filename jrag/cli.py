"""The ``jrag`` command line: ingest documents into Milvus, search them, ask them.

Every command is a thin shell over :mod:`jrag.pipeline` and :class:`jrag.store.MilvusStore`.
Errors print as one line naming the file or setting at fault; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from jrag.console import console, errors, fail, load_encoder, state, warn
from jrag.errors import CollectionNotFound, InputError, JragError
from jrag.loading import DEFAULT_MODEL
from jrag.modes import (
    DEFAULT_INGEST_MODE,
    DEFAULT_RANKER,
    DEFAULT_SEARCH_MODE,
    DEFAULT_WEIGHTS,
)

if TYPE_CHECKING:
    from jrag.distributed import Progress as RayProgress
    from jrag.parse import Discovery
    from jrag.pipeline import IngestOptions, IngestReport

os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(
    help="Whole-document retrieval over long documents: ingest PDF, HTML, DOCX, Markdown and text "
    "into Milvus with an 8,192-token JinaBERT encoder, then search or ask.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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
        help="How hybrid results are fused: relative (scores scaled per leg, then weighted), "
        "rrf (reciprocal rank fusion) or weighted (Milvus' WeightedRanker)."
    ),
]
WeightsOpt = Annotated[
    tuple[float, float],
    typer.Option(help="With --ranker relative or weighted: the dense and BM25 weights."),
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
    bulk: Annotated[
        bool,
        typer.Option(
            "--bulk",
            help="With --engine ray and a Milvus server: write rows through Milvus bulk import "
            "(needs JRAG_BULK_DIR or the JRAG_BULK_S3_* settings; otherwise upserts).",
        ),
    ] = False,
) -> None:
    """Parse, embed and store documents. Unchanged files are skipped; changed ones replaced."""
    from jrag.encoder import DEFAULT_BATCH_TOKENS
    from jrag.parse import discover_files
    from jrag.pipeline import IngestOptions

    try:
        options = IngestOptions(mode=mode)
        _check_dtype(dtype)
        _check_engine(engine, ray_address=ray_address, workers=workers,
                      gpus_per_worker=gpus_per_worker, bulk=bulk)  # fmt: skip
        run = _IngestRun(
            paths=paths, uri=uri, collection=collection, token=token, model=model,
            options=options, glob=glob, prune=prune, tenant=tenant, follow_links=follow_links,
            dtype=dtype, batch_tokens=batch_tokens or DEFAULT_BATCH_TOKENS,
            document_prompt=document_prompt,
        )  # fmt: skip
        if engine == "ray":
            report, where = run.ray(ray_address, workers, gpus_per_worker, bulk)
        else:
            report, where = run.local(discover_files(paths, glob, follow_links=follow_links))
    except JragError as err:
        raise fail(err) from None
    _print_ingest_report(report, f"ingest → {collection} @ {where} ({mode})")
    if report.failed:
        raise typer.Exit(code=2)


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
    stored: int = 0  # documents stored completely so far, for the interrupt message

    def _progress(self) -> Progress:
        columns = (
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
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
        from jrag.embedding import identity_of
        from jrag.pipeline import ingest as run_ingest
        from jrag.store import MilvusStore

        # The store opens first: a locked or unreachable store is reported before any model
        # loads, and an existing collection's own model is the default.
        try:
            store = _open_existing(self.uri, self.collection, self.token)
        except CollectionNotFound:
            store = None
        try:
            encoder = load_encoder(
                self.model or (store.model if store else DEFAULT_MODEL), dtype=self.dtype,
                document_prompt=self.document_prompt,
            )  # fmt: skip
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
                progress.update(task, advance=1, description=f"{outcome}: {Path(path).name}")

            def on_windows(path: str, done: int, total: int) -> None:
                name = Path(path).name
                progress.update(task, description=f"embedding {name}: window {done} of {total}")

            try:
                report = run_ingest(
                    self.paths, store, encoder, options=self.options, glob=self.glob,
                    prune=self.prune, tenant=self.tenant, batch_tokens=self.batch_tokens,
                    discovery=discovery, on_file=on_file, on_windows=on_windows,
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
                text = f"{done.outcome}: {Path(done.source).name}"
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


def _search_options(k, mode, filter, hybrid, ranker, weights, content, tenant):
    from jrag.retrieval import SearchOptions

    return SearchOptions(
        k=k, mode=mode, filter=filter, hybrid=hybrid, ranker=ranker, weights=tuple(weights),
        content=content, tenant=tenant,
    )  # fmt: skip


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="How many documents.")] = 5,
    filter: FilterOpt = None,
    mode: SearchModeOpt = DEFAULT_SEARCH_MODE,
    hybrid: HybridOpt = True,
    ranker: RankerOpt = DEFAULT_RANKER,
    weights: WeightsOpt = DEFAULT_WEIGHTS,
    content: ContentOpt = "passage",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    model: ModelOpt = None,
    tenant: TenantOpt = "",
    dtype: DtypeOpt = "auto",
    query_prompt: QueryPromptOpt = None,
    document_prompt: DocumentPromptOpt = None,
) -> None:
    """Find the documents that best match a query, each with its best passage."""
    from jrag.retrieval import search as run_search

    try:
        options = _search_options(k, mode, filter, hybrid, ranker, weights, content, tenant)
        _check_dtype(dtype)
        store, encoder = _store_and_encoder(uri, collection, token, model, dtype,
                                            query_prompt, document_prompt)  # fmt: skip
        with store:
            results = run_search(query, store, encoder, options)
    except JragError as err:
        raise fail(err) from None
    if as_json:
        print(json.dumps([r.__dict__ | {"page": r.page} for r in results], indent=2))
        return
    table = Table(title=Text(f"{query!r} in {collection}"))
    for column in ("#", "score", "document", "page", "best passage"):
        table.add_column(column, overflow="fold")
    for rank, r in enumerate(results, 1):
        passage = r.text[r.passage_start - r.start : r.passage_end - r.start]
        snippet = " ".join(passage.split())[:160]
        document = Text.assemble(r.title, "\n", (r.source, "dim"))
        table.add_row(str(rank), f"{r.score:.3f}", document, str(r.page or ""), Text(snippet))
    console.print(table if results else "no results")


def _store_and_encoder(
    uri: str, collection: str, token: str | None, model: str | None, dtype: str,
    query_prompt: str | None = None, document_prompt: str | None = None,
):  # fmt: skip
    """Open an existing collection and load the model it was built with (or ``model``).

    The model may run in another dtype than the collection was built with: the vectors differ
    too little to matter (measured), so that is allowed.
    """
    from jrag.searcher import open_collection

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
    weights: WeightsOpt = DEFAULT_WEIGHTS,
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
    query_prompt: QueryPromptOpt = None,
    document_prompt: DocumentPromptOpt = None,
) -> None:
    """Answer a question from the best documents, citing file and span (or page).

    With JRAG_LLM_BASE_URL and JRAG_LLM_MODEL set, an OpenAI-compatible endpoint answers.

    Otherwise (or with --no-llm) the best passages are quoted. JRAG_LLM_API_KEY: the key, if any.
    """
    from jrag.llm import from_env
    from jrag.qa import ask as run_ask

    try:
        options = _search_options(k, mode, filter, hybrid, ranker, weights, "passage", tenant)
        _check_dtype(dtype)
        llm = None if no_llm else from_env()
        store, encoder = _store_and_encoder(uri, collection, token, model, dtype,
                                            query_prompt, document_prompt)  # fmt: skip
        with store, console.status("answering" if llm else "finding passages"):
            answer = run_ask(
                question, store=store, encoder=encoder, passages=passages, llm=llm,
                options=options,
            )  # fmt: skip
    except JragError as err:
        raise fail(err) from None
    if as_json:
        print(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    console.print(answer.text, markup=False, highlight=False, soft_wrap=True)
    if not answer.citations:
        return
    table = Table(title=Text(f"sources ({answer.backend})"))
    for column in ("#", "score", "document", "where"):
        table.add_column(column, overflow="fold")
    for c in answer.citations:
        document = Text.assemble(c.title, "\n", (c.source, "dim"))
        table.add_row(Text(f"[{c.number}]"), f"{c.score:.3f}", document, Text(c.location))
    console.print(table)


@app.command()
def stats(
    collection: CollectionOpt = "jrag", uri: UriOpt = DEFAULT_URI, token: TokenOpt = None
) -> None:
    """Show what a collection holds: its manifest (model, kinds, options) and row counts."""
    from jrag.parse import display_path

    try:
        with _open_existing(uri, collection, token) as store:
            info = store.stats()
    except JragError as err:
        raise fail(err) from None
    table = Table(title=Text(f"collection {collection}"), show_header=False)
    for key, value in info.items():
        shown = json.dumps(value) if isinstance(value, dict) else str(value)
        table.add_row(key, Text(display_path(shown)))  # a prompt may hold control characters
    console.print(table)


@app.command()
def drop(
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Don't ask for confirmation.")] = False,
) -> None:
    """Delete a collection and everything in it (also one that jrag did not create)."""
    from jrag.store import Connection, drop_collection

    try:
        with Connection(uri, token=token, create=False) as conn:
            if not conn.call("list collections", conn.client.has_collection, collection):
                raise CollectionNotFound(
                    f"collection '{collection}' at {conn.display} does not exist"
                )
            if not yes:
                typer.confirm(f"Drop collection {collection!r} at {conn.display}?", abort=True)
            drop_collection(conn, collection)
    except JragError as err:
        raise fail(err) from None
    console.print(Text(f"dropped {collection}"))


@app.command()
def serve(
    db: Annotated[
        Path, typer.Option(help="The Milvus Lite .db file to serve; created if missing.")
    ] = Path(DEFAULT_URI),
    port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            show_default=False,
            help="Port on 127.0.0.1. Default: 19530 if free, else any free port; 0: any free port.",
        ),
    ] = None,
) -> None:
    """Share one Milvus Lite .db between processes, served on 127.0.0.1 only.

    It binds 127.0.0.1 only (the server has no authentication). Other jrag commands then use
    --uri http://127.0.0.1:PORT; the URI is printed at start. Stop with Ctrl-C.
    """
    from jrag.serve import serve as run_serve

    try:
        run_serve(db, port)
    except JragError as err:
        raise fail(err) from None


def _add_subcommands() -> None:
    from jrag.evaluation.cli import app as eval_app

    app.add_typer(eval_app, name="eval")


_add_subcommands()

if __name__ == "__main__":
    app()
