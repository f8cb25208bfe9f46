"""Explanations of a user-item score: cosine, dot, norms and per-dimension contributions.

For user embedding ``u`` and item embedding ``i`` (tower outputs, before the head's
normalization) the cosine decomposes over dimensions::

    cos(u, i) = sum_d c_d,   c_d = u_d * i_d / (|u| |i|)

The explanation reports ``c_d`` for the ``top_m`` dimensions of largest ``|c_d|``.
Whether the cosine explains what the model ranks by depends on the head: for a
cosine head it does (``score = cos / T``); for a dot head it does not, and the cosine of
dot-trained embeddings can be arbitrary (Steck, Ekanadham & Kallus, 2024), which is why
``cosine_is_training_objective`` travels with every explanation.
"""

from __future__ import annotations

import tensorflow as tf

from tfrs_cosine import _keras  # noqa: F401  (binds Keras 2 before tf.keras is used)
from tfrs_cosine.heads import CosineHead, ScoringHead

_EPSILON = 1e-12


def explain(
    user_embeddings: tf.Tensor, item_embeddings: tf.Tensor, head: ScoringHead, top_m: int = 5
) -> dict[str, tf.Tensor]:
    """Explains the scores of ``n`` items for each of ``b`` users.

    Args:
      user_embeddings: ``(b, d)`` tower outputs.
      item_embeddings: ``(b, n, d)`` tower outputs.
      head: the model's scoring head.
      top_m: how many dimensions to report (capped at ``d``).

    Returns:
      ``cosine``, ``dot``, ``score`` ``(b, n)`` float32; ``user_norm`` ``(b,)``;
      ``item_norms`` ``(b, n)``; ``top_dimensions`` ``(b, n, m)`` int32 and
      ``contributions`` ``(b, n, m)`` float32, largest ``|contribution|`` first;
      ``cosine_is_training_objective`` a bool scalar.
    """
    if top_m < 1:
        raise ValueError(f"top_m must be >= 1, got {top_m}")
    u = tf.cast(user_embeddings, tf.float32)
    items = tf.cast(item_embeddings, tf.float32)
    user_norm = tf.norm(u, axis=-1)
    item_norms = tf.norm(items, axis=-1)
    products = u[:, tf.newaxis, :] * items  # (b, n, d)
    dot = tf.reduce_sum(products, axis=-1)
    denominator = tf.maximum(user_norm[:, tf.newaxis] * item_norms, _EPSILON)
    per_dimension = products / denominator[..., tf.newaxis]
    cosine = tf.reduce_sum(per_dimension, axis=-1)
    m = min(int(top_m), int(items.shape[-1]))
    _, top_dimensions = tf.math.top_k(tf.abs(per_dimension), k=m)
    contributions = tf.gather(per_dimension, top_dimensions, batch_dims=2)
    score = head(u[:, tf.newaxis, :], items)
    return {
        "cosine": cosine,
        "dot": dot,
        "score": score,
        "user_norm": user_norm,
        "item_norms": item_norms,
        "top_dimensions": tf.cast(top_dimensions, tf.int32),
        "contributions": contributions,
        "cosine_is_training_objective": tf.constant(isinstance(head, CosineHead)),
    }


class ExplanationLayer(tf.keras.layers.Layer):
    """Keras wrapper of ``explain`` for a fixed head and ``top_m``."""

    def __init__(self, head: ScoringHead, top_m: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.head = head
        self.top_m = int(top_m)

    def call(self, user_embeddings: tf.Tensor, item_embeddings: tf.Tensor) -> dict[str, tf.Tensor]:
        return explain(user_embeddings, item_embeddings, self.head, self.top_m)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(top_m=self.top_m, head=tf.keras.layers.serialize(self.head))
        return config

    @classmethod
    def from_config(cls, config: dict) -> ExplanationLayer:
        from tfrs_cosine.heads import HEADS

        config = dict(config)
        head_config = config.pop("head")
        head_cls = {c.__name__: c for c in HEADS.values()}[head_config["class_name"]]
        return cls(head=head_cls.from_config(head_config["config"]), **config)
