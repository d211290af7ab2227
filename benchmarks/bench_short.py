"""Many short texts (queries, re-embeds): jrag vs sentence-transformers, texts per second.

2,000 generated texts of 8–64 tokens, all-MiniLM-L6-v2, one process, the same torch threads for
every variant; each variant is timed ``--repeats`` times (best kept) after a warm-up, in
interleaved order, so that a busy machine affects all of them alike.

    python benchmarks/bench_short.py
    python benchmarks/bench_short.py --texts 500 --repeats 2
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from jrag import Encoder
from jrag.loading import MINILM_ID, resolve_model_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_variants import one_sequence_at_a_time

WORDS = [
    "harbour", "ledger", "turbine", "orchard", "glacier", "lantern", "archive", "canal", "furnace",
    "meadow", "inspected", "recorded", "repaired", "measured", "the", "north", "gate", "copper",
    "valve", "signal", "lamp", "cedar", "beam",
]  # fmt: skip


def short_texts(count: int, seed: int, tokenizer) -> list[str]:
    """Texts of 8–64 tokens, special tokens included."""
    rng = random.Random(seed)
    texts = []
    while len(texts) < count:
        target = rng.randint(8, 64)
        words = [rng.choice(WORDS) for _ in range(target)]
        while len(tokenizer.encode(" ".join(words)).ids) > target:
            words.pop()
        if words:
            texts.append(" ".join(words))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    console = Console(width=160)
    folder = resolve_model_dir(MINILM_ID)
    jrag32 = Encoder.from_pretrained(MINILM_ID, device="cpu", dtype="float32")
    jrag16 = Encoder.from_pretrained(MINILM_ID, device="cpu", dtype="bfloat16")
    unpacked = Encoder.from_pretrained(MINILM_ID, device="cpu", dtype="float32")
    unpacked.model.attention_fn = one_sequence_at_a_time
    st32 = SentenceTransformer(str(folder), device="cpu")
    st16 = SentenceTransformer(str(folder), device="cpu", model_kwargs={"dtype": torch.bfloat16})
    texts = short_texts(args.texts, 0, jrag32.tokenizer)
    lengths = jrag32.count_tokens(texts)
    variants = {
        "jrag fp32": jrag32.encode,
        "jrag bf16": jrag16.encode,
        "jrag fp32, one sequence at a time (before)": unpacked.encode,
        "sentence-transformers fp32": lambda t: st32.encode(t, normalize_embeddings=True),
        "sentence-transformers bf16": lambda t: st16.encode(t, normalize_embeddings=True),
    }
    for encode in variants.values():
        encode(texts[:64])  # warm-up
    best = {name: float("inf") for name in variants}
    vectors = {}
    for _ in range(args.repeats):
        for name, encode in variants.items():
            started = time.perf_counter()
            vectors[name] = np.asarray(encode(texts), dtype=np.float32)
            best[name] = min(best[name], time.perf_counter() - started)
    reference = vectors["sentence-transformers fp32"]
    table = Table(
        title=f"{len(texts)} texts of {min(lengths)}–{max(lengths)} tokens (mean "
        f"{np.mean(lengths):.0f}), all-MiniLM-L6-v2, {torch.get_num_threads()} threads"
    )
    for column in ("variant", "s", "texts/s", "× sentence-transformers fp32", "min cos vs ST fp32"):
        table.add_column(column, justify="right")
    for name in variants:
        cosine = float((vectors[name] * reference).sum(axis=1).min())
        table.add_row(
            name, f"{best[name]:.2f}", f"{len(texts) / best[name]:,.0f}",
            f"{best['sentence-transformers fp32'] / best[name]:.2f}", f"{cosine:.6f}",
        )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
