"""Choose a fusion by its worst case: read ``jrag eval`` JSON files, print one Markdown table per
benchmark (every variant, its gap to the best variant there) and one table of each hybrid
variant's worst gap across all of them.

A benchmark is one corpus of one file (each needle length counts on its own); its score is
Acc@1 for the synthetic tasks, nDCG@10 otherwise. Dense-only variants are those without a BM25
leg; the default (``hybrid``) must stay within ``--tolerance`` of the best variant and never
fall below the best dense-only one.

    python benchmarks/fusion_report.py jrag-eval/needle.json jrag-eval/paraphrase.json ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jrag.evaluation.runner import VARIANTS

DEFAULT = "hybrid"


def benchmarks(paths: list[Path]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{benchmark: {variant: (score, ms/query)}}``."""
    found: dict[str, dict[str, tuple[float, float]]] = {}
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        metric = data["metrics"][0]
        for label in data["labels"]:
            name = data["task"] if len(data["labels"]) == 1 else f"{data['task']} {label}"
            found[name] = {
                mode: (
                    data["scores"][mode][label][metric],
                    data["seconds"][mode][label]["per_query_ms"],
                )
                for mode in data["modes"]
            }
    return found


def dense_only(mode: str) -> bool:
    return mode in VARIANTS and not VARIANTS[mode].hybrid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.02)
    args = parser.parse_args()
    found = benchmarks(args.files)
    worst: dict[str, tuple[float, str]] = {}
    for name, scores in found.items():
        best = max(s for s, _ in scores.values())
        best_dense = max((s for m, (s, _) in scores.items() if dense_only(m)), default=0.0)
        print(f"\n### {name}\n\n| variant | score | gap to best | ms/query |\n|---|---|---|---|")
        for mode, (score, ms) in scores.items():
            mark = "**" if mode == DEFAULT else ""
            print(f"| {mark}{mode}{mark} | {score:.3f} | {score - best:+.3f} | {ms:.1f} |")
            hybrid = not dense_only(mode) and VARIANTS.get(mode, VARIANTS[DEFAULT]).dense
            if hybrid and (mode not in worst or score - best < worst[mode][0]):
                worst[mode] = (score - best, name)
        if DEFAULT in scores:
            default = scores[DEFAULT][0]
            holds = default >= best - args.tolerance and default >= best_dense
            print(
                f"\nbest {best:.3f}, best dense-only {best_dense:.3f}, default {default:.3f}: "
                f"{'holds' if holds else 'FAILS'} (within {args.tolerance} of the best, not "
                "below dense)"
            )
    print("\n### worst case of each hybrid variant\n\n| variant | worst gap | on |\n|---|---|---|")
    for mode, (gap, name) in sorted(worst.items(), key=lambda item: -item[1][0]):
        print(f"| {mode} | {gap:+.3f} | {name} |")


if __name__ == "__main__":
    main()
