"""Former home of the lazy collection opener: see :mod:`jrag.embedding` (kept as an alias)."""

from jrag.embedding import RemoteSearcher, Searcher, open_collection, result_metadata

__all__ = ["RemoteSearcher", "Searcher", "open_collection", "result_metadata"]
