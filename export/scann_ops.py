"""Registers ScaNN's TensorFlow ops so a SavedModel with a ScaNN index loads.

A SavedModel that contains ScaNN ops fails to load in a process where they are not
registered (``Op type not registered 'Scann>TensorsToScann'``). ``register_scann_ops``
loads the op library shipped in the scann wheel with ``tf.load_op_library``; it needs
neither the scann Python API nor TensorFlow Recommenders nor ``TF_USE_LEGACY_KERAS``.
Every loader of an export calls it first. It imports nothing else of this project.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_OPS_RELATIVE_PATH = Path("scann_ops") / "cc" / "_scann_ops.so"
_loaded: Path | None = None


def scann_ops_library_path() -> Path:
    """The ``_scann_ops.so`` of the installed scann wheel; ImportError when absent."""
    spec = importlib.util.find_spec("scann")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "ScaNN ops not found: the scann package is not installed "
            "(pip install 'scann[tf]'); it is needed to load an export with a ScaNN index"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / _OPS_RELATIVE_PATH
        if path.is_file():
            return path
    raise ImportError(f"ScaNN ops not found: no {_OPS_RELATIVE_PATH} in the scann package")


def register_scann_ops() -> Path:
    """Registers the ScaNN ops in this process (idempotent); returns the library's path."""
    global _loaded
    if _loaded is None:
        import tensorflow as tf

        path = scann_ops_library_path()
        tf.load_op_library(str(path))
        _loaded = path
    return _loaded
