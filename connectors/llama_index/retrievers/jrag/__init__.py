"""LlamaIndex retriever integration for jrag."""

from llama_index.retrievers.jrag.base import JragRetriever

__all__ = ["JragRetriever"]
