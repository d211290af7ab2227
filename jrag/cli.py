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
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jrag.errors import JragError
from jrag.loading import DEFAULT_MODEL

os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(
    help="Whole-document retrieval over long documents: ingest PDF, HTML, DOCX, Markdown and text "
    "into Milvus with an 8,192-token JinaBERT encoder, then search or ask.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)
_state = {"debug": False}

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
ModeOpt = Annotated[
    str,
    typer.Option(
        help="whole: one vector per document (overlapping 8k windows past the limit); late: whole "
        "+ late-chunk vectors from the same pass; chunked: naive 512-token chunks (baseline)."
    ),
]
DEFAULT_URI = "./jrag.db"


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_path=False, show_time=False)],
    )


def _fail(err: Exception) -> typer.Exit:
    if _state["debug"]:
        errors.print_exception()
    errors.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _open_store(uri: str, collection: str, token: str | None, **kwargs):
    from jrag.store import MilvusStore

    return MilvusStore(uri, collection, token=token, **kwargs)


def _load_encoder(model: str):
    from jrag.encoder import Encoder

    with console.status(f"loading model {model}"):
        return Encoder.from_pretrained(model)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (searched recursively).")],
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    model: ModelOpt = None,
    mode: ModeOpt = "whole",
    glob: Annotated[
        str | None, typer.Option(help="Only files whose name matches, e.g. '*.pdf'.")
    ] = None,
    prune: Annotated[
        bool, typer.Option(help="Delete stored documents whose files are gone.")
    ] = False,
) -> None:
    """Parse, embed and store documents. Unchanged files are skipped; changed ones replaced."""
    from jrag.parse import discover
    from jrag.pipeline import IngestOptions
    from jrag.pipeline import ingest as run_ingest

    try:
        options = IngestOptions(mode=mode)
        files = discover(paths, glob)
        encoder = _load_encoder(model or DEFAULT_MODEL)
        store = _open_store(uri, collection, token, model=encoder.name, dim=encoder.dim)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with store, Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("ingesting", total=len(files))
            report = run_ingest(
                paths, store, encoder, options=options, glob=glob, prune=prune,
                on_file=lambda path, outcome: progress.update(
                    task, advance=1, description=f"{outcome}: {Path(path).name}"
                ),
            )  # fmt: skip
    except JragError as err:
        raise _fail(err) from None

    table = Table(
        title=f"ingest → {collection} @ {store.uri_for_display} ({mode})", show_header=False
    )
    stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in report.stage_seconds.items())
    for label, value in [
        ("added", len(report.added)), ("updated", len(report.updated)),
        ("skipped (unchanged)", len(report.skipped)), ("failed", len(report.failed)),
        ("pruned", len(report.pruned)), ("tokens embedded", f"{report.tokens:,}"),
        ("time", f"{report.seconds:.1f} s ({stages})"),
    ]:  # fmt: skip
        table.add_row(label, str(value))
    console.print(table)
    for _path, message in report.failed:
        errors.print(f"[red]failed:[/] {message}", highlight=False, soft_wrap=True)
    if report.failed:
        raise typer.Exit(code=2)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="How many documents.")] = 5,
    filter: Annotated[
        str | None,
        typer.Option(
            help='Milvus filter expression, e.g. \'metadata["doc_type"] == "pdf"\' or '
            "'source like \"%/manuals/%\"'."
        ),
    ] = None,
    mode: ModeOpt = "whole",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    model: ModelOpt = None,
) -> None:
    """Find the documents that best match a query."""
    from jrag.pipeline import search as run_search

    try:
        store, encoder = _store_and_encoder(uri, collection, token, model)
        with store:
            results = run_search(query, store, encoder, k=k, mode=mode, filter=filter)
    except JragError as err:
        raise _fail(err) from None
    if as_json:
        print(json.dumps([r.__dict__ | {"page": r.page} for r in results], indent=2))
        return
    table = Table(title=f"{query!r} in {collection}")
    for column in ("#", "score", "document", "page", "best passage"):
        table.add_column(column, overflow="fold")
    for rank, r in enumerate(results, 1):
        snippet = " ".join(r.text.split())[:160]
        table.add_row(str(rank), f"{r.score:.3f}", f"{r.title}\n[dim]{r.source}[/]",
                      str(r.page or ""), snippet)  # fmt: skip
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
    filter: Annotated[
        str | None, typer.Option(help="Milvus filter expression, as for `jrag search`.")
    ] = None,
    mode: ModeOpt = "whole",
    no_llm: Annotated[
        bool,
        typer.Option("--no-llm", help="Quote passages even when JRAG_LLM_BASE_URL is set."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    model: ModelOpt = None,
) -> None:
    """Answer a question from the best documents, citing file and span (or page).

    With JRAG_LLM_BASE_URL and JRAG_LLM_MODEL set, an OpenAI-compatible endpoint answers.

    Otherwise (or with --no-llm) the best passages are quoted. JRAG_LLM_API_KEY: the key, if any.
    """
    from rich.markup import escape

    from jrag.llm import from_env
    from jrag.qa import ask as run_ask

    try:
        llm = None if no_llm else from_env()
        store, encoder = _store_and_encoder(uri, collection, token, model)
        with store, console.status("answering" if llm else "finding passages"):
            answer = run_ask(
                question, store=store, encoder=encoder, k=k, mode=mode, filter=filter,
                passages=passages, llm=llm,
            )  # fmt: skip
    except JragError as err:
        raise _fail(err) from None
    if as_json:
        print(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    console.print(answer.text, markup=False, highlight=False, soft_wrap=True)
    if not answer.citations:
        return
    table = Table(title=f"sources ({answer.backend})")
    for column in ("#", "score", "document", "where"):
        table.add_column(column, overflow="fold")
    for c in answer.citations:
        document = f"{escape(c.title)}\n[dim]{escape(c.source)}[/]"
        table.add_row(f"[{c.number}]", f"{c.score:.3f}", document, c.location)
    console.print(table)


@app.command()
def stats(
    collection: CollectionOpt = "jrag", uri: UriOpt = DEFAULT_URI, token: TokenOpt = None
) -> None:
    """Show what a collection holds."""
    try:
        with _open_store(uri, collection, token, create=False) as store:
            info = store.stats()
    except JragError as err:
        raise _fail(err) from None
    table = Table(title=f"collection {collection}", show_header=False)
    for key, value in info.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)


@app.command()
def drop(
    collection: CollectionOpt = "jrag",
    uri: UriOpt = DEFAULT_URI,
    token: TokenOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Don't ask for confirmation.")] = False,
) -> None:
    """Delete a collection and everything in it."""
    try:
        store = _open_store(uri, collection, token, create=False)
        with store:
            if not yes:
                typer.confirm(
                    f"Drop collection {collection!r} at {store.uri_for_display}?", abort=True
                )
            store.drop()
    except JragError as err:
        raise _fail(err) from None
    console.print(f"dropped {collection}")


def _add_subcommands() -> None:
    from jrag.evaluation.cli import app as eval_app

    app.add_typer(eval_app, name="eval")


_add_subcommands()

if __name__ == "__main__":
    app()
