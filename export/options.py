"""What an export is asked to make: ``ExportOptions``, with every default defined once.

The CLI's flags (``export.cli``) take their defaults from ``ExportOptions()``; the API
functions (``export_savedmodel``, ``export_model``, ``export_tables``) take an
``ExportOptions``. Options that contradict themselves cannot be made: the constructor
raises ``ExportError``. What depends on the catalog (K at most the number of items) is
checked by ``check_catalog`` once the catalog is known.

Pure Python: the CLI checks options before TensorFlow loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from export.errors import ExportError
from export.plan import IndexPlan

INDEX_KINDS = ("scann", "brute-force")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
      version: the version folder; None takes the next free one (after the highest
        existing or staged version).
      index: ``"scann"`` (needs the ScaNN ops to load) or ``"brute-force"`` (stock
        TensorFlow ops only, for stock ``tensorflow_model_server``).
      k: items per query of ``serving_default`` and ``similar_items`` (fixed in the graph).
      min_recall: least recall@K of the ScaNN index against exact top-K, measured on
        ``recall_sample`` sampled users (and items, for ``similar_items``).
      top_dimensions: m of ``explain``'s ``top_dimensions``/``contributions``; capped at
        the embedding width d.
      plan: a fixed ScaNN plan (``export.plan.IndexPlan``), never widened; None plans
        from the catalog size and widens the search up to 3 times if recall is short.
      recall_sample: users (and items) sampled to measure the index's recall.
      verify: load the export in a fresh process and compare every signature with the
        in-memory values (``export.verify``) before publishing it.
      seed: seeds the recall and verification samples.
    """

    version: int | None = None
    index: str = "scann"
    k: int = 100
    min_recall: float = 0.95
    top_dimensions: int = 5
    plan: IndexPlan | None = None
    recall_sample: int = 1000
    verify: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.version is not None and not (_is_int(self.version) and self.version >= 1):
            raise ExportError(f"--version must be an integer >= 1, got {self.version!r}")
        if self.index not in INDEX_KINDS:
            raise ExportError(f"unknown index {self.index!r}; valid: {', '.join(INDEX_KINDS)}")
        if not (_is_int(self.k) and self.k >= 1):
            raise ExportError(f"--k must be an integer >= 1, got {self.k!r}")
        if not (
            isinstance(self.min_recall, int | float)
            and not isinstance(self.min_recall, bool)
            and 0.0 <= self.min_recall <= 1.0
        ):
            raise ExportError(f"--min-recall must be in [0, 1], got {self.min_recall!r}")
        if not (_is_int(self.top_dimensions) and self.top_dimensions >= 1):
            raise ExportError(
                f"--top-dimensions must be an integer >= 1, got {self.top_dimensions!r}"
            )
        if not (_is_int(self.recall_sample) and self.recall_sample >= 1):
            raise ExportError(f"recall_sample must be an integer >= 1, got {self.recall_sample!r}")
        if self.plan is not None and self.index != "scann":
            raise ExportError("a ScaNN plan was given for a brute-force index")

    def check_catalog(self, num_items: int) -> None:
        """Raises ``ExportError`` when these options cannot serve a catalog of ``num_items``."""
        if num_items < 1:
            raise ExportError("cannot export a model with an empty item vocabulary")
        if self.k > num_items:
            raise ExportError(f"--k {self.k} is larger than the catalog ({num_items} items)")

    def sizes(self, dim: int) -> dict[str, int]:
        """The contract's fixed dimensions (``export.contract``) for embeddings of width ``dim``."""
        return {"K": self.k, "m": min(self.top_dimensions, dim), "d": dim}

    def similar_search_k(self, num_items: int) -> int:
        """Neighbours searched for ``similar_items``: K and the item itself, within the catalog."""
        return min(self.k + 1, num_items)
