"""Offline studies. ``faithfulness``: the cosine-faithfulness study (Steck et al. 2024).

``linear`` holds the paper's closed-form models, ``metrics`` the measurements,
``faithfulness`` the run and its report, and ``cli`` the ``study`` subcommand. Importing
the package is light: the study's names below load on first use.
"""

import importlib

_FROM_FAITHFULNESS = (
    "StudySettings",
    "explanation_cosines",
    "item_embeddings",
    "make_settings",
    "rescaled",
    "run_study",
    "served_scores",
)

__all__ = list(_FROM_FAITHFULNESS)


def __getattr__(name: str):
    if name in _FROM_FAITHFULNESS:
        return getattr(importlib.import_module("training.study.faithfulness"), name)
    raise AttributeError(f"module 'training.study' has no attribute {name!r}")
