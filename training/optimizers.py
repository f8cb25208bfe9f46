"""Lazy (row-wise) Adam: optimizer cost proportional to the rows a batch touches.

tf-keras 2.20's ``Adam`` applies the decay of its ``m`` and ``v`` slots to the whole
variable even for an ``IndexedSlices`` gradient (its sparse branch runs
``m.assign_add(-m * (1 - beta_1))`` over every row), so a step over an embedding table
costs O(rows x d) whatever the batch: 105 ms/step at 10k user rows, 2,878 ms at 1M
(``../shared/notes/scale.md``). ``LazyAdam`` updates only the rows in the batch,
as TF1's ``tf.contrib.opt.LazyAdamOptimizer`` and TensorFlow Addons' ``LazyAdam`` did:
O(batch x d) per step for an embedding table.
"""

from __future__ import annotations

import tensorflow as tf

from tfrs_cosine import _keras  # noqa: F401  (binds Keras 2 before tf.keras is used)
from training.config import OPTIMIZERS


class LazyAdam(tf.keras.optimizers.Adam):
    r"""Adam whose sparse (``IndexedSlices``) updates touch only the rows in the batch.

    The update at global step ``t = iterations + 1`` (``iterations`` counts applied
    steps, shared by all variables), with ``lr``, ``beta_1``, ``beta_2``, ``epsilon``
    (``epsilon`` is Kingma & Ba's "epsilon hat": added to ``sqrt(v)``, *not*
    bias-corrected)::

        alpha_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)

    * dense gradient ``g`` (Dense kernels, LayerNorm, the temperature): the standard
      Adam update, exactly tf-keras ``Adam``'s::

          m <- m + (g - m) * (1 - beta_1)
          v <- v + (g^2 - v) * (1 - beta_2)
          w <- w - alpha_t * m / (sqrt(v) + epsilon)

    * sparse gradient (an embedding lookup): ``apply_gradients`` first sums the values
      of duplicate indices (tf-keras's ``_deduplicate_sparse_grad``; under a
      ``tf.distribute`` strategy after the cross-replica aggregation, which concatenates
      the replicas' indices), giving unique rows ``r`` with summed gradient rows
      ``g_r``. Then, for those rows only::

          m[r] <- beta_1 * m[r] + (1 - beta_1) * g_r
          v[r] <- beta_2 * v[r] + (1 - beta_2) * g_r^2
          w[r] <- w[r] - alpha_t * m[r] / (sqrt(v[r]) + epsilon)

      Rows absent from the batch keep ``m``, ``v`` and ``w`` bit-for-bit: their
      moments do not decay and they do not move. The bias correction still uses the
      global step ``t``, not a per-row count (as TF1's and Addons' LazyAdam).

    This differs from dense Adam only for rows a step does not touch: dense Adam keeps
    moving such a row by its decaying momentum. Slots are ``m`` and ``v`` as in
    ``Adam``, so a checkpoint written with either optimizer restores into the other.
    Cost per step: O(unique rows in the batch x d) for each table, O(size) for each
    dense variable. ``amsgrad`` is not supported.

    Args:
      learning_rate: float or a ``LearningRateSchedule``.
      beta_1, beta_2: decay rates of the first and second moment estimates.
      epsilon: added to ``sqrt(v)`` (see above).
      **kwargs: the base optimizer's keywords (``clipnorm``, ``jit_compile``, ...).
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        name: str = "LazyAdam",
        **kwargs,
    ):
        if kwargs.pop("amsgrad", False) or kwargs.pop("adaptive_epsilon", False):
            raise ValueError("LazyAdam supports neither amsgrad nor adaptive_epsilon")
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            name=name,
            **kwargs,
        )

    def update_step(self, gradient, variable) -> None:
        if not isinstance(gradient, tf.IndexedSlices):
            super().update_step(gradient, variable)
            return
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = (
            tf.cast(self.learning_rate, dtype)
            * tf.sqrt(1 - tf.pow(beta_2, step))
            / (1 - tf.pow(beta_1, step))
        )
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        rows = gradient.indices
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * gradient.values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(gradient.values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        step_rows = alpha * m_rows / (tf.sqrt(v_rows) + tf.cast(self.epsilon, dtype))
        variable.scatter_sub(tf.IndexedSlices(step_rows, rows))

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("amsgrad", None)
        return config


def make_optimizer(name: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    """The optimizer ``training.optimizer`` names.

    On an embedding table, ``adagrad``, ``lazy_adam`` and ``sgd`` (no momentum) cost
    O(rows in the batch x d) per step; ``adam`` (tf-keras's) costs O(table rows x d).
    ``BENCHMARKS.md``, "Scale (a)", has the measured step rates against table size.
    """
    if name == "adagrad":
        return tf.keras.optimizers.Adagrad(learning_rate)
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate)
    if name == "lazy_adam":
        return LazyAdam(learning_rate)
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
