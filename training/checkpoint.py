"""Per-epoch training checkpoints: model, optimizer and the training state in one file set.

``ckpt-N`` holds the state after N completed epochs (``ckpt-0``: before the first, so
every run can be resumed). A save writes the data under a temporary name and then
the index; ``checkpoints/checkpoint``, naming the latest, is replaced atomically last.
A kill at any moment therefore leaves the previous complete checkpoint as the
latest. The two newest are kept.

Cost: the model's variables, the optimizer's slots (one per variable for Adagrad, two
for Adam) and the early-stopping copy of the weights, written once per epoch.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from training.errors import InputError


class TrainingCheckpoint(tf.keras.callbacks.Callback):
    """Saves after every epoch (place it after ``EarlyStopping``) and restores the latest."""

    def __init__(self, directory: str | Path, model: tf.keras.Model,
                 optimizer: tf.keras.optimizers.Optimizer, state: tf.Module):
        super().__init__()
        # Slots exist before a restore, so it fills them now rather than on first use.
        optimizer.build(model.trainable_variables)
        self.state = state
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, state=state)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=2)

    def restore_or_initialize(self) -> int:
        """Restores the latest checkpoint (or writes ``ckpt-0``); returns epochs completed."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            self.manager.save(checkpoint_number=0)
            return 0
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise InputError(
                f"cannot resume from {latest}: {str(e).splitlines()[0]} "
                "(written by another version or for another model)"
            ) from None
        return int(self.state.epochs.numpy())

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.manager.save(checkpoint_number=epoch + 1)
