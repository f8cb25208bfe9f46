"""The model a run's config describes: building it, its optimizer, saving and restoring it.

``build_model`` and ``make_optimizer`` are used by the training job, the study and the
benchmarks; ``load_run`` rebuilds the trained model of a complete run directory for
``evaluate`` and ``export``. (``training.rundir`` holds the run directory's files and
needs no TensorFlow.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from tfrs_cosine import IdTower, TwoTowerModel, make_head
from training import optimizers, rundir
from training.config import Config
from training.errors import InputError


@dataclass
class TrainedRun:
    path: Path
    config: Config
    model: Any  # tfrs_cosine.TwoTowerModel with the final weights
    users: list[str]
    items: list[str]
    metrics: dict[str, Any]
    info: dict[str, Any]


def build_model(
    config: Config, users: Sequence[str], items: Sequence[str], logq: bool | None = None
) -> TwoTowerModel:
    """The ``TwoTowerModel`` a ``Config`` describes, over the given vocabularies."""
    m = config.model

    def tower(name: str, vocabulary: Sequence[str]) -> IdTower:
        return IdTower(
            vocabulary,
            m.embedding_dim,
            hidden_layers=m.layers_for(name),
            layer_norm=m.layer_norm,
            name=f"{name}_tower",
        )

    model = TwoTowerModel(
        user_tower=tower("user", users),
        item_tower=tower("item", items),
        head=make_head(m.head, m.temperature, m.learn_temperature),
        remove_accidental_hits=m.remove_accidental_hits,
        logq_correction=m.logq_correction if logq is None else logq,
        num_hard_negatives=m.num_hard_negatives or None,
    )
    # Build every variable now so checkpoints restore eagerly.
    model({"user_id": tf.constant([str(users[0])]), "item_id": tf.constant([str(items[0])])})
    model.head.build()
    return model


def make_optimizer(config: Config) -> tf.keras.optimizers.Optimizer:
    """``training.optimizer`` at ``training.learning_rate`` (``training.optimizers``)."""
    return optimizers.make_optimizer(config.training.optimizer, config.training.learning_rate)


def versions() -> dict[str, str]:
    """Library versions recorded in ``run.json``."""
    import tensorflow_recommenders as tfrs

    return {"tensorflow": tf.__version__, "tensorflow_recommenders": tfrs.__version__}


def save_weights(model: TwoTowerModel, run_dir: str | Path) -> None:
    """Writes the final weights to ``RUN_DIR/model/weights``."""
    tf.train.Checkpoint(model=model).write(str(Path(run_dir) / rundir.MODEL / "weights"))


def load_run(run_dir: str | Path) -> TrainedRun:
    """Rebuilds the trained model of a complete run directory."""
    run_dir = Path(run_dir)
    info = rundir.read_info(run_dir)
    if info.get("status") != "complete":
        raise InputError(
            f"run {run_dir} is not complete (status: {info.get('status', 'unknown')}); "
            "finish it with `tfrs-cosine train --resume` first"
        )
    config = rundir.read_config(run_dir)
    users, items = rundir.read_vocabulary(run_dir, "users"), rundir.read_vocabulary(run_dir, "items")
    model = build_model(config, users, items)
    weights = run_dir / rundir.MODEL / "weights"
    try:
        status = tf.train.Checkpoint(model=model).read(str(weights))
        status.assert_existing_objects_matched().expect_partial()
    except (tf.errors.NotFoundError, tf.errors.DataLossError, AssertionError, ValueError) as e:
        raise InputError(f"cannot restore weights of {run_dir}: {str(e).splitlines()[0]}") from None
    return TrainedRun(run_dir, config, model, users, items, rundir.load_metrics(run_dir), info)
