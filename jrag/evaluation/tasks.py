"""Synthetic long-document tasks in the manner of LongEmbed: passkey and needle retrieval.

Each task builds, per target length, ``docs`` candidate documents of about that many tokens
(special tokens included), each hiding one fact at a random sentence boundary, and one query per
document that only its own document answers. Acc@1 is the share of queries whose own document
ranks first. Everything is generated here from a seed: the same seed, length and tokenizer give
the same corpus, byte for byte.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable

from tokenizers import Tokenizer

from jrag.errors import InputError
from jrag.evaluation.corpus import Corpus, EvalDocument, EvalQuery

DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
LONG_LENGTHS = (16384, 32768)  # past JinaBERT's window: documents take the macro-window path
DEFAULT_DOCS = 100
_SPECIAL_TOKENS = 2  # [CLS] and [SEP]

PASSKEY_FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)

# Invented names: two or three syllables, so that 100 per length are easy to keep distinct.
_ONSETS = ("B", "D", "F", "G", "K", "L", "M", "N", "P", "R", "S", "T", "V", "Z", "Br", "Th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "l", "s", "th", "m")

# The needle task's haystack: sentences about everyday life, composed from these parts.
_HAYSTACK_TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "garden": (
        ("The gardener", "My neighbour", "The old allotment club", "A retired teacher"),
        (
            "watered the tomato beds",
            "pruned the apple trees",
            "raked fallen leaves",
            "planted a row of onions",
            "mended the wooden fence",
            "turned the compost heap",
        ),
        ("behind the cottage", "near the greenhouse", "along the south wall", "by the pond"),
    ),
    "commute": (
        ("The morning bus", "The tram driver", "A cyclist in a yellow coat", "The night train"),
        (
            "ran ten minutes late",
            "stopped at every station",
            "waited at the crossing",
            "took the long way round",
            "was crowded with students",
            "moved slowly through fog",
        ),
        ("on the high street", "past the river bridge", "near the old market", "out of town"),
    ),
    "kitchen": (
        ("The cook", "My aunt", "The baker next door", "A young chef"),
        (
            "stirred a pot of soup",
            "kneaded dough for bread",
            "sliced carrots and leeks",
            "washed a stack of plates",
            "roasted a tray of potatoes",
            "boiled water for tea",
        ),
        ("in the small kitchen", "before lunch", "at the back of the shop", "by the window"),
    ),
    "weather": (
        ("The wind", "A light rain", "The afternoon sun", "A cold fog"),
        (
            "drifted across the fields",
            "beat against the roof",
            "warmed the stone steps",
            "settled over the harbour",
            "cleared by the evening",
            "came in from the west",
        ),
        ("over the hills", "across the valley", "above the town", "along the coast"),
    ),
    "library": (
        ("The librarian", "A group of readers", "The student", "An elderly visitor"),
        (
            "sorted returned books",
            "read quietly for an hour",
            "searched the catalogue",
            "borrowed three novels",
            "repaired a torn atlas",
            "arranged the new shelves",
        ),
        ("in the reading room", "near the front desk", "upstairs", "in the children's corner"),
    ),
    "market": (
        ("The fruit seller", "A fishmonger", "The flower stall", "Two shoppers"),
        (
            "set out crates of pears",
            "called out the prices",
            "counted the morning coins",
            "packed away the awning",
            "sold the last loaves",
            "haggled over a basket",
        ),
        ("in the square", "under the arches", "at the corner", "beside the fountain"),
    ),
    "sport": (
        ("The football team", "A young runner", "The swimming club", "The coach"),
        (
            "trained for two hours",
            "practised short passes",
            "swam thirty lengths",
            "stretched before the match",
            "cheered from the stands",
            "jogged around the park",
        ),
        ("on the wet pitch", "at the leisure centre", "by the lake", "on the cinder track"),
    ),
    "workshop": (
        ("The carpenter", "A clockmaker", "The apprentice", "My uncle"),
        (
            "sanded a chair leg",
            "oiled the old hinges",
            "sharpened the chisels",
            "fitted a new drawer",
            "swept up the shavings",
            "glued a cracked frame",
        ),
        ("in the shed", "at the workbench", "under a bright lamp", "in the back yard"),
    ),
}
_TIMES = (
    "", "", " this morning", " every Sunday", " late in the evening", " after supper",
    " in early spring", " on a grey Tuesday", " most afternoons", " at first light",
)  # fmt: skip

# Needle facts: (fact template, question template, slot values). ``{name}`` is always filled.
_NEEDLES: tuple[tuple[str, str, dict[str, tuple[str, ...]]], ...] = (
    (
        "The secret ingredient in {name}'s {dish} is {spice}.",
        "What is the secret ingredient in {name}'s {dish}?",
        {
            "dish": ("lentil stew", "plum cake", "fish pie", "onion soup", "pepper sauce"),
            "spice": ("smoked paprika", "star anise", "cardamom", "juniper", "saffron"),
        },
    ),
    (
        "{name} hid the spare key to the {building} inside a {container}.",
        "Where did {name} hide the spare key to the {building}?",
        {
            "building": ("boathouse", "chapel", "pavilion", "granary", "signal box"),
            "container": ("hollow brick", "tea tin", "cracked flowerpot", "boot", "birdhouse"),
        },
    ),
    (
        "The password to {name}'s {device} is {word}.",
        "What is the password to {name}'s {device}?",
        {
            "device": ("laptop", "safe", "bicycle lock", "radio", "tablet"),
            "word": ("marigold", "thunderbolt", "copperfield", "nightjar", "quicksilver"),
        },
    ),
    (
        "{name} was born in the fishing village of {village} in {year}.",
        "In which village was {name} born?",
        {
            "village": ("Saltcombe", "Wrenhaven", "Eddersby", "Malport", "Cragwick"),
            "year": ("1952", "1967", "1978", "1983", "1991"),
        },
    ),
    (
        "{name}'s favourite painting shows a {animal} asleep under a {tree}.",
        "What does {name}'s favourite painting show?",
        {
            "animal": ("grey fox", "red deer", "barn owl", "badger", "hare"),
            "tree": ("willow", "chestnut tree", "birch", "cedar", "hawthorn"),
        },
    ),
)


def _token_counter(tokenizer: Tokenizer) -> Callable[[str], int]:
    """Content tokens of a sentence (no specials), cached: haystacks repeat their sentences."""
    return functools.cache(lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids))


def _names(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct invented names."""
    names: dict[str, None] = {}  # a set that keeps the order names were drawn in
    while len(names) < count:
        syllables = [rng.choice(_ONSETS).lower() + rng.choice(_VOWELS) for _ in range(2)]
        names[("".join(syllables) + rng.choice(_CODAS)).capitalize()] = None
    return list(names)


def _fill(
    sentences: Callable[[], str],
    fact: str,
    length: int,
    count: Callable[[str], int],
    rng: random.Random,
) -> str:
    """Sentences up to ``length`` tokens in all (specials included), ``fact`` at a random break.

    Whitespace splits WordPiece tokens, so sentence token counts add up exactly.
    """
    budget = length - _SPECIAL_TOKENS - count(fact)
    if budget < 0:
        raise InputError(f"length {length} is too short to hold the fact {fact!r}")
    body: list[str] = []
    used = 0
    while True:
        sentence = sentences()
        tokens = count(sentence)
        if used + tokens > budget:
            break
        body.append(sentence)
        used += tokens
    body.insert(rng.randint(0, len(body)), fact)
    return " ".join(body)


def _corpora(
    task: str, tokenizer: Tokenizer, lengths: list[int], docs: int, seed: int, document: Callable
) -> list[Corpus]:
    """One corpus per length of ``docs`` documents, each holding one fact about an invented
    name, with one query for it: ``document(rng, index, name, length, count)`` gives the
    document's text and the query."""
    if docs < 2:
        raise InputError(f"--docs must be at least 2 (candidates per length), not {docs}")
    if short := [length for length in lengths if length < 64]:
        raise InputError(f"--lengths must be at least 64 tokens, not {short[0]}")
    count = _token_counter(tokenizer)
    corpora = []
    for length in lengths:
        rng = random.Random(f"{task}:{seed}:{length}")
        documents, queries = [], []
        for index, name in enumerate(_names(rng, docs)):
            text, question = document(rng, index, name, length, count)
            doc_id = f"{task}-{length}-{index:03d}"
            documents.append(EvalDocument(doc_id, text, title=doc_id))
            queries.append(EvalQuery(f"q-{doc_id}", question, {doc_id: 1}))
        corpora.append(Corpus(str(length), documents, queries, {"length": length}))
    return corpora


def passkey_corpora(
    tokenizer: Tokenizer, lengths: list[int], docs: int = DEFAULT_DOCS, seed: int = 0
) -> list[Corpus]:
    """One corpus per length: filler text with one pass-key sentence per document."""

    def document(rng, index, name, length, count) -> tuple[str, str]:
        key = rng.randint(10000, 99999)
        fact = f"{name}'s pass key is {key}. Remember it. {key} is the pass key for {name}."
        text = _fill(itertools.cycle(PASSKEY_FILLER).__next__, fact, length, count, rng)
        return text, f"what is the passkey for {name}?"

    return _corpora("passkey", tokenizer, lengths, docs, seed, document)


def _haystack_sentences(rng: random.Random) -> Callable[[], str]:
    """A generator of everyday sentences drawn mostly from a few topics picked per document."""
    topics = rng.sample(sorted(_HAYSTACK_TOPICS), 3)

    def sentence() -> str:
        topic = rng.choice(topics) if rng.random() < 0.85 else rng.choice(sorted(_HAYSTACK_TOPICS))
        subjects, actions, places = _HAYSTACK_TOPICS[topic]
        return (
            f"{rng.choice(subjects)} {rng.choice(actions)} {rng.choice(places)}"
            f"{rng.choice(_TIMES)}."
        )

    return sentence


def needle_corpora(
    tokenizer: Tokenizer, lengths: list[int], docs: int = DEFAULT_DOCS, seed: int = 0
) -> list[Corpus]:
    """One corpus per length: generated everyday prose with one templated fact per document."""

    def document(rng, index, name, length, count) -> tuple[str, str]:
        fact_template, question_template, slots = _NEEDLES[index % len(_NEEDLES)]
        values = {slot: rng.choice(options) for slot, options in slots.items()}
        fact = fact_template.format(name=name, **values)
        text = _fill(_haystack_sentences(rng), fact, length, count, rng)
        return text, question_template.format(name=name, **values)

    return _corpora("needle", tokenizer, lengths, docs, seed, document)


TASKS: dict[str, Callable[..., list[Corpus]]] = {
    "passkey": passkey_corpora,
    "needle": needle_corpora,
}
