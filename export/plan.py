"""The plan of a ScaNN index: chosen from the catalog size, widened when recall is short.

ScaNN's rules of thumb (scann/docs/algorithms.md) decide the plan:

* fewer than 20k items: score every item exactly (ScaNN brute force);
* fewer than 100k items: score every item with asymmetric hashing (AH, 2 dimensions per
  block), then reorder the best candidates with exact float32 scores;
* more: partition into about sqrt(n) leaves, search a share of them, score with AH, reorder.

TFRS's ScaNN defaults (100 leaves, 10 searched, no reordering) are not used: they gave
recall@10 of 0.30-0.40 against exact search on 100k vectors. A plan can be ``widened``
(more leaves searched, more candidates reordered) without rebuilding the index, since
those are search-time parameters. Pure Python.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

BRUTE_FORCE_BELOW = 20_000  # ScaNN: "for a small dataset (fewer than 20k points), use brute-force"
PARTITION_FROM = 100_000  # ScaNN: "for datasets larger than 100k points, partition"


@dataclass(frozen=True)
class IndexPlan:
    """How a ScaNN index is built and searched.

    Attributes:
      num_leaves: k-means partitions of the catalog; 0 means no partitioning.
      leaves_to_search: partitions searched per query (search time).
      scoring: ``"brute_force"`` (exact float32) or ``"asymmetric_hashing"``.
      dimensions_per_block: AH block width (ScaNN recommends 2).
      anisotropic_quantization_threshold: AH's anisotropic loss threshold (ScaNN uses 0.2
        for unit-norm data); None for plain reconstruction loss.
      reorder: candidates rescored exactly after AH (search time); 0 means none.
      training_sample_size: points sampled to train partitions and AH codebooks.
    """

    num_leaves: int = 0
    leaves_to_search: int = 0
    scoring: str = "brute_force"
    dimensions_per_block: int = 2
    anisotropic_quantization_threshold: float | None = None
    reorder: int = 0
    training_sample_size: int = 100_000

    def __post_init__(self):
        if self.scoring not in ("brute_force", "asymmetric_hashing"):
            raise ValueError(f"unknown scoring {self.scoring!r}")
        if self.num_leaves < 0 or self.leaves_to_search < 0 or self.reorder < 0:
            raise ValueError("num_leaves, leaves_to_search and reorder must be >= 0")
        if self.num_leaves and not 1 <= self.leaves_to_search <= self.num_leaves:
            raise ValueError(
                f"leaves_to_search must be in [1, num_leaves={self.num_leaves}], "
                f"got {self.leaves_to_search}"
            )

    @property
    def exact(self) -> bool:
        """Whether every item is scored exactly (then recall is 1 up to ties)."""
        return self.num_leaves == 0 and self.scoring == "brute_force"

    def sentence(self, num_items: int) -> str:
        """The plan in one sentence, e.g. for the model card and the export log."""
        parts = []
        if self.num_leaves:
            parts.append(
                f"partition {num_items:,} items into {self.num_leaves} leaves and search "
                f"{self.leaves_to_search} of them"
            )
        else:
            parts.append(f"scan all {num_items:,} items")
        if self.scoring == "brute_force":
            parts.append("score them exactly (float32)")
        else:
            aq = self.anisotropic_quantization_threshold
            parts.append(
                f"score them with asymmetric hashing ({self.dimensions_per_block} dimensions "
                "per block" + (f", anisotropic threshold {aq:g}" if aq is not None else "") + ")"
            )
        if self.reorder:
            parts.append(f"rescore the best {self.reorder} exactly")
        sentence = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
        return sentence[0].upper() + sentence[1:] + "."

    def search_parameters(self, k: int) -> dict[str, int]:
        """ScaNN search-time arguments for ``k`` neighbours (-1: the built default)."""
        return {
            "final_num_neighbors": int(k),
            "pre_reorder_num_neighbors": max(self.reorder, int(k)) if self.reorder else -1,
            "leaves_to_search": self.leaves_to_search if self.num_leaves else -1,
        }

    def widened(self) -> IndexPlan:
        """Twice the leaves searched and twice the candidates reordered (no rebuild needed)."""
        return replace(
            self,
            leaves_to_search=min(self.num_leaves, 2 * self.leaves_to_search),
            reorder=2 * self.reorder,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def plan_index(num_items: int, k: int, normalized: bool) -> IndexPlan:
    """The ScaNN plan for a catalog of ``num_items`` served at top-``k``.

    Args:
      num_items: catalog size n.
      k: neighbours per query (the export's K; reordering keeps several times more).
      normalized: the vectors are unit-norm (cosine head): AH then uses ScaNN's
        anisotropic threshold 0.2.
    """
    if num_items < BRUTE_FORCE_BELOW:
        return IndexPlan()
    reorder = max(250, 4 * int(k))
    threshold = 0.2 if normalized else None
    if num_items < PARTITION_FROM:
        return IndexPlan(
            scoring="asymmetric_hashing",
            anisotropic_quantization_threshold=threshold,
            reorder=reorder,
        )
    num_leaves = int(round(math.sqrt(num_items)))
    return IndexPlan(
        num_leaves=num_leaves,
        leaves_to_search=max(10, int(math.ceil(0.05 * num_leaves))),
        scoring="asymmetric_hashing",
        anisotropic_quantization_threshold=threshold,
        reorder=reorder,
        training_sample_size=min(num_items, 250_000),
    )
