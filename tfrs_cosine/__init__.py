"""tfrs_cosine: a TFRS two-tower retrieval model with a selectable dot or cosine head.

Importing the package is light: the Keras layers and models (and TensorFlow with them)
load on first use of a name below, so ``tfrs_cosine.errors`` costs nothing and changes
nothing (a serving process may import it and keep Keras 3). TensorFlow Recommenders
0.7.7 needs Keras 2: the modules that use Keras bind it first (``tfrs_cosine._keras``).
"""

import importlib

_EXPORTS = {
    "HEADS": "tfrs_cosine.heads",
    "CosineHead": "tfrs_cosine.heads",
    "DotHead": "tfrs_cosine.heads",
    "ScoringHead": "tfrs_cosine.heads",
    "make_head": "tfrs_cosine.heads",
    "ExplanationLayer": "tfrs_cosine.explanation",
    "explain": "tfrs_cosine.explanation",
    "IdTower": "tfrs_cosine.towers",
    "FeatureTower": "tfrs_cosine.towers",
    "CategoricalEncoder": "tfrs_cosine.features",
    "HistoryEncoder": "tfrs_cosine.features",
    "IdEncoder": "tfrs_cosine.features",
    "MultiCategoricalEncoder": "tfrs_cosine.features",
    "NumericEncoder": "tfrs_cosine.features",
    "TextEncoder": "tfrs_cosine.features",
    "TimestampEncoder": "tfrs_cosine.features",
    "TwoTowerModel": "tfrs_cosine.model",
    "TfrsCosineError": "tfrs_cosine.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfrs_cosine' has no attribute {name!r}")
