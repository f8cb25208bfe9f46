"""Scoring heads: how a user embedding and an item embedding become a score.

Both heads compute ``score = similarity(u, i) / temperature`` where similarity is

* ``DotHead``: the dot product ``<u, i>``;
* ``CosineHead``: ``<u, i> / (|u| |i|)``, in [-1, 1]; a zero vector scores 0, never NaN.

Accepted shapes (the in-batch form the retrieval loss needs, and the form of the KMR
``NormalizedDotProductSimilarity`` layer):

* ``query (b, d)``, ``candidates (n, d)`` -> ``(b, n)``: every query against every candidate;
* ``query (b, 1, d)``, ``candidates (b, n, d)`` -> ``(b, n)``: each query against its own list.

Each head also exposes the two sides separately (``prepare_query`` / ``prepare_candidate``)
such that ``head(q, c) == prepare_query(q) @ prepare_candidate(c)^T``; the model hands
these to ``tfrs.tasks.Retrieval`` and the exported top-K index stores prepared candidates.
Everything is computed in float32, also under a ``mixed_float16`` policy.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfrs_cosine import _keras  # noqa: F401  (binds Keras 2 before tf.keras is used)

# Below this squared norm a vector is treated as zero: l2_normalize divides by
# sqrt(max(|x|^2, eps)), so a zero vector maps to zero instead of NaN.
_NORM_EPSILON = 1e-12
# A learned temperature is clamped to this range (as CLIP clamps its logit scale) so a
# large gradient step cannot drive it to 0 or infinity.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3


def l2_normalize(x: tf.Tensor) -> tf.Tensor:
    """``x / |x|`` along the last axis in float32; a zero vector stays zero (never NaN)."""
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1, epsilon=_NORM_EPSILON)


class ScoringHead(tf.keras.layers.Layer):
    """Base class: a similarity divided by a fixed or learned positive temperature.

    Args:
      temperature: positive float; scores are ``similarity / temperature``.
      learn_temperature: learn the temperature, parameterised as ``exp(log_t)`` so it
        stays positive, clamped to [1e-3, 1e3]; ``temperature`` is the initial value.
      min_temperature: optional floor of a learned temperature (the clamp's lower end),
        so the learned logit range ``1/T`` cannot grow past ``1/min_temperature``.
    """

    kind: str = ""

    def __init__(
        self,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        min_temperature: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not (
            isinstance(temperature, (int, float))
            and MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE
        ):
            raise ValueError(
                f"temperature must be a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], "
                f"got {temperature!r}"
            )
        if min_temperature is not None and not (
            isinstance(min_temperature, (int, float))
            and MIN_TEMPERATURE <= min_temperature <= temperature
        ):
            raise ValueError(
                f"min_temperature must be a number in [{MIN_TEMPERATURE:g}, temperature], "
                f"got {min_temperature!r}"
            )
        self.initial_temperature = float(temperature)
        self.learn_temperature = bool(learn_temperature)
        self.min_temperature = None if min_temperature is None else float(min_temperature)

    def build(self, input_shape=None):
        self.log_temperature = self.add_weight(
            name="log_temperature",
            shape=(),
            dtype=tf.float32,
            initializer=tf.keras.initializers.Constant(math.log(self.initial_temperature)),
            trainable=self.learn_temperature,
        )
        super().build(input_shape)

    @property
    def temperature(self) -> tf.Tensor:
        """The current temperature, a positive float32 scalar."""
        if not self.built:
            self.build()
        floor = MIN_TEMPERATURE if self.min_temperature is None else self.min_temperature
        return tf.exp(
            tf.clip_by_value(self.log_temperature, math.log(floor), math.log(MAX_TEMPERATURE))
        )

    def normalize(self, x: tf.Tensor) -> tf.Tensor:
        """Embeddings as this head compares them ((..., d) -> (..., d), float32)."""
        raise NotImplementedError

    def prepare_query(self, query: tf.Tensor) -> tf.Tensor:
        """``normalize(query) / temperature``: the query side of the score's matmul."""
        return self.normalize(query) / self.temperature

    def prepare_candidate(self, candidate: tf.Tensor) -> tf.Tensor:
        """``normalize(candidate)``: the candidate side of the score's matmul."""
        return self.normalize(candidate)

    def similarity(self, query: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """The similarity without temperature; shapes as in the module docstring."""
        q = self.normalize(query)
        c = self.normalize(candidates)
        if q.shape.rank == 2 and c.shape.rank == 2:
            return tf.linalg.matmul(q, c, transpose_b=True)
        if q.shape.rank == 3 and c.shape.rank == 3:
            return tf.squeeze(tf.linalg.matmul(q, c, transpose_b=True), axis=1)
        raise ValueError(
            "expected query (b, d) with candidates (n, d), or query (b, 1, d) with candidates "
            f"(b, n, d); got {q.shape} and {c.shape}"
        )

    def call(self, query: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        return self.similarity(query, candidates) / self.temperature

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            temperature=self.initial_temperature, learn_temperature=self.learn_temperature
        )
        if self.min_temperature is not None:
            config.update(min_temperature=self.min_temperature)
        return config


class DotHead(ScoringHead):
    """Dot-product head: ``score = <u, i> / temperature``."""

    kind = "dot"

    def normalize(self, x: tf.Tensor) -> tf.Tensor:
        return tf.cast(x, tf.float32)


class CosineHead(ScoringHead):
    """Cosine head: ``score = <u, i> / (|u| |i| temperature)``; zero vectors score 0."""

    kind = "cosine"

    def normalize(self, x: tf.Tensor) -> tf.Tensor:
        return l2_normalize(x)


HEADS: dict[str, type[ScoringHead]] = {"dot": DotHead, "cosine": CosineHead}


def make_head(
    kind: str,
    temperature: float = 1.0,
    learn_temperature: bool = False,
    min_temperature: float | None = None,
) -> ScoringHead:
    """Builds the head named ``kind`` (one of ``HEADS``)."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; valid heads: {', '.join(sorted(HEADS))}")
    return HEADS[kind](
        temperature=temperature,
        learn_temperature=learn_temperature,
        min_temperature=min_temperature,
        name=f"{kind}_head",
    )
