from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_cosine import DotHead
from training.evaluation import (
    ValidationRecall,
    evaluate_embeddings,
    evaluate_model,
    evaluate_set,
    evaluation_set,
    exact_top_k,
)
from training.indexing import RowColumns, catalog_index
from training.schema import Interactions


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


# ----------------------------------------------------------------------------------------
# The evaluator as it was before it was vectorized (commit ceacf22), kept verbatim as the
# reference the vectorized one must equal exactly.


def _reference_exclude(block, rows):
    for r, columns in enumerate(rows):
        block[r, columns] = -np.inf


def _reference_top_k_indices(scores, k):
    # A full sort, independent of the evaluator's argpartition.
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _reference_evaluate_embeddings(user_vectors, item_vectors, test_users, test_items, ks,
                                   seen=None, chunk_size=1024):
    ks = sorted(set(int(k) for k in ks))
    n_items = item_vectors.shape[0]
    k_max = min(ks[-1], n_items)
    candidates = tf.convert_to_tensor(item_vectors, tf.float32)
    queries = tf.convert_to_tensor(user_vectors, tf.float32)
    pairs = np.unique(np.stack([test_users, test_items]), axis=1)
    num_relevant = np.bincount(pairs[0], minlength=len(user_vectors)).astype(np.float64)
    positive_rank = np.full(len(test_users), np.iinfo(np.int64).max, dtype=np.int64)
    hits = np.zeros((len(user_vectors), k_max), dtype=bool)
    order = np.argsort(test_users, kind="stable")
    sorted_users = test_users[order]
    for start in range(0, len(user_vectors), chunk_size):
        stop = min(start + chunk_size, len(user_vectors))
        block = tf.linalg.matmul(queries[start:stop], candidates, transpose_b=True).numpy()
        lo, hi = np.searchsorted(sorted_users, [start, stop])
        rows = order[lo:hi]
        rows = rows[test_items[rows] >= 0]
        local = test_users[rows] - start
        positive = block[local, test_items[rows]]
        best = -np.sort(-np.partition(block, n_items - k_max, axis=1)[:, n_items - k_max :])
        positive_rank[rows] = (best[local] > positive[:, None]).sum(axis=1)
        if seen is not None:
            _reference_exclude(block, seen[start:stop])
        top = _reference_top_k_indices(block, k_max)
        keys = (np.arange(start, stop)[:, None] * n_items + top).ravel()
        wanted = test_users[rows].astype(np.int64) * n_items + test_items[rows]
        hits[start:stop] = np.isin(keys, wanted).reshape(top.shape)
    metrics = {}
    users = num_relevant > 0
    discounts = 1.0 / np.log2(np.arange(2, k_max + 2))
    ideal_by_count = np.concatenate([[0.0], np.cumsum(discounts)])
    for k in ks:
        kk = min(k, k_max)
        found = hits[:, :kk].sum(axis=1)
        metrics[f"recall@{k}"] = float(np.mean(found[users] / num_relevant[users]))
        dcg = (hits[:, :kk] * discounts[:kk]).sum(axis=1)
        ideal = ideal_by_count[np.minimum(num_relevant, kk).astype(np.int64)]
        metrics[f"ndcg@{k}"] = float(np.mean(dcg[users] / ideal[users]))
        metrics[f"hit_rate@{k}"] = float(np.mean(found[users] > 0))
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)
    metrics["mrr"] = float(np.mean(1.0 / first[users]))
    for k in ks:
        metrics[f"top_{k}_categorical_accuracy"] = float(np.mean(positive_rank < k))
    metrics["num_test_users"] = int(users.sum())
    metrics["num_test_interactions"] = int(len(test_users))
    return metrics


def _reference_evaluate_model(towers, test, items, ks, seen=None, chunk_size=1024):
    users, test_users = np.unique(test.user_id, return_inverse=True)
    item_index = {item: k for k, item in enumerate(items.tolist())}
    test_items = np.array([item_index.get(i, -1) for i in test.item_id.tolist()], np.int64)
    excluded = None
    if seen is not None:
        user_row = {u: k for k, u in enumerate(users.tolist())}
        buckets = [[] for _ in users]
        for u, i in zip(seen.user_id.tolist(), seen.item_id.tolist(), strict=True):
            row, column = user_row.get(u), item_index.get(i)
            if row is not None and column is not None:
                buckets[row].append(column)
        excluded = [np.unique(np.array(b, dtype=np.int64)) for b in buckets]
    user_vectors = towers.user_tower(tf.constant(users)).numpy()
    item_vectors = towers.item_tower(tf.constant(items)).numpy()
    return _reference_evaluate_embeddings(user_vectors, item_vectors, test_users, test_items,
                                          ks, excluded, chunk_size)


# ----------------------------------------------------------------------------------------


def _lookup_tower(ids, vectors):
    """A real Keras tower: StringLookup + an Embedding holding ``vectors`` (OOV row 0)."""
    tower = tf.keras.Sequential([
        tf.keras.layers.StringLookup(vocabulary=list(ids), mask_token=None),
        tf.keras.layers.Embedding(len(ids) + 1, vectors.shape[1]),
    ])
    tower(tf.constant(list(ids[:1])))
    tower.layers[1].set_weights([np.vstack([np.zeros((1, vectors.shape[1])), vectors])])
    return tower


def _random_case(seed, num_users=90, num_items=40, dim=3):
    """Integer-valued vectors (many tied scores), test items outside the catalog, seen
    interactions with duplicates, unknown users and unknown items, unsorted catalog."""
    rng = np.random.default_rng(seed)
    users = np.array([f"user{k}" for k in range(num_users)])
    items = rng.permutation(np.array([f"item{k:03d}" for k in range(num_items)]))
    user_vectors = rng.integers(-2, 3, size=(num_users, dim)).astype(np.float32)
    item_vectors = rng.integers(-2, 3, size=(num_items, dim)).astype(np.float32)
    everything = np.concatenate([items, ["gone1", "gone2"]])
    test = Interactions(users[rng.integers(0, num_users - 10, 300)],
                        everything[rng.integers(0, len(everything), 300)])
    seen_users = np.concatenate([users, ["stranger"]])
    seen = Interactions(seen_users[rng.integers(0, len(seen_users), 700)],
                        everything[rng.integers(0, len(everything), 700)])
    towers = SimpleNamespace(head=DotHead(), user_tower=_lookup_tower(users, user_vectors),
                             item_tower=_lookup_tower(items, item_vectors))
    return towers, test, items, seen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorized_evaluation_equals_the_previous_evaluator_exactly(seed):
    towers, test, items, seen = _random_case(seed)
    ks = [1, 3, 10, 50]  # 50 > catalog size 40
    for chunk_size in (1, 7, 1024):
        for excluded in (seen, None):
            want = _reference_evaluate_model(towers, test, items, ks, excluded, chunk_size)
            got = evaluate_model(towers, test, items, ks, excluded, chunk_size)
            assert got == want, (chunk_size, excluded is None)
    assert 0 < want["recall@10"] < 1 and want["top_1_categorical_accuracy"] < 1


def test_catalog_index_matches_a_dict():
    rng = np.random.default_rng(7)
    catalog = np.array(["b", "a", "d", "a", "c"])  # "a" twice: the last position wins
    ids = np.array(["a", "z", "c", "", "b", "d", "a"])
    index = {x: k for k, x in enumerate(catalog.tolist())}
    want = [index.get(x, -1) for x in ids.tolist()]
    np.testing.assert_array_equal(catalog_index(catalog, ids), want)
    assert catalog_index(np.array([], dtype=str), ids).tolist() == [-1] * 7
    big = np.array([f"x{k}" for k in rng.permutation(500)])
    queries = np.array([f"x{k}" for k in rng.integers(0, 600, 1000)])
    index = {x: k for k, x in enumerate(big.tolist())}
    np.testing.assert_array_equal(catalog_index(big, queries),
                                  [index.get(x, -1) for x in queries.tolist()])


def test_row_columns_are_sorted_distinct_per_row():
    seen = RowColumns.from_pairs(np.array([2, 0, 2, 2, -1, 0]), np.array([5, 1, 3, 5, 0, -1]),
                                 num_rows=4, num_columns=6)
    assert seen.offsets.tolist() == [0, 1, 1, 3, 3]
    assert seen.columns.tolist() == [1, 3, 5]
    rows, columns = seen.block(1, 4)
    assert rows.tolist() == [1, 1] and columns.tolist() == [3, 5]


def test_sampled_validation_users_are_seeded_and_complete():
    towers, test, items, seen = _random_case(3)
    full = evaluation_set(test, items, seen)
    sample = evaluation_set(test, items, seen, max_users=20, seed=5)
    again = evaluation_set(test, items, seen, max_users=20, seed=5)
    other = evaluation_set(test, items, seen, max_users=20, seed=6)
    assert len(sample.users) == 20 and set(sample.users) < set(full.users)
    np.testing.assert_array_equal(sample.users, again.users)
    assert not np.array_equal(sample.users, other.users)
    # Every test interaction of a sampled user is kept, and only those.
    kept = np.isin(test.user_id, sample.users)
    assert len(sample.test_users) == kept.sum()
    # The sample equals evaluating exactly those users' interactions.
    subset = Interactions(test.user_id[kept], test.item_id[kept])
    want = evaluate_model(towers, subset, items, [5], seen)
    assert evaluate_set(towers, sample, [5]) == want
    # max_users = 0 or >= the number of users keeps everyone.
    assert len(evaluation_set(test, items, None, max_users=0).users) == len(full.users)
    assert len(evaluation_set(test, items, None, max_users=10**6).users) == len(full.users)


def test_validation_callback_logs_the_sample_every_epoch():
    towers, test, items, seen = _random_case(4)
    callback = ValidationRecall(test, items, [10], seen=seen, max_users=15, seed=1)
    callback.set_model(towers)
    logs: dict = {}
    callback.on_epoch_end(0, logs)
    sample = evaluation_set(test, items, seen, max_users=15, seed=1)
    kept = np.isin(test.user_id, sample.users)
    want = evaluate_model(towers, Interactions(test.user_id[kept], test.item_id[kept]),
                          items, [10], seen)
    assert logs == {"val_recall_at_10": want["recall@10"], "val_ndcg_at_10": want["ndcg@10"]}


def test_validation_users_is_a_validated_config_key():
    from training.config import load_config
    from training.errors import InputError

    assert load_config(None).evaluation.validation_users == 10_000
    assert load_config(None, ["evaluation.validation_users=0"]).evaluation.validation_users == 0
    with pytest.raises(InputError, match="evaluation.validation_users must be >= 0"):
        load_config(None, ["evaluation.validation_users=-1"])


def test_score_blocks_are_capped_and_the_cap_changes_no_metric(monkeypatch):
    from training import evaluation

    assert evaluation.block_rows(1024, 300) == 1024
    assert evaluation.block_rows(1024, 100_000) == (1 << 24) // 100_000
    assert evaluation.block_rows(8, 10**9) == 1
    rng = np.random.default_rng(3)
    users, items = rng.normal(size=(40, 6)), rng.normal(size=(50, 6))
    test_users, test_items = rng.integers(0, 40, 120), rng.integers(0, 50, 120)
    seen = [rng.choice(50, 4, replace=False) for _ in range(40)]
    whole = evaluate_embeddings(users, items, test_users, test_items, [1, 5, 10], seen=seen)
    scores, indices = exact_top_k(users, items, k=7)
    monkeypatch.setattr(evaluation, "MAX_BLOCK_SCORES", 3 * 50)  # 3 users per block
    assert evaluation.block_rows(1024, 50) == 3
    assert evaluate_embeddings(users, items, test_users, test_items, [1, 5, 10], seen=seen) == whole
    capped_scores, capped_indices = exact_top_k(users, items, k=7)
    np.testing.assert_array_equal(capped_indices, indices)
    np.testing.assert_allclose(capped_scores, scores, rtol=1e-6)
