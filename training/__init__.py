"""Data, splits, pipelines, the training job, offline evaluation and the CLI.

TensorFlow Recommenders needs Keras 2: bind ``tf.keras`` to it before any module here
imports TensorFlow (see ``tfrs_cosine/__init__.py``).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
