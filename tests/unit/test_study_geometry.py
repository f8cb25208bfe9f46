"""Anisotropy, uniformity, genre-pair AUC and neighbour lists against numpy and hand cases,
and the random-D test on constructed two-tower models (issue 13)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tfrs_cosine import IdTower, TwoTowerModel, make_head
from tfrs_cosine.model import uniformity as tf_uniformity
from training.study import metrics
from training.study.neighbours import jaccard, neighbour_precision, top_k_neighbours


def _loops_uniformity(x: np.ndarray, t: float = 2.0) -> float:
    z = [v / np.linalg.norm(v) for v in x]
    terms = [np.exp(-t * np.sum((z[i] - z[j]) ** 2))
             for i, j in itertools.combinations(range(len(z)), 2)]
    return float(np.log(np.mean(terms)))


def test_anisotropy_and_uniformity_match_loops():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 4)) + np.array([3.0, 0, 0, 0])  # a cone around the first axis
    clusters = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    pairs = metrics.PairLabels(clusters)
    within, cross = [], []
    for i, j in itertools.combinations(range(9), 2):
        c = x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
        (within if clusters[i] == clusters[j] else cross).append(c)
    got = metrics.geometry(x, pairs)
    assert got["within"] == pytest.approx(np.mean(within), abs=1e-12)
    assert got["cross"] == pytest.approx(np.mean(cross), abs=1e-12)
    assert got["mean"] == pytest.approx(np.mean(within + cross), abs=1e-12)
    assert got["uniformity"] == pytest.approx(_loops_uniformity(x), abs=1e-12)
    # The in-model (TensorFlow) version: the same number over ordered pairs i != j.
    assert float(tf_uniformity(tf.constant(x, tf.float32))) == pytest.approx(
        _loops_uniformity(x), abs=1e-5)


def test_uniformity_bounds():
    same = np.tile([[1.0, 2.0, 3.0]], (5, 1))
    assert metrics.uniformity(same) == pytest.approx(0.0, abs=1e-12)
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])  # |z_i - z_j|^2 = 4
    assert metrics.uniformity(opposite) == pytest.approx(-8.0)
    spread = np.random.default_rng(1).normal(size=(400, 64))
    assert metrics.uniformity(spread) < metrics.uniformity(spread + 3.0) < 0


def test_genre_pair_auc_by_hand():
    # Items 0..3; genres: 0 {a}, 1 {a, b}, 2 {b}, 3 {c}.
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    pairs = metrics.PairLabels.sharing(labels)
    # Upper-triangle pairs in order (0,1) (0,2) (0,3) (1,2) (1,3) (2,3):
    np.testing.assert_array_equal(pairs.same, [True, False, False, True, False, False])
    s = np.zeros((4, 4))
    for (i, j), v in zip(itertools.combinations(range(4), 2), [0.9, 0.8, 0.1, 0.3, 0.2, 0.4],
                         strict=True):
        s[i, j] = s[j, i] = v
    # Positives 0.9, 0.3; negatives 0.8, 0.1, 0.2, 0.4. Positive above negative in
    # 4 of 4 pairs for 0.9 and 2 of 4 for 0.3: AUC = 6 / 8.
    assert pairs.auc(s) == pytest.approx(6 / 8)


def test_neighbours_precision_and_jaccard_by_hand():
    s = np.array([[0, 5, 4, 1], [5, 0, 2, 3], [4, 2, 0, 9], [1, 3, 9, 0]], dtype=float)
    top = top_k_neighbours(s, 2)
    np.testing.assert_array_equal(top, [[1, 2], [0, 3], [3, 0], [2, 1]])
    sub = top_k_neighbours(s, 1, among=np.array([0, 1, 3]))  # positions in [0, 1, 3]
    np.testing.assert_array_equal(sub, [[1], [0], [1]])
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)
    # Item 0: {1 yes, 2 no}; 1: {0 yes, 3 no}; 2: {3 yes, 0 no}; 3: {2 yes, 1 no}.
    assert neighbour_precision(top, labels) == pytest.approx(0.5)
    np.testing.assert_allclose(jaccard(np.array([[1, 2], [0, 3]]), np.array([[2, 1], [0, 2]])),
                               [1.0, 1 / 3])


# -- the random-D test on a constructed two-tower model ----------------------------------


def _constructed(head: str) -> TwoTowerModel:
    """Items 0-2 near the first axis, item 3 on the second: item 0 (at 5.7 degrees) is
    closest to item 2 (-14.0) before item 1 (26.6); stretching the second axis 16x moves
    them to 58, -76 and 83 degrees, and item 1 becomes the closest."""
    users, items = [f"u{k}" for k in range(4)], [f"i{k}" for k in range(4)]
    model = TwoTowerModel(IdTower(users, 2), IdTower(items, 2), make_head(head, 1.0))
    model({"user_id": tf.constant(["u0"]), "item_id": tf.constant(["i0"])})
    u = np.array([[1.0, 0.2], [0.3, 1.0], [-1.0, 0.5], [0.7, -0.4]])
    i = np.array([[1.0, 0.1], [1.0, 0.5], [1.0, -0.25], [0.05, 1.0]])
    for tower, table in ((model.user_tower, u), (model.item_tower, i)):
        tower.embedding.embeddings.assign(np.vstack([np.zeros((1, 2)), table]).astype(np.float32))
    return model


def test_random_d_keeps_dot_scores_and_moves_neighbour_lists():
    from training.study import item_embeddings, rescaled

    model = _constructed("dot")
    users = tf.constant(model.user_tower.vocabulary)
    items = tf.constant(model.item_tower.vocabulary)
    before = model.score(users, items).numpy()
    neighbours = top_k_neighbours(metrics.cosine_matrix(item_embeddings(model)), 1)
    d = np.array([4.0, 0.25])  # item embeddings i D^-1: the second axis grows 16x
    with rescaled(model, d):
        after = model.score(users, items).numpy()
        moved = top_k_neighbours(metrics.cosine_matrix(item_embeddings(model)), 1)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    assert jaccard(neighbours, moved).mean() < 1.0
    np.testing.assert_array_equal(neighbours[0], [2])  # item 0's nearest: item 2 ...
    np.testing.assert_array_equal(moved[0], [1])  # ... and after D: item 1


def test_random_d_changes_a_cosine_models_loss():
    from training.study import rescaled
    from training.study.probes import in_batch_loss

    model = _constructed("cosine")
    batch = {"user_id": tf.constant(["u0", "u1", "u2", "u3"]),
             "item_id": tf.constant(["i0", "i1", "i2", "i3"])}
    base = in_batch_loss(model, [batch])
    with rescaled(model, np.array([4.0, 0.25])):
        moved = in_batch_loss(model, [batch])
    assert abs(moved - base) > 1e-3 * abs(base)
