"""The training job in process: per-epoch data order, early stopping, and resume equality.

A run interrupted after any epoch, or in the middle of one, and continued from its
checkpoint directory must end with the history, best epoch and weights of a run that
was never interrupted (bit for bit on CPU). The subprocess tier
(tests/e2e/test_resume.py) does the same with real signals and SIGKILL.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from training.config import load_config
from training.data import generate_synthetic
from training.pipeline import epoch_seed, make_training_dataset
from training.splits import split_data
from training.train import evaluate_split, fit

SETTINGS = [
    "data.num_users=300", "data.num_items=60", "training.batch_size=256",
    "training.optimizer=adam", "training.learning_rate=0.1",
    "training.early_stopping_patience=1", "training.epochs=10",
    "evaluation.ks=[5, 10]",
]


@pytest.fixture(scope="module")
def job():
    config = load_config(None, SETTINGS)
    d = config.data
    data = generate_synthetic(d.num_users, d.num_items, d.num_clusters, d.seed)
    return config, data, split_data(data.interactions, d)


@pytest.fixture(scope="module")
def uninterrupted(job, tmp_path_factory):
    return fit(*job, checkpoint_dir=tmp_path_factory.mktemp("reference"))


class _Interrupt(tf.keras.callbacks.Callback):
    """Raises KeyboardInterrupt after epoch ``epoch`` (1-based) or at a batch inside it."""

    def __init__(self, epoch: int, batch: int | None = None):
        super().__init__()
        self.epoch, self.batch = epoch, batch
        self._current = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.batch is not None and self._current == self.epoch and batch == self.batch:
            raise KeyboardInterrupt

    def on_epoch_end(self, epoch, logs=None):
        if self.batch is None and epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def _weights(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.weights]


def test_each_epoch_has_its_own_order_that_depends_on_the_seed_alone(job):
    _, _, split = job

    def order(seed):
        dataset = make_training_dataset(split.train, 128, seed=seed)
        return [b"/".join(pair) for batch in dataset
                for pair in zip(batch["user_id"].numpy(), batch["item_id"].numpy(), strict=True)]

    first = order(epoch_seed(0, 3))
    assert order(epoch_seed(0, 3)) == first  # rebuilt or iterated again: the same order
    assert order(epoch_seed(0, 4)) != first and order(epoch_seed(1, 3)) != first
    assert sorted(order(epoch_seed(0, 4))) == sorted(first)  # the same examples
    assert len({epoch_seed(s, e) for s in range(10) for e in range(100)}) == 1000


def test_early_stopping_keeps_the_best_epoch_and_its_weights(job, uninterrupted):
    config, data, split = job
    result, patience = uninterrupted, config.training.early_stopping_patience
    curve = [row["val_recall_at_10"] for row in result.history]
    assert [row["epoch"] for row in result.history] == list(range(1, len(curve) + 1))
    best = int(np.argmax(curve)) + 1  # the first of equal maxima
    assert result.best_epoch == best == result.weights_epoch
    assert result.best_value == curve[best - 1]
    # Keras's rule: stop once `patience` epochs in a row did not improve on the best.
    stopped_early = len(curve) < config.training.epochs
    assert stopped_early == (len(curve) - best >= patience)
    assert stopped_early, "the settings are meant to stop early; the test sees too little"
    # The final weights are the best epoch's: they score its validation recall again.
    again = evaluate_split(config, result.model, data, split, "validation")["recall@10"]
    assert again == pytest.approx(curve[best - 1], abs=1e-12)


@pytest.mark.parametrize("interrupt", [_Interrupt(epoch=1), _Interrupt(epoch=3, batch=4)],
                         ids=["after-epoch-1", "inside-epoch-3"])
def test_a_resumed_fit_ends_as_an_uninterrupted_one(job, uninterrupted, tmp_path, interrupt):
    with pytest.raises(KeyboardInterrupt):
        fit(*job, checkpoint_dir=tmp_path, callbacks=[interrupt])
    resumed = fit(*job, checkpoint_dir=tmp_path)
    assert resumed.history == uninterrupted.history
    assert (resumed.best_epoch, resumed.epochs) == (uninterrupted.best_epoch, uninterrupted.epochs)
    assert resumed.epochs_trained == uninterrupted.epochs - (interrupt.epoch - (interrupt.batch is not None))
    for a, b in zip(_weights(resumed.model), _weights(uninterrupted.model), strict=True):
        np.testing.assert_array_equal(a, b)
