"""Strong simple recommenders: EASE, item-KNN (cosine), PureSVD and most-popular.

The references a reviewer asks for next to a two-tower model (see
``/work/shared/notes/scale.md``). Everything is numpy / scipy and starts from the
binary user-item matrix ``X`` (``n`` users x ``p`` items, ``scipy.sparse.csr_matrix``,
``nnz`` interactions). Each model is an item-item matrix ``W (p, p)``; a user's scores
are the row ``x_u W`` (``score_rows``), so one evaluation path serves them all:

* ``ease_weights`` (Steck, WWW 2019): ``W = I - P / diag(P)``, ``P = (X^T X + lambda I)^-1``,
  diagonal zero. Time ``O(nnz p + p^3)``, memory ``O(p^2)``; ``tune_ease`` picks lambda.
* ``item_knn_weights``: cosine similarity of the item columns of ``X`` (optionally only
  each item's ``k`` nearest neighbours kept, and a shrinkage term), diagonal zero.
  Time ``O(nnz p)`` (sparse ``X^T X``) plus ``O(p^2 log p)`` for pruning; memory ``O(p^2)``.
* ``pure_svd_factors`` (Cremonesi et al., RecSys 2010): the top ``k`` right singular
  vectors ``V (p, k)`` of ``X``; ``W = V V^T``. Time ``O(nnz k)`` per Lanczos step
  (``scipy.sparse.linalg.svds``), memory ``O((n + p) k)``.
* ``popularity``: training counts ``(p,)``; the same list for every user.

The dense ``(p, p)`` matrices cap the catalog at a few tens of thousands of items on
one machine (``p = 20,000``: 3.2 GB in float64); beyond that, keep only each item's top
neighbours (``item_knn_weights(neighbours=k)``) or the SVD factors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from training.schema import Interactions


def interaction_matrix(
    interactions: Interactions, users: np.ndarray, items: np.ndarray
) -> sp.csr_matrix:
    """Binary ``(len(users), len(items))`` float64 CSR matrix of ``interactions``.

    ``users`` and ``items`` are sorted id arrays (rows and columns in that order);
    repeated pairs count once, interactions with an unknown user or item are ignored.
    Time ``O(N log(n + p))`` for ``N`` interactions, memory ``O(N)``.
    """
    rows = np.searchsorted(users, interactions.user_id)
    columns = np.searchsorted(items, interactions.item_id)
    rows = np.minimum(rows, len(users) - 1)
    columns = np.minimum(columns, len(items) - 1)
    known = (users[rows] == interactions.user_id) & (items[columns] == interactions.item_id)
    x = sp.csr_matrix(
        (np.ones(int(known.sum())), (rows[known], columns[known])),
        shape=(len(users), len(items)),
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def gram(x: sp.spmatrix | np.ndarray) -> np.ndarray:
    """``X^T X`` as a dense ``(p, p)`` float64 array (co-occurrence counts)."""
    g = x.T @ x
    return np.asarray(g.toarray() if sp.issparse(g) else g, dtype=np.float64)


def ease_weights(x: sp.spmatrix | np.ndarray, lam: float) -> np.ndarray:
    """EASE's item-item matrix ``W (p, p)``: the minimiser of
    ``||X - X W||^2 + lambda ||W||^2`` subject to ``diag(W) = 0``.

    Closed form (Steck 2019): ``P = (X^T X + lambda I)^-1``, ``W = I - P dMat(1 / diag(P))``,
    i.e. ``W_ij = -P_ij / P_jj`` off the diagonal.
    """
    if not lam > 0:
        raise ValueError(f"lambda must be positive, got {lam}")
    g = gram(x)
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    w = -p / np.diag(p)[None, :]
    np.fill_diagonal(w, 0.0)
    return w


def item_knn_weights(
    x: sp.spmatrix | np.ndarray, neighbours: int | None = None, shrink: float = 0.0
) -> np.ndarray:
    """Item-item cosine similarity ``W (p, p)`` of the columns of ``X``, diagonal zero.

    ``W_ij = c_ij / (|x_i| |x_j| + shrink)`` with ``c = X^T X``; an item nobody has has a
    zero row and column. With ``neighbours = k`` only each column's ``k`` largest
    entries are kept (the usual item-KNN: a user's score sums over the neighbourhoods
    of the items she has).
    """
    c = gram(x)
    norms = np.sqrt(np.diag(c))
    w = c / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(w, 0.0)
    if neighbours is not None and neighbours < w.shape[0] - 1:
        keep = np.argpartition(-w, neighbours - 1, axis=0)[:neighbours]
        pruned = np.zeros_like(w)
        np.put_along_axis(pruned, keep, np.take_along_axis(w, keep, axis=0), axis=0)
        w = pruned
    return w


def pure_svd_factors(x: sp.spmatrix | np.ndarray, rank: int, seed: int = 0) -> np.ndarray:
    """PureSVD's item factors ``V (p, k)``: the top ``k`` right singular vectors of ``X``
    (largest singular value first). A user's scores are ``x_u V V^T``."""
    rank = int(rank)
    if not 1 <= rank < min(x.shape):
        raise ValueError(f"rank must be in [1, {min(x.shape) - 1}], got {rank}")
    v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, size=min(x.shape))
    _, s, vt = svds(sp.csr_matrix(x, dtype=np.float64), k=rank, v0=v0)
    order = np.argsort(-s)
    return vt[order].T


def popularity(x: sp.spmatrix | np.ndarray) -> np.ndarray:
    """Each item's number of users, ``(p,)`` float64: the most-popular recommender."""
    return np.asarray(x.sum(axis=0), dtype=np.float64).ravel()


def score_rows(x_rows: sp.spmatrix | np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Users' scores ``x_u W``: ``(b, p)`` rows of ``X`` times ``(p, p)`` -> ``(b, p)``.
    Time ``O(nnz_b p)`` for sparse rows."""
    out = x_rows @ weights
    return np.asarray(out, dtype=np.float64)


def tune_ease(
    x: sp.spmatrix | np.ndarray,
    lambdas: Sequence[float],
    validate: Callable[[np.ndarray], float],
) -> tuple[float, np.ndarray, dict[float, float]]:
    """EASE at every lambda (in increasing order); ``validate(W)`` returns the validation
    metric (higher is better). Returns ``(best lambda, its W, {lambda: metric})``; ties go
    to the larger lambda (the more regularized model). Cost: one ``ease_weights`` each."""
    results, best = {}, None
    for lam in sorted(lambdas):
        w = ease_weights(x, lam)
        results[float(lam)] = float(validate(w))
        if best is None or results[float(lam)] >= results[best[0]]:
            best = (float(lam), w)
    if best is None:
        raise ValueError("no lambda to try")
    return best[0], best[1], results
