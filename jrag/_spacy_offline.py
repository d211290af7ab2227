"""Make `unstructured` safe to use offline.

unstructured 0.27 downloads spaCy's ``en_core_web_sm`` the first time it classifies text, and it
pings a telemetry endpoint unless ``DO_NOT_TRACK`` is set. Neither may happen here: the download
fails without a network, and the PDF path swallows that failure and returns no elements at all.
:func:`prepare_unstructured` swaps in a blank English pipeline with a rule-based sentencizer,
which is all unstructured needs to split sentences. Call it before the first use of unstructured.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spacy.language import Language

_lock = threading.Lock()
_prepared = False


def _blank_pipeline() -> Language:
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def _refuse_download() -> None:
    raise RuntimeError("jrag runs unstructured offline and never downloads a spaCy model")


def prepare_unstructured() -> None:
    """Opt out of telemetry and replace unstructured's spaCy loader. Idempotent, thread-safe."""
    global _prepared
    if _prepared:
        return
    with _lock:
        if _prepared:
            return
        # unstructured reads these at import time and on every call; an empty value opts in.
        if not os.environ.get("DO_NOT_TRACK", "").strip():
            os.environ["DO_NOT_TRACK"] = "1"
        # The "thank you for using" banner goes to stdout, which would corrupt CLI output.
        os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")

        from unstructured.nlp import tokenize

        # _get_nlp() looks these names up at call time, so replacing the module attributes is
        # enough; clearing its cache drops a model that might have been loaded before.
        tokenize._load_spacy_model = _blank_pipeline
        tokenize._install_spacy_model = _refuse_download
        tokenize._get_nlp.cache_clear()
        _prepared = True
