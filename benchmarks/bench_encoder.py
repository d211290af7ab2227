"""Encoder speed and memory: jrag vs a naive eager ALiBi baseline vs bias-free SDPA.

Each (layout, length, variant) runs in a fresh subprocess. "Extra RSS" is the peak resident
memory during the forward pass minus the resident memory just before it: the kernel's peak
counter (VmHWM) is reset after the model has loaded, so load-time peaks don't hide it (Linux).

    python benchmarks/bench_encoder.py                 # small and base, 512 / 2048 / 8192 tokens
    python benchmarks/bench_encoder.py --layouts small --lengths 8192
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(model_dir: str, length: int, variant: str, repeats: int) -> dict:
    """In the subprocess: load, warm up, then time one forward pass of ``length`` tokens."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from attention_variants import VARIANTS

    import jrag.attention
    from jrag import Encoder

    encoder = Encoder.from_pretrained(model_dir, device="cpu")
    jrag.attention.SKIP_FAR_KEYS = variant != "jrag-no-skip"
    if VARIANTS[variant] is not None:
        encoder.model.attention_fn = VARIANTS[variant]
    ids = torch.randint(1000, 30000, (1, length))
    with torch.inference_mode():
        encoder.model(ids[:, :64], [64])  # warm-up: kernels, thread pool
        before = _memory_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder.model(ids, [length])
            timings.append(time.perf_counter() - start)
        peak = _memory_kb("VmHWM")
    return {"seconds": min(timings), "extra_rss_mb": (peak - before) / 1024}


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
        "--variants", nargs="+", default=["jrag", "jrag-no-skip", "eager+bias", "sdpa-no-bias"]
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        model_dir, length, variant, repeats = args._child
        print(json.dumps(measure(model_dir, int(length), variant, int(repeats))))
        return

    import torch
    from rich.console import Console
    from rich.table import Table

    from jrag.checkpoints import jina_v2_config, write_random_checkpoint

    console = Console(width=240)
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layouts:
            model_dir = write_random_checkpoint(Path(tmp) / layout, jina_v2_config(layout))
            for length in args.lengths:
                row = {"layout": layout, "tokens": length}
                for variant in args.variants:
                    repeats = 3 if length <= 2048 else 1
                    out = subprocess.run(
                        [sys.executable, __file__, "--_child", str(model_dir), str(length), variant,
                         str(repeats)],
                        capture_output=True, text=True, check=True, cwd=REPO,
                    )  # fmt: skip
                    row[variant] = json.loads(out.stdout.strip().splitlines()[-1])
                    console.print(f"  {layout} {length:>5} {variant:<13} {row[variant]}")
                results.append(row)

    table = Table(title="JinaBERT forward pass, one document, CPU (random weights)")
    for column in ("layout", "tokens"):
        table.add_column(column, justify="right")
    for variant in args.variants:
        table.add_column(f"{variant} s", justify="right")
        table.add_column(f"{variant} +RSS MB", justify="right")
    ratios = [("jrag", "sdpa-no-bias"), ("jrag-no-skip", "sdpa-no-bias"), ("eager+bias", "jrag")]
    ratios = [(a, b) for a, b in ratios if a in args.variants and b in args.variants]
    for a, b in ratios:
        table.add_column(f"{a} / {b}", justify="right")
    for row in results:
        cells = [row["layout"], str(row["tokens"])]
        for variant in args.variants:
            cells += [f"{row[variant]['seconds']:.2f}", f"{row[variant]['extra_rss_mb']:.0f}"]
        cells += [f"{row[a]['seconds'] / row[b]['seconds']:.2f}x" for a, b in ratios]
        table.add_row(*cells)
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
