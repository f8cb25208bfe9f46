"""Feature encoders: one raw feature of a request -> a fixed-width vector, in the graph.

Each encoder is a Keras layer taking one raw feature as a request carries it (strings,
floats, int64 timestamps) and returning ``(b, width)``; a ``FeatureTower``
(``tfrs_cosine.towers``) concatenates them. Vocabularies, normalization statistics and
bucket boundaries are constructor arguments, measured on the training data by the
caller: nothing adapts at call time, so an exported graph is a pure function of the
raw values.

Raw input (``feature_spec``) -> output, per encoder:

* ``IdEncoder``, ``CategoricalEncoder``: ``(b,)`` string -> ``(b, d)``
* ``MultiCategoricalEncoder``: ``(b, L)`` string, ``""`` padding -> ``(b, d)``
* ``NumericEncoder``: ``(b,)`` float32 (any real or int) -> ``(b, 1)``, or ``(b, d + 1)``
  with buckets
* ``TimestampEncoder``: ``(b,)`` int64 seconds -> ``(b, d + 1)``
* ``TextEncoder``: ``(b,)`` string -> ``(b, d)``
* ``HistoryEncoder``: ``(b, N)`` item ids, ``""`` padding -> ``(b, d_item)``

Unknown values contribute nothing: a string outside a vocabulary embeds as zeros, and
list, text and history means skip it. A vocabulary taken from the training data never
sees an unknown value in training, so an out-of-vocabulary row would stay at its random
initial value; zeros leave a new user or item to its other features. (``IdTower`` keeps
its out-of-vocabulary row: id-only models are unchanged.) Row 0 of each vocabulary
table is that unused row, so row ``k + 1`` is vocabulary entry ``k`` as in ``IdTower``
(text: rows 0 and 1, padding and unknown tokens, then the vocabulary).
Cost: each encoder is a lookup and a gather per value, ``O(b * L * d)`` time; tables
hold ``rows * d`` floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import tensorflow as tf

from tfrs_cosine import _keras  # noqa: F401  (binds Keras 2 before tf.keras is used)

POOLINGS = ("mean", "gru", "attention")

register = tf.keras.utils.register_keras_serializable(package="tfrs_cosine")


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``values (b, n, d)`` over the positions where ``mask (b, n)`` is true.

    Returns ``(b, d)``; a row with no true position is zeros (never NaN).
    """
    weights = tf.cast(mask, values.dtype)[..., tf.newaxis]
    count = tf.reduce_sum(weights, axis=1)
    return tf.reduce_sum(values * weights, axis=1) / tf.maximum(count, 1)


def placeholder_features(specs: dict[str, tf.TensorSpec], batch_size: int = 1) -> dict:
    """Zeros or ``""`` shaped like ``specs`` (unknown dims as ``batch_size``, then 1).

    Enough to call a tower once so that it creates its variables.
    """
    out = {}
    for name, spec in specs.items():
        shape = [batch_size] + [1 if d is None else d for d in spec.shape[1:]]
        out[name] = (
            tf.fill(shape, "") if spec.dtype == tf.string else tf.zeros(shape, spec.dtype)
        )
    return out


def _check_dim(embedding_dim: int) -> int:
    if int(embedding_dim) < 1:
        raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
    return int(embedding_dim)


def _check_vocabulary(vocabulary: Sequence[str], padding_free: bool) -> list[str]:
    words = [str(v) for v in vocabulary]
    if not words:
        raise ValueError("vocabulary is empty")
    if padding_free and "" in words:
        raise ValueError('vocabulary holds "", which is the padding value here')
    if len(set(words)) != len(words):
        raise ValueError("vocabulary has duplicate entries")
    return words


@register
class CategoricalEncoder(tf.keras.layers.Layer):
    """One string per row ``(b,)`` -> its embedding ``(b, d)``.

    Exactly one of:
      vocabulary: the known values; unknown values embed as zeros.
      num_bins: hash every value into ``num_bins`` rows (``tf.keras.layers.Hashing``,
        FarmHash64, the same bins as ``tf.strings.to_hash_bucket_fast``): no vocabulary,
        no unknown values, collisions share a row.

    Args:
      embedding_dim: ``d``, the width of the table.
    """

    padding_free = False  # may "" be a vocabulary entry?

    def __init__(
        self,
        embedding_dim: int,
        vocabulary: Sequence[str] | None = None,
        num_bins: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (vocabulary is None) == (num_bins is None):
            raise ValueError("give exactly one of vocabulary and num_bins")
        self.embedding_dim = _check_dim(embedding_dim)
        self.vocabulary = (
            None if vocabulary is None else _check_vocabulary(vocabulary, self.padding_free)
        )
        self.num_bins = None if num_bins is None else int(num_bins)
        if self.num_bins is not None and self.num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        if self.vocabulary is not None:
            self.lookup = tf.keras.layers.StringLookup(
                vocabulary=self.vocabulary, mask_token=None, num_oov_indices=1, name="lookup"
            )
            rows = len(self.vocabulary) + 1
        else:
            self.lookup = tf.keras.layers.Hashing(num_bins=self.num_bins, name="lookup")
            rows = self.num_bins
        self.embedding = tf.keras.layers.Embedding(rows, self.embedding_dim, name="embedding")

    @property
    def output_dim(self) -> int:
        return self.embedding_dim

    @property
    def feature_spec(self) -> tf.TensorSpec:
        """The raw input a request carries."""
        return tf.TensorSpec([None], tf.string)

    def call(self, values: tf.Tensor) -> tf.Tensor:
        rows = self.lookup(values)
        embedded = self.embedding(rows)
        if self.vocabulary is None:
            return embedded
        return embedded * tf.cast(tf.not_equal(rows, 0), embedded.dtype)[..., tf.newaxis]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            embedding_dim=self.embedding_dim, vocabulary=self.vocabulary, num_bins=self.num_bins
        )
        return config


@register
class IdEncoder(CategoricalEncoder):
    """A user or item id ``(b,)`` string -> its embedding ``(b, d)``.

    A ``CategoricalEncoder`` over a vocabulary of ids: an unknown id (a new user, ``""``)
    embeds as zeros, where ``IdTower`` uses its out-of-vocabulary row. ``""`` cannot be
    an id: it is the padding of histories, which embed with this table. The layer
    names ``lookup`` and ``embedding`` are the ones ``IdTower`` uses.

    Args:
      vocabulary: the known ids.
      embedding_dim: ``d``.
    """

    padding_free = True

    def __init__(self, vocabulary: Sequence[str], embedding_dim: int, **kwargs):
        super().__init__(embedding_dim, vocabulary=vocabulary, **kwargs)

    def index(self, ids: tf.Tensor) -> tf.Tensor:
        """Table rows of ``ids`` (any shape, string) -> int64, same shape; 0: unknown."""
        return self.lookup(ids)

    def known(self, ids: tf.Tensor) -> tf.Tensor:
        """Whether each id is in the vocabulary: any shape string -> bool, same shape."""
        return tf.not_equal(self.lookup(ids), 0)

    def get_config(self) -> dict:
        config = super().get_config()
        del config["num_bins"]
        return config


@register
class MultiCategoricalEncoder(CategoricalEncoder):
    """A list of strings per row (e.g. genres) -> the mean of their embeddings ``(b, d)``.

    Input: ``(b, L)`` strings padded with ``""``, or a ``tf.RaggedTensor`` ``(b, None)``.
    The mean runs over the known entries (not ``""``, and in the vocabulary when there
    is one); a row with none is zeros. Same arguments as ``CategoricalEncoder``; ``""``
    cannot be a vocabulary entry.
    """

    padding_free = True

    @property
    def feature_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([None, None], tf.string)

    def call(self, values: tf.Tensor | tf.RaggedTensor) -> tf.Tensor:
        if isinstance(values, tf.RaggedTensor):
            values = values.to_tensor(default_value="")
        rows = self.lookup(values)
        known = tf.not_equal(values, "") if self.vocabulary is None else tf.not_equal(rows, 0)
        return masked_mean(self.embedding(rows), known)


@register
class NumericEncoder(tf.keras.layers.Layer):
    """A number per row ``(b,)`` -> its standardized value, optionally with a bucket embedding.

    ``z = (x - mean) / sqrt(variance)`` in float64 (a variance of 0 divides by 1), so
    large values such as Unix timestamps keep their precision. With ``boundaries``,
    ``x`` also falls in bucket ``i`` where ``boundaries[i-1] <= x < boundaries[i]``
    (``np.digitize``; ``len(boundaries) + 1`` buckets, values outside the training
    range land in the first or last), embedded in ``d`` dimensions. The output is
    ``[bucket embedding, z]``, ``(b, d + 1)``, or ``z`` alone, ``(b, 1)``: the layout of
    TFRS's context-features tutorial. NaN inputs are the caller's to avoid.

    Args:
      mean, variance: training-data statistics of the feature.
      boundaries: strictly increasing bucket boundaries (None: no buckets; an empty
        list: one bucket).
      embedding_dim: ``d``, needed with ``boundaries``.
    """

    def __init__(
        self,
        mean: float,
        variance: float,
        boundaries: Sequence[float] | None = None,
        embedding_dim: int | None = None,
        **kwargs,
    ):
        # Keras would cast a float input to float16 under a mixed policy before call();
        # the standardization needs the raw value.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.mean, self.variance = float(mean), float(variance)
        if not (math.isfinite(self.mean) and math.isfinite(self.variance)):
            raise ValueError(f"mean and variance must be finite, got {mean}, {variance}")
        if self.variance < 0:
            raise ValueError(f"variance must be >= 0, got {variance}")
        self.boundaries = None if boundaries is None else [float(b) for b in boundaries]
        if self.boundaries is not None:
            if any(not b < c for b, c in pairwise(self.boundaries)):
                raise ValueError("bucket boundaries must be strictly increasing")
            if embedding_dim is None:
                raise ValueError("bucket boundaries need an embedding_dim")
        self.embedding_dim = None if embedding_dim is None else _check_dim(embedding_dim)
        self.embedding = (
            None
            if self.boundaries is None
            else tf.keras.layers.Embedding(
                len(self.boundaries) + 1, self.embedding_dim, name="embedding"
            )
        )

    @property
    def output_dim(self) -> int:
        return 1 + (self.embedding_dim if self.embedding is not None else 0)

    @property
    def feature_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([None], tf.float32)

    def standardize(self, values: tf.Tensor) -> tf.Tensor:
        """``(b,)`` -> ``(b, 1)`` float32 standardized values."""
        scale = self.variance**0.5 if self.variance > 0 else 1.0
        z = (tf.cast(values, tf.float64) - self.mean) / scale
        return tf.cast(z, tf.float32)[:, tf.newaxis]

    def bucketize(self, values: tf.Tensor) -> tf.Tensor:
        """``(b,)`` -> ``(b,)`` int64 bucket indices in ``[0, len(boundaries)]``."""
        boundaries = tf.constant([self.boundaries], tf.float64)  # (1, n): one sorted row
        x = tf.cast(values, tf.float64)[tf.newaxis, :]  # (1, b): searched in that row
        return tf.searchsorted(boundaries, x, side="right", out_type=tf.int64)[0]

    def call(self, values: tf.Tensor) -> tf.Tensor:
        z = tf.cast(self.standardize(values), self.compute_dtype)
        if self.embedding is None:
            return z
        return tf.concat([self.embedding(self.bucketize(values)), z], axis=-1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            mean=self.mean,
            variance=self.variance,
            boundaries=self.boundaries,
            embedding_dim=self.embedding_dim,
        )
        return config


@register
class TimestampEncoder(NumericEncoder):
    """A request's Unix timestamp ``(b,)`` int64 seconds -> ``(b, d + 1)``.

    A ``NumericEncoder`` whose buckets are required: TFRS's context-features tutorial
    uses both the standardized value and an embedding of equal-width buckets over the
    training range (``np.linspace(min, max, 1000)``).
    """

    def __init__(
        self,
        mean: float,
        variance: float,
        boundaries: Sequence[float],
        embedding_dim: int,
        **kwargs,
    ):
        if boundaries is None or embedding_dim is None:
            raise ValueError("a timestamp needs bucket boundaries and an embedding_dim")
        super().__init__(mean, variance, boundaries, embedding_dim, **kwargs)

    @property
    def feature_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([None], tf.int64)


@register
class TextEncoder(tf.keras.layers.Layer):
    """A text per row ``(b,)`` string -> the mean of its token embeddings ``(b, d)``.

    Tokens: ``tf.keras.layers.TextVectorization`` with its defaults (ASCII lowercase,
    ASCII punctuation stripped, split on whitespace). The mean runs over the known
    tokens; a text with none is zeros.

    Args:
      vocabulary: the known tokens (standardized as above; ``""`` and ``"[UNK]"`` are
        reserved).
      embedding_dim: ``d``.
    """

    def __init__(self, vocabulary: Sequence[str], embedding_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary = _check_vocabulary(vocabulary, padding_free=True)
        self.embedding_dim = _check_dim(embedding_dim)
        self.vectorize = tf.keras.layers.TextVectorization(
            vocabulary=self.vocabulary, output_mode="int", name="vectorize"
        )
        # Row 0: padding, row 1: unknown tokens (both masked out), then the vocabulary.
        self.embedding = tf.keras.layers.Embedding(
            len(self.vocabulary) + 2, self.embedding_dim, name="embedding"
        )

    @property
    def output_dim(self) -> int:
        return self.embedding_dim

    @property
    def feature_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([None], tf.string)

    def tokens(self, texts: tf.Tensor) -> tf.Tensor:
        """``(b,)`` -> ``(b, T)`` int64 token rows (0: padding, 1: unknown), T = longest."""
        return self.vectorize(texts)

    def call(self, texts: tf.Tensor) -> tf.Tensor:
        tokens = self.tokens(texts)
        return masked_mean(self.embedding(tokens), tokens > 1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(vocabulary=self.vocabulary, embedding_dim=self.embedding_dim)
        return config


@register
class HistoryEncoder(tf.keras.layers.Layer):
    """A user's recent item ids ``(b, N)`` -> one vector ``(b, d_item)``, pooled.

    The items embed with the item tower's id table (``item_ids``, the same layer and
    weights: a gradient through a history updates the item rows). Padding ``""`` and
    ids unknown to that table are masked out; a history with no known item is zeros.

    Order: oldest first, most recent last, padding at the end (``""``). Mean pooling
    ignores the order; ``gru`` reads it (and on a GPU its fast kernel needs the
    padding at the end); ``attention`` weighs items by a learned score, softmax over the
    known ones.

    Args:
      item_ids: the item tower's ``IdEncoder``.
      length: ``N``, the number of most recent items a request carries (``feature_spec``;
        ``call`` accepts any length).
      pooling: ``mean`` (masked mean), ``gru`` (the last state of a GRU of width
        ``d_item`` over the known items, as TFRS's sequential retrieval tutorial) or
        ``attention``.
    """

    def __init__(self, item_ids: IdEncoder, length: int, pooling: str = "mean", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(item_ids, IdEncoder):
            raise ValueError(f"item_ids must be an IdEncoder, got {type(item_ids).__name__}")
        if int(length) < 1:
            raise ValueError(f"history length must be >= 1, got {length}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        self.item_ids = item_ids
        self.length = int(length)
        self.pooling = pooling
        d = item_ids.output_dim
        self.gru = tf.keras.layers.GRU(d, name="gru") if pooling == "gru" else None
        self.attention_score = (
            tf.keras.layers.Dense(1, use_bias=False, name="attention_score")
            if pooling == "attention"
            else None
        )

    @property
    def output_dim(self) -> int:
        return self.item_ids.output_dim

    @property
    def feature_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([None, self.length], tf.string)

    def call(self, history: tf.Tensor) -> tf.Tensor:
        rows = self.item_ids.index(history)
        mask = tf.not_equal(rows, 0)
        items = self.item_ids.embedding(rows)  # (b, N, d)
        if self.gru is not None:
            return self.gru(items, mask=mask)
        if self.attention_score is not None:
            scores = self.attention_score(items)[..., 0]  # (b, N)
            scores = tf.where(mask, scores, tf.cast(-1e4, scores.dtype))
            weights = tf.nn.softmax(scores, axis=-1) * tf.cast(mask, scores.dtype)
            return tf.reduce_sum(items * weights[..., tf.newaxis], axis=1)
        return masked_mean(items, mask)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            item_ids=tf.keras.layers.serialize(self.item_ids),
            length=self.length,
            pooling=self.pooling,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> HistoryEncoder:
        """Rebuilds with its own copy of the item id table: sharing it with an item tower
        is wiring done by the constructor's caller, not something a config can hold."""
        config = dict(config)
        config["item_ids"] = tf.keras.layers.deserialize(config["item_ids"])
        return cls(**config)
