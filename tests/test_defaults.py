"""The defaults find a one-sentence fact deep inside long documents.

Eight generated documents of about 3,200 tokens of routine filler each hold one fact, past token
1,000. With all-MiniLM-L6-v2, plain `jrag ingest` then `jrag search` (no mode flags) must rank
the right document first for every question, and return the fact inside the span it hands
back for at least 7 of 8. One dense vector over a long window dilutes such a fact; the defaults
(late-chunk passages, fused with BM25 where the backend has it) keep it findable. Each document
also holds near misses of three other documents' facts, so the topic alone does not decide.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jrag.cli import app
from jrag.embedding import load_encoder
from jrag.loading import MINILM_ID

# (fact, question): the question asks for the fact in other words.
FACTS = [
    ("The bell of the Varnholt chapel was recast by Idris Mallory in 1887.",
     "Who recast the chapel bell at Varnholt?"),
    ("Forty-two crates of saffron reached the Quillon warehouse on the night of the flood.",
     "How many saffron crates arrived at the Quillon warehouse?"),
    ("The Tessaly viaduct carries the line on nineteen stone arches and opened to trains in 1871.",
     "How many arches does the Tessaly viaduct stand on?"),
    ("Apprentice glassblowers at Orvieno must finish three hundred goblets before a solo firing.",
     "What must an Orvieno glassblowing apprentice complete before firing alone?"),
    ("The Kestrel Fen pumping engine lifted six thousand gallons a minute in the winter of 1903.",
     "How much water per minute did the pump at Kestrel Fen move?"),
    ("Marigold Steyn catalogued two hundred and twelve mosses on the slopes of Mount Ardrel.",
     "Who made the catalogue of mosses on Mount Ardrel?"),
    ("The Brennock lighthouse lens was ground in a Lyon workshop and weighs four tonnes.",
     "In which city was the Brennock lighthouse lens made?"),
    ("Ferry tickets to Salcombe Isle cost nine pence until the fare reform of 1920.",
     "What was the price of a ferry ticket to Salcombe Isle before 1920?"),
]  # fmt: skip
# Near misses: each fact's topic again, with other names. Dense vectors confuse these with the
# fact; the fact's own rare words (Varnholt, Quillon, …) tell them apart.
DECOYS = [
    "The bell of the harbour chapel was recast by a foundry in the following spring.",
    "Several crates of spices reached the river warehouse before the flood.",
    "The old viaduct carries the branch line on brick arches and opened to trains early.",
    "Apprentice potters at the guild must finish a hundred bowls before a solo firing.",
    "The marsh pumping engine lifted a great deal of water in the hard winter.",
    "A visiting botanist catalogued the ferns and mosses on the slopes of the ridge.",
    "The harbour lighthouse lens was ground in a northern workshop and weighs two tonnes.",
    "Ferry tickets to the island cost a few pence until the fare reform.",
]
ROLES = ["clerk", "warden", "surveyor", "treasurer", "porter", "secretary", "inspector", "steward"]
THINGS = ["ledger", "minutes", "inventory", "rota", "accounts", "correspondence", "schedule",
          "register", "budget", "timetable", "checklist", "report"]  # fmt: skip
STATES = ["in order", "unchanged", "up to date", "complete", "pending review", "as agreed",
          "on file", "satisfactory"]  # fmt: skip
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the first of the month",
        "the quarter day", "the usual afternoon"]  # fmt: skip
TEMPLATES = [
    "On {day} the {role} reviewed the {thing} and found it {state}.",
    "The {role} noted that the {thing} was {state} and that nothing further was required.",
    "As usual, the {thing} was read aloud by the {role}, and the meeting agreed it was {state}.",
    "A copy of the {thing} was passed to the {role}, who confirmed it was {state}.",
    "The {role} asked whether the {thing} could be kept {state} until {day}.",
    "No objections were raised when the {role} described the {thing} as {state}.",
]


def filler(rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    return template.format(role=rng.choice(ROLES), thing=rng.choice(THINGS),
                           state=rng.choice(STATES), day=rng.choice(DAYS))  # fmt: skip


def write_documents(folder: Path) -> dict[str, tuple[str, str]]:
    """Eight documents; returns file name → (fact, question)."""
    tokenizer = load_encoder(MINILM_ID).tokenizer
    folder.mkdir()
    written = {}
    for index, (fact, question) in enumerate(FACTS):
        rng = random.Random(index)
        sentences = [filler(rng) for _ in range(180)]
        sentences.insert(rng.randrange(80, 120), fact)
        for offset in (1, 3, 5):  # near misses of three other documents' facts
            sentences.insert(rng.randrange(0, len(sentences)), DECOYS[(index + offset) % 8])
        text = " ".join(sentences)
        before = text[: text.index(fact)]
        tokens_before = len(tokenizer.encode(before, add_special_tokens=False).ids)
        tokens = len(tokenizer.encode(text, add_special_tokens=False).ids)
        assert tokens_before > 1000 and 2800 < tokens < 3600, (tokens_before, tokens)
        name = f"minutes-{index}.txt"
        (folder / name).write_text(text, encoding="utf-8")
        written[name] = (fact, question)
    return written


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict]:
    root = tmp_path_factory.mktemp("defaults")
    documents = write_documents(root / "docs")
    common = ["--uri", str(root / "defaults.db"), "--collection", "jrag"]
    ingested = CliRunner().invoke(app, ["ingest", str(root / "docs"), *common, "-m", MINILM_ID])
    assert ingested.exit_code == 0, ingested.output
    return common, documents


def score(common: list[str], documents: dict, *flags: str) -> tuple[int, int, list[str]]:
    """(right document first, fact inside the returned span, misses) over the eight questions."""
    first = in_span = 0
    misses = []
    for name, (fact, question) in documents.items():
        result = CliRunner().invoke(app, ["search", question, *common, "--json", *flags])
        assert result.exit_code == 0, result.output
        top = json.loads(result.output)[0]
        if Path(top["source"]).name == name:
            first += 1
            in_span += fact in top["text"]
        else:
            misses.append(question)
    return first, in_span, misses


def test_defaults_find_every_deep_fact_and_return_it_in_the_span(collection) -> None:
    common, documents = collection
    first, in_span, misses = score(common, documents)
    assert first == 8, misses
    assert in_span >= 7
