"""Closed-form reference models of Steck, Ekanadham & Kallus (2024), Sections 2.2-2.3.

Notation of the paper: ``X`` is the ``(n, p)`` user-item matrix with SVD
``X = U dMat(sigma) V^T`` (``sigma`` the singular values, descending); a model is a pair
``A, B`` of ``(p, k)`` matrices, the item embeddings are the rows of ``B`` and the user
embeddings the rows of ``X A``; the model's scores are ``X A B^T``.

* Eq. 1, ``min ||X - X A B^T||^2 + lambda ||A B^T||^2``: ``A B^T = V_k dMat(g)_k V_k^T``
  with ``g_i = 1 / (1 + lambda / sigma_i^2)``. Eq. 5 splits it as
  ``A = B = V_k dMat(g)^(1/2)``; any diagonal ``D`` gives another solution
  ``(A D, B D^-1)`` with the same objective (Eq. 3), hence arbitrary cosines.
* Eq. 2, ``min ||X - X A B^T||^2 + lambda (||X A||^2 + ||B||^2)``:
  ``A = V_k dMat(sqrt((1 / sigma_i) (1 - lambda / sigma_i)_+))``,
  ``B = V_k dMat(sqrt(sigma_i (1 - lambda / sigma_i)_+))`` (Eq. 6), unique up to rotations.

Sigma convention: ``sigma_i`` is a *singular value* of ``X`` in both equations (as the
paper defines ``Sigma``). This is what the derivations give: Eq. 1 is ridge regression
``W = (X^T X + lambda I)^-1 X^T X`` whose eigenvalues are ``sigma^2 / (sigma^2 + lambda)``;
Eq. 2 is ``min ||X - P Q^T||^2 + lambda (||P||^2 + ||Q||^2)`` = nuclear-norm shrinkage, whose
solution ``P Q^T`` has singular values ``(sigma_i - lambda)_+ = sigma_i (1 - lambda / sigma_i)_+``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training import baselines
from training.schema import Interactions


@dataclass(frozen=True)
class SVD:
    """Truncated SVD ``X ~ u dMat(s) v^T``: ``u (n, k)``, ``s (k,)`` descending, ``v (p, k)``."""

    u: np.ndarray
    s: np.ndarray
    v: np.ndarray

    def flip_signs(self, signs: np.ndarray) -> SVD:
        """The same decomposition with singular vector pair ``i`` multiplied by ``signs[i]``
        (``+-1``), as another SVD routine may return it."""
        return SVD(self.u * signs, self.s, self.v * signs)


@dataclass(frozen=True)
class LinearModel:
    """``A, B`` of shape ``(p, k)``; user embeddings ``X A``, item embeddings ``B``."""

    a: np.ndarray
    b: np.ndarray

    def rescale(self, d: np.ndarray) -> LinearModel:
        """Eq. 3: ``(A D, B D^-1)`` for a diagonal ``D = dMat(d)``, ``d (k,)`` non-zero."""
        return LinearModel(self.a * d, self.b / d)

    def user_embeddings(self, x: np.ndarray) -> np.ndarray:
        """``X A``: ``(n, p) -> (n, k)``."""
        return x @ self.a

    def scores(self, x: np.ndarray) -> np.ndarray:
        """``X A B^T``: ``(n, p) -> (n, p)``."""
        return (x @ self.a) @ self.b.T


def interaction_matrix(interactions: Interactions, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Binary ``(len(users), len(items))`` float64 matrix, dense (``training.baselines``'s
    sparse one): repeated pairs count once, unknown users or items are ignored."""
    return baselines.interaction_matrix(interactions, users, items).toarray()


def truncated_svd(x: np.ndarray, k: int) -> SVD:
    """The top ``k`` singular triplets of ``x`` (``k`` is capped at ``min(x.shape)``)."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(int(k), len(s))
    return SVD(u[:, :k], s[:k], vt[:k].T)


def eq1_shrinkage(s: np.ndarray, lam: float) -> np.ndarray:
    """``g_i = 1 / (1 + lambda / sigma_i^2)`` (0 for a zero singular value)."""
    s2 = s**2
    return np.divide(s2, s2 + lam, out=np.zeros_like(s2), where=s2 > 0)


def eq1_model(svd: SVD, lam: float) -> LinearModel:
    """Eq. 5: ``A = B = V_k dMat(g)^(1/2)``."""
    half = np.sqrt(eq1_shrinkage(svd.s, lam))
    return LinearModel(svd.v * half, svd.v * half)


def eq1_rescalings(svd: SVD, lam: float) -> dict[str, np.ndarray]:
    """The diagonals ``d (k,)`` of the re-scalings ``D = dMat(d)`` the paper discusses.

    ``D = I``; ``D = dMat(g)^(1/2)`` (then ``B = V_k``, Sec. 2.2); its inverse (then
    ``B = V_k dMat(g)``, ``A = V_k``); ``D = dMat(sqrt(1 / sigma_i))`` (Sec. 2.3, the
    choice that mimics Eq. 2's split between users and items). Zero ``g`` or ``sigma``
    (rank-deficient ``X``) map to 1 so that ``D`` stays invertible.
    """
    g = eq1_shrinkage(svd.s, lam)
    g = np.where(g > 0, g, 1.0)
    s = np.where(svd.s > 0, svd.s, 1.0)
    return {
        "I": np.ones_like(g),
        "g^1/2": np.sqrt(g),
        "g^-1/2": 1.0 / np.sqrt(g),
        "sigma^-1/2": 1.0 / np.sqrt(s),
    }


def eq2_gain(s: np.ndarray, lam: float) -> np.ndarray:
    """``(1 - lambda / sigma_i)_+`` with ``sigma_i`` the singular values (0 where ``sigma = 0``)."""
    ratio = np.divide(lam, s, out=np.full_like(s, np.inf), where=s > 0)
    return np.maximum(0.0, 1.0 - ratio)


def eq2_model(svd: SVD, lam: float) -> LinearModel:
    """Eq. 6: ``A = V_k dMat(sqrt((1/sigma)(1 - lambda/sigma)_+))``,
    ``B = V_k dMat(sqrt(sigma (1 - lambda/sigma)_+))``."""
    gain = eq2_gain(svd.s, lam)
    inverse = np.divide(1.0, svd.s, out=np.zeros_like(svd.s), where=svd.s > 0)
    return LinearModel(svd.v * np.sqrt(inverse * gain), svd.v * np.sqrt(svd.s * gain))


def _reconstruction_error(gram: np.ndarray, w: np.ndarray) -> float:
    """``||X - X W||_F^2`` from the Gram matrix ``G = X^T X``: ``tr G - 2 tr(G W) + tr(W^T G W)``."""
    return float(np.trace(gram) - 2.0 * np.sum(gram * w.T) + np.sum(w * (gram @ w)))


def eq1_objective(gram: np.ndarray, model: LinearModel, lam: float) -> float:
    """``||X - X A B^T||^2 + lambda ||A B^T||^2`` (``gram = X^T X``, ``(p, p)``)."""
    w = model.a @ model.b.T
    return _reconstruction_error(gram, w) + lam * float(np.sum(w**2))


def eq2_objective(gram: np.ndarray, model: LinearModel, lam: float) -> float:
    """``||X - X A B^T||^2 + lambda (||X A||^2 + ||B||^2)`` (``gram = X^T X``)."""
    w = model.a @ model.b.T
    xa2 = float(np.sum(model.a * (gram @ model.a)))  # ||X A||^2 = tr(A^T G A)
    return _reconstruction_error(gram, w) + lam * (xa2 + float(np.sum(model.b**2)))
