"""The in-graph top-K search of an export: brute force (stock ops) or a serialized ScaNN index.

A searcher answers ``search(queries (b, d), k) -> (rows (b, m), scores (b, m), valid (b, m))``:
catalog rows (int64), its scores for them, and which of them are real. ``top_k_of`` turns
that into the signature's answer, the exact similarity of what it returns, in order:

* an ``exact`` searcher (brute force, or a ScaNN plan that scores every item in float32)
  has already scored and ordered every item exactly, so its candidates are only cut to
  ``k`` (after dropping excluded rows): a running count and gathers, no rescoring, no
  second top-k;
* any other ScaNN plan is rescored exactly and ordered again (``rescore_top_k``):
  O(b * m * d) for the rescoring and a top-k over ``m`` candidates.

Brute force costs O(b * n * d) per call; ScaNN what its plan searches (``export.index``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from export.index import PreparedIndex
from export.recall import PADDING_SCORE


class BruteForceSearcher:
    """Exact top-K with stock TensorFlow ops (MatMul + TopKV2): stock TF Serving runs it."""

    exact = True  # its scores are the similarity, its order the final one

    def __init__(self, owner: tf.Module, name: str, vectors: np.ndarray):
        self.vectors = tf.Variable(vectors, trainable=False, name=name)
        setattr(owner, name, self.vectors)  # tracked, so the SavedModel holds it

    def search(self, queries: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        scores = tf.linalg.matmul(queries, self.vectors, transpose_b=True)
        top_scores, indices = tf.math.top_k(scores, k=k)
        indices = tf.cast(indices, tf.int64)
        return indices, top_scores, tf.ones_like(indices, dtype=tf.bool)


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
        # Brute-force ScaNN scores every item in float32 and returns them best first.
        self.exact = prepared.plan.exact
        self.shared_name = f"tfrs_cosine/{name}/{uuid.uuid4().hex}"

    def search(self, queries: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        from scann.scann_ops.py import scann_ops

        s = self.state
        handle = scann_ops.tensors_to_scann(
            s.dataset, s.scann_config, s.serialized_partitioner, s.datapoint_to_token,
            s.ah_codebook, s.hashed_dataset, s.int8_dataset, s.int8_multipliers, s.dp_norms,
            shared_name=self.shared_name,
        )
        indices, distances = scann_ops.ScannSearcher(handle).search_batched_parallel(
            queries, **self._parameters(k)
        )
        # ScaNN pads with index 0 and a NaN distance when it finds fewer than k; with
        # "dot_product" its distances are the dot products themselves, best first.
        return tf.cast(indices, tf.int64), distances, tf.math.is_finite(distances)


    def _parameters(self, k) -> dict:
        """The plan's search parameters for ``k``: a Python int, or a scalar int32 tensor
        (a request-dependent K + exclusions; the ScaNN op takes tensors)."""
        if isinstance(k, int):
            return self.plan.search_parameters(k)
        plan = self.plan
        return {
            "final_num_neighbors": k,
            "pre_reorder_num_neighbors": tf.maximum(k, plan.reorder) if plan.reorder else -1,
            "leaves_to_search": plan.leaves_to_search if plan.num_leaves else -1,
        }


def make_searcher(owner: tf.Module, name: str, prepared: PreparedIndex):
    """The graph-side searcher of ``prepared``, its tensors tracked on ``owner.NAME``."""
    if prepared.kind == "brute-force":
        return BruteForceSearcher(owner, name, prepared.vectors)
    return ScannSearcher(owner, name, prepared)


def top_k_of(
    searcher: BruteForceSearcher | ScannSearcher,
    queries: tf.Tensor,
    k: int,
    vectors_of: Callable[[tf.Tensor], tf.Tensor],
    search_k: int | None = None,
    exclude: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The best ``k`` catalog rows for ``queries (b, d)`` with their exact similarity, ordered.

    Args:
      searcher: searched for ``search_k`` (default ``k``) candidates; ``search_k`` must be
        at least ``k``.
      vectors_of: catalog rows ``(b, m)`` -> prepared vectors ``(b, m, d)``; used only to
        rescore the candidates of a searcher that is not ``exact``.
      exclude: ``(b,)`` a catalog row to drop from each row's candidates (or -1), or
        ``(b, E)`` rows (-1 pads).

    Returns:
      what ``rescore_top_k`` returns.
    """
    indices, scores, valid = searcher.search(queries, k if search_k is None else search_k)
    if searcher.exact:
        return cut_top_k(indices, scores, valid, k, exclude)
    return rescore_top_k(queries, indices, valid, vectors_of, k, exclude)


def cut_top_k(
    indices: tf.Tensor,
    scores: tf.Tensor,
    valid: tf.Tensor,
    k: int,
    exclude: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The first ``k`` of candidates already scored exactly and ordered, less ``exclude``.

    Args:
      indices, scores, valid: ``(b, m)`` candidates, best first.
      exclude: ``(b,)`` a catalog row to drop from each row (or -1), or ``(b, E)`` rows
        (-1 pads; ``is_member``).

    Returns:
      what ``rescore_top_k`` returns. Cost: O(b m) for a running count of the kept
      candidates and O(b k log m) to find the j-th kept one; no sort, no arithmetic on
      vectors.
    """
    kept = valid if exclude is None else valid & ~is_member(indices, exclude)
    # One padding column, where a place with no kept candidate left points.
    indices = tf.pad(indices, [[0, 0], [0, 1]], constant_values=-1)
    scores = tf.pad(scores, [[0, 0], [0, 1]], constant_values=PADDING_SCORE)
    kept = tf.pad(kept, [[0, 0], [0, 1]], constant_values=False)
    counts = tf.cumsum(tf.cast(kept, tf.int32), axis=1)  # (b, m + 1), non-decreasing
    places = tf.broadcast_to(tf.range(1, k + 1)[tf.newaxis, :], [tf.shape(counts)[0], k])
    # Place j takes the first candidate with j + 1 kept ones up to it: the (j + 1)-th kept.
    source = tf.minimum(tf.searchsorted(counts, places, side="left"), tf.shape(counts)[1] - 1)
    indices, scores, valid = (tf.gather(x, source, batch_dims=1) for x in (indices, scores, kept))
    return (
        tf.where(valid, indices, -1),
        tf.where(valid, scores, tf.fill(tf.shape(scores), PADDING_SCORE)),
        valid,
    )


def is_member(values: tf.Tensor, sets: tf.Tensor) -> tf.Tensor:
    """Whether each of ``values (b, m)`` is in its row of ``sets (b,)`` or ``(b, E)``
    (int64; -1 pads); ``(b, m)`` bool."""
    if sets.shape.rank == 1:
        return tf.equal(values, sets[:, tf.newaxis])
    sentinel = tf.fill([tf.shape(sets)[0], 1], tf.constant(-2, sets.dtype))  # E >= 1
    ordered = tf.sort(tf.concat([sets, sentinel], axis=1), axis=1)
    position = tf.searchsorted(ordered, values, side="left")
    position = tf.minimum(position, tf.shape(ordered, out_type=position.dtype)[1] - 1)
    return tf.equal(tf.gather(ordered, position, batch_dims=1), values)


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
      exclude: ``(b,)`` a catalog row to drop from each row's candidates, or ``(b, E)``
        rows (-1 pads); membership by a sort and a binary search, O(b (E + m) log E).

    Returns:
      ``indices (b, k)`` int64 (-1 for padding), ``scores (b, k)`` float32
      (``PADDING_SCORE`` for padding), ``valid (b, k)``.
    """
    if exclude is not None:
        valid = valid & ~is_member(indices, exclude)
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
