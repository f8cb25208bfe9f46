"""The training job: config -> data -> split -> two-tower model -> run directory.

``fit`` trains in memory (used by the CLI, the benchmarks and the study); ``train``
wraps it with a run directory: resolved config, vocabularies, per-epoch checkpoints
for ``--resume``, TensorBoard logs, final weights, ``metrics.json``. A run directory is
marked ``running`` in ``run.json`` until it is complete, so nothing half-written looks
finished; one process at a time holds it (``training.locking``).

Resume equals an uninterrupted run: epoch ``e`` trains on a dataset built with
``epoch_seed(training.seed, e)`` (``fit`` calls ``model.fit`` once per epoch), and the
checkpoint after each epoch holds the model, the optimizer and the early-stopping
state with the history (``training.early_stopping``). An interrupt (SIGINT, SIGTERM)
during epoch ``e`` keeps the checkpoint of epoch ``e - 1``: the resumed run repeats
epoch ``e`` from its first batch, in the same order.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from tfrs_cosine import TwoTowerModel
from training import rundir
from training.callbacks import AfterEpoch, EpochMeanLogs, EpochScalars, ProgressBar
from training.checkpoint import TrainingCheckpoint
from training.config import Config, validate_catalog
from training.data import load_data
from training.early_stopping import EarlyStopping, EpochSummary
from training.evaluation import ValidationRecall, evaluate_model
from training.interrupts import signals_raise
from training.locking import HEARTBEAT_SECONDS, Heartbeat, Process, RunLock
from training.modeling import build_model, make_optimizer, save_weights, versions
from training.pipeline import epoch_seed, item_probabilities, make_training_dataset
from training.resume import check_resume
from training.schema import LoadedData
from training.splits import Split, split_data

Log = Callable[[str], None]


def _print(message: str) -> None:
    print(message, flush=True)


@dataclass
class FitResult:
    """``epochs``: completed in total (a resumed fit counts those before it too);
    ``epochs_trained``: by this call; ``weights_epoch``: the epoch whose weights the
    model holds (the best with early stopping, else the last)."""

    model: TwoTowerModel
    history: list[dict[str, float]]
    epochs: int
    seconds: float
    best_epoch: int | None
    best_value: float | None = None
    weights_epoch: int | None = None
    epochs_trained: int = 0
    monitor: str | None = None  # the history key early stopping watched


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


def fit(
    config: Config,
    data: LoadedData,
    split: Split,
    verbose: int | str = 0,
    callbacks: Sequence[tf.keras.callbacks.Callback] = (),
    checkpoint_dir: str | Path | None = None,
    on_epoch: Callable[[EpochSummary], None] | None = None,
) -> FitResult:
    """Trains a model on ``split.train`` with early stopping on ``split.validation``.

    Early stopping watches validation ``recall@evaluation.monitor_k``; with a patience,
    the best epoch's weights are restored at the end. With ``checkpoint_dir``, every
    epoch is checkpointed (model, optimizer, early-stopping state, history) and a later
    call continues from the latest checkpoint there, ending as an uninterrupted call
    would. ``on_epoch`` is called after each epoch's checkpoint.

    Each epoch is one ``model.fit`` call on that epoch's dataset, so ``callbacks`` see
    ``on_train_begin``/``on_train_end`` every epoch; one that sets
    ``model.stop_training`` ends the training.
    """
    t, e = config.training, config.evaluation
    tf.keras.utils.set_random_seed(t.seed)
    probabilities = None
    if config.model.logq_correction:
        shares = item_probabilities(split.train, data.items)
        probabilities = dict(zip(data.items.tolist(), shares.tolist(), strict=True))
    validating = len(split.validation) > 0

    with precision_policy(t.mixed_precision), distribution_strategy().scope():
        model = build_model(config, data.users.tolist(), data.items.tolist())
        optimizer = make_optimizer(config)
        model.compile(optimizer=optimizer)
        stopping = EarlyStopping(model, f"val_recall_at_{e.monitor_k}" if validating else None,
                                 t.early_stopping_patience)
        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = TrainingCheckpoint(checkpoint_dir, model, optimizer, stopping.state)
            checkpoint.restore_or_initialize()

    # Order matters: each callback's epoch end sees what the ones before it added.
    epoch_callbacks: list[tf.keras.callbacks.Callback] = [EpochMeanLogs()]
    if validating:
        epoch_callbacks.append(ValidationRecall(
            split.validation, data.items, sorted(set([e.monitor_k, *e.ks])),
            seen=split.train if e.exclude_seen else None, chunk_size=e.chunk_size,
            max_users=e.validation_users, seed=t.seed,
        ))
    epoch_callbacks += [stopping, *([checkpoint] if checkpoint else [])]
    if verbose:
        epoch_callbacks.append(ProgressBar(t.epochs))
    if on_epoch is not None:
        epoch_callbacks.append(AfterEpoch(lambda: on_epoch(stopping.summary())))
    epoch_callbacks += list(callbacks)

    first = stopping.epochs_done
    start = time.perf_counter()
    for epoch in range(first, t.epochs):
        if stopping.stopped:  # also when resuming a run that had stopped
            break
        dataset = make_training_dataset(split.train, t.batch_size, probabilities,
                                        seed=epoch_seed(t.seed, epoch))
        model.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, verbose=verbose,
                  callbacks=epoch_callbacks)
        if model.stop_training:
            break
    seconds = time.perf_counter() - start
    weights_epoch = stopping.restore_best_weights()
    return FitResult(model, stopping.history, stopping.epochs_done, seconds,
                     stopping.best_epoch, stopping.best_value, weights_epoch,
                     stopping.epochs_done - first, stopping.monitor)


def evaluate_split(
    config: Config, model: TwoTowerModel, data: LoadedData, split: Split, name: str
) -> dict[str, float]:
    """Metrics of ``model`` on one split, excluding training items if configured."""
    e = config.evaluation
    seen = split.train if e.exclude_seen and name != "train" else None
    return evaluate_model(model, split.get(name), data.items, e.ks, seen, e.chunk_size)


def prepare(config: Config, log: Log = _print) -> tuple[LoadedData, Split]:
    """Loads, checks and splits the data a config names (before anything is written)."""
    log(f"data: loading {config.data.source}")
    data = load_data(config.data)
    validate_catalog(config, len(data.items))
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
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
) -> Path:
    """Trains and writes a complete run directory; returns its path.

    Raises ``InputError`` before writing anything when the run directory exists (and
    ``resume`` is off), is held by a live process, cannot be resumed with ``config``
    (``training.resume``), or for bad data. SIGINT and SIGTERM raise ``Interrupted``
    after marking the run ``interrupted``.
    """
    run_dir = Path(run_dir)
    lock = RunLock(run_dir)
    with signals_raise(), contextlib.ExitStack() as held:
        if resume:
            rundir.read_info(run_dir)  # a missing or foreign directory is named first
            lock.acquire(log, last_seen=lambda: rundir.read_info(run_dir))
            held.callback(lock.release)
            changes, completed = check_resume(run_dir, config)
        else:
            rundir.check_new(run_dir)
        data, split = prepare(config, log)
        log(describe_devices())
        process = Process.current()
        if resume:
            rundir.write_resume(run_dir, config, changes, completed, process)
            log(f"run: resuming {run_dir} after epoch {completed}"
                + "".join(f"; {k}: {old} -> {new}" for k, (old, new) in changes.items()))
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire(log)
            held.callback(lock.release)
            rundir.check_new(run_dir)  # another job may have started it meanwhile
            rundir.write_start(run_dir, config, data, split, versions(), process)
        try:
            with Heartbeat(lambda: rundir.heartbeat(run_dir), heartbeat_seconds):
                _train_into(config, data, split, run_dir, log, verbose)
        except BaseException as error:
            if rundir.read_info(run_dir).get("status") == "complete":
                raise  # the signal came after the run was written: it stays complete
            if isinstance(error, KeyboardInterrupt):  # SIGINT, SIGTERM (Interrupted)
                rundir.mark(run_dir, "interrupted", error=str(error) or "interrupted")
                log(f"run: {run_dir} {str(error) or 'interrupted'}; continue it with "
                    f"`tfrs-cosine train --run-dir {run_dir} --resume`")
            else:
                rundir.mark(run_dir, "failed", error=f"{type(error).__name__}: {error}")
            raise
    log(f"run: {run_dir} complete")
    return run_dir


def _train_into(config: Config, data: LoadedData, split: Split, run_dir: Path, log: Log,
                verbose: int | str | None) -> None:
    """Fits with checkpoints in ``run_dir``, then writes weights, metrics and history."""
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 0
    t, m = config.training, config.model
    log(f"train: head={m.head} layer_norm={m.layer_norm} dim={m.embedding_dim} "
        f"epochs<={t.epochs} batch={t.batch_size}")

    def report(epoch: EpochSummary) -> None:
        rundir.write_progress(run_dir, epoch.epoch, epoch.best_epoch, epoch.best_value,
                              epoch.monitor)
        text = f"epoch {epoch.epoch}/{t.epochs}: loss {epoch.row.get('loss', float('nan')):.4f}"
        if epoch.monitor:
            text += (f", {epoch.monitor} {epoch.row[epoch.monitor]:.4f} (best "
                     f"{epoch.best_value:.4f} at epoch {epoch.best_epoch})")
        log(text + ("; early stop" if epoch.stopping else "") + "; checkpoint saved")

    writer = tf.summary.create_file_writer(str(run_dir / "logs" / "train"))
    try:
        result = fit(config, data, split, verbose=verbose, callbacks=[EpochScalars(writer)],
                     checkpoint_dir=run_dir / rundir.CHECKPOINTS, on_epoch=report)
    finally:
        writer.close()
    log(f"train: {result.epochs_trained} epochs in {result.seconds:.1f} s "
        f"({result.epochs} in total; final weights from epoch {result.weights_epoch})")
    metrics = {
        name: evaluate_split(config, result.model, data, split, name)
        for name in ("validation", "test")
        if len(split.get(name)) > 0
    }
    examples = len(split.train) * result.epochs_trained
    metrics["training"] = {
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "best_value": result.best_value,
        "monitor": result.monitor,
        "weights_epoch": result.weights_epoch,
        "seconds": round(result.seconds, 3),
        "examples_per_second": round(examples / max(result.seconds, 1e-9), 1),
        "final_temperature": float(result.model.head.temperature.numpy()),
    }
    save_weights(result.model, run_dir)
    rundir.write_finish(run_dir, metrics, result.history)


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
