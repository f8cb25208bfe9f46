"""The in-graph top-K search of an export: brute force (stock ops) or a serialized ScaNN index.

A searcher answers ``search(queries (b, d), k) -> (rows (b, m), valid (b, m))``: catalog
rows (int64, ``m <= k`` when fewer were found) and which of them are real. ``rescore_top_k``
then scores the candidates exactly and orders them, so both kinds answer with the exact
similarity of what they return. Brute force costs O(b * n * d) per call; ScaNN what its
plan searches (``export.index``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from export.index import PreparedIndex

PADDING_SCORE = float(np.finfo(np.float32).min)  # score of a slot with no item


class BruteForceSearcher:
    """Exact top-K with stock TensorFlow ops (MatMul + TopKV2): stock TF Serving runs it."""

    def __init__(self, owner: tf.Module, name: str, vectors: np.ndarray):
        self.vectors = tf.Variable(vectors, trainable=False, name=name)
        setattr(owner, name, self.vectors)  # tracked, so the SavedModel holds it

    def search(self, queries: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        scores = tf.linalg.matmul(queries, self.vectors, transpose_b=True)
        _, indices = tf.math.top_k(scores, k=k)
        indices = tf.cast(indices, tf.int64)
        return indices, tf.ones_like(indices, dtype=tf.bool)


class ScannSearcher:
    """A ScaNN searcher serialized into the SavedModel (``Scann>`` ops).

    The searcher resource is recreated from the saved tensors under a shared name unique
    to this index. ``ScannState.recreate_handle`` (what TFRS's ScaNN layer uses) leaves
    it empty, and then every ScaNN index in a process resolves to the same resource name
    (the node name): a second index in the same model, or a second model version loaded
    beside the first, would silently search the first one's data.
    """

    def __init__(self, owner: tf.Module, name: str, prepared: PreparedIndex):
        self.state = prepared.searcher.serialize_to_module()
        setattr(owner, name, self.state)
        self.plan = prepared.plan
        self.shared_name = f"tfrs_cosine/{name}/{uuid.uuid4().hex}"

    def search(self, queries: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        from scann.scann_ops.py import scann_ops

        s = self.state
        handle = scann_ops.tensors_to_scann(
            s.dataset, s.scann_config, s.serialized_partitioner, s.datapoint_to_token,
            s.ah_codebook, s.hashed_dataset, s.int8_dataset, s.int8_multipliers, s.dp_norms,
            shared_name=self.shared_name,
        )
        indices, distances = scann_ops.ScannSearcher(handle).search_batched_parallel(
            queries, **self.plan.search_parameters(k)
        )
        # ScaNN pads with index 0 and a NaN distance when it finds fewer than k.
        return tf.cast(indices, tf.int64), tf.math.is_finite(distances)


def make_searcher(owner: tf.Module, name: str, prepared: PreparedIndex):
    """The graph-side searcher of ``prepared``, its tensors tracked on ``owner.NAME``."""
    if prepared.kind == "brute-force":
        return BruteForceSearcher(owner, name, prepared.vectors)
    return ScannSearcher(owner, name, prepared)


def rescore_top_k(
    queries: tf.Tensor,
    indices: tf.Tensor,
    valid: tf.Tensor,
    vectors_of: Callable[[tf.Tensor], tf.Tensor],
    k: int,
    exclude: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The best ``k`` of the candidates, rescored exactly and ordered.

    Args:
      queries: ``(b, d)`` prepared queries.
      indices: ``(b, m)`` candidate catalog rows; ``valid`` ``(b, m)`` marks real ones.
      vectors_of: catalog rows ``(b, m)`` -> prepared vectors ``(b, m, d)``.
      exclude: ``(b,)`` a catalog row to drop from each row's candidates (or -1).

    Returns:
      ``indices (b, k)`` int64 (-1 for padding), ``scores (b, k)`` float32
      (``PADDING_SCORE`` for padding), ``valid (b, k)``.
    """
    if exclude is not None:
        valid = valid & tf.not_equal(indices, exclude[:, tf.newaxis])
    shortfall = tf.maximum(k - tf.shape(indices)[1], 0)
    indices = tf.pad(indices, [[0, 0], [0, shortfall]], constant_values=-1)
    valid = tf.pad(valid, [[0, 0], [0, shortfall]], constant_values=False)
    safe = tf.where(valid, indices, tf.zeros_like(indices))
    scores = tf.einsum("bd,bmd->bm", queries, vectors_of(safe))
    scores = tf.where(valid, scores, tf.fill(tf.shape(scores), PADDING_SCORE))
    top_scores, position = tf.math.top_k(scores, k=k)
    top_valid = tf.gather(valid, position, batch_dims=1)
    top_indices = tf.where(top_valid, tf.gather(indices, position, batch_dims=1), -1)
    return top_indices, top_scores, top_valid
