"""The ``jrag`` command line: ingest documents into Milvus, search them, ask them.

Every command is a thin shell over :mod:`jrag.pipeline` and :class:`jrag.store.MilvusStore`.
Errors print as one line naming the file or setting at fault; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from jrag.console import console, errors, fail, load_encoder, state, warn
from jrag.errors import CollectionNotFound, JragError
from jrag.loading import DEFAULT_MODEL
from jrag.modes import DEFAULT_INGEST_MODE, DEFAULT_SEARCH_MODE

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
    str, typer.Option(help="How hybrid results are fused: rrf (rank fusion) or weighted.")
]
WeightsOpt = Annotated[
    tuple[float, float],
    typer.Option(help="With --ranker weighted: the dense and BM25 weights, e.g. 0.7 0.3."),
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
DEFAULT_URI = "./jrag.db"


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
    tenant: TenantOpt = "",
) -> None:
    """Parse, embed and store documents. Unchanged files are skipped; changed ones replaced."""
    from jrag.embedding import identity_of
    from jrag.parse import discover
    from jrag.pipeline import IngestOptions
    from jrag.pipeline import ingest as run_ingest
    from jrag.store import MilvusStore

    report = None
    try:
        options = IngestOptions(mode=mode)
        files = discover(paths, glob)
        # The store opens first: a locked or unreachable store is reported before any model
        # loads, and an existing collection's own model is the default.
        try:
            store = _open_existing(uri, collection, token)
        except CollectionNotFound:
            store = None
        try:
            encoder = load_encoder(model or (store.model if store else DEFAULT_MODEL))
            if store is None:
                store = MilvusStore(uri, collection, token=token, identity=identity_of(encoder))
            else:
                store.check_model(identity_of(encoder))
        except BaseException:
            if store is not None:
                store.close()
            raise
        columns = (
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        done: list[str] = []
        with store, Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("ingesting", total=len(files))

            def on_file(path: str, outcome: str) -> None:
                if outcome != "failed" and outcome != "skipped":
                    done.append(path)
                progress.update(task, advance=1, description=f"{outcome}: {Path(path).name}")

            try:
                report = run_ingest(
                    paths, store, encoder, options=options, glob=glob, prune=prune,
                    tenant=tenant, files=files, on_file=on_file,
                )  # fmt: skip
            except KeyboardInterrupt:
                progress.stop()
                warn(
                    "interrupted",
                    f"{len(done)} document(s) were stored completely in this run; every stored "
                    "document is intact. Run the same command again to resume.",
                )
                raise typer.Exit(code=130) from None
    except JragError as err:
        raise fail(err) from None

    table = Table(
        title=Text(f"ingest → {collection} @ {store.uri_for_display} ({mode})"), show_header=False
    )
    stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in report.stage_seconds.items())
    extended = sorted({kind for _, kinds in report.extended for kind in kinds})
    for label, value in [
        ("added", len(report.added)), ("updated", len(report.updated)),
        ("kinds added", f"{len(report.extended)} ({', '.join(extended)})" if extended else "0"),
        ("skipped (unchanged)", len(report.skipped)), ("failed", len(report.failed)),
        ("pruned", len(report.pruned)), ("tokens embedded", f"{report.tokens:,}"),
        ("time", f"{report.seconds:.1f} s ({stages})"),
    ]:  # fmt: skip
        table.add_row(label, Text(str(value)))
    console.print(table)
    for _path, message in report.failed:
        warn("failed", message)
    if report.failed:
        raise typer.Exit(code=2)


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
    ranker: RankerOpt = "rrf",
    weights: WeightsOpt = (0.5, 0.5),
    content: ContentOpt = "passage",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    model: ModelOpt = None,
    tenant: TenantOpt = "",
) -> None:
    """Find the documents that best match a query, each with its best passage."""
    from jrag.retrieval import search as run_search

    try:
        options = _search_options(k, mode, filter, hybrid, ranker, weights, content, tenant)
        store, encoder = _store_and_encoder(uri, collection, token, model)
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


def _store_and_encoder(uri: str, collection: str, token: str | None, model: str | None):
    """Open an existing collection and load the model it was built with (or ``model``)."""
    from jrag.searcher import open_collection

    with console.status("opening the collection and its model"):
        return open_collection(uri, collection, token=token, model=model)


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
    ranker: RankerOpt = "rrf",
    weights: WeightsOpt = (0.5, 0.5),
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
) -> None:
    """Answer a question from the best documents, citing file and span (or page).

    With JRAG_LLM_BASE_URL and JRAG_LLM_MODEL set, an OpenAI-compatible endpoint answers.

    Otherwise (or with --no-llm) the best passages are quoted. JRAG_LLM_API_KEY: the key, if any.
    """
    from jrag.llm import from_env
    from jrag.qa import ask as run_ask

    try:
        options = _search_options(k, mode, filter, hybrid, ranker, weights, "passage", tenant)
        llm = None if no_llm else from_env()
        store, encoder = _store_and_encoder(uri, collection, token, model)
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
    try:
        with _open_existing(uri, collection, token) as store:
            info = store.stats()
    except JragError as err:
        raise fail(err) from None
    table = Table(title=Text(f"collection {collection}"), show_header=False)
    for key, value in info.items():
        shown = json.dumps(value) if isinstance(value, dict) else str(value)
        table.add_row(key, Text(shown))
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


def _add_subcommands() -> None:
    from jrag.evaluation.cli import app as eval_app

    app.add_typer(eval_app, name="eval")


_add_subcommands()

if __name__ == "__main__":
    app()
