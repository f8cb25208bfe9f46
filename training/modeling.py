"""The model a run's config describes: building it, its optimizer, saving and restoring it.

``build_model`` and ``make_optimizer`` are used by the training job, the study and the
benchmarks; ``load_run`` rebuilds the trained model of a complete run directory for
``evaluate`` and ``export``. (``training.rundir`` holds the run directory's files and
needs no TensorFlow.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from tfrs_cosine import FeatureTower, IdTower, TwoTowerModel, make_head
from tfrs_cosine import features as encoders
from training import optimizers, rundir
from training.config import Config, ModelConfig
from training.errors import InputError
from training.feature_spec import FeatureConfig, tower_features, uses_features
from training.feature_statistics import FeatureStatistics, required_statistics


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
    config: Config,
    users: Sequence[str],
    items: Sequence[str],
    logq: bool | None = None,
    statistics: Mapping[str, FeatureStatistics] | None = None,
) -> TwoTowerModel:
    """The ``TwoTowerModel`` a ``Config`` describes, over the given vocabularies.

    With no feature table in ``config.model`` both towers are ``IdTower``s (as in every
    run before feature towers). Otherwise both are ``FeatureTower``s, and
    ``statistics`` (feature name -> ``FeatureStatistics`` of the training data) holds
    what their encoders need (``training.feature_statistics.required_statistics``);
    ``users`` and ``items`` are the id vocabularies.
    """
    m = config.model

    def tower(name: str, vocabulary: Sequence[str]) -> IdTower:
        return IdTower(
            vocabulary,
            m.embedding_dim,
            hidden_layers=m.layers_for(name),
            layer_norm=m.layer_norm,
            center=m.center,
            name=f"{name}_tower",
        )

    if uses_features(m):
        if statistics is None:  # a caller that predates feature towers
            raise InputError(
                "the model has feature tables but no training-data feature statistics were "
                "measured: this command does not support feature towers yet"
            )
        user_tower, item_tower = _feature_towers(m, users, items, statistics)
    else:
        user_tower, item_tower = tower("user", users), tower("item", items)
    model = TwoTowerModel(
        user_tower=user_tower,
        item_tower=item_tower,
        head=make_head(m.head, m.temperature, m.learn_temperature, m.min_temperature or None),
        remove_accidental_hits=m.remove_accidental_hits,
        logq_correction=m.logq_correction if logq is None else logq,
        num_hard_negatives=m.num_hard_negatives or None,
        uniformity_weight=m.uniformity_weight,
    )
    # Build every variable now so checkpoints restore eagerly.
    example = {"user_id": tf.constant([str(users[0])]), "item_id": tf.constant([str(items[0])])}
    for side in (user_tower, item_tower):
        if isinstance(side, FeatureTower):
            example.update(encoders.placeholder_features(side.feature_spec))
    model(example)
    model.head.build()
    return model


def _feature_towers(
    m: ModelConfig,
    users: Sequence[str],
    items: Sequence[str],
    statistics: Mapping[str, FeatureStatistics],
) -> tuple[FeatureTower, FeatureTower]:
    """The two ``FeatureTower``s of ``m``'s feature tables (item tower first: a history
    embeds with its id table)."""
    towers: dict[str, FeatureTower] = {}
    item_ids = None
    for side, vocabulary in (("item", items), ("user", users)):
        built = {}
        for name, feature in tower_features(m, side).items():
            try:
                built[name] = _encoder(name, feature, m, vocabulary, statistics, item_ids)
            except ValueError as e:
                raise InputError(f"feature {name!r}: {e}") from None
        if side == "item" and isinstance(built.get("item_id"), encoders.IdEncoder):
            item_ids = built["item_id"]
        towers[side] = FeatureTower(
            built, m.layers_for(side), layer_norm=m.layer_norm, name=f"{side}_tower"
        )
    return towers["user"], towers["item"]


def _encoder(
    name: str,
    feature: FeatureConfig,
    m: ModelConfig,
    ids: Sequence[str],
    statistics: Mapping[str, FeatureStatistics],
    item_ids: encoders.IdEncoder | None,
) -> tf.keras.layers.Layer:
    """The encoder of one feature; ``ids``: the tower's id vocabulary."""
    stats = statistics.get(name, FeatureStatistics())
    missing = [k for k in required_statistics(feature) if getattr(stats, k) is None]
    if missing:
        raise InputError(
            f"feature {name!r} ({feature.type}) needs training statistics: {', '.join(missing)}"
        )
    dim = feature.embedding_dim or m.embedding_dim
    kind = feature.type
    if kind == "id":
        return encoders.IdEncoder(ids, dim, name=name)
    if kind in ("categorical", "multi_categorical"):
        cls = {"categorical": encoders.CategoricalEncoder,
               "multi_categorical": encoders.MultiCategoricalEncoder}[kind]
        if feature.num_bins:
            return cls(dim, num_bins=feature.num_bins, name=name)
        return cls(dim, vocabulary=stats.vocabulary, name=name)
    if kind == "text":
        return encoders.TextEncoder(stats.vocabulary, dim, name=name)
    if kind in ("numeric", "timestamp"):
        cls = encoders.TimestampEncoder if kind == "timestamp" else encoders.NumericEncoder
        boundaries = (list(feature.buckets) or stats.boundaries) if feature.bucketized else None
        return cls(
            stats.mean, stats.variance, boundaries, dim if feature.bucketized else None, name=name
        )
    if item_ids is None:  # validate_features refuses this config
        raise InputError(f"feature {name!r}: a history needs an item id feature")
    return encoders.HistoryEncoder(item_ids, feature.length, feature.pooling, name=name)


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


def _restore(model: TwoTowerModel, weights: Path) -> str | None:
    """Reads the final weights into ``model``; returns the first line of the problem, if any."""
    problem = None
    try:
        tf.train.Checkpoint(model=model).read(str(weights)).assert_existing_objects_matched().expect_partial()
    except (tf.errors.NotFoundError, tf.errors.DataLossError, AssertionError, ValueError) as e:
        problem = str(e).splitlines()[0]
    if problem:
        # A failed read leaves restores pending in the model's objects, which log a warning
        # per checkpoint value when they are collected (at exit): the one error line says it.
        tf.get_logger().setLevel("ERROR")
    return problem


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
    problem = _restore(model, weights)
    if problem:
        raise InputError(f"cannot restore weights of {run_dir}: {problem}")
    return TrainedRun(run_dir, config, model, users, items, rundir.load_metrics(run_dir), info)
