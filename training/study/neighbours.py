"""Item neighbour lists from an item-item similarity: who they are, whether they share a
label, and how much two lists overlap.

Used by the MovieLens part of the study: precision@k of each item's nearest neighbours
that share a genre, and the Jaccard overlap of neighbour lists before and after a random
diagonal re-scaling ``D`` (Steck, Ekanadham & Kallus 2024, Sec. 2). All functions take
dense ``(p, p)`` similarities: ``O(p^2)`` memory, ``O(p^2)`` time for the top-k.
"""

from __future__ import annotations

import numpy as np


def top_k_neighbours(similarity: np.ndarray, k: int, among: np.ndarray | None = None) -> np.ndarray:
    """Each item's ``k`` most similar other items, best first: ``(p, p) -> (m, k)``
    indices into ``among``.

    Args:
      similarity: ``(p, p)``; need not be symmetric (row ``i`` ranks ``i``'s neighbours).
      k: list length (capped at ``m - 1``).
      among: optional ``(m,)`` item indices: rank only these items, among themselves
        (default: all ``p``). Returned indices are positions in ``among``.

    Ties are broken by position (stable), so the result is deterministic.
    """
    s = np.array(similarity, dtype=np.float64, copy=True)
    if among is not None:
        s = s[np.ix_(among, among)]
    m = len(s)
    k = min(int(k), m - 1)
    np.fill_diagonal(s, -np.inf)
    part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < m - 1 else np.argsort(-s, axis=1)[:, :k]
    scores = np.take_along_axis(s, part, axis=1)
    # Sort the k survivors by score, then by index for ties.
    order = np.lexsort((part, -scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def neighbour_precision(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Mean share of each item's neighbours that share at least one label with it.

    ``neighbours`` is ``(m, k)`` (rows and entries index the same ``m`` items);
    ``labels`` the ``(m, g)`` multi-hot label matrix of those items.
    """
    multi_hot = np.asarray(labels, dtype=bool)
    shared = np.any(multi_hot[:, None, :] & multi_hot[neighbours], axis=2)  # (m, k)
    return float(shared.mean())


def jaccard(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-row Jaccard overlap ``|A & B| / |A | B|`` of two ``(m, k)`` neighbour lists,
    ``(m,)`` in [0, 1] (order within a list does not matter)."""
    out = np.empty(len(first))
    for row, (a, b) in enumerate(zip(first, second, strict=True)):
        a, b = set(a.tolist()), set(b.tolist())
        out[row] = len(a & b) / len(a | b) if a or b else 1.0
    return out
