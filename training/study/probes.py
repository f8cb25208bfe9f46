"""Probes of a trained two-tower model, shared by the study's parts.

Item embeddings, served scores and explanation cosines over the catalog; the in-batch
loss on fixed batches; the dimension-wise re-scaling ``(u D, i D^-1)`` of Steck et al.'s
Eq. 3 applied to a trained model; a per-epoch probe; JSON conversion of numpy values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


def _output_variables(tower) -> list:
    """The variables that scale an ``IdTower``'s output dimension-wise when multiplied
    along their last axis: the layer norm's gain and offset, else the last Dense layer's
    kernel and bias, else the embedding table; and the moving mean of a centring layer."""
    centering = getattr(tower, "centering", None)
    mean = [centering.moving_mean] if centering is not None else []
    if tower.norm is not None:
        return [tower.norm.gamma, tower.norm.beta, *mean]
    if tower.dense:
        return [tower.dense[-1].kernel, tower.dense[-1].bias, *mean]
    return [tower.embedding.embeddings, *mean]


@contextlib.contextmanager
def rescaled(model, d: np.ndarray) -> Iterator[None]:
    """Within the block, ``model`` is re-scaled by ``D = dMat(d)`` (Eq. 3): user tower
    outputs ``u D``, item tower outputs ``i D^-1``. The weights are restored after."""
    d = np.asarray(d, np.float32)
    saved = []
    for tower, factor in ((model.user_tower, d), (model.item_tower, 1.0 / d)):
        for variable in _output_variables(tower):
            saved.append((variable, variable.numpy()))
            variable.assign(variable.numpy() * factor)
    try:
        yield
    finally:
        for variable, value in saved:
            variable.assign(value)


def item_embeddings(model) -> np.ndarray:
    """The item tower's outputs for its whole vocabulary, ``(p, d)`` float64 (the ``B``
    whose rows the item-item cosine compares)."""
    from training.evaluation import embed

    items = np.array(model.item_tower.vocabulary)
    return embed(model.item_tower, items).numpy().astype(np.float64)


def served_scores(model, users: np.ndarray) -> np.ndarray:
    """The scores a retrieval index ranks by, ``(len(users), p)``:
    ``prepare_query(u) @ prepare_candidate(items)^T`` (temperature included)."""
    from training.evaluation import embed

    head = model.head
    items = np.array(model.item_tower.vocabulary)
    queries = head.prepare_query(embed(model.user_tower, users))
    candidates = head.prepare_candidate(embed(model.item_tower, items))
    return (queries.numpy() @ candidates.numpy().T).astype(np.float64)


def explanation_cosines(model, users: np.ndarray, chunk: int = 64) -> np.ndarray:
    """The ``cosine`` that ``tfrs_cosine.explain`` reports for every catalog item,
    ``(len(users), p)``."""
    import tensorflow as tf

    from tfrs_cosine import explain
    from training.evaluation import embed

    items = np.array(model.item_tower.vocabulary)
    item_vectors = embed(model.item_tower, items)
    parts = []
    for start in range(0, len(users), chunk):
        u = embed(model.user_tower, users[start : start + chunk])
        tiled = tf.tile(item_vectors[tf.newaxis], [tf.shape(u)[0], 1, 1])
        parts.append(explain(u, tiled, model.head, top_m=5)["cosine"].numpy())
    return np.concatenate(parts).astype(np.float64)


def loss_batches(train, items: np.ndarray, batch_size: int, count: int, seed: int) -> list[dict]:
    """``count`` fixed training batches (with the logQ feature) of ``train``, for the loss
    under re-scaling."""
    from training.pipeline import item_probabilities, make_training_dataset

    shares = item_probabilities(train, items)
    probabilities = dict(zip(items.tolist(), shares.tolist(), strict=True))
    dataset = make_training_dataset(train, batch_size, probabilities, seed=seed)
    return list(dataset.take(count))


def in_batch_loss(model, batches: list[dict]) -> float:
    """The model's training loss summed over ``batches`` (inference mode)."""
    return float(sum(float(model.compute_loss(b).numpy()) for b in batches))


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def epoch_probe(monitor: str, measure: Callable[[np.ndarray], dict[str, float]]):
    """A Keras callback that appends, after every epoch, a row to its ``rows``: the epoch,
    ``validation_recall@10`` (the ``monitor`` log), ``measure(item embeddings (p, d))``,
    the temperature and the loss."""
    import tensorflow as tf

    class EpochProbe(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows: list[dict[str, float]] = []

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            self.rows.append({
                "epoch": epoch + 1,
                "validation_recall@10": float(logs.get(monitor, float("nan"))),
                **measure(item_embeddings(self.model)),
                "temperature": float(self.model.head.temperature.numpy()),
                "loss": float(logs.get("loss", float("nan"))),
            })

    return EpochProbe()
