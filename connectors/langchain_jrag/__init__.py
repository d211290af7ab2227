"""LangChain integration for jrag: local long-document embeddings, retrieval and a vector store."""

from langchain_jrag.embeddings import JragEmbeddings
from langchain_jrag.retrievers import JragRetriever
from langchain_jrag.vectorstores import JragVectorStore

__all__ = ["JragEmbeddings", "JragRetriever", "JragVectorStore"]
