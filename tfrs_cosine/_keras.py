"""Binds ``tf.keras`` to Keras 2 (``tf_keras``), which TensorFlow Recommenders 0.7.7 needs.

TensorFlow 2.16+ picks Keras 2 for ``tf.keras`` only when ``TF_USE_LEGACY_KERAS=1`` is
set before anything touches ``tf.keras``. The package ``__init__`` sets it (without
overriding a user's value); every module of the package that uses Keras imports this
one first, so a Keras 3 binding fails loudly here rather than deep inside TFRS.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

if not tf.keras.__name__.startswith("tf_keras"):
    raise ImportError(
        "tfrs_cosine needs Keras 2 (tf_keras) but tf.keras is already bound to Keras 3 "
        f"({tf.keras.__name__}): set TF_USE_LEGACY_KERAS=1 before importing TensorFlow."
    )
