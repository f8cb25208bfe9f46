"""Offline studies. ``faithfulness``: the cosine-faithfulness study (Steck et al. 2024).

``linear`` holds the paper's closed-form models, ``metrics`` the measurements,
``faithfulness`` the run and its report, and ``cli`` the ``study`` subcommand. Importing
the package is light: the study's names below load on first use.
"""

import importlib

_NAMES = {
    "StudySettings": "training.study.faithfulness",
    "make_settings": "training.study.faithfulness",
    "run_study": "training.study.faithfulness",
    "explanation_cosines": "training.study.probes",
    "item_embeddings": "training.study.probes",
    "rescaled": "training.study.probes",
    "served_scores": "training.study.probes",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'training.study' has no attribute {name!r}")
