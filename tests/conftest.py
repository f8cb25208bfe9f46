"""Both tiers: the test process is a training-side process (TFRS needs Keras 2).

``tests/unit`` runs in process, in seconds; ``tests/e2e`` (marked ``slow``) runs the CLI,
exports and servers in fresh processes. ``make test`` runs both, ``make test-fast`` the
unit tier.
"""

import os

# TensorFlow Recommenders needs Keras 2; tests may import it before tfrs_cosine does.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
