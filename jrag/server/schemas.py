"""The JSON bodies of the HTTP API: what each route takes and gives back (its OpenAPI page)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from jrag.diversity import DEFAULT_MMR_LAMBDA
from jrag.modes import DEFAULT_RANKER, DEFAULT_SEARCH_MODE
from jrag.retrieval import SearchResult


class EmbeddingsRequest(BaseModel):
    """The OpenAI embeddings request. ``truncate`` (not in OpenAI's protocol): cut texts past
    the model's limit, as ``Encoder.encode`` does, instead of refusing them."""

    input: str | list[str] = Field(description="A text, or a list of at least one text.")
    model: str | None = Field(default=None, description="The served model's name (optional).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, description="Must equal the model's dimension.")
    user: str | None = None
    truncate: bool = False


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class SearchFields(BaseModel):
    """The options of ``SearchOptions`` that a request may set."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(default=5, ge=1, le=1000)
    mode: str = DEFAULT_SEARCH_MODE
    filter: str | None = Field(default=None, description="A Milvus filter that narrows the search.")
    hybrid: bool = True
    ranker: str = DEFAULT_RANKER
    weights: tuple[float, float] | None = Field(
        default=None, description="Dense and BM25 weights; default: the ranker's own."
    )
    tenant: str = ""
    where: dict[str, Any] | None = Field(
        default=None,
        description='A metadata filter: {"author": "ann", "year": {"$gte": 2020}, "$or": [...]}.',
    )
    mmr: bool = Field(default=False, description="Re-rank by maximal marginal relevance.")
    mmr_lambda: float = Field(default=DEFAULT_MMR_LAMBDA, ge=0.0, le=1.0)
    collection: str | None = Field(default=None, description="Must name the served collection.")


class SearchRequest(SearchFields):
    query: str = Field(min_length=1)
    content: Literal["passage", "document"] = "passage"


class AskRequest(SearchFields):
    question: str = Field(min_length=1)
    k: int = Field(default=3, ge=1, le=100)
    passages: int = Field(default=3, ge=1, le=50)
    llm: bool = Field(default=True, description="false: quote passages even with an LLM.")
    stream: bool = Field(default=True, description="Server-sent events when an LLM answers.")


# One search result as JSON: SearchResult's fields and its page (SearchResult.to_dict).
_HIT_TYPES = get_type_hints(SearchResult)
SearchHit = create_model(
    "SearchHit",
    **{f.name: (_HIT_TYPES[f.name], ...) for f in fields(SearchResult)},
    page=(int | None, ...),
)


class SearchResponse(BaseModel):
    collection: str
    results: list[SearchHit]


class TextDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=1024, description="The document's key (its source).")
    text: str = Field(min_length=1)
    title: str | None = None
    metadata: dict[str, Any] | None = Field(
        default=None, description="The document's own fields, filterable with `where`."
    )


class DocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[TextDocument] = Field(min_length=1)
    tenant: str = ""
    collection: str | None = None


class DocumentsResponse(BaseModel):
    added: list[str]
    updated: list[str]
    skipped: list[str]
    failed: list[dict]
    tokens: int


class DeleteResponse(BaseModel):
    id: str
    deleted: bool


class DocumentSpan(BaseModel):
    id: str
    source: str
    title: str
    start: int
    end: int
    text: str
