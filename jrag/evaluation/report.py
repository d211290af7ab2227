"""Show and save an evaluation: a rich table, a JSON file and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from jrag.errors import InputError
from jrag.evaluation.runner import EvalResult


def results_table(result: EvalResult) -> Table:
    """Synthetic tasks: one row per mode, one column per length plus the mean (first metric).
    Datasets: one row per mode, one column per metric."""
    per_length = result.metrics == ("Acc@1",)
    table = Table(title=f"{result.task} · {result.model}")
    table.add_column("mode")
    if per_length:
        for label in result.labels:
            table.add_column(label, justify="right")
        table.add_column("mean Acc@1", justify="right", style="bold")
    else:
        for metric in result.metrics:
            table.add_column(metric, justify="right")
    table.add_column("dense vectors", justify="right", style="dim")
    table.add_column("ms/query", justify="right", style="dim")
    for mode in result.modes:
        labels = list(result.seconds[mode])
        per_query = sum(result.seconds[mode][lb]["per_query_ms"] for lb in labels) / len(labels)
        vectors = sum(result.rows.get(mode, {}).get(lb, 0) for lb in labels)
        if per_length:
            cells = [f"{result.scores[mode][label]['Acc@1']:.3f}" for label in result.labels]
            cells.append(f"{result.mean(mode, 'Acc@1'):.3f}")
        else:
            cells = [f"{result.mean(mode, metric):.3f}" for metric in result.metrics]
        table.add_row(mode, *cells, f"{vectors:,}", f"{per_query:.1f}")
    return table


def write_outputs(result: EvalResult, out: str | Path) -> tuple[Path, Path]:
    """Write ``<task>.json`` and ``<task>.png`` into ``out`` (created if needed)."""
    folder = Path(out).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the output folder {folder}: {err}") from None
    json_path = folder / f"{result.task}.json"
    json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    png_path = folder / f"{result.task}.png"
    plot(result, png_path)
    return json_path, png_path


def plot(result: EvalResult, path: Path) -> None:
    """Acc@1 against length per mode (synthetic tasks), or metric bars per mode (datasets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    if result.metrics == ("Acc@1",):
        lengths = [int(label) for label in result.labels]
        for mode in result.modes:
            values = [result.scores[mode][label]["Acc@1"] for label in result.labels]
            axes.plot(lengths, values, marker="o", label=mode)
        axes.set_xscale("log", base=2)
        axes.set_xticks(lengths, [str(n) for n in lengths])
        axes.set_xlabel("document length (tokens)")
        axes.set_ylabel("Acc@1")
        docs = result.info.get("docs")
        if docs:
            axes.axhline(1 / docs, color="grey", linestyle=":", label=f"chance (1/{docs})")
    else:
        width = 0.8 / len(result.modes)
        for offset, mode in enumerate(result.modes):
            values = [result.mean(mode, metric) for metric in result.metrics]
            positions = [
                i + (offset - (len(result.modes) - 1) / 2) * width for i in range(len(values))
            ]
            axes.bar(positions, values, width=width, label=mode)
        axes.set_xticks(range(len(result.metrics)), list(result.metrics))
        axes.set_ylabel("score")
    axes.set_ylim(0, 1.05)
    axes.set_title(f"{result.task} · {Path(result.model).name}")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
