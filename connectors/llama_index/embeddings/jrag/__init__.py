"""LlamaIndex embedding integration for jrag."""

from llama_index.embeddings.jrag.base import JragEmbedding

__all__ = ["JragEmbedding"]
