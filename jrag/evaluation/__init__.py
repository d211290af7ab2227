"""Long-document retrieval evaluation (built in the eval issue)."""
