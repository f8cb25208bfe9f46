"""Export: a trained run -> ``models/NAME/<version>/``, a SavedModel TF Serving loads.

    from export import ExportOptions, export_savedmodel
    export_savedmodel("runs/demo", "models/demo", ExportOptions(index="brute-force", k=10))

Importing the package is light (no TensorFlow): ``ExportError`` and ``ExportOptions``
are pure Python; ``export_savedmodel``, ``export_model``, ``export_tables`` and
``EmbeddingTables`` load TensorFlow and the model code on first use; ``read_model_card``
reads an export's card. One module per job:

``options`` (ExportOptions), ``source`` (the run directory), ``tables`` (tower outputs),
``plan``, ``index`` and ``recall`` (the top-K index: planned, built, measured), ``searchers`` (its
in-graph search), ``signatures`` (the tf.Module, shaped by ``contract``), ``reference``
and ``verify`` (verification in a fresh process), ``versions`` (version folders,
staging, cleanup, atomic publish), ``card`` (the model card), ``savedmodel`` (the API
above), ``cli`` (``tfrs-cosine export``), ``scann_ops`` (loading ScaNN exports).
"""

from export.errors import ExportError
from export.options import ExportOptions

__all__ = [
    "EmbeddingTables",
    "ExportError",
    "ExportOptions",
    "export_model",
    "export_savedmodel",
    "export_tables",
    "read_model_card",
]

_LAZY = {
    "export_model": ("export.savedmodel", "export_model"),
    "export_savedmodel": ("export.savedmodel", "export_savedmodel"),
    "export_tables": ("export.savedmodel", "export_tables"),
    "EmbeddingTables": ("export.tables", "EmbeddingTables"),
    "read_model_card": ("export.verify", "read_card"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
