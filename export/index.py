"""The top-K index of an export: a ScaNN plan chosen from the catalog size, and its recall.

ScaNN's rules of thumb (scann/docs/algorithms.md) decide the plan:

* fewer than 20k items: score every item exactly (ScaNN brute force);
* fewer than 100k items: score every item with asymmetric hashing (AH, 2 dimensions per
  block), then reorder the best candidates with exact float32 scores;
* more: partition into about sqrt(n) leaves, search a share of them, score with AH, reorder.

TFRS's ScaNN defaults (100 leaves, 10 searched, no reordering) are not used: they gave
recall@10 of 0.30-0.40 against exact search on 100k vectors. Every plan is measured
(``measure_recall``) against exact top-K before an export is accepted, and a plan can be
``widened`` (more leaves searched, more candidates reordered) without rebuilding, since
those are search-time parameters.

Vectors are numpy ``float32``: ``queries (b, d)``, ``candidates (n, d)``, already prepared
as the head compares them (L2-normalized for the cosine head, raw for the dot head), so
ScaNN's ``dot_product`` is the head's similarity.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

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


def build_scann(candidates: np.ndarray, plan: IndexPlan, k: int):
    """Builds a ScaNN TF searcher (``scann_ops.ScannSearcher``) over ``candidates (n, d)``.

    Serialize it into a SavedModel with ``searcher.serialize_to_module()``.
    """
    from scann.scann_ops.py import scann_ops  # registers the ScaNN ops

    candidates = np.ascontiguousarray(candidates, dtype=np.float32)
    builder = scann_ops.builder(candidates, int(k), "dot_product")
    if plan.num_leaves:
        builder = builder.tree(
            num_leaves=plan.num_leaves,
            num_leaves_to_search=plan.leaves_to_search,
            training_sample_size=min(plan.training_sample_size, len(candidates)),
        )
    if plan.scoring == "brute_force":
        builder = builder.score_brute_force()
    else:
        aq = plan.anisotropic_quantization_threshold
        builder = builder.score_ah(
            plan.dimensions_per_block,
            anisotropic_quantization_threshold=float("nan") if aq is None else aq,
            training_sample_size=min(plan.training_sample_size, len(candidates)),
        )
    if plan.reorder:
        builder = builder.reorder(max(plan.reorder, int(k)))
    # A unique shared name: two searchers in one process must never share a resource.
    return builder.build(shared_name=f"tfrs_cosine_export/{time.time_ns()}")


def scann_search(searcher, queries: np.ndarray, k: int, plan: IndexPlan) -> np.ndarray:
    """Indices ``(b, k)`` int64 of ``searcher``'s top-``k``; -1 where it found fewer."""
    indices, distances = searcher.search_batched_parallel(
        np.ascontiguousarray(queries, dtype=np.float32), **plan.search_parameters(k)
    )
    indices = indices.numpy().astype(np.int64)
    indices[~np.isfinite(distances.numpy())] = -1
    if indices.shape[1] < k:
        indices = np.pad(indices, ((0, 0), (0, k - indices.shape[1])), constant_values=-1)
    return indices


def exact_top_k(
    queries: np.ndarray, candidates: np.ndarray, k: int, chunk_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by dot product: ``(scores (b, k) float32, indices (b, k) int64)``.

    Ordered by descending score; ties broken by the lower index.
    """
    queries = np.asarray(queries, dtype=np.float32)
    candidates = np.asarray(candidates, dtype=np.float32)
    k = min(int(k), len(candidates))
    all_scores, all_indices = [], []
    for start in range(0, len(queries), chunk_size):
        scores = queries[start : start + chunk_size] @ candidates.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        all_indices.append(np.take_along_axis(part, order, axis=1))
        all_scores.append(np.take_along_axis(part_scores, order, axis=1))
    return np.concatenate(all_scores), np.concatenate(all_indices).astype(np.int64)


def recall_at_k(
    queries: np.ndarray,
    candidates: np.ndarray,
    found: np.ndarray,
    exact_scores: np.ndarray,
    tolerance: float = 1e-5,
) -> float:
    """Mean recall@k of ``found (b, k)`` indices against the exact top-k.

    A found item counts when its exact score reaches the exact k-th best score (less a
    relative ``tolerance``), so items tied with the k-th are not counted as misses.
    Indices < 0 (nothing found) are misses.

    Args:
      queries: ``(b, d)``; candidates: ``(n, d)``; found: ``(b, k)`` int;
      exact_scores: ``(b, k)`` exact top-k scores, descending (``exact_top_k``).
    """
    found = np.asarray(found)
    valid = found >= 0
    rows = candidates[np.where(valid, found, 0)]  # (b, k, d)
    scores = np.einsum("bd,bkd->bk", queries, rows)
    kth = exact_scores[:, -1:]
    threshold = kth - tolerance * np.maximum(1.0, np.abs(kth))
    hits = valid & (scores >= threshold)
    # Count each index once: a searcher returning duplicates must not inflate recall.
    for row in range(len(found)):
        _, first = np.unique(found[row], return_index=True)
        duplicate = np.ones(found.shape[1], dtype=bool)
        duplicate[first] = False
        hits[row] &= ~duplicate
    return float(hits.sum() / found.size)


def measure_recall(
    searcher, queries: np.ndarray, candidates: np.ndarray, k: int, plan: IndexPlan
) -> float:
    """Recall@``k`` of ``searcher`` searched with ``plan`` against exact top-``k``."""
    exact_scores, _ = exact_top_k(queries, candidates, k)
    found = scann_search(searcher, queries, k, plan)
    return recall_at_k(queries, candidates, found, exact_scores)
