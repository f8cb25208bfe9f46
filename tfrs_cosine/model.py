"""The two-tower retrieval model: user tower, item tower, scoring head, TFRS retrieval task."""

from __future__ import annotations

import tensorflow as tf

from tfrs_cosine import _keras  # noqa: F401  (binds Keras 2, which TFRS checks at import)

# isort: split
import tensorflow_recommenders as tfrs

from tfrs_cosine.heads import ScoringHead, l2_normalize
from tfrs_cosine.towers import FeatureTower, IdTower, tower_inputs


def uniformity(x: tf.Tensor, t: float = 2.0) -> tf.Tensor:
    """Wang & Isola (2020)'s uniformity of ``x (b, d)`` on the unit sphere, a scalar:
    ``log mean_{i != j} exp(-t |x_i - x_j|^2)`` of the L2-normalized rows. Lower is more
    uniform; it is near 0 when every vector points the same way (a cone). ``O(b^2 d)``."""
    z = l2_normalize(x)
    squared = tf.maximum(2.0 - 2.0 * tf.linalg.matmul(z, z, transpose_b=True), 0.0)
    b = tf.shape(z)[0]
    off_diagonal = tf.logical_not(tf.eye(b, dtype=tf.bool))
    values = tf.boolean_mask(-t * squared, off_diagonal)
    count = tf.cast(b * (b - 1), tf.float32)
    return tf.reduce_logsumexp(values) - tf.math.log(count)


class TwoTowerModel(tfrs.Model):
    """Two towers scored by a head and trained with ``tfrs.tasks.Retrieval``.

    The in-batch softmax loss sees ``head(u, i)`` for every user and item of a batch,
    passed to the task as ``head.prepare_query(u)`` and ``head.prepare_candidate(i)``
    (their matmul is the head's score, temperature included). No factorized top-K
    metric is computed while training: it would idle the accelerator (TFRS #178,
    #474); offline evaluation does exact full-catalog top-K instead.

    Features (a dict of ``(b,)`` tensors): ``user_id`` and ``item_id`` strings, an
    optional ``weight`` (sample weight), and ``item_probability`` (the item's share
    of training interactions) when ``logq_correction`` is on. A ``FeatureTower``
    reads its ``input_names`` from the same dict instead of the id (query side: user
    features, context, history; candidate side: item features); ``item_id`` stays
    required with ``remove_accidental_hits``.

    Args:
      user_tower, item_tower: ``IdTower``s or ``FeatureTower``s with the same output width.
      head: a ``ScoringHead``.
      remove_accidental_hits: mask in-batch negatives that are the positive item.
      logq_correction: subtract ``log(item_probability)`` from each candidate's logit
        (sampled-softmax correction for popularity-biased in-batch negatives).
      num_hard_negatives: keep only the hardest N in-batch negatives per row (None: all).
      uniformity_weight: add this times the mean ``uniformity`` of the batch's user and
        item embeddings, per example (times the batch size, as the retrieval loss is a
        sum over the batch), to the loss (Wang & Isola 2020): it spreads the embeddings
        over the sphere the cosine head compares them on; 0 (default) adds nothing.
    """

    def __init__(
        self,
        user_tower: IdTower | FeatureTower,
        item_tower: IdTower | FeatureTower,
        head: ScoringHead,
        remove_accidental_hits: bool = False,
        logq_correction: bool = False,
        num_hard_negatives: int | None = None,
        uniformity_weight: float = 0.0,
    ):
        super().__init__()
        if user_tower.output_dim != item_tower.output_dim:
            raise ValueError(
                f"tower outputs differ: user {user_tower.output_dim}, item {item_tower.output_dim}"
            )
        if num_hard_negatives is not None and num_hard_negatives < 1:
            raise ValueError(f"num_hard_negatives must be >= 1 or None, got {num_hard_negatives}")
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.head = head
        self.remove_accidental_hits = remove_accidental_hits
        self.logq_correction = logq_correction
        self.num_hard_negatives = num_hard_negatives
        if uniformity_weight < 0:
            raise ValueError(f"uniformity_weight must be >= 0, got {uniformity_weight}")
        self.uniformity_weight = float(uniformity_weight)
        self.task = tfrs.tasks.Retrieval(
            metrics=None,
            batch_metrics=None,
            remove_accidental_hits=remove_accidental_hits,
            num_hard_negatives=num_hard_negatives,
        )
        # Logits and loss stay float32 under a mixed_float16 policy: Retrieval takes no
        # dtype argument, and would otherwise autocast the query side to float16.
        self.task._set_dtype_policy("float32")

    def call(self, features: dict[str, tf.Tensor], training=None) -> tuple[tf.Tensor, tf.Tensor]:
        """Tower outputs ``(b, d)``: of ``features['user_id']`` and ``features['item_id']``,
        or of the features a ``FeatureTower`` reads."""
        return (
            self.user_tower(tower_inputs(self.user_tower, features, "user_id"), training=training),
            self.item_tower(tower_inputs(self.item_tower, features, "item_id"), training=training),
        )

    def score(self, user_ids: tf.Tensor | dict, item_ids: tf.Tensor | dict) -> tf.Tensor:
        """Scores ``(b, n)`` of users ``(b,)`` against items ``(n,)`` (for a ``FeatureTower``:
        a dict of its raw features instead of the ids)."""
        return self.head(self.user_tower(user_ids), self.item_tower(item_ids))

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        users, items = self(features, training=training)
        kwargs = {}
        if "weight" in features:
            kwargs["sample_weight"] = features["weight"]
        if self.logq_correction:
            kwargs["candidate_sampling_probability"] = features["item_probability"]
        if self.remove_accidental_hits:
            kwargs["candidate_ids"] = features["item_id"]
        loss = self.task(
            self.head.prepare_query(users),
            self.head.prepare_candidate(items),
            compute_metrics=False,
            compute_batch_metrics=False,
            **kwargs,
        )
        if self.uniformity_weight > 0:
            spread = 0.5 * (uniformity(users) + uniformity(items))
            examples = tf.cast(tf.shape(users)[0], tf.float32)
            loss = loss + self.uniformity_weight * examples * spread
        return loss
