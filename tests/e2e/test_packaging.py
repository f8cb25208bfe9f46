"""Imports in a fresh interpreter: what loads TensorFlow, and Keras 2 vs Keras 3."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    environment.update(TF_CPP_MIN_LOG_LEVEL="3", **env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True,
        text=True, timeout=300,
    )


def test_the_cli_parser_and_the_error_classes_load_no_tensorflow():
    done = _python(
        "import sys\n"
        "from training.cli import build_parser\n"
        "import export.errors, serving.errors, training.rundir, training.config\n"
        "build_parser()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'tensorflow_recommenders', 'scipy', 'sklearn')))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_model_library_binds_keras_2_and_refuses_keras_3():
    ok = _python("import tfrs_cosine, tensorflow as tf; tfrs_cosine.CosineHead\n"
                 "print(tf.keras.__name__)")
    assert ok.returncode == 0 and ok.stdout.strip().startswith("tf_keras"), ok.stderr
    # Keras 3 bound first (the variable unset, tf.keras touched): a loud ImportError.
    bad = _python("import tensorflow as tf; tf.keras.layers\nfrom tfrs_cosine import CosineHead",
                  TF_USE_LEGACY_KERAS="0")
    assert bad.returncode == 1
    assert "tfrs_cosine needs Keras 2" in bad.stderr
