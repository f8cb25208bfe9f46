"""The training job: config -> input -> two-tower model -> run directory.

``fit`` trains on in-memory data (used by the study, the benchmarks and the tests);
``fit_input`` on any job input (``training.job_input``: in memory, or streamed from
shards); ``train`` wraps it with a run directory: resolved config, vocabularies,
per-epoch checkpoints for ``--resume``, TensorBoard logs, final weights,
``metrics.json``. A run directory is marked ``running`` in ``run.json`` until it is
complete, so nothing half-written looks finished; one process at a time holds it
(``training.locking``).

Resume equals an uninterrupted run: epoch ``e`` trains on a dataset built with
``epoch_seed(training.seed, e)`` (``fit_input`` calls ``model.fit`` once per epoch),
and the checkpoint after each epoch holds the model, the optimizer and the
early-stopping state with the history (``training.early_stopping``). An interrupt
(SIGINT, SIGTERM) during epoch ``e`` keeps the checkpoint of epoch ``e - 1``: the
resumed run repeats epoch ``e`` from its first batch, in the same order.

Distributed (``training.distribution``, created first, before any other TensorFlow
op): every multi-worker task trains, the chief alone writes the run directory, the
lock and its heartbeat, metrics and TensorBoard logs; the others save their
checkpoints into a scratch directory (saving may be collective, so every worker saves)
and restore from the chief's. A relaunched cluster (``train --auto-resume``) continues
from the chief's last checkpoint, which holds what ``tf.keras.callbacks.BackupAndRestore``
would (model, optimizer, epoch) and the early-stopping state and history besides.
Under ``ParameterServerStrategy`` the chief is the only process running this code;
the ps and worker tasks serve (``training.distribution.serve_task``).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from tfrs_cosine import TwoTowerModel
from training import feature_store, rundir
from training.callbacks import AfterEpoch, EpochClock, EpochMeanLogs, EpochScalars, ProgressBar
from training.checkpoint import TrainingCheckpoint
from training.cluster import PARAMETER_SERVER, PEER_TIMEOUT_SECONDS, Cluster
from training.config import Config
from training.distribution import (
    ClusterWatch,
    Distribution,
    cluster_failure,
    serve_task,
    start_distribution,
)
from training.early_stopping import EarlyStopping, EpochSummary
from training.errors import InputError
from training.evaluation import ValidationRecall, evaluate_model
from training.feature_data import FeatureData, prepare_features
from training.interrupts import signals_raise
from training.job_input import InMemoryInput, StreamingInput, prepare, prepare_input
from training.locking import HEARTBEAT_SECONDS, Heartbeat, Process, RunLock
from training.modeling import build_model, make_optimizer, save_weights, versions
from training.resume import check_resume
from training.schema import LoadedData
from training.splits import Split

Log = Callable[[str], None]
JobInput = InMemoryInput | StreamingInput
# Errors of a lost peer under a tf.distribute cluster (collectives, remote calls).
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.DeadlineExceededError)

__all__ = ["FitResult", "evaluate_split", "fit", "fit_input", "format_metrics", "prepare",
           "train"]


def _print(message: str) -> None:
    print(message, flush=True)


@dataclass
class FitResult:
    """``epochs``: completed in total (a resumed fit counts those before it too);
    ``epochs_trained``: by this call; ``weights_epoch``: the epoch whose weights the
    model holds (the best with early stopping, else the last); ``rows_per_epoch``:
    training examples per epoch (all workers)."""

    model: TwoTowerModel
    history: list[dict[str, float]]
    epochs: int
    seconds: float
    best_epoch: int | None
    best_value: float | None = None
    weights_epoch: int | None = None
    epochs_trained: int = 0
    monitor: str | None = None  # the history key early stopping watched
    rows_per_epoch: int = 0
    features: FeatureData | None = None  # a feature model's data (None: id towers)


def describe_devices() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "devices: CPU only (no GPU found)"
    return f"devices: {len(gpus)} GPU(s): " + ", ".join(g.name for g in gpus)


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
    on_epoch: Callable[[EpochSummary, EpochClock], None] | None = None,
) -> FitResult:
    """``fit_input`` on in-memory data: trains on ``split.train`` with early stopping on
    ``split.validation`` (one device, or the strategy in scope)."""
    return fit_input(config, InMemoryInput(config, data, split), verbose=verbose,
                     callbacks=callbacks, checkpoint_dir=checkpoint_dir, on_epoch=on_epoch)


def fit_input(
    config: Config,
    source: JobInput,
    verbose: int | str = 0,
    callbacks: Sequence[tf.keras.callbacks.Callback] = (),
    checkpoint_dir: str | Path | None = None,
    on_epoch: Callable[[EpochSummary, EpochClock], None] | None = None,
    distribution: Distribution | None = None,
    restore_from: str | Path | None = None,
    log: Log | None = None,
) -> FitResult:
    """Trains a model on ``source``'s training data with early stopping on its
    monitored validation users.

    Early stopping watches validation ``recall@evaluation.monitor_k``; with a patience,
    the best epoch's weights are restored at the end. With ``checkpoint_dir``, every
    epoch is checkpointed (model, optimizer, early-stopping state, history) and a later
    call continues from the latest checkpoint there (or of ``restore_from``), ending as
    an uninterrupted call would. ``on_epoch(summary, clock)`` is called after each
    epoch's checkpoint. ``distribution``: the strategy (default: the one in scope, one
    device); ``log``: where the pipeline's description goes (None: nowhere).

    Each epoch is one ``model.fit`` call on that epoch's dataset, so ``callbacks`` see
    ``on_train_begin``/``on_train_end`` every epoch; one that sets
    ``model.stop_training`` ends the training.
    """
    t, e = config.training, config.evaluation
    if distribution is None:
        distribution = Distribution(tf.distribute.get_strategy(), "one_device")
    tf.keras.utils.set_random_seed(t.seed)
    monitoring = source.monitoring_set()
    validating = monitoring is not None and len(monitoring.test_users) > 0
    features = source.features

    with precision_policy(t.mixed_precision), distribution.scope():
        model = build_model(config, source.users.tolist(), source.items.tolist(),
                            statistics=None if features is None else features.statistics)
        optimizer = make_optimizer(config)
        model.compile(optimizer=optimizer)
        if distribution.replicas > 1:  # logged loss: the global batch's, not replica 0's
            model.distribute_reduction_method = "sum"
    # The early-stopping state is plain local variables, outside the strategy: every
    # process keeps its own (equal) copy, and MultiWorkerMirroredStrategy could not
    # broadcast the history's initial string anyway.
    stopping = EarlyStopping(model, f"val_recall_at_{e.monitor_k}" if validating else None,
                             t.early_stopping_patience)
    checkpoint = None
    if checkpoint_dir is not None:
        with distribution.scope():  # the optimizer's slots are built here
            checkpoint = TrainingCheckpoint(checkpoint_dir, model, optimizer, stopping.state,
                                            restore_from)
        checkpoint.restore_or_initialize()

    # Order matters: each callback's epoch end sees what the ones before it added.
    clock = EpochClock()
    epoch_callbacks: list[tf.keras.callbacks.Callback] = [clock]
    if distribution.synchronous:  # batch hooks are refused under ParameterServerStrategy
        epoch_callbacks.append(EpochMeanLogs())
    if validating:
        epoch_callbacks.append(ValidationRecall(
            monitoring, source.items, sorted(set([e.monitor_k, *e.ks])), chunk_size=e.chunk_size,
            features=features,
        ))
    epoch_callbacks += [stopping, *([checkpoint] if checkpoint else [])]
    if verbose:
        epoch_callbacks.append(ProgressBar(t.epochs))
    if on_epoch is not None:
        epoch_callbacks.append(AfterEpoch(lambda: on_epoch(stopping.summary(), clock)))
    epoch_callbacks += list(callbacks)

    first = stopping.epochs_done
    if log is not None and first < t.epochs and not stopping.stopped:
        shards = distribution.describe_shards(model)
        for line in ([shards] if shards else []) + [source.describe_pipeline(distribution)]:
            log(line)
    rows = 0
    start = time.perf_counter()
    for epoch in range(first, t.epochs):
        if stopping.stopped:  # also when resuming a run that had stopped
            break
        epoch_data = source.fit_data(epoch, distribution)
        rows = epoch_data.rows
        try:
            model.fit(epoch_data.x, initial_epoch=epoch, epochs=epoch + 1,
                      steps_per_epoch=epoch_data.steps, verbose=verbose,
                      callbacks=epoch_callbacks)
        except _PEER_ERRORS as error:
            if distribution.cluster is None:
                raise
            raise cluster_failure(error, distribution.cluster) from None
        if model.stop_training:
            break
    seconds = time.perf_counter() - start
    weights_epoch = stopping.restore_best_weights()
    return FitResult(model, stopping.history, stopping.epochs_done, seconds,
                     stopping.best_epoch, stopping.best_value, weights_epoch,
                     stopping.epochs_done - first, stopping.monitor, rows, features)


def evaluate_split(
    config: Config, model: TwoTowerModel, data: LoadedData, split: Split, name: str,
    features: FeatureData | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` on one split, excluding training items if configured. A
    feature model's query side is each user's features and history as of the split's
    start (``features``, prepared from the data when not given)."""
    e = config.evaluation
    seen = split.train if e.exclude_seen and name != "train" else None
    if features is None:
        features = prepare_features(config, data, split)
    inputs = {} if features is None else features.evaluation_inputs(name)
    return evaluate_model(model, split.get(name), data.items, e.ks, seen, e.chunk_size, **inputs)


def train(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    log: Log = _print,
    verbose: int | str | None = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    cluster: Cluster | None = None,
    peer_timeout: float = PEER_TIMEOUT_SECONDS,
) -> Path:
    """Trains and writes a complete run directory; returns its path.

    ``cluster`` (``TF_CONFIG``, ``training.cluster``) makes this process one task of a
    distributed job: only the chief writes (see the module doc). Raises ``InputError``
    before writing anything when the run directory exists (and ``resume`` is off), is
    held by a live process, cannot be resumed with ``config`` (``training.resume``), or
    for bad data; ``ClusterError`` when a task is unreachable. SIGINT and SIGTERM raise
    ``Interrupted`` after marking the run ``interrupted``.
    """
    run_dir = Path(run_dir)
    distribution = start_distribution(config, cluster, log, peer_timeout)  # first TF op
    if not distribution.trains:
        serve_task(distribution, peer_timeout, log)
        return run_dir
    if not distribution.is_chief:
        with signals_raise():
            _follow(config, run_dir, distribution, log, verbose)
        return run_dir
    lock = RunLock(run_dir)
    with signals_raise(), contextlib.ExitStack() as held:
        if resume:
            rundir.read_info(run_dir)  # a missing or foreign directory is named first
            lock.acquire(log, last_seen=lambda: rundir.read_info(run_dir))
            held.callback(lock.release)
            changes, completed = check_resume(run_dir, config)
            _check_replicas(run_dir, distribution)
        else:
            rundir.check_new(run_dir)
        source = prepare_input(config, log)
        log(describe_devices())
        log(distribution.describe())
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
            rundir.write_start(run_dir, config, source, versions(), process,
                               distribution.record())
        try:
            with Heartbeat(lambda: rundir.heartbeat(run_dir), heartbeat_seconds), \
                    _watch(distribution, run_dir, peer_timeout):
                _train_into(config, source, run_dir, log, verbose, distribution)
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


def _watch(distribution: Distribution, run_dir: Path, timeout: float):
    """The parameter-server chief's ``ClusterWatch`` (nothing for other strategies)."""
    if distribution.kind != PARAMETER_SERVER:
        return contextlib.nullcontext()
    return ClusterWatch(distribution.cluster, timeout,
                        lambda message: rundir.mark(run_dir, "failed", error=message))


def _check_replicas(run_dir: Path, distribution: Distribution) -> None:
    """A resumed synchronous run keeps its replicas in sync: they set the per-replica
    batch and so the in-batch negatives (a run without a record trained on one)."""
    recorded = rundir.read_info(run_dir).get("distribution", {"strategy": "one_device",
                                                               "replicas": 1})
    then = recorded.get("replicas", 1) if recorded.get("strategy") != PARAMETER_SERVER else None
    now = distribution.replicas if distribution.synchronous else None
    if then != now:
        def name(replicas):
            return ("ParameterServerStrategy" if replicas is None
                    else f"{replicas} replica(s) in sync")

        raise InputError(f"cannot resume {run_dir} with {name(now)}: it trained with "
                         f"{name(then)} (the per-replica batch sets the in-batch negatives)")


def _follow(config: Config, run_dir: Path, distribution: Distribution, log: Log,
            verbose: int | str | None) -> None:
    """A multi-worker task other than the chief: trains in step with it, writes nothing
    of the run directory (its checkpoints go to a scratch directory; it restores from
    the chief's checkpoints when they exist: a relaunched cluster)."""
    source = prepare_input(config, log, final=False)
    log(distribution.describe())
    scratch = Path(tempfile.mkdtemp(prefix="tfrs-cosine-worker-"))
    try:
        result = fit_input(config, source, verbose=_verbosity(verbose),
                           checkpoint_dir=scratch, distribution=distribution,
                           restore_from=run_dir / rundir.CHECKPOINTS, log=log,
                           on_epoch=lambda summary, clock: log(_epoch_line(
                               config, summary, clock, source, distribution)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"run: {distribution.cluster.name()} trained {result.epochs_trained} epochs; "
        f"the chief writes {run_dir}")


def _verbosity(verbose: int | str | None) -> int | str:
    return (1 if sys.stdout.isatty() else 0) if verbose is None else verbose


def _epoch_line(config: Config, epoch: EpochSummary, clock: EpochClock, source: JobInput,
                distribution: Distribution) -> str:
    """``epoch 4/10: loss ..., val_recall_at_10 ... (best ... at epoch 4); 7,001,483 rows
    in 52.1 s (134,385 rows/s), validation 3.2 s``."""
    text = (f"epoch {epoch.epoch}/{config.training.epochs}: loss "
            f"{epoch.row.get('loss', float('nan')):.4f}")
    if epoch.monitor:
        text += (f", {epoch.monitor} {epoch.row[epoch.monitor]:.4f} (best "
                 f"{epoch.best_value:.4f} at epoch {epoch.best_epoch})")
    rows = source.rows_per_epoch(distribution)
    seconds = clock.train_seconds
    text += (f"; {rows:,} rows in {seconds:.1f} s ({rows / max(seconds, 1e-9):,.0f} rows/s), "
             f"then {clock.since_training():.1f} s validation and checkpoint")
    return text + ("; early stop" if epoch.stopping else "")


def _train_into(config: Config, source: JobInput, run_dir: Path, log: Log,
                verbose: int | str | None, distribution: Distribution) -> None:
    """Fits with checkpoints in ``run_dir``, then writes weights, metrics and history."""
    t, m = config.training, config.model
    log(f"train: head={m.head} layer_norm={m.layer_norm} dim={m.embedding_dim} "
        f"epochs<={t.epochs} batch={t.batch_size} optimizer={t.optimizer}")

    def report(epoch: EpochSummary, clock: EpochClock) -> None:
        rundir.write_progress(run_dir, epoch.epoch, epoch.best_epoch, epoch.best_value,
                              epoch.monitor)
        log(_epoch_line(config, epoch, clock, source, distribution) + "; checkpoint saved")

    writer = tf.summary.create_file_writer(str(run_dir / "logs" / "train"))
    try:
        result = fit_input(config, source, verbose=_verbosity(verbose),
                           callbacks=[EpochScalars(writer)],
                           checkpoint_dir=run_dir / rundir.CHECKPOINTS, on_epoch=report,
                           distribution=distribution, log=log)
    finally:
        writer.close()
    log(f"train: {result.epochs_trained} epochs in {result.seconds:.1f} s "
        f"({result.epochs} in total; final weights from epoch {result.weights_epoch})")
    start = time.perf_counter()
    metrics = source.evaluate(result.model, log)
    evaluation_seconds = time.perf_counter() - start
    examples = result.rows_per_epoch * result.epochs_trained
    metrics["training"] = {
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "best_value": result.best_value,
        "monitor": result.monitor,
        "weights_epoch": result.weights_epoch,
        "seconds": round(result.seconds, 3),
        "examples_per_second": round(examples / max(result.seconds, 1e-9), 1),
        "final_temperature": float(result.model.head.temperature.numpy()),
        "evaluation_seconds": round(evaluation_seconds, 3),
    }
    save_weights(result.model, run_dir)
    if result.features is not None:  # what export and evaluation need (features/)
        feature_store.write(run_dir, result.features.stored)
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
