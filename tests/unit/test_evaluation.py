import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from training.evaluation import evaluate_embeddings, exact_top_k


def _hand_case(seen):
    # One dimension: user 0 ranks items 0 > 1 > 2 > 3 > 4, user 1 the reverse.
    users = np.array([[1.0], [-1.0]])
    items = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]])
    test_users = np.array([0, 0, 1])
    test_items = np.array([1, 3, 0])
    return evaluate_embeddings(users, items, test_users, test_items, [1, 2, 3], seen=seen)


def test_metrics_by_hand_with_seen_items_excluded():
    m = _hand_case(seen=[np.array([0]), np.array([], dtype=np.int64)])
    # user 0 ranking without item 0: 1, 2, 3, 4 -> relevant at ranks 1 and 3
    # user 1 ranking: 4, 3, 2, 1, 0 -> relevant at rank 5
    assert m["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@3"] == pytest.approx((2 / 2 + 0) / 2)
    ndcg3_user0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert m["ndcg@3"] == pytest.approx(ndcg3_user0 / 2)
    assert m["hit_rate@1"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx((1.0 + 0.0) / 2)  # user 1's hit is beyond kmax = 3
    # FactorizedTopK's accuracy never excludes seen items: pair (0, 1) is rank 2,
    # (0, 3) rank 4, (1, 0) rank 5.
    assert m["top_1_categorical_accuracy"] == pytest.approx(0.0)
    assert m["top_2_categorical_accuracy"] == pytest.approx(1 / 3)
    assert m["top_3_categorical_accuracy"] == pytest.approx(1 / 3)


def test_metrics_by_hand_without_exclusion():
    m = _hand_case(seen=None)
    # user 0 ranking: 0, 1, 2, 3, 4 -> relevant at ranks 2 and 4
    assert m["recall@1"] == pytest.approx(0.0)
    assert m["recall@2"] == pytest.approx((1 / 2) / 2)
    assert m["mrr"] == pytest.approx((1 / 2) / 2)
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)) / 2)


def test_unknown_test_item_is_a_miss_but_counts():
    m = evaluate_embeddings(np.array([[1.0]]), np.array([[2.0], [1.0]]),
                            np.array([0, 0]), np.array([0, -1]), [1])
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["top_1_categorical_accuracy"] == pytest.approx(0.5)


def test_categorical_accuracy_agrees_with_tfrs_factorized_top_k():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(300, 16)).astype(np.float32)
    candidates = rng.normal(size=(200, 16)).astype(np.float32)
    positives = rng.integers(0, 200, size=300)
    ids = np.array([f"c{i}" for i in range(200)])
    ks = [1, 5, 10, 50]

    def factorized(with_ids: bool) -> dict[str, float]:
        index = tfrs.layers.factorized_top_k.BruteForce(k=max(ks))
        index.index(tf.constant(candidates), tf.constant(ids) if with_ids else None)
        metric = tfrs.metrics.FactorizedTopK(candidates=index, ks=ks)
        metric.update_state(
            tf.constant(queries),
            tf.constant(candidates[positives]),
            true_candidate_ids=tf.constant(ids[positives]) if with_ids else None,
        )
        return {k: float(m.result()) for k, m in zip(ks, metric._top_k_metrics, strict=True)}

    by_id, by_score = factorized(True), factorized(False)
    ours = evaluate_embeddings(queries, candidates, np.arange(300), positives, ks, chunk_size=64)
    for k in ks:
        got = ours[f"top_{k}_categorical_accuracy"]
        # Id-based FactorizedTopK ("is the positive among the top K") is our definition.
        assert got == pytest.approx(by_id[k], abs=1e-6)
        # Score-based FactorizedTopK recomputes the positive's score with a row-wise sum,
        # whose rounding differs from the matmul's: a positive at rank K can then tie-break
        # either way. Allow those few pairs and no more.
        assert abs(got - by_score[k]) <= 5 / 300
    assert 0 < ours["top_50_categorical_accuracy"] < 1  # a non-degenerate case


def test_exact_top_k_matches_numpy_and_excludes():
    rng = np.random.default_rng(3)
    q, c = rng.normal(size=(37, 8)), rng.normal(size=(90, 8))
    scores, indices = exact_top_k(q, c, k=7, chunk_size=10)
    full = q @ c.T
    np.testing.assert_array_equal(indices, np.argsort(-full, axis=1)[:, :7])
    np.testing.assert_allclose(scores, np.take_along_axis(full, indices, 1), rtol=1e-5)
    exclude = [indices[r, :2] for r in range(37)]
    _, after = exact_top_k(q, c, k=5, chunk_size=8, exclude=exclude)
    np.testing.assert_array_equal(after, indices[:, 2:7])
