"""The project's one error base class.

Every error caused by bad input or a failed operation derives from ``TfrsCosineError``
(``training.errors.InputError``, ``export.errors.ExportError``,
``serving.errors.ServingError``). Its message is one line that names the problem; the
``tfrs-cosine`` CLI catches this class alone, prints the message and exits 2.

Importing this module loads nothing else (no TensorFlow), so every layer may use it.
"""


class TfrsCosineError(Exception):
    """Bad input or a failed operation, named on one line by the message."""
