"""LlamaIndex vector store integration for jrag."""

from llama_index.vector_stores.jrag.base import JragVectorStore, to_where

__all__ = ["JragVectorStore", "to_where"]
