"""Offline evaluation: exact top-K over the full catalog, chunked batched matmul.

Metrics, for ``ks = [k1, ..., kmax]``:

* per user (averaged over test users), optionally excluding each user's training items
  from the ranking: ``recall@K`` = relevant items in the top K / relevant items;
  ``ndcg@K`` with binary relevance; ``hit_rate@K`` = share of users with a relevant
  item in the top K; ``mrr`` = mean reciprocal rank of the first relevant item within
  the top ``kmax`` (0 beyond);
* per test interaction, never excluding anything: ``top_K_categorical_accuracy``, the
  definition of ``tfrs.metrics.FactorizedTopK``: the positive item is among the top K
  of the catalog (fewer than K items score higher). This equals FactorizedTopK
  with candidate ids exactly; its score-based mode recomputes the positive's score with
  a row-wise sum whose rounding can flip a positive sitting exactly at rank K.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from training.schema import Interactions


def exact_top_k(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    chunk_size: int = 1024,
    exclude: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-K by inner product.

    Args:
      queries: ``(b, d)`` prepared query vectors.
      candidates: ``(n, d)`` prepared candidate vectors.
      k: how many to return (capped at ``n``).
      chunk_size: queries scored per matmul, bounding memory at ``chunk_size * n`` floats.
      exclude: optional per-query arrays of candidate indices to leave out.

    Returns:
      ``scores (b, k)`` float32 and ``indices (b, k)`` int64, best first.
    """
    queries = tf.convert_to_tensor(queries, tf.float32)
    candidates = tf.convert_to_tensor(candidates, tf.float32)
    k = min(int(k), int(candidates.shape[0]))
    scores, indices = [np.zeros((0, k), np.float32)], [np.zeros((0, k), np.int64)]
    for start in range(0, int(queries.shape[0]), chunk_size):
        block = tf.linalg.matmul(queries[start : start + chunk_size], candidates, transpose_b=True)
        block = block.numpy()
        if exclude is not None:
            _exclude(block, exclude[start : start + chunk_size])
        top = _top_k_indices(block, k)
        scores.append(np.take_along_axis(block, top, axis=1))
        indices.append(top)
    return np.concatenate(scores), np.concatenate(indices)


def _exclude(block: np.ndarray, rows: list[np.ndarray]) -> None:
    """Sets ``block[r, rows[r]]`` to -inf, in place."""
    for r, columns in enumerate(rows):
        block[r, columns] = -np.inf


def _top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest entries of each row, best first.

    ``argpartition`` + sorting the k survivors: on CPU about 5x faster than
    ``tf.math.top_k`` for k = 100 over a 1,000-item catalog.
    """
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def evaluate_embeddings(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    test_users: np.ndarray,
    test_items: np.ndarray,
    ks: list[int],
    seen: list[np.ndarray] | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Metrics from prepared vectors (rank by inner product).

    Args:
      user_vectors: ``(u, d)`` one row per evaluated user.
      item_vectors: ``(n, d)`` the catalog.
      test_users: ``(t,)`` row of ``user_vectors`` for each test interaction.
      test_items: ``(t,)`` catalog index of each test interaction's item; -1 for an item
        outside the catalog (always a miss).
      ks: cutoffs.
      seen: optional per-user arrays of catalog indices excluded from the per-user ranking.
    """
    ks = sorted(set(int(k) for k in ks))
    n_items = item_vectors.shape[0]
    k_max = min(ks[-1], n_items)
    candidates = tf.convert_to_tensor(item_vectors, tf.float32)
    queries = tf.convert_to_tensor(user_vectors, tf.float32)
    # Distinct test items per user; an item outside the catalog still counts as relevant.
    pairs = np.unique(np.stack([test_users, test_items]), axis=1)
    num_relevant = np.bincount(pairs[0], minlength=len(user_vectors)).astype(np.float64)

    # Rank of each test interaction's item (capped at k_max), for FactorizedTopK's accuracy.
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
        # Items scoring above the positive, counted among the best k_max only: enough to
        # decide "in the top K" for every K <= k_max.
        best = -np.sort(-np.partition(block, n_items - k_max, axis=1)[:, n_items - k_max :])
        positive_rank[rows] = (best[local] > positive[:, None]).sum(axis=1)
        if seen is not None:
            _exclude(block, seen[start:stop])
        top = _top_k_indices(block, k_max)
        # A hit is a (user, item) key of the top-K that is also a test key.
        keys = (np.arange(start, stop)[:, None] * n_items + top).ravel()
        wanted = test_users[rows].astype(np.int64) * n_items + test_items[rows]
        hits[start:stop] = np.isin(keys, wanted).reshape(top.shape)

    metrics: dict[str, float] = {}
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


def embed(
    tower: tf.keras.layers.Layer,
    ids: np.ndarray,
    batch_size: int = 8192,
    inputs: Callable[[np.ndarray], dict] | None = None,
) -> tf.Tensor:
    """Tower outputs for ``ids`` in batches: ``(len(ids),)`` -> ``(len(ids), d)`` float32.

    ``inputs`` maps a chunk of ids to a feature tower's inputs (``training.feature_data``);
    without it the tower gets the ids.
    """
    parts = [
        tf.cast(tower(inputs(chunk) if inputs else tf.constant(chunk)), tf.float32)
        for chunk in (ids[start : start + batch_size] for start in range(0, len(ids), batch_size))
    ]
    return tf.concat(parts, axis=0)


def evaluate_model(
    model,
    test: Interactions,
    items: np.ndarray,
    ks: list[int],
    seen: Interactions | None = None,
    chunk_size: int = 1024,
    query_inputs: Callable[[np.ndarray], dict] | None = None,
    item_inputs: Callable[[np.ndarray], dict] | None = None,
) -> dict[str, float]:
    """Evaluates a ``TwoTowerModel`` on ``test`` against the whole catalog ``items``.

    Items are ranked by the head's similarity (the temperature does not change a
    ranking). ``seen`` (usually the training interactions) is excluded from the
    per-user metrics when given. A feature model's towers get their inputs from
    ``query_inputs(user_ids)`` (features and history as of the split's start) and
    ``item_inputs(item_ids)`` (``training.feature_data.FeatureData``).
    """
    if len(test) == 0:
        return {}
    users, test_users = np.unique(test.user_id, return_inverse=True)
    item_index = {item: k for k, item in enumerate(items.tolist())}
    test_items = np.array([item_index.get(i, -1) for i in test.item_id.tolist()], np.int64)
    excluded = None
    if seen is not None:
        user_row = {u: k for k, u in enumerate(users.tolist())}
        buckets: list[list[int]] = [[] for _ in users]
        for u, i in zip(seen.user_id.tolist(), seen.item_id.tolist(), strict=True):
            row, column = user_row.get(u), item_index.get(i)
            if row is not None and column is not None:
                buckets[row].append(column)
        excluded = [np.unique(np.array(b, dtype=np.int64)) for b in buckets]
    head = model.head
    user_vectors = head.normalize(embed(model.user_tower, users, inputs=query_inputs)).numpy()
    item_vectors = head.normalize(embed(model.item_tower, items, inputs=item_inputs)).numpy()
    return evaluate_embeddings(
        user_vectors, item_vectors, test_users, test_items, ks, excluded, chunk_size
    )


class ValidationRecall(tf.keras.callbacks.Callback):
    """Evaluates on the validation split after each epoch and logs ``val_recall_at_K``,
    ``val_ndcg_at_K``, so ``EarlyStopping`` and TensorBoard can watch them. ``features``
    (a ``training.feature_data.FeatureData``) gives a feature model's towers their inputs."""

    def __init__(self, validation, items, ks, seen=None, chunk_size=1024, features=None):
        super().__init__()
        self.validation, self.items, self.ks = validation, items, ks
        self.seen, self.chunk_size = seen, chunk_size
        self.inputs = {} if features is None else {
            "query_inputs": features.query_inputs("validation"),
            "item_inputs": features.item_inputs(),
        }

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = evaluate_model(
            self.model, self.validation, self.items, self.ks, self.seen, self.chunk_size,
            **self.inputs,
        )
        if logs is not None:
            for k in self.ks:
                logs[f"val_recall_at_{k}"] = metrics[f"recall@{k}"]
                logs[f"val_ndcg_at_{k}"] = metrics[f"ndcg@{k}"]
