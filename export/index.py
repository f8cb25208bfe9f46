"""The top-K index of an export: built from its plan, measured against exact search, widened.

``prepare_indexes`` builds what ``ExportOptions.index`` asks for: exact brute force, or a
ScaNN searcher planned from the catalog size (``export.plan``). A ScaNN index is
accepted only when its recall@K against exact top-K (``export.recall``), measured on
sampled users and items, reaches ``min_recall``; a planned search is widened up to
``WIDENINGS`` times first. The graph builder (``export.signatures``) serializes the result.

Cost: building an exact or AH index is O(n * d); partitioning adds k-means over
``training_sample_size`` points. Measuring recall costs one exact top-K of
``recall_sample`` queries, O(recall_sample * n * d), per widening.

Vectors are numpy ``float32``: ``queries (b, d)``, ``candidates (n, d)``, already prepared
as the head compares them (L2-normalized for the cosine head, raw for the dot head), so
ScaNN's ``dot_product`` is the head's similarity.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from export.errors import ExportError
from export.options import ExportOptions
from export.plan import IndexPlan, plan_index
from export.recall import exact_top_k, recall_at_k

if TYPE_CHECKING:
    from export.tables import EmbeddingTables

WIDENINGS = 3  # times a planned search is widened when its measured recall is short


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


def measure_recall(
    searcher, queries: np.ndarray, candidates: np.ndarray, k: int, plan: IndexPlan
) -> float:
    """Recall@``k`` of ``searcher`` searched with ``plan`` against exact top-``k``."""
    exact_scores, _ = exact_top_k(queries, candidates, k)
    found = scann_search(searcher, queries, k, plan)
    return recall_at_k(queries, candidates, found, exact_scores)


# ----------------------------------------------------------------------------------------
# the indexes of one export


@dataclass
class PreparedIndex:
    """One searchable set of item vectors, ready to be serialized into the graph.

    Attributes:
      vectors: ``(n, d)`` float32 catalog vectors as this index compares them.
      searcher: the ScaNN searcher over ``vectors``; None for exact brute force.
      plan: the plan ``searcher`` is searched with (its measured, possibly widened one).
    """

    vectors: np.ndarray
    searcher: Any = None
    plan: IndexPlan | None = None

    @property
    def kind(self) -> str:
        return "brute-force" if self.searcher is None else "scann"


@dataclass
class PreparedIndexes:
    """The indexes of an export and the model card's ``index`` section.

    ``user`` serves ``serving_default`` (items as the head compares them); ``similar``
    serves ``similar_items`` (unit item vectors: cosine). For the cosine head both are the
    same object, and the graph holds one index.
    """

    user: PreparedIndex
    similar: PreparedIndex
    card: dict[str, Any]


def prepare_indexes(
    tables: EmbeddingTables,
    options: ExportOptions,
    rng: np.random.Generator,
    log: Callable[[str], None],
) -> PreparedIndexes:
    """Builds the index(es) ``options.index`` asks for and measures their recall@K.

    Raises:
      ExportError: the recall stays below ``options.min_recall`` (after widening).
    """
    compared = tables.compared(tables.item_vectors[1:])
    cosine = tables.head == "cosine"
    unit_items = compared if cosine else tables.unit(tables.item_vectors[1:])
    num_items, k = len(tables.items), options.k
    k_similar = options.similar_search_k(num_items)

    if options.index == "brute-force":
        user = PreparedIndex(compared)
        card = {
            "type": "brute-force",
            "description": f"Exact top-K over all {num_items:,} items with stock TensorFlow ops.",
            "recall_at_k": 1.0,
            "similar_items_recall_at_k": 1.0,
        }
        return PreparedIndexes(user, user if cosine else PreparedIndex(unit_items), card)

    planned = options.plan or plan_index(num_items, k, normalized=cosine)
    log(f"index: {planned.sentence(num_items)}")
    sample = min(options.recall_sample, len(tables.users))
    user_rows = rng.choice(len(tables.users), size=sample, replace=False) + 1
    queries = tables.compared(tables.user_vectors[user_rows])
    item_queries = unit_items[rng.choice(num_items, size=min(sample, num_items), replace=False)]

    started = time.perf_counter()
    user_searcher = build_scann(compared, planned, k)
    similar_searcher = user_searcher if cosine else build_scann(unit_items, planned, k_similar)
    build_seconds = time.perf_counter() - started
    log(f"index: built in {build_seconds:.1f}s; measuring recall@{k} on {len(queries)} users")

    plan = planned
    for widening in range(WIDENINGS + 1):
        user_recall = measure_recall(user_searcher, queries, compared, k, plan)
        similar_recall = measure_recall(similar_searcher, item_queries, unit_items, k_similar, plan)
        log(
            f"index: recall@{k} {user_recall:.4f} (users), {similar_recall:.4f} (similar items)"
            f" searching {plan.leaves_to_search or 'all'} leaves, reordering {plan.reorder}"
        )
        recall = min(user_recall, similar_recall)
        if recall >= options.min_recall or options.plan is not None or widening == WIDENINGS:
            break
        if plan.widened() == plan:
            break
        plan = plan.widened()
        log("index: recall below --min-recall; widening the search")
    if recall < options.min_recall:
        raise ExportError(
            f"ScaNN index recall@{k} is {recall:.3f}, below --min-recall {options.min_recall} "
            f"({plan.sentence(num_items)}); nothing was written"
        )
    card = {
        "type": "scann",
        "description": plan.sentence(num_items),
        "parameters": plan.to_dict(),
        "planned_parameters": planned.to_dict(),
        "distance": "dot_product over L2-normalized vectors (cosine)" if cosine else "dot_product",
        "recall_at_k": round(user_recall, 5),
        "similar_items_recall_at_k": round(similar_recall, 5),
        "recall_sample_users": len(queries),
        "build_seconds": round(build_seconds, 2),
    }
    user = PreparedIndex(compared, user_searcher, plan)
    similar = user if cosine else PreparedIndex(unit_items, similar_searcher, plan)
    return PreparedIndexes(user, similar, card)
