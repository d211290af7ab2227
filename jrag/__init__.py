"""jrag: retrieval-augmented generation over long documents with whole-document embeddings.

``Encoder`` and ``TokenStates`` load torch, so they are imported on first use: ``import jrag``
(and a ``jrag`` command that talks to a server) stays light.
"""

from typing import Any

from jrag.defaults import DEFAULT_MODEL
from jrag.errors import (
    EngineError,
    InputError,
    JragError,
    ModelLoadError,
    ParseError,
    StoreError,
)

__all__ = [
    "DEFAULT_MODEL",
    "Encoder",
    "EngineError",
    "InputError",
    "JragError",
    "ModelLoadError",
    "ParseError",
    "StoreError",
    "TokenStates",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("Encoder", "TokenStates"):
        import jrag.encoder

        return getattr(jrag.encoder, name)
    raise AttributeError(f"module 'jrag' has no attribute {name!r}")
