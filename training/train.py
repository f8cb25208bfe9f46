"""The training job: config -> data -> split -> two-tower model -> run directory.

``fit`` trains in memory (used by the CLI, the benchmarks and the study); ``train``
wraps it with a run directory: resolved config, vocabularies, per-epoch checkpoints
for ``--resume``, TensorBoard logs, final weights, ``metrics.json``. A run directory is
marked ``running`` in ``run.json`` until it is complete, so nothing half-written looks
finished.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from tfrs_cosine import IdTower, TwoTowerModel, make_head
from training import rundir
from training.config import Config
from training.data import LoadedData, load_data
from training.errors import InputError
from training.evaluation import ValidationRecall, evaluate_model
from training.pipeline import item_probabilities, make_training_dataset
from training.splits import Split, split_data

Log = Callable[[str], None]


def _print(message: str) -> None:
    print(message, flush=True)


@dataclass
class FitResult:
    model: TwoTowerModel
    history: list[dict[str, float]]
    epochs: int
    seconds: float
    best_epoch: int | None


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
            center=m.center,
            name=f"{name}_tower",
        )

    model = TwoTowerModel(
        user_tower=tower("user", users),
        item_tower=tower("item", items),
        head=make_head(m.head, m.temperature, m.learn_temperature, m.min_temperature or None),
        remove_accidental_hits=m.remove_accidental_hits,
        logq_correction=m.logq_correction if logq is None else logq,
        num_hard_negatives=m.num_hard_negatives or None,
        uniformity_weight=m.uniformity_weight,
    )
    # Build every variable now so checkpoints restore eagerly.
    model({"user_id": tf.constant([str(users[0])]), "item_id": tf.constant([str(items[0])])})
    model.head.build()
    return model


def make_optimizer(config: Config) -> tf.keras.optimizers.Optimizer:
    t = config.training
    if t.optimizer == "adagrad":
        return tf.keras.optimizers.Adagrad(t.learning_rate)
    if t.optimizer == "adam":
        return tf.keras.optimizers.Adam(t.learning_rate)
    return tf.keras.optimizers.SGD(t.learning_rate)


def describe_devices() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "devices: CPU only (no GPU found)"
    return f"devices: {len(gpus)} GPU(s): " + ", ".join(g.name for g in gpus)


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs when there is more than one, else the default."""
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def precision_policy(mixed: bool) -> Iterator[None]:
    """``mixed_float16`` for the duration of the block (the head keeps float32 logits)."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


class _EpochCheckpoint(tf.keras.callbacks.Callback):
    """Saves model, optimizer and the epoch counter after every epoch (for --resume)."""

    def __init__(self, manager: tf.train.CheckpointManager, epoch: tf.Variable):
        super().__init__()
        self.manager, self.epoch = manager, epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)


def fit(
    config: Config,
    data: LoadedData,
    split: Split,
    verbose: int | str = 0,
    callbacks: Sequence[tf.keras.callbacks.Callback] = (),
    checkpoint_dir: str | Path | None = None,
) -> FitResult:
    """Trains a model on ``split.train`` with early stopping on ``split.validation``.

    Early stopping watches validation ``recall@evaluation.monitor_k`` and restores the
    best epoch's weights. With ``checkpoint_dir``, every epoch is checkpointed and a
    later call resumes from the last checkpoint there.
    """
    t, e = config.training, config.evaluation
    tf.keras.utils.set_random_seed(t.seed)
    logq = config.model.logq_correction
    probabilities = None
    if logq:
        shares = item_probabilities(split.train, data.items)
        probabilities = dict(zip(data.items.tolist(), shares.tolist(), strict=True))
    dataset = make_training_dataset(split.train, t.batch_size, probabilities, seed=t.seed)

    with precision_policy(t.mixed_precision), distribution_strategy().scope():
        model = build_model(config, data.users.tolist(), data.items.tolist())
        optimizer = make_optimizer(config)
        model.compile(optimizer=optimizer)

    initial_epoch = 0
    all_callbacks: list[tf.keras.callbacks.Callback] = []
    if checkpoint_dir is not None:
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch)
        manager = tf.train.CheckpointManager(checkpoint, str(checkpoint_dir), max_to_keep=2)
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint)
            initial_epoch = int(epoch.numpy())
        all_callbacks.append(_EpochCheckpoint(manager, epoch))
    early_stopping = None
    if len(split.validation) > 0:
        all_callbacks.insert(
            0,
            ValidationRecall(
                split.validation,
                data.items,
                sorted(set([e.monitor_k, *e.ks])),
                seen=split.train if e.exclude_seen else None,
                chunk_size=e.chunk_size,
            ),
        )
        if t.early_stopping_patience > 0:
            early_stopping = tf.keras.callbacks.EarlyStopping(
                monitor=f"val_recall_at_{e.monitor_k}",
                mode="max",
                patience=t.early_stopping_patience,
                restore_best_weights=True,
            )
            all_callbacks.append(early_stopping)
    all_callbacks += list(callbacks)

    start = time.perf_counter()
    history = model.fit(
        dataset,
        epochs=t.epochs,
        initial_epoch=initial_epoch,
        verbose=verbose,
        callbacks=all_callbacks,
    )
    seconds = time.perf_counter() - start
    rows = [
        {key: float(values[k]) for key, values in history.history.items()}
        | {"epoch": initial_epoch + k + 1}
        for k in range(len(history.epoch))
    ]
    best_epoch = None
    if early_stopping is not None and early_stopping.best_weights is not None:
        best_epoch = initial_epoch + early_stopping.best_epoch + 1 if history.epoch else None
    return FitResult(model, rows, initial_epoch + len(history.epoch), seconds, best_epoch)


def evaluate_split(
    config: Config, model: TwoTowerModel, data: LoadedData, split: Split, name: str
) -> dict[str, float]:
    """Metrics of ``model`` on one split, excluding training items if configured."""
    e = config.evaluation
    seen = split.train if e.exclude_seen and name != "train" else None
    return evaluate_model(model, split.get(name), data.items, e.ks, seen, e.chunk_size)


def prepare(config: Config, log: Log = _print) -> tuple[LoadedData, Split]:
    """Loads and splits the data a config names (before anything is written)."""
    log(f"data: loading {config.data.source}")
    data = load_data(config.data)
    split = split_data(data.interactions, config.data)
    log(
        f"data: {data.description}: {len(data.interactions)} interactions, "
        f"{len(data.users)} users, {len(data.items)} items; split {config.data.split}: "
        f"train {len(split.train)}, validation {len(split.validation)}, test {len(split.test)}"
    )
    return data, split


def train(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    log: Log = _print,
    verbose: int | str | None = None,
) -> Path:
    """Trains and writes a complete run directory; returns its path.

    Raises ``InputError`` before writing anything when the run directory exists (and
    ``resume`` is off), when resuming a run without a checkpoint, or for bad data.
    """
    run_dir = Path(run_dir)
    if resume:
        info = rundir.read_info(run_dir)
        if info.get("status") == "complete":
            raise InputError(f"run {run_dir} is already complete; nothing to resume")
        if tf.train.latest_checkpoint(str(run_dir / rundir.CHECKPOINTS)) is None:
            raise InputError(f"cannot resume {run_dir}: it has no checkpoint")
    elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise InputError(
            f"run directory {run_dir} already exists; pass --resume to continue it or "
            "choose a new --run-dir"
        )
    data, split = prepare(config, log)
    log(describe_devices())

    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_start(run_dir, config, data, split, resumed=resume)
    try:
        if verbose is None:
            verbose = 1 if sys.stdout.isatty() else 2
        log(
            f"train: head={config.model.head} layer_norm={config.model.layer_norm} "
            f"dim={config.model.embedding_dim} epochs<={config.training.epochs} "
            f"batch={config.training.batch_size}"
        )
        result = fit(
            config,
            data,
            split,
            verbose=verbose,
            callbacks=[tf.keras.callbacks.TensorBoard(str(run_dir / "logs"))],
            checkpoint_dir=run_dir / rundir.CHECKPOINTS,
        )
        log(f"train: {result.epochs} epochs in {result.seconds:.1f} s")
        metrics = {
            name: evaluate_split(config, result.model, data, split, name)
            for name in ("validation", "test")
            if len(split.get(name)) > 0
        }
        examples = len(split.train) * len(result.history)
        metrics["training"] = {
            "epochs": result.epochs,
            "best_epoch": result.best_epoch,
            "seconds": round(result.seconds, 3),
            "examples_per_second": round(examples / max(result.seconds, 1e-9), 1),
            "final_temperature": float(result.model.head.temperature.numpy()),
        }
        rundir.write_finish(run_dir, result.model, metrics, result.history)
    except BaseException as error:
        rundir.mark(run_dir, "interrupted" if isinstance(error, KeyboardInterrupt) else "failed",
                    error=f"{type(error).__name__}: {error}")
        raise
    log(f"run: {run_dir} complete")
    return run_dir


def format_metrics(metrics: dict[str, dict[str, float]], ks: Sequence[int]) -> str:
    """A plain-text table per split: one row per metric, one column per K."""
    families = [
        ("recall", "recall@{k}"),
        ("ndcg", "ndcg@{k}"),
        ("hit_rate", "hit_rate@{k}"),
        ("top-K accuracy", "top_{k}_categorical_accuracy"),
    ]
    lines = []
    for split in (s for s in ("validation", "test", "train") if s in metrics):
        values = metrics[split]
        lines.append(f"{split:<16}" + "".join(f"{'@' + str(k):>9}" for k in ks))
        for label, key in families:
            cells = "".join(f"{values.get(key.format(k=k), float('nan')):9.4f}" for k in ks)
            lines.append(f"  {label:<14}" + cells)
        lines.append(f"  {'mrr':<14}{values.get('mrr', float('nan')):9.4f}")
    return "\n".join(lines)
