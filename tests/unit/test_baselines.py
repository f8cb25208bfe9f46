"""training.baselines against independent numpy / scikit-learn computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics.pairwise import cosine_similarity

from training import baselines
from training.schema import Interactions


@pytest.fixture(scope="module")
def x() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    dense = (rng.random((40, 12)) < 0.3).astype(np.float64)
    dense[:, 11] = 0.0  # an item nobody has
    return sp.csr_matrix(dense)


def test_interaction_matrix_is_binary_and_ignores_unknown_ids():
    users, items = np.array(["a", "b", "c"]), np.array(["x", "y"])
    interactions = Interactions(user_id=np.array(["a", "a", "b", "zz", "c"]),
                                item_id=np.array(["y", "y", "x", "x", "qq"]))
    m = baselines.interaction_matrix(interactions, users, items)
    assert sp.issparse(m) and m.shape == (3, 2)
    np.testing.assert_array_equal(m.toarray(), [[0, 1], [1, 0], [0, 0]])


def test_ease_solves_each_columns_constrained_ridge(x):
    lam = 3.0
    w = baselines.ease_weights(x, lam)
    dense = x.toarray()
    g = dense.T @ dense
    assert np.all(np.diag(w) == 0)
    for j in range(dense.shape[1]):
        # min ||x_j - X_-j b||^2 + lam ||b||^2, solved directly without column j.
        others = [k for k in range(dense.shape[1]) if k != j]
        b = np.linalg.solve(g[np.ix_(others, others)] + lam * np.eye(len(others)), g[others, j])
        np.testing.assert_allclose(w[others, j], b, atol=1e-10)
    np.testing.assert_allclose(baselines.ease_weights(dense, lam), w)  # dense input too
    with pytest.raises(ValueError, match="lambda"):
        baselines.ease_weights(x, 0.0)


def test_item_knn_is_the_cosine_of_item_columns(x):
    w = baselines.item_knn_weights(x)
    expected = cosine_similarity(x.T.toarray())
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(w, expected, atol=1e-12)
    assert np.all(w[:, 11] == 0) and np.all(w[11] == 0)
    pruned = baselines.item_knn_weights(x, neighbours=3)
    assert np.all((pruned != 0).sum(axis=0) <= 3)
    for j in range(10):
        kept = np.flatnonzero(pruned[:, j])
        assert np.min(w[kept, j]) >= np.sort(w[:, j])[-3] - 1e-12


def test_pure_svd_spans_the_top_singular_vectors(x):
    v = baselines.pure_svd_factors(x, 4)
    _, s, vt = np.linalg.svd(x.toarray(), full_matrices=False)
    reference = vt[:4].T
    np.testing.assert_allclose(v @ v.T, reference @ reference.T, atol=1e-8)
    np.testing.assert_allclose(v.T @ v, np.eye(4), atol=1e-10)
    with pytest.raises(ValueError, match="rank"):
        baselines.pure_svd_factors(x, 12)


def test_popularity_scores_and_tuning(x):
    np.testing.assert_array_equal(baselines.popularity(x), x.toarray().sum(axis=0))
    w = baselines.item_knn_weights(x)
    np.testing.assert_allclose(baselines.score_rows(x[:5], w), x[:5].toarray() @ w)
    picked = []

    def validate(weights: np.ndarray) -> float:
        picked.append(weights)
        return -abs(float(np.abs(weights).sum()) - 5.0)  # prefers some middle lambda

    lam, best, results = baselines.tune_ease(x, [1000.0, 1.0, 30.0], validate)
    assert list(results) == [1.0, 30.0, 1000.0]  # tried in increasing order
    assert lam == max(results, key=results.get)
    np.testing.assert_allclose(best, baselines.ease_weights(x, lam))
