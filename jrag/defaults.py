"""Defaults that light modules (the CLI's option help) name without importing torch."""

DEFAULT_MODEL = "jinaai/jina-embeddings-v2-small-en"
