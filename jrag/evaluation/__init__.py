"""Long-document retrieval evaluation: whole-document vs late-chunk vs naive-chunk retrieval.

Synthetic passkey and needle tasks (:mod:`jrag.evaluation.tasks`), your own data
(:mod:`jrag.evaluation.datasets`), metrics from ``ranx`` (:mod:`jrag.evaluation.metrics`),
indexing and ranking through the pipeline and Milvus (:mod:`jrag.evaluation.runner`), and
tables, JSON and plots (:mod:`jrag.evaluation.report`). ``jrag eval`` is the command line.
"""

from jrag.evaluation.corpus import Corpus, EvalDocument, EvalQuery
from jrag.evaluation.datasets import load_beir, load_documents
from jrag.evaluation.metrics import evaluate
from jrag.evaluation.runner import EvalResult, run_evaluation
from jrag.evaluation.tasks import needle_corpora, passkey_corpora

__all__ = [
    "Corpus",
    "EvalDocument",
    "EvalQuery",
    "EvalResult",
    "evaluate",
    "load_beir",
    "load_documents",
    "needle_corpora",
    "passkey_corpora",
    "run_evaluation",
]
