"""What every ``jrag`` command prints through: the consoles, one-line errors, status lines.

Document text and file paths are always printed as plain text, never as rich markup, so a
passage holding ``[/]`` or ``[url=…]`` prints as it is, and always through :func:`safe`, so
that no escape sequence or bidi control from a file reaches the terminal.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.text import Text

from jrag.errors import JragError
from jrag.terminal import printable

if TYPE_CHECKING:
    from rich.status import Status

console = Console()
errors = Console(stderr=True)
state = {"debug": False}


@contextmanager
def one_line_errors() -> Iterator[None]:
    """A JragError in the block prints as one line (the traceback too with --debug); exit 1."""
    try:
        yield
    except JragError as err:
        if state["debug"]:
            errors.print_exception()
        errors.print(Text.assemble(("error: ", "bold red"), printable(str(err))), soft_wrap=True)
        raise typer.Exit(code=1) from None


def warn(label: str, message: str) -> None:
    """One plain-text line on stderr, e.g. ``failed: /path/to/file: why``."""
    errors.print(Text.assemble((f"{label}: ", "red"), printable(message)), soft_wrap=True)


def safe(text: str, *, newlines: bool = False, style: str = "") -> Text:
    """Text from a file (a name, title, passage) as plain, terminal-safe rich Text."""
    return Text(printable(text, newlines=newlines), style=style)


def loading(model: str) -> Status:
    """The status line shown while ``model`` loads: ``with loading(name): load_encoder(name)``."""
    return console.status(Text(f"loading model {model}"))
