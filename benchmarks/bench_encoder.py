"""Encoder speed, memory and precision: jrag fp32/bf16 vs eager ALiBi vs bias-free SDPA.

Each (layout, length, variant) runs in a fresh subprocess. A variant ending in ``-bf16`` runs
with bfloat16 weights and activations; the others in float32. Every variant's last hidden
states are compared with jrag's float32 ones (same random token ids): max |Δ| and the minimum
cosine over tokens. Random weights are ill-conditioned, so bf16's precision here is a worst case;
judge it on real weights (tests, bench_dtype_retrieval.py). "Extra RSS" is the peak resident
memory during the forward pass minus the resident memory just before it: the kernel's peak
counter (VmHWM) is reset after the model has loaded, so load-time peaks don't hide it (Linux).

    python benchmarks/bench_encoder.py                 # small and base, 512 / 2048 / 8192 tokens
    python benchmarks/bench_encoder.py --layouts small --lengths 8192
    python benchmarks/bench_encoder.py --quick         # small layout, 512 / 2048, one repeat
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(
    model_dir: str, length: int, variant: str, repeats: int, save: str, device: str
) -> dict:
    """In the subprocess: load, warm up, then time one forward pass of ``length`` tokens.

    The float32 hidden states are written to ``save`` (.npy) for the parent to compare. On CUDA
    the memory figure is the peak of the allocator over what was allocated before the pass.
    """
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from attention_variants import VARIANTS

    from jrag import Encoder

    dtype = torch.bfloat16 if variant.endswith("-bf16") else torch.float32
    base = variant.removesuffix("-bf16")
    encoder = Encoder.from_pretrained(model_dir, device=device, dtype=dtype)
    cuda = encoder.device.type == "cuda"
    encoder.model.kernel = dataclasses.replace(
        encoder.model.kernel, skip_far_keys=base != "jrag-no-skip"
    )
    if VARIANTS[base] is not None:
        encoder.model.use_attention(VARIANTS[base])
    ids = torch.randint(1000, 30000, (1, length), generator=torch.Generator().manual_seed(0))
    ids = ids.to(encoder.device)
    with torch.inference_mode():
        encoder.model(ids[:, :64], [64])  # warm-up: kernels, thread pool
        if cuda:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated() / 1024
            torch.cuda.reset_peak_memory_stats()
        else:
            before = _memory_kb("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the RSS
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            hidden = encoder.model(ids, [length])
            if cuda:
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 1024 if cuda else _memory_kb("VmHWM")
    np.save(save, hidden[0].float().cpu().numpy())
    return {"seconds": min(timings), "extra_rss_mb": (peak - before) / 1024}


def compare(path: Path, reference: Path) -> dict:
    """Max |Δ| and minimum per-token cosine of one variant's states against jrag fp32's."""
    import numpy as np

    a, b = np.load(path).astype(np.float64), np.load(reference).astype(np.float64)
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    pooled = a.mean(0) @ b.mean(0) / (np.linalg.norm(a.mean(0)) * np.linalg.norm(b.mean(0)))
    return {"max_abs": float(np.abs(a - b).max()), "min_cos": float(cosines.min()),
            "pooled_cos": float(pooled)}  # fmt: skip


def _cos(value: float) -> str:
    return "1" if value >= 1 - 1e-9 or math.isnan(value) else f"{value:.5f}"


def _memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["small", "base"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[512, 2048, 8192])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["jrag", "jrag-bf16", "sdpa-no-bias", "sdpa-no-bias-bf16", "eager+bias"],
        help="jrag, jrag-no-skip, eager+bias, sdpa-no-bias; add -bf16 for bfloat16",
    )
    parser.add_argument("--quick", action="store_true", help="small layout, 512 and 2048 only")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--tokenizer-from", help="tokenizer folder for the random checkpoints (default MiniLM)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (memory: allocator peak)")
    parser.add_argument("--repeats", type=int, help="timed passes per run (default 3, 1 past 2k)")
    parser.add_argument("--_child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        model_dir, length, variant, repeats, save, device = args._child
        print(json.dumps(measure(model_dir, int(length), variant, int(repeats), save, device)))
        return
    if args.quick:
        args.layouts, args.lengths = ["small"], [512, 2048]
    if "jrag" not in args.variants:
        args.variants.insert(0, "jrag")  # the reference every other variant is compared with

    import torch
    from rich.console import Console
    from rich.table import Table

    from jrag.checkpoints import jina_v2_config, write_random_checkpoint

    console = Console(width=240)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layouts:
            tokenizer = {"tokenizer_from": args.tokenizer_from} if args.tokenizer_from else {}
            model_dir = write_random_checkpoint(
                Path(tmp) / layout, jina_v2_config(layout), **tokenizer
            )
            for length in args.lengths:
                row = {"layout": layout, "tokens": length}
                for variant in args.variants:
                    repeats = args.repeats or (1 if args.quick or length > 2048 else 3)
                    save = Path(tmp) / f"{variant}.npy"
                    out = subprocess.run(
                        [sys.executable, __file__, "--_child", str(model_dir), str(length), variant,
                         str(repeats), str(save), args.device],
                        capture_output=True, text=True, check=True, cwd=REPO,
                    )  # fmt: skip
                    row[variant] = json.loads(out.stdout.strip().splitlines()[-1])
                    row[variant] |= compare(save, Path(tmp) / "jrag.npy")
                    console.print(f"  {layout} {length:>5} {variant:<18} {row[variant]}")
                results.append(row)

    memory = "+GPU MB" if args.device == "cuda" else "+RSS MB"
    table = Table(title=f"JinaBERT forward pass, one document, {where} (random weights)")
    for column in ("layout", "tokens"):
        table.add_column(column, justify="right")
    for column in ("variant", "s", "× jrag fp32", memory, "max |Δ|", "min cos", "pooled cos"):
        table.add_column(column, justify="right")
    for row in results:
        for variant in args.variants:
            m = row[variant]
            table.add_row(
                row["layout"], str(row["tokens"]), variant, f"{m['seconds']:.2f}",
                f"{m['seconds'] / row['jrag']['seconds']:.2f}", f"{m['extra_rss_mb']:.0f}",
                f"{m['max_abs']:.2g}", _cos(m["min_cos"]), _cos(m["pooled_cos"]),
            )  # fmt: skip
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
