"""Id towers: string id -> StringLookup -> Embedding -> optional Dense stack -> optional
LayerNorm -> optional mean centering."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

LAYER_NORM_EPSILON = 1e-6


class MeanCentering(tf.keras.layers.Layer):
    """Subtracts the mean tower output: ``(b, d) -> (b, d)``.

    Training (``training=True``): subtracts the batch mean, as batch normalization does
    (gradients flow through it), and folds it into a moving mean. Otherwise: subtracts
    the moving mean, bias-corrected like Adam's moments so that it is the average of
    the batches seen even after a few steps. The batch mean is over the training
    distribution (popular items weigh more), the distribution the loss sees.

    Why: a cosine head compares directions, and embeddings that share one large common
    direction sit in a narrow cone where every pair has a high cosine (anisotropy).
    Removing the mean before the head normalizes leaves only what tells items apart.
    The moving mean is part of the model, so serving and explanations use it too.
    """

    def __init__(self, momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)

    def build(self, input_shape):
        on_read = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN,
        )
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=(int(input_shape[-1]),), initializer="zeros", **on_read
        )
        self.steps = self.add_weight(name="steps", shape=(), initializer="zeros", **on_read)
        super().build(input_shape)

    def mean(self) -> tf.Tensor:
        """The bias-corrected moving mean ``(d,)`` (zeros before the first training step)."""
        correction = 1.0 - tf.pow(self.momentum, self.steps)
        return tf.math.divide_no_nan(self.moving_mean, correction)

    def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
        if training:
            batch_mean = tf.reduce_mean(tf.cast(x, tf.float32), axis=0)
            self.moving_mean.assign(
                self.momentum * self.moving_mean
                + (1.0 - self.momentum) * tf.stop_gradient(batch_mean)
            )
            self.steps.assign_add(1.0)
            return x - tf.cast(batch_mean, x.dtype)
        return x - tf.cast(self.mean(), x.dtype)

    def get_config(self) -> dict:
        return super().get_config() | {"momentum": self.momentum}


class IdTower(tf.keras.layers.Layer):
    """Maps string ids ``(b,)`` to embeddings ``(b, d)``.

    ``d`` is the last of ``hidden_layers`` or ``embedding_dim`` when there are none.
    Unknown ids map to one shared out-of-vocabulary row (index 0), which is trained
    like any other row only if unknown ids appear in training data.

    Args:
      vocabulary: the known ids.
      embedding_dim: width of the embedding table.
      hidden_layers: widths of Dense layers after the embedding; ReLU between them, the
        last one linear (its output is the embedding the head sees).
      layer_norm: apply ``LayerNormalization`` to the tower output.
      center: subtract the mean output last (``MeanCentering``), so a cosine head sees
        centred embeddings.
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        embedding_dim: int,
        hidden_layers: Sequence[int] = (),
        layer_norm: bool = False,
        center: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(embedding_dim) < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if any(int(w) < 1 for w in hidden_layers):
            raise ValueError(f"tower layer widths must be >= 1, got {list(hidden_layers)}")
        if len(vocabulary) == 0:
            raise ValueError("vocabulary is empty")
        self.vocabulary = [str(v) for v in vocabulary]
        self.embedding_dim = int(embedding_dim)
        self.hidden_layers = [int(w) for w in hidden_layers]
        self.layer_norm = bool(layer_norm)
        self.center = bool(center)

        self.lookup = tf.keras.layers.StringLookup(
            vocabulary=self.vocabulary, mask_token=None, num_oov_indices=1, name="lookup"
        )
        self.embedding = tf.keras.layers.Embedding(
            len(self.vocabulary) + 1, self.embedding_dim, name="embedding"
        )
        last = len(self.hidden_layers) - 1
        self.dense = [
            tf.keras.layers.Dense(w, activation=None if k == last else "relu", name=f"dense_{k}")
            for k, w in enumerate(self.hidden_layers)
        ]
        # Keras's default epsilon (1e-3) dominates the variance of freshly initialised
        # embeddings (~1e-4) and would shrink rather than standardise them.
        self.norm = (
            tf.keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="layer_norm")
            if self.layer_norm
            else None
        )
        self.centering = MeanCentering(name="centering") if self.center else None

    @property
    def output_dim(self) -> int:
        return self.hidden_layers[-1] if self.hidden_layers else self.embedding_dim

    def known(self, ids: tf.Tensor) -> tf.Tensor:
        """Whether each id is in the vocabulary: ``(b,)`` string -> ``(b,)`` bool."""
        return tf.not_equal(self.lookup(ids), 0)

    def call(self, ids: tf.Tensor, training=None) -> tf.Tensor:
        x = self.embedding(self.lookup(ids))
        for layer in self.dense:
            x = layer(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.centering is not None:
            x = self.centering(x, training=training)
        return x

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            vocabulary=self.vocabulary,
            embedding_dim=self.embedding_dim,
            hidden_layers=self.hidden_layers,
            layer_norm=self.layer_norm,
        )
        if self.center:
            config.update(center=True)
        return config
