"""Recall@K of a top-K search against exact search: what every index is measured by.

Exact top-K is a chunked matrix product: O(b * n * d) time and O(chunk * n) temporary
memory for ``b`` queries over ``n`` candidates of width ``d``. Vectors are numpy
``float32``, prepared as the head compares them, so the dot product is the similarity.
"""

from __future__ import annotations

import numpy as np


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
