"""Text from files made safe for a terminal: the one place every printer passes it through.

A file's name, title or text may hold escape sequences (set the window title, clear the screen),
bidi controls that reorder what is shown (U+202E), or bytes that are not valid UTF-8. Printed
raw, they act on the terminal; :func:`printable` writes each as a visible escape instead
(``\\x1b``, ``\\u202e``, ``\\xe9`` for an undecodable byte). JSON output is not passed through
it: JSON escapes control characters itself and must stay exact.
"""

from __future__ import annotations

import unicodedata


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with every character a terminal would act on written as an escape; with
    ``newlines``, line breaks (and tabs) are kept as they are."""
    if text.isprintable() and text.isascii():
        return text
    return "".join(_char(c, newlines) for c in text)


def _char(c: str, newlines: bool) -> str:
    if newlines and c in "\n\t":
        return c
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode carries it
        return f"\\x{code - 0xDC00:02x}"
    if c.isprintable() and unicodedata.category(c) not in ("Cf", "Co", "Cs"):
        return c
    return c.encode("unicode_escape").decode("ascii")
