"""Early stopping whose whole state lives in the training checkpoint.

Keras's ``EarlyStopping`` keeps its best epoch, best value, wait counter and best
weights in Python attributes, and ``History`` keeps the epochs of one ``fit`` call:
after a kill and ``--resume`` they restart from nothing (best epoch off by the resume
point, best weights from before the kill ignored, history cut). Here they are
``tf.Variable``s of a ``tf.Module`` (``EarlyStopping.state``) that the training job
saves in the same ``tf.train.Checkpoint`` as the model and the optimizer, so one
atomic checkpoint holds everything a resumed run needs.

The rule is Keras's (tf-keras 2.20), with ``mode="max"`` and ``min_delta=0``: an epoch
improves when its monitored value is greater than the best so far; the wait counter
counts epochs since the last improvement; training stops once it reaches
``patience``; at the end the best epoch's weights are restored. ``patience=0`` never
stops and keeps the last epoch's weights (the best epoch is still tracked and
reported).

Cost: one copy of the model's weights (as Keras's ``restore_best_weights``), in memory
and in every checkpoint, plus the history as a JSON string (a few hundred bytes per
epoch).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import tensorflow as tf


class TrainingState(tf.Module):
    """The checkpointed progress of a run.

    ``epochs``: epochs completed; ``best_epoch``: 1-based epoch of the best monitored
    value (0: none yet); ``best_value``; ``wait``: epochs since the best; ``history``:
    a JSON list with one row per completed epoch; ``best_weights``: copies of the
    model's variables at the best epoch (empty when nothing is monitored).
    """

    def __init__(self, weights: list[tf.Variable]):
        super().__init__(name="training_state")
        self.epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self.best_value = tf.Variable(-math.inf, dtype=tf.float64, trainable=False,
                                      name="best_value")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
        self.best_weights = [
            tf.Variable(w, trainable=False, name=f"best_{k}") for k, w in enumerate(weights)
        ]


@dataclass(frozen=True)
class EpochSummary:
    """What an epoch ended with (``epoch`` is 1-based)."""

    epoch: int
    row: dict[str, float]
    monitor: str | None
    best_epoch: int | None
    best_value: float | None
    stopping: bool


class EarlyStopping(tf.keras.callbacks.Callback):
    """Records every epoch's logs and stops on a plateau of ``monitor`` (greater is better).

    Place it after the callback that adds ``monitor`` to the logs. ``monitor=None``
    only records the history. Build it (``EarlyStopping(model, ...)``) before the
    checkpoint is restored, so the restore fills ``state``.
    """

    def __init__(self, model: tf.keras.Model, monitor: str | None, patience: int):
        super().__init__()
        self.monitor, self.patience = monitor, patience
        self._weights = list(model.weights) if monitor else []
        self.state = TrainingState(self._weights)

    @property
    def epochs_done(self) -> int:
        return int(self.state.epochs.numpy())

    @property
    def history(self) -> list[dict[str, float]]:
        return json.loads(self.state.history.numpy().decode())

    @property
    def best_epoch(self) -> int | None:
        return int(self.state.best_epoch.numpy()) or None

    @property
    def best_value(self) -> float | None:
        return float(self.state.best_value.numpy()) if self.best_epoch else None

    @property
    def stopped(self) -> bool:
        return self.patience > 0 and int(self.state.wait.numpy()) >= self.patience

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {key: float(value) for key, value in (logs or {}).items()} | {"epoch": epoch + 1}
        self.state.history.assign(json.dumps([*self.history, row]))
        self.state.epochs.assign(epoch + 1)
        if self.monitor is None:
            return
        current = row[self.monitor]
        self.state.wait.assign_add(1)
        if current > float(self.state.best_value.numpy()):
            self.state.best_value.assign(current)
            self.state.best_epoch.assign(epoch + 1)
            self.state.wait.assign(0)
            for best, weight in zip(self.state.best_weights, self._weights, strict=True):
                best.assign(weight)
        if self.stopped:
            self.model.stop_training = True

    def summary(self) -> EpochSummary:
        """The last completed epoch and the best so far."""
        return EpochSummary(
            self.epochs_done, self.history[-1] if self.epochs_done else {}, self.monitor,
            self.best_epoch, self.best_value, self.stopped,
        )

    def restore_best_weights(self) -> int | None:
        """Sets the model to the best epoch's weights when early stopping is on.

        Returns the epoch whose weights the model now holds.
        """
        if self.patience > 0 and self.best_epoch:
            for weight, best in zip(self._weights, self.state.best_weights, strict=True):
                weight.assign(best)
            return self.best_epoch
        return self.epochs_done or None
