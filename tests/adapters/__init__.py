"""Shared pieces of the adapter tests: the samples collection (ingested once per session) and the
long-document questions with the accuracy measure both frameworks' retrievers are held to."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from jrag.embedding import load_encoder
from jrag.loading import MINILM_ID
from jrag.pipeline import IngestOptions, ingest
from jrag.store import MilvusStore

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
QUESTIONS = ROOT / "samples-src" / "questions.jsonl"
MODEL = MINILM_ID
COLLECTION = "samples"


@dataclass(frozen=True)
class SampleCollection:
    """``samples/`` ingested in mode ``late`` (so it holds ``doc`` and ``late`` rows)."""

    uri: str
    collection: str
    sources: dict[str, str]  # file name → stored source (absolute path)


_built: dict[str, SampleCollection] = {}


def sample_collection(tmp_path_factory: pytest.TempPathFactory) -> SampleCollection:
    """Ingest ``samples/`` once per test session, whichever adapter test module asks first."""
    if "samples" not in _built:
        uri = str(tmp_path_factory.mktemp("adapters") / "samples.db")
        encoder = load_encoder(MODEL)
        with MilvusStore(uri, COLLECTION, model=encoder.name, dim=encoder.dim) as store:
            report = ingest([SAMPLES], store, encoder, options=IngestOptions(mode="late"))
        assert report.failed == [] and len(report.added) == 8, report
        sources = {Path(source).name: source for source in report.added}
        _built["samples"] = SampleCollection(uri, COLLECTION, sources)
    return _built["samples"]


def load_questions() -> list[dict]:
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    assert questions and all(q["past_token_512"] for q in questions)
    return questions


@dataclass
class Accuracy:
    top1: float
    top3: float
    answer_in_span: int  # questions whose top-1 span (window or late chunk) holds the answer
    misses: list[str]  # questions whose document was not ranked first


def measure(
    rank: Callable[[str], list[tuple[str, str]]], samples: SampleCollection, label: str
) -> Accuracy:
    """Accuracy of ``rank(question)`` → the top 3 ``(source, span text)``, best first."""
    questions = load_questions()
    top1 = top3 = in_span = 0
    misses = []
    for q in questions:
        ranked = rank(q["question"])
        assert len(ranked) == 3
        sources = [source for source, _ in ranked]
        expected = samples.sources[q["document"]]
        top1 += sources[0] == expected
        top3 += expected in sources
        in_span += sources[0] == expected and _squash(q["answer"]) in _squash(ranked[0][1])
        if sources[0] != expected:
            misses.append(q["question"])
    n = len(questions)
    accuracy = Accuracy(top1 / n, top3 / n, in_span, misses)
    print(
        f"\n{label}: top-1 {accuracy.top1:.3f}, top-3 {accuracy.top3:.3f} over {n} questions "
        f"answered past token 512; answer inside the top span {in_span}/{n}; misses: {misses}"
    )
    return accuracy


def check_accuracy(accuracy: Accuracy, mode: str) -> None:
    """Thresholds from what MiniLM measured here: the document at top-1 for 24/24 questions in
    both modes; the answer inside the returned span 18/24 (whole: 512-token windows) and 13/24
    (late: 256-token chunks). Asserted with a little room for numeric drift across hardware."""
    assert accuracy.top3 == 1.0
    assert accuracy.top1 >= 0.95
    assert accuracy.answer_in_span >= {"whole": 16, "late": 11}[mode]


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)
