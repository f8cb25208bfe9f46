"""Id towers: string id -> StringLookup -> Embedding -> optional Dense stack -> optional LayerNorm."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tfrs_cosine import _keras  # noqa: F401  (binds Keras 2 before tf.keras is used)

LAYER_NORM_EPSILON = 1e-6


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
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        embedding_dim: int,
        hidden_layers: Sequence[int] = (),
        layer_norm: bool = False,
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

    @property
    def output_dim(self) -> int:
        return self.hidden_layers[-1] if self.hidden_layers else self.embedding_dim

    def known(self, ids: tf.Tensor) -> tf.Tensor:
        """Whether each id is in the vocabulary: ``(b,)`` string -> ``(b,)`` bool."""
        return tf.not_equal(self.lookup(ids), 0)

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        x = self.embedding(self.lookup(ids))
        for layer in self.dense:
            x = layer(x)
        if self.norm is not None:
            x = self.norm(x)
        return x

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            vocabulary=self.vocabulary,
            embedding_dim=self.embedding_dim,
            hidden_layers=self.hidden_layers,
            layer_norm=self.layer_norm,
        )
        return config
