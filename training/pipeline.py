"""tf.data input pipelines and the item-frequency table used for logQ correction.

Data order contract (what makes ``--resume`` equal to an uninterrupted run): the
training job builds one dataset per epoch with ``seed=epoch_seed(training.seed, e)``,
and a dataset's order depends on that seed alone, never on how many epochs ran before
it in the process. A streaming pipeline keeps the property by seeding its shard order
and its bounded shuffle buffer with the same per-epoch seed (``deterministic=True``
interleave).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from training.indexing import catalog_index
from training.schema import Interactions


def item_probabilities(train: Interactions, items: np.ndarray) -> np.ndarray:
    """Each catalog item's share of training interactions, ``(len(items),)`` float32.

    This is the probability that an item appears as an in-batch negative, the ``q`` of
    the logQ (sampled softmax) correction. Items never seen in training get the
    smallest non-zero share so ``log q`` stays finite.
    """
    columns = catalog_index(items, train.item_id)
    counts = np.bincount(columns[columns >= 0], minlength=len(items)).astype(np.float64)
    counts = np.where(counts > 0, counts, 0.5)
    return (counts / counts.sum()).astype(np.float32)


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of epoch ``epoch`` (0-based) of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def probability_column(item_probability: dict[str, float], item_ids: np.ndarray) -> np.ndarray:
    """Each row's item share, ``(len(item_ids),)`` float32; an item missing from
    ``item_probability`` gets its smallest share. O(items + rows log items), no Python
    loop over rows."""
    ids = np.array(list(item_probability), dtype=str)
    shares = np.fromiter(item_probability.values(), dtype=np.float64, count=len(ids))
    columns = catalog_index(ids, item_ids)
    return np.where(columns >= 0, shares[columns], shares.min()).astype(np.float32)


def make_training_dataset(
    train: Interactions,
    batch_size: int,
    item_probability: dict[str, float] | None = None,
    seed: int = 0,
    shuffle: bool = True,
) -> tf.data.Dataset:
    """One epoch of shuffled batches of ``{"user_id", "item_id"[, "weight"][, "item_probability"]}``.

    Each feature is ``(batch,)``. The order is a function of ``seed`` only: iterating
    the dataset again repeats it (build the next epoch with ``epoch_seed``).
    ``item_probability`` maps item ids to their sampling share (logQ).
    """
    features: dict[str, np.ndarray] = {"user_id": train.user_id, "item_id": train.item_id}
    if train.weight is not None:
        features["weight"] = train.weight.astype(np.float32)
    if item_probability is not None:
        features["item_probability"] = probability_column(item_probability, train.item_id)
    dataset = tf.data.Dataset.from_tensor_slices(features)
    if shuffle:
        dataset = dataset.shuffle(len(train), seed=seed, reshuffle_each_iteration=False)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
