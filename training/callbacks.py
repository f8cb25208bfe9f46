"""Keras callbacks of the training loop (``training.train.fit``), besides early stopping.

``fit`` runs one ``model.fit`` call per epoch, so these keep nothing across calls that
Keras would reset: the progress bar counts the run's epochs, the TensorBoard writer
lives as long as the run.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


class EpochMeanLogs(tf.keras.callbacks.Callback):
    """Replaces the batch logs (``loss``...) at epoch end with their mean over the epoch.

    ``tfrs.Model.train_step`` returns the batch's own loss, so Keras's epoch logs (and
    its ``History``) hold the last batch's, a partial batch at that; the progress bar
    shows the mean. A step only keeps references to its log tensors (no op, no device
    sync); the means are one reduction per key at epoch end.
    """

    _supports_tf_logs = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._steps: list[dict] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if isinstance(logs, dict):  # ParameterServerStrategy passes a RemoteValue
            self._steps.append(dict(logs))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None or not self._steps:
            return
        for key in self._steps[0]:
            values = tf.cast(tf.stack([step[key] for step in self._steps]), tf.float64)
            logs[key] = float(tf.reduce_mean(values))
        self._steps = []


class ProgressBar(tf.keras.callbacks.ProgbarLogger):
    """Keras's progress bar, counting epochs of the whole run (``fit`` runs one at a time)."""

    def __init__(self, epochs: int):
        super().__init__(count_mode="steps")
        self.total_epochs = epochs

    def set_params(self, params: dict) -> None:
        super().set_params(params)
        self.epochs = self.total_epochs


class AfterEpoch(tf.keras.callbacks.Callback):
    """Calls ``report()`` at the end of every epoch."""

    def __init__(self, report: Callable[[], None]):
        super().__init__()
        self.report = report

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.report()


class EpochScalars(tf.keras.callbacks.Callback):
    """TensorBoard scalars ``epoch_<log key>`` per epoch, through one writer for the run.

    (Keras's ``TensorBoard`` callback reopens its writers, with a new event file, and
    rewrites the graph on every ``model.fit`` call, i.e. every epoch here.)
    """

    def __init__(self, writer: tf.summary.SummaryWriter):
        super().__init__()
        self.writer = writer

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        with self.writer.as_default():
            for key, value in (logs or {}).items():
                tf.summary.scalar(f"epoch_{key}", value, step=epoch)
        self.writer.flush()
