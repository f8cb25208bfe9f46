"""tfrs_cosine: a TFRS two-tower retrieval model with a selectable dot or cosine head.

TensorFlow Recommenders 0.7.7 needs Keras 2 (``tf_keras``). TensorFlow 2.16+ picks
Keras 2 for ``tf.keras`` only when ``TF_USE_LEGACY_KERAS=1`` is set before anything
touches ``tf.keras``, so this package sets it (without overriding a user's value)
before importing TensorFlow, and fails loudly if Keras 3 was already bound.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

if not tf.keras.__name__.startswith("tf_keras"):
    raise ImportError(
        "tfrs_cosine needs Keras 2 (tf_keras) but tf.keras is already bound to Keras 3 "
        f"({tf.keras.__name__}): set TF_USE_LEGACY_KERAS=1 before importing TensorFlow."
    )

from tfrs_cosine.explain import ExplanationLayer, explain  # noqa: E402
from tfrs_cosine.heads import HEADS, CosineHead, DotHead, ScoringHead, make_head  # noqa: E402
from tfrs_cosine.model import TwoTowerModel  # noqa: E402
from tfrs_cosine.towers import IdTower  # noqa: E402

__all__ = [
    "HEADS",
    "CosineHead",
    "DotHead",
    "ExplanationLayer",
    "IdTower",
    "ScoringHead",
    "TwoTowerModel",
    "explain",
    "make_head",
]
