"""Export: a trained run -> ``models/NAME/<version>/``, a SavedModel TF Serving loads.

Importing the package is light (no TensorFlow): ``export.errors`` and
``export.scann_ops`` are cheap, ``export.savedmodel`` pulls in TensorFlow and the model
code only when used. ``export_savedmodel`` and ``export_model`` resolve lazily.
"""

from export.errors import ExportError

__all__ = ["ExportError", "export_model", "export_savedmodel"]


def __getattr__(name: str):
    if name in ("export_model", "export_savedmodel"):
        from export import savedmodel

        return getattr(savedmodel, name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
