"""`jrag eval` subcommands (built in the eval issue)."""

import typer

app = typer.Typer(help="Evaluate long-document retrieval: whole vs late vs chunked.", no_args_is_help=True)
