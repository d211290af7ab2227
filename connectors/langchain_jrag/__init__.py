"""LangChain integration for jrag: local long-document embeddings and whole-document retrieval."""

from langchain_jrag.embeddings import JragEmbeddings
from langchain_jrag.retrievers import JragRetriever

__all__ = ["JragEmbeddings", "JragRetriever"]
