"""tf.data input pipelines and the item-frequency table used for logQ correction."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from training.schema import Interactions


def item_probabilities(train: Interactions, items: np.ndarray) -> np.ndarray:
    """Each catalog item's share of training interactions, ``(len(items),)`` float32.

    This is the probability that an item appears as an in-batch negative, the ``q`` of
    the logQ (sampled softmax) correction. Items never seen in training get the
    smallest non-zero share so ``log q`` stays finite.
    """
    index = {item: k for k, item in enumerate(items.tolist())}
    counts = np.bincount(
        [index[i] for i in train.item_id.tolist() if i in index], minlength=len(items)
    ).astype(np.float64)
    counts = np.where(counts > 0, counts, 0.5)
    return (counts / counts.sum()).astype(np.float32)


def make_training_dataset(
    train: Interactions,
    batch_size: int,
    item_probability: dict[str, float] | None = None,
    seed: int = 0,
    shuffle: bool = True,
) -> tf.data.Dataset:
    """Shuffled batches of ``{"user_id", "item_id"[, "weight"][, "item_probability"]}``.

    Each feature is ``(batch,)``. The examples are cached in memory and reshuffled
    every epoch; ``item_probability`` maps item ids to their sampling share (logQ).
    """
    features: dict[str, np.ndarray] = {"user_id": train.user_id, "item_id": train.item_id}
    if train.weight is not None:
        features["weight"] = train.weight.astype(np.float32)
    if item_probability is not None:
        smallest = min(item_probability.values())
        features["item_probability"] = np.array(
            [item_probability.get(i, smallest) for i in train.item_id.tolist()], dtype=np.float32
        )
    dataset = tf.data.Dataset.from_tensor_slices(features).cache()
    if shuffle:
        dataset = dataset.shuffle(len(train), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
