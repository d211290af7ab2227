"""jrag: retrieval-augmented generation over long documents with whole-document embeddings."""

from jrag.encoder import Encoder, TokenStates
from jrag.errors import InputError, JragError, ModelLoadError, ParseError, StoreError
from jrag.loading import DEFAULT_MODEL

__all__ = [
    "DEFAULT_MODEL",
    "Encoder",
    "InputError",
    "JragError",
    "ModelLoadError",
    "ParseError",
    "StoreError",
    "TokenStates",
]
__version__ = "0.1.0"
