"""Errors that jrag raises at its boundaries.

Every message names the file, model or setting at fault, so that the CLI can print it as one
readable line. The CLI shows a traceback only with ``--debug``.
"""

from __future__ import annotations


class JragError(Exception):
    """Base class for every error jrag raises on purpose."""


class ModelLoadError(JragError):
    """A model folder or hub id could not be resolved, read or matched to its config."""


class InputError(JragError, ValueError):
    """A caller passed texts or arguments that jrag cannot encode."""


class ParseError(JragError):
    """A document could not be read or yielded no text."""


class StoreError(JragError):
    """Milvus is unreachable, or a collection does not match the model in use."""


class EngineError(JragError):
    """The Ray engine could not start, or could not reach its cluster."""


class CollectionNotFound(StoreError):
    """The collection (or the Milvus Lite database holding it) does not exist."""
