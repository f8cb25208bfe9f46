"""Towers: inputs -> embedding -> optional Dense stack -> optional LayerNorm.

``IdTower``: a string id -> StringLookup -> Embedding (-> optional mean centering).
``FeatureTower``: a dict of raw features -> their encoders (``tfrs_cosine.features``),
concatenated. Both end in the same Dense stack and LayerNorm, built by ``dense_stack``
and ``output_norm``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

from tfrs_cosine import _keras  # noqa: F401  (binds Keras 2 before tf.keras is used)
from tfrs_cosine.features import IdEncoder, register

LAYER_NORM_EPSILON = 1e-6


def dense_stack(widths: Sequence[int]) -> list[tf.keras.layers.Dense]:
    """Dense layers of ``widths``: ReLU between them, the last one linear."""
    if any(int(w) < 1 for w in widths):
        raise ValueError(f"tower layer widths must be >= 1, got {list(widths)}")
    last = len(widths) - 1
    return [
        tf.keras.layers.Dense(int(w), activation=None if k == last else "relu", name=f"dense_{k}")
        for k, w in enumerate(widths)
    ]


def output_norm(layer_norm: bool) -> tf.keras.layers.LayerNormalization | None:
    """The LayerNormalization of a tower's output, or None."""
    # Keras's default epsilon (1e-3) dominates the variance of freshly initialised
    # embeddings (~1e-4) and would shrink rather than standardise them.
    if not layer_norm:
        return None
    return tf.keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="layer_norm")


def apply_stack(
    x: tf.Tensor,
    dense: Sequence[tf.keras.layers.Dense],
    norm: tf.keras.layers.LayerNormalization | None,
) -> tf.Tensor:
    """``(b, w)`` -> the Dense stack -> the optional norm -> ``(b, d)``."""
    for layer in dense:
        x = layer(x)
    return x if norm is None else norm(x)


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
        self.dense = dense_stack(self.hidden_layers)
        self.norm = output_norm(self.layer_norm)
        self.centering = MeanCentering(name="centering") if self.center else None

    @property
    def output_dim(self) -> int:
        return self.hidden_layers[-1] if self.hidden_layers else self.embedding_dim

    def known(self, ids: tf.Tensor) -> tf.Tensor:
        """Whether each id is in the vocabulary: ``(b,)`` string -> ``(b,)`` bool."""
        return tf.not_equal(self.lookup(ids), 0)

    def call(self, ids: tf.Tensor, training=None) -> tf.Tensor:
        x = apply_stack(self.embedding(self.lookup(ids)), self.dense, self.norm)
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


@register
class FeatureTower(tf.keras.layers.Layer):
    """Maps a dict of raw features to embeddings ``(b, d)``.

    Each encoder reads the input of its name (``feature_spec`` gives the shapes and
    dtypes: ``(b,)`` string ids and categories, ``(b, L)`` string lists, ``(b,)`` float32
    numbers, ``(b,)`` int64 timestamps, ``(b, N)`` string histories); their outputs are
    concatenated in the encoders' order, ``(b, sum of widths)``, then pass the Dense
    stack and optional LayerNorm exactly as in ``IdTower``. Inputs with other names are
    ignored, so a whole training batch may be passed. ``d`` is the last of
    ``hidden_layers``, or the concatenated width when there are none.

    ``FeatureTower({"user_id": IdEncoder(vocabulary, e)}, hidden_layers, layer_norm)``
    computes for known ids what ``IdTower(vocabulary, e, hidden_layers, layer_norm)``
    computes (an unknown id embeds as zeros here, as the out-of-vocabulary row there);
    its checkpoint names differ (``encoders/user_id/embedding`` for ``embedding``), so
    id-only models keep using ``IdTower``.

    Args:
      encoders: feature name -> encoder layer (``tfrs_cosine.features``); at least one.
      hidden_layers: widths of Dense layers after the concatenation; ReLU between
        them, the last one linear.
      layer_norm: apply ``LayerNormalization`` to the tower output.
    """

    def __init__(
        self,
        encoders: Mapping[str, tf.keras.layers.Layer],
        hidden_layers: Sequence[int] = (),
        layer_norm: bool = False,
        **kwargs,
    ):
        # The encoders cast what they need; Keras would cast float inputs to float16
        # under a mixed policy before they see them.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if not encoders:
            raise ValueError("a feature tower needs at least one feature")
        self.encoders = dict(encoders)
        self.hidden_layers = [int(w) for w in hidden_layers]
        self.layer_norm = bool(layer_norm)
        self.dense = dense_stack(self.hidden_layers)
        self.norm = output_norm(self.layer_norm)

    @property
    def input_names(self) -> list[str]:
        """The feature names this tower reads, in concatenation order."""
        return list(self.encoders)

    @property
    def feature_spec(self) -> dict[str, tf.TensorSpec]:
        """Name -> the ``tf.TensorSpec`` of the raw input (an export's signature)."""
        return {name: encoder.feature_spec for name, encoder in self.encoders.items()}

    @property
    def id_feature(self) -> str | None:
        """The name of the id feature (an ``IdEncoder``), None for an id-free tower."""
        names = [n for n, e in self.encoders.items() if type(e) is IdEncoder]
        return names[0] if names else None

    @property
    def output_dim(self) -> int:
        if self.hidden_layers:
            return self.hidden_layers[-1]
        return sum(encoder.output_dim for encoder in self.encoders.values())

    def known(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Whether each row's id has a trained row: ``(b,)`` bool; all false when id-free."""
        name = self.id_feature
        if name is None:
            first = features[self.input_names[0]]
            return tf.zeros(tf.shape(first)[:1], tf.bool)
        return self.encoders[name].known(features[name])

    def call(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        parts = [encoder(features[name]) for name, encoder in self.encoders.items()]
        x = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
        return apply_stack(x, self.dense, self.norm)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            encoders=[[n, tf.keras.layers.serialize(e)] for n, e in self.encoders.items()],
            hidden_layers=self.hidden_layers,
            layer_norm=self.layer_norm,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> FeatureTower:
        """Rebuilds every encoder; a history encoder gets its own item table (see
        ``HistoryEncoder.from_config``)."""
        config = dict(config)
        config["encoders"] = {
            name: tf.keras.layers.deserialize(encoder) for name, encoder in config["encoders"]
        }
        return cls(**config)


def tower_inputs(
    tower: tf.keras.layers.Layer, features: Mapping[str, tf.Tensor], id_name: str
) -> tf.Tensor | dict[str, tf.Tensor]:
    """What ``tower`` reads from a batch: ``features[id_name]`` for an ``IdTower``, the
    dict of its ``input_names`` for a ``FeatureTower``."""
    if isinstance(tower, FeatureTower):
        return {name: features[name] for name in tower.input_names}
    return features[id_name]
