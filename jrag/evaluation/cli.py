"""``jrag eval``: score whole-document, late-chunk and naive-chunk retrieval side by side.

    jrag eval passkey --model M --lengths 256 1024 --docs 10
    jrag eval needle --model M
    jrag eval beir path/to/dataset --model M
    jrag eval docs samples/ --queries questions.jsonl --model M
    jrag eval paraphrase --model M      # built from Debian's debian-faq and postgresql-doc-15

Each run prints a table and writes ``<task>.json`` and ``<task>.png`` into ``--out``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ClassVar

import click
import typer
from typer.core import TyperCommand

from jrag.evaluation.datasets import load_beir, load_documents
from jrag.evaluation.debian_docs import DEFAULT_CACHE, paraphrase_corpus
from jrag.evaluation.metrics import DATASET_METRICS, SYNTHETIC_METRICS
from jrag.evaluation.runner import DEFAULT_VARIANTS, MODES
from jrag.evaluation.tasks import DEFAULT_DOCS, DEFAULT_LENGTHS, TASKS
from jrag.loading import DEFAULT_MODEL


class _MultiValueCommand(TyperCommand):
    """Lets ``--lengths 256 512`` and ``--modes whole late`` take several values after one flag.

    Click options take one value each, so the values after the flag are rewritten into
    repeated flags before parsing. Only values that fit the option (integers for lengths, mode
    names for modes) are taken, so a positional argument after them stays positional.
    """

    takes_many: ClassVar[dict[str, Callable[[str], bool]]] = {
        "--lengths": lambda value: value.isdigit(),
        "--modes": lambda value: value in MODES,
    }

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        expanded: list[str] = []
        current = None
        for arg in args:
            if arg in self.takes_many:
                current = arg
                expanded.append(arg)
                continue
            fits = current is not None and self.takes_many[current](arg)
            if fits and expanded[-1] != current:
                expanded.append(current)
            elif not fits:
                current = None
            expanded.append(arg)
        return super().parse_args(ctx, expanded)


app = typer.Typer(
    help="Evaluate long-document retrieval: whole vs late vs chunked, on synthetic passkey and "
    "needle tasks or on your own data.",
    no_args_is_help=True,
)

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", envvar="JRAG_MODEL", help="Model folder or hub id."),
]
ModesOpt = Annotated[
    list[str],
    typer.Option(help="Modes to compare, e.g. --modes whole late chunked."),
]
OutOpt = Annotated[Path, typer.Option(help="Folder for <task>.json and <task>.png.")]
UriOpt = Annotated[
    str | None,
    typer.Option(
        envvar="JRAG_EVAL_URI", show_default=False,
        help="Milvus Lite file or server URL for the evaluation collections (default: a "
        "temporary Milvus Lite file). Collections are named jrag_eval_* and dropped afterwards.",
    ),
]  # fmt: skip
TokenOpt = Annotated[
    str | None, typer.Option(envvar="JRAG_TOKEN", show_default=False, help="Milvus server token.")
]
LengthsOpt = Annotated[
    list[int],
    typer.Option(
        help="Document lengths in tokens, e.g. --lengths 256 1024 (16384 and 32768 exercise the "
        "macro-window path of an 8k model)."
    ),
]
DocsOpt = Annotated[int, typer.Option(help="Candidate documents (and queries) per length.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the generated documents.")]
_DEFAULT_MODES = list(DEFAULT_VARIANTS)
_DEFAULT_LENGTHS = list(DEFAULT_LENGTHS)
_DEFAULT_OUT = Path("jrag-eval")


def _run(task: str, make_corpora, metrics, model, modes, out, uri, token, info) -> None:
    """Load the model, build the corpora, run every mode, then print and save the results."""
    from jrag.console import console, loading, one_line_errors
    from jrag.embedding import load_encoder
    from jrag.evaluation.report import results_table, write_outputs
    from jrag.evaluation.runner import check_modes, run_evaluation

    with one_line_errors():
        modes = check_modes(modes)
        started = time.perf_counter()
        with loading(model):
            encoder = load_encoder(model)
        with console.status(f"building the {task} corpus"):
            corpora = make_corpora(encoder)
        with console.status(f"{task}") as status:
            result = run_evaluation(
                task, corpora, encoder, modes, metrics, uri=uri, token=token,
                on_step=lambda step: status.update(f"embedding and searching: {step}"),
            )  # fmt: skip
        result.info.update(info, window=encoder.max_length, device=str(encoder.device))
        result.info["seconds"] = round(time.perf_counter() - started, 2)
        json_path, png_path = write_outputs(result, out)
    console.print(results_table(result))
    console.print(f"wrote {json_path} and {png_path} ({result.info['seconds']:.1f} s in all)")


def _synthetic_command(task: str, summary: str) -> None:
    """Register the command of one generated task of :data:`jrag.evaluation.tasks.TASKS`."""

    def command(
        model: ModelOpt = DEFAULT_MODEL,
        lengths: LengthsOpt = _DEFAULT_LENGTHS,
        docs: DocsOpt = DEFAULT_DOCS,
        modes: ModesOpt = _DEFAULT_MODES,
        seed: SeedOpt = 0,
        out: OutOpt = _DEFAULT_OUT,
        uri: UriOpt = None,
        token: TokenOpt = None,
    ) -> None:
        lengths = sorted(dict.fromkeys(lengths))
        _run(
            task,
            lambda encoder: TASKS[task](encoder.tokenizer, lengths, docs, seed),
            SYNTHETIC_METRICS, model, modes, out, uri, token,
            {"docs": docs, "lengths": lengths, "seed": seed},
        )  # fmt: skip

    command.__doc__ = summary
    app.command(task, cls=_MultiValueCommand)(command)


_synthetic_command(
    "passkey", "Passkey retrieval: find the document that holds a name's pass key, in filler text."
)
_synthetic_command(
    "needle",
    "Needle retrieval: find the document that holds one fact, in generated everyday prose.",
)


@app.command(cls=_MultiValueCommand)
def beir(
    path: Annotated[Path, typer.Argument(help="Folder with corpus.jsonl, queries.jsonl, qrels.")],
    model: ModelOpt = DEFAULT_MODEL,
    split: Annotated[str, typer.Option(help="Which qrels/<split>.tsv to use.")] = "test",
    modes: ModesOpt = _DEFAULT_MODES,
    out: OutOpt = _DEFAULT_OUT,
    uri: UriOpt = None,
    token: TokenOpt = None,
) -> None:
    """A BEIR-style dataset: nDCG@10, Recall@10 and MRR@10 per mode."""
    _run(
        "beir", lambda _encoder: [load_beir(path, split)], DATASET_METRICS,
        model, modes, out, uri, token, {"path": str(path), "split": split},
    )  # fmt: skip


@app.command(cls=_MultiValueCommand)
def docs(
    folder: Annotated[Path, typer.Argument(help="Folder of documents (any format jrag reads).")],
    queries: Annotated[
        Path,
        typer.Option(help='JSONL: {"query": "...", "relevant": ["file.md", ...]} per line.'),
    ],
    model: ModelOpt = DEFAULT_MODEL,
    modes: ModesOpt = _DEFAULT_MODES,
    out: OutOpt = _DEFAULT_OUT,
    uri: UriOpt = None,
    token: TokenOpt = None,
) -> None:
    """Your documents and queries: nDCG@10, Recall@10 and MRR@10 per mode."""
    _run(
        "docs", lambda _encoder: [load_documents(folder, queries)], DATASET_METRICS,
        model, modes, out, uri, token, {"folder": str(folder), "queries": str(queries)},
    )  # fmt: skip


@app.command(cls=_MultiValueCommand)
def paraphrase(
    model: ModelOpt = DEFAULT_MODEL,
    modes: ModesOpt = _DEFAULT_MODES,
    cache: Annotated[
        Path, typer.Option(help="Where the Debian packages are downloaded and unpacked.")
    ] = DEFAULT_CACHE,
    distractors: Annotated[int, typer.Option(help="Extra manual pages as distractors.")] = 40,
    seed: SeedOpt = 0,
    out: OutOpt = _DEFAULT_OUT,
    uri: UriOpt = None,
    token: TokenOpt = None,
) -> None:
    """Questions in other words than their answers: the Debian FAQ's questions (removed from
    its chapters) and PostgreSQL glossary definitions, over long manual pages."""
    _run(
        "paraphrase",
        lambda encoder: [paraphrase_corpus(encoder, cache, max_distractors=distractors, seed=seed)],
        DATASET_METRICS, model, modes, out, uri, token, {"distractors": distractors, "seed": seed},
    )  # fmt: skip
