"""Offline studies. ``faithfulness``: the cosine-faithfulness study (Steck et al. 2024).

``linear`` holds the paper's closed-form models, ``metrics`` the measurements, and
``faithfulness`` the run, its report and the ``study cosine-faithfulness`` subcommand.
"""

from training.study.faithfulness import (
    StudySettings,
    explanation_cosines,
    item_embeddings,
    make_settings,
    register,
    rescaled,
    run_study,
    served_scores,
)

__all__ = [
    "StudySettings",
    "explanation_cosines",
    "item_embeddings",
    "make_settings",
    "register",
    "rescaled",
    "run_study",
    "served_scores",
]
