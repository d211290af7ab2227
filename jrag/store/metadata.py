"""Users' own metadata on documents, and the structured filters that select by it.

A document's user metadata (``{"author": "x", "year": 2021}``) is a JSON object stored under
:data:`USER_KEY` of the rows' JSON ``metadata`` field, on every vector row and on the document's
state row, apart from jrag's own keys (``doc_type``, ``size``, ``page``, …): a user key can
never shadow one of jrag's, and any key name is allowed.

A structured filter addresses user keys by their plain names, the form LangChain and Chroma
users know::

    {"author": "x", "year": {"$gte": 2020}, "$or": [{"team": "a"}, {"tags.lang": "en"}]}

Operators: ``$eq $ne $gt $gte $lt $lte $in $nin`` on a key, ``$and $or`` over lists of
filters; several keys in one object are AND-ed; a dotted key (``a.b``) reaches into nested
objects. :func:`compile_where` turns a filter into a Milvus expression over the JSON field.
Its values never enter the expression text where the backend takes them as parameters
(Milvus filter templating, ``filter_params``); elsewhere they are written with
:func:`jrag.store.rows.quote`. Keys must be plain identifier paths, so no key can close a
bracket or a string. A document that lacks a key matches no condition on it, ``$ne`` and
``$nin`` included (Milvus' JSON comparisons are false on a missing key). ``$in`` and ``$nin``
are written as ``==`` / ``!=`` chains: Milvus Lite's parser takes ``in`` on plain fields only.

The compiled expression is a user filter like any other: AND-ed onto jrag's restriction
(kinds, tenant), so it can only narrow a search or a listing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from jrag.errors import InputError
from jrag.store.filters import joined
from jrag.store.rows import quote

USER_KEY = "user"
FIELD = "metadata"
COMPARISONS = {"$eq": "==", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
MEMBERSHIP = {"$in": ("$eq", "or"), "$nin": ("$ne", "and")}
LOGICAL = ("$and", "$or")
OPERATORS = (*COMPARISONS, *MEMBERSHIP, *LOGICAL)
# A filter nested deeper than this, or with more conditions, is refused rather than sent.
MAX_DEPTH = 32
MAX_CONDITIONS = 1024
# Parameter names are prefixed so they cannot meet a name a caller's raw filter uses.
PARAM_PREFIX = "jrag_p"
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_INT64 = (-(2**63), 2**63 - 1)

Scalar = str | bool | int | float


def check_metadata(metadata: Mapping[str, Any] | None, where: str = "metadata") -> dict[str, Any]:
    """``metadata`` as plain JSON (a new dict); InputError naming ``where`` if it is not a
    mapping with string keys whose values JSON can hold (no NaN, no infinities)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InputError(f"{where} must be a mapping of names to values, not {metadata!r:.80}")
    for key in metadata:
        if not isinstance(key, str) or not key:
            raise InputError(f"{where} has a key that is not a non-empty string: {key!r:.80}")
    try:
        return json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise InputError(f"{where} is not plain JSON data: {err}") from None


def key_expression(key: str) -> str:
    """The Milvus expression of user key ``key`` (``a.b`` → ``metadata["user"]["a"]["b"]``)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InputError(
            f"metadata filter key {key!r:.80} is not a plain name (letters, digits, _ ; "
            "dots between nested names)"
        )
    return FIELD + "".join(f"[{quote(part)}]" for part in (USER_KEY, *key.split(".")))


def compile_where(where: Mapping[str, Any] | None, *, params: bool) -> tuple[str | None, dict]:
    """A Milvus expression for the structured filter ``where`` (None when it is empty), and the
    values it names as parameters (``params=True``; empty otherwise, the values quoted in).

    Raises InputError naming the key, operator or value it cannot take.
    """
    if where is None:
        return None, {}
    compiler = _Compiler(params)
    return compiler.filter(where, 0), compiler.values


class _Compiler:
    def __init__(self, params: bool) -> None:
        self.params = params
        self.values: dict[str, Any] = {}
        self.conditions = 0

    def filter(self, where: Any, depth: int) -> str | None:
        if not isinstance(where, Mapping):
            raise InputError(f"a metadata filter must be an object, not {where!r:.80}")
        if depth > MAX_DEPTH:
            raise InputError(f"metadata filter nested deeper than {MAX_DEPTH} levels")
        parts = []
        for key, condition in where.items():
            if key in LOGICAL:
                parts.append(self.logical(key, condition, depth))
            elif isinstance(key, str) and key.startswith("$"):
                raise InputError(
                    f"unknown metadata filter operator {key!r:.80} at the top of a filter; "
                    f"use {' '.join(LOGICAL)} there, or a key's name"
                )
            else:
                parts.append(self.field(key, condition))
        return joined(parts, "and") or None

    def logical(self, operator: str, clauses: Any, depth: int) -> str | None:
        if not isinstance(clauses, list | tuple) or not clauses:
            raise InputError(f"{operator} takes a non-empty list of filters, not {clauses!r:.80}")
        parts = [self.filter(clause, depth + 1) for clause in clauses]
        if operator == "$or" and None in parts:
            return None  # an empty clause matches everything
        return joined(parts, "and" if operator == "$and" else "or") or None

    def field(self, key: str, condition: Any) -> str | None:
        path = key_expression(key)
        if not isinstance(condition, Mapping):
            return self.compare(path, key, "$eq", condition)
        if not condition:
            raise InputError(f"metadata filter on {key!r} has no operator")
        parts = []
        for operator, value in condition.items():
            if operator in COMPARISONS:
                parts.append(self.compare(path, key, operator, value))
            elif operator in MEMBERSHIP:
                parts.append(self.member(path, key, operator, value))
            else:
                raise InputError(
                    f"unknown metadata filter operator {operator!r:.80} on {key!r}; use one of "
                    f"{' '.join((*COMPARISONS, *MEMBERSHIP))}"
                )
        return joined(parts, "and") or None

    def compare(self, path: str, key: str, operator: str, value: Any) -> str:
        _check_scalar(key, operator, value)
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise InputError(f"metadata filter has more than {MAX_CONDITIONS} conditions")
        return f"{path} {COMPARISONS[operator]} {self.literal(value)}"

    def member(self, path: str, key: str, operator: str, values: Any) -> str | None:
        if not isinstance(values, list | tuple) or not values:
            raise InputError(
                f"metadata filter {operator} on {key!r} takes a non-empty list, not {values!r:.80}"
            )
        each, word = MEMBERSHIP[operator]
        return joined([self.compare(path, key, each, v) for v in values], word) or None

    def literal(self, value: Scalar) -> str:
        if self.params:
            name = f"{PARAM_PREFIX}{len(self.values)}"
            self.values[name] = value
            return "{" + name + "}"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return quote(value)
        return repr(value)  # int, or a finite float (repr round-trips)


def _check_scalar(key: str, operator: str, value: Any) -> None:
    ok = isinstance(value, str | bool | int | float)
    if isinstance(value, float) and not math.isfinite(value):
        ok = False
    if isinstance(value, int) and not isinstance(value, bool):
        ok = _INT64[0] <= value <= _INT64[1]
    if not ok:
        raise InputError(
            f"metadata filter {operator} on {key!r}: unsupported value {value!r:.80} "
            "(use a string, a number, true or false)"
        )
