"""Many short texts (queries, re-embeds): jrag vs transformers and sentence-transformers.

2,000 generated texts of 8–64 tokens, all-MiniLM-L6-v2, one process, the same torch threads for
every variant; each variant is timed ``--repeats`` times after a warm-up, in interleaved order,
so that a busy machine affects all of them alike, and the median is kept. The baseline is the
plain transformers way: ``AutoModel``, texts sorted by length, padded batches of 32, mean
pooling. ``--variants`` picks a subset by name; the baseline always runs.

    python benchmarks/bench_short.py
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_short.py   # a CPU without AVX-512
    python benchmarks/bench_short.py --texts 500 --repeats 2
    python benchmarks/bench_short.py --threads 1 --clock cpu --variants "jrag fp32" "jrag int8"
"""

from __future__ import annotations

import argparse
import random
import statistics
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


def transformers_way(folder: Path, batch_size: int = 32):
    """The plain transformers recipe: AutoModel, length-sorted padded batches, mean pooling."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()

    @torch.inference_mode()
    def encode(texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                              max_length=256, return_tensors="pt")  # fmt: skip
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            out[rows] = pooled.numpy()
        return out

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=None, help="e.g. 'jrag fp32' 'jrag int8'")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="cpu: this process's CPU seconds, steadier than wall time on a shared machine "
        "(use with --threads 1, where no thread waits on another)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    from sentence_transformers import SentenceTransformer

    console = Console(width=160)
    folder = resolve_model_dir(MINILM_ID)
    baseline = "transformers fp32 (AutoModel, batches of 32)"
    makers = {
        "jrag fp32": lambda: Encoder.from_pretrained(MINILM_ID, device="cpu", dtype="float32"),
        "jrag int8": lambda: Encoder.from_pretrained(MINILM_ID, device="cpu", dtype="int8"),
        "jrag bf16": lambda: Encoder.from_pretrained(MINILM_ID, device="cpu", dtype="bfloat16"),
        "jrag fp32, one sequence at a time (before)": unpacked_encoder,
        baseline: lambda: transformers_way(folder),
        "sentence-transformers fp32": lambda: SentenceTransformer(str(folder), device="cpu"),
        "sentence-transformers bf16": lambda: SentenceTransformer(
            str(folder), device="cpu", model_kwargs={"dtype": torch.bfloat16}
        ),
    }
    wanted = [n for n in makers if args.variants is None or n in args.variants]
    variants = {name: _encode_fn(makers[name]()) for name in dict.fromkeys([*wanted, baseline])}
    tokenizer = Encoder.from_pretrained(MINILM_ID, device="cpu", dtype="float32").tokenizer
    texts = short_texts(args.texts, 0, tokenizer)
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    for encode in variants.values():
        encode(texts[:64])  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    vectors = {}
    for _ in range(args.repeats):
        for name, encode in variants.items():
            started = clock()
            vectors[name] = np.asarray(encode(texts), dtype=np.float32)
            seconds[name].append(clock() - started)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    reference = vectors[baseline]
    table = Table(
        title=f"{len(texts)} texts of {min(lengths)}–{max(lengths)} tokens (mean "
        f"{np.mean(lengths):.0f}), all-MiniLM-L6-v2, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, median {args.clock} "
        f"seconds of {args.repeats}"
    )
    for column in ("variant", "s", "texts/s", "time × transformers", "runs (s)", "min cos"):
        table.add_column(column, justify="right")
    for name in variants:
        cosine = float((vectors[name] * reference).sum(axis=1).min())
        runs = " ".join(f"{s:.2f}" for s in seconds[name])
        table.add_row(
            name, f"{median[name]:.2f}", f"{len(texts) / median[name]:,.0f}",
            f"{median[name] / median[baseline]:.3f}", runs, f"{cosine:.6f}",
        )  # fmt: skip
    console.print(table)


def unpacked_encoder() -> Encoder:
    encoder = Encoder.from_pretrained(MINILM_ID, device="cpu", dtype="float32")
    encoder.model.use_attention(one_sequence_at_a_time)
    return encoder


def _encode_fn(model):
    if isinstance(model, Encoder):
        return model.encode
    if hasattr(model, "encode"):  # sentence-transformers
        return lambda texts: model.encode(texts, normalize_embeddings=True)
    return model


if __name__ == "__main__":
    main()
