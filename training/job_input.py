"""What a training job trains on and is judged on: rows in memory, or streamed shards.

``prepare_input(config, log)`` picks the path:

* **streaming** (``StreamingInput``) for ``data.source = "file"`` with a per-row split
  (``time``, ``hash-user``, ``hash-interaction``): a vocabulary pass counts ids and
  split sizes (``training.streaming.prepare_streaming``), an evaluation pass keeps the
  evaluated users' held-out and training items as integers
  (``training.streaming_eval.collect_evaluation``), and each epoch streams the shards
  (``training.streaming.TrainingInput``). No row is ever held in Python.
* **in memory** (``InMemoryInput``) for the rest: synthetic data, MovieLens with its
  protocols, files with the ``random`` or ``leave-last-out`` split, as before.

Both give the training job (``training.train``) the same things: the vocabularies
``users`` and ``items``; ``record()``, the ``data`` of ``run.json``;
``fit_data(epoch, distribution)``, epoch ``epoch``'s batches for ``model.fit``;
``monitoring_set()``, the validation users scored after every epoch; and
``evaluate(model)``, the exact evaluation of every validation and test user.

How each strategy gets its batches (``training.batch_size`` is the global batch B; R
replicas in sync get b = B / R examples each):

* one device: whole batches, in memory the last one partial (as before);
* ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy``: one input pipeline per
  process (``distribute_datasets_from_function``). In memory, step k's global batch is
  rows ``[kB, (k+1)B)`` of the epoch's shuffled order and replica r (processes in
  order, then their local replicas) gets rows ``[kB + rb, kB + (r+1)b)``: the same
  examples per replica however the replicas are split into processes, so 2 workers
  train as 2 local replicas do; an epoch ends at its last whole global batch.
  Streaming: each process reads its ``WorkerShard`` (files, else rows) in per-replica
  batches, every process the same number of steps (``make_training_input``).
* ``ParameterServerStrategy``: ``DatasetCreator``. Each worker's dataset (traced on the
  chief, run on the worker) keeps its share (in memory rows ``k mod workers``,
  streaming files ``k mod workers``, which needs shards TensorFlow reads natively:
  CSV, TSV, TFRecord) and repeats; an epoch is ``ceil(train rows / B)`` steps, each
  run by whichever worker is free (asynchronous training: no fixed order).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from training.config import Config, validate_catalog
from training.data import load_data
from training.distribution import ONE_DEVICE, Distribution
from training.errors import InputError
from training.evaluation import EvaluationSet, evaluate_set, evaluation_set
from training.feature_data import FeatureData, prepare_features, prepare_streaming_features
from training.indexing import RowColumns
from training.pipeline import (
    epoch_seed,
    item_probabilities,
    make_training_dataset,
    training_columns,
)
from training.schema import LoadedData
from training.splits import Split, split_data
from training.streaming_splits import STREAMING_SPLITS

Log = Callable[[str], None]
FINAL_SPLITS = ("validation", "test")


@dataclass(frozen=True)
class EpochData:
    """``x`` and ``steps_per_epoch`` for ``model.fit``; ``rows``: training examples in
    the epoch (all processes together)."""

    x: object
    steps: int | None
    rows: int


def is_streaming(config: Config) -> bool:
    """Whether ``config`` trains through the streaming input."""
    return config.data.source == "file" and config.data.split in STREAMING_SPLITS


def prepare_input(config: Config, log: Log = print, final: bool = True,
                  splits: Sequence[str] = FINAL_SPLITS) -> InMemoryInput | StreamingInput:
    """The input of ``config`` (see the module doc). ``final``: prepare the exact
    evaluation of ``splits`` too (the chief; a multi-worker follower only monitors)."""
    if is_streaming(config):
        return StreamingInput.prepare(config, log, splits if final else ())
    data, split = prepare(config, log)
    return InMemoryInput(config, data, split)


def prepare(config: Config, log: Log = print) -> tuple[LoadedData, Split]:
    """Loads, checks and splits in-memory data (before anything is written)."""
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


_FEATURES_ON_ONE_DEVICE = ("feature towers train on one device for now (no "
                           "training.local_replicas or TF_CONFIG cluster with model.*_features)")

# ----------------------------------------------------------------------------------------
# in memory


class InMemoryInput:
    """Interactions and their split in memory (``training.pipeline`` builds the batches)."""

    def __init__(self, config: Config, data: LoadedData, split: Split):
        self.config, self.data, self.split = config, data, split
        self._probabilities: dict[str, float] | None = None
        # A feature model's side features, histories and statistics (None: id towers).
        self.features: FeatureData | None = prepare_features(config, data, split)

    @property
    def users(self) -> np.ndarray:
        return self.data.users

    @property
    def items(self) -> np.ndarray:
        return self.data.items

    def record(self) -> dict:
        return {
            "description": self.data.description,
            "num_interactions": len(self.data.interactions),
            "num_users": len(self.data.users),
            "num_items": len(self.data.items),
            "train": len(self.split.train),
            "validation": len(self.split.validation),
            "test": len(self.split.test),
        }

    def probabilities(self) -> dict[str, float] | None:
        """Item id -> share of training rows (logQ), or None without logQ."""
        if not self.config.model.logq_correction:
            return None
        if self._probabilities is None:
            shares = item_probabilities(self.split.train, self.data.items)
            self._probabilities = dict(zip(self.data.items.tolist(), shares.tolist(), strict=True))
        return self._probabilities

    def describe_pipeline(self, distribution: Distribution) -> str:
        plan = self._plan(distribution)
        return (f"pipeline: in memory, {len(self.split.train):,} training rows shuffled whole, "
                f"batch {self.config.training.batch_size:,}"
                f"{f' ({distribution.replicas} replicas)' if distribution.replicas > 1 else ''}, "
                f"{plan[0]:,} steps per epoch ({plan[1]:,} rows)")

    def _plan(self, distribution: Distribution) -> tuple[int, int]:
        """``(steps, rows)`` per epoch."""
        rows, batch = len(self.split.train), self.config.training.batch_size
        if distribution.kind == ONE_DEVICE or not distribution.synchronous:
            return math.ceil(rows / batch), rows
        steps = rows // batch
        if steps == 0:
            raise InputError(f"{rows} training rows are not one global batch of {batch} "
                             f"({distribution.replicas} replicas)")
        return steps, steps * batch

    def rows_per_epoch(self, distribution: Distribution) -> int:
        return self._plan(distribution)[1]

    def fit_data(self, epoch: int, distribution: Distribution) -> EpochData:
        t = self.config.training
        seed = epoch_seed(t.seed, epoch)
        steps, rows = self._plan(distribution)
        if distribution.kind == ONE_DEVICE:
            dataset = make_training_dataset(self.split.train, t.batch_size, self.probabilities(),
                                            seed=seed, **feature_batches(self.features,
                                                                         self.split.train))
            return EpochData(dataset, None, rows)
        if self.features is not None:
            raise InputError(_FEATURES_ON_ONE_DEVICE)
        columns = training_columns(self.split.train, self.probabilities())
        n = len(self.split.train)
        if not distribution.synchronous:  # parameter server: each worker keeps its rows
            workers = distribution.num_pipelines

            def worker_rows(context):
                worker = tf.distribute.coordinator.experimental_get_current_worker_index()
                dataset = tf.data.Dataset.from_tensor_slices(columns)
                dataset = dataset.shuffle(n, seed=seed, reshuffle_each_iteration=False)
                return dataset.shard(workers, worker).batch(t.batch_size).repeat()

            return EpochData(tf.keras.utils.experimental.DatasetCreator(worker_rows), steps, rows)
        per_replica = distribution.per_replica_batch(t.batch_size)
        replicas, own = distribution.replicas, distribution.replicas_per_pipeline
        pipelines, pipeline = distribution.num_pipelines, distribution.pipeline_id

        def replica_batches(context):
            dataset = tf.data.Dataset.from_tensor_slices(columns)
            dataset = dataset.shuffle(n, seed=seed, reshuffle_each_iteration=False)
            dataset = dataset.batch(per_replica, drop_remainder=True).take(steps * replicas)
            if pipelines > 1:  # this process's replicas' slices of each global batch
                dataset = dataset.enumerate().filter(
                    lambda j, _: (j % replicas) // own == pipeline).map(lambda _, batch: batch)
            return dataset.with_options(_no_auto_shard()).prefetch(tf.data.AUTOTUNE)

        return EpochData(distribution.strategy.distribute_datasets_from_function(replica_batches),
                         steps, rows)

    def monitoring_set(self) -> EvaluationSet | None:
        e = self.config.evaluation
        if len(self.split.validation) == 0:
            return None
        seen = self.split.train if e.exclude_seen else None
        return evaluation_set(self.split.validation, self.data.items, seen, e.validation_users,
                              self.config.training.seed)

    def evaluation_sets(self, splits: Sequence[str] = FINAL_SPLITS) -> dict[str, EvaluationSet]:
        """Every user of each non-empty split (training items excluded if configured)."""
        e = self.config.evaluation
        sets = {}
        for name in splits:
            rows = self.split.get(name)
            if len(rows) > 0:
                seen = self.split.train if e.exclude_seen and name != "train" else None
                sets[name] = evaluation_set(rows, self.data.items, seen)
        return sets

    def evaluate(self, model, log: Log = print,
                 splits: Sequence[str] = FINAL_SPLITS) -> dict[str, dict[str, float]]:
        return evaluate_sets(model, self.evaluation_sets(splits), self.config, log,
                             self.features)


def feature_batches(features: FeatureData | None, train) -> dict:
    """``make_training_dataset``'s arguments for a feature model's batches: the per-row
    timestamps and the in-graph join of side features and histories ({} for id towers)."""
    if features is None:
        return {}
    return {"columns": features.batch_columns(train), "map_batch": features.join}


# ----------------------------------------------------------------------------------------
# streaming


class StreamingInput:
    """A streaming source after its passes: ``data`` (``StreamingData``), the final
    evaluation sets, the monitoring sample."""

    def __init__(self, config: Config, data, sets: dict[str, EvaluationSet],
                 monitoring: EvaluationSet | None, features: FeatureData | None = None):
        self.config, self.data, self.sets, self.monitoring = config, data, sets, monitoring
        self._inputs: dict[tuple, object] = {}
        # A feature model's side features, histories and statistics (None: id towers).
        self.features = features

    @classmethod
    def prepare(cls, config: Config, log: Log = print,
                splits: Sequence[str] = FINAL_SPLITS) -> StreamingInput:
        """The vocabulary pass, then one evaluation pass collecting every user of
        ``splits`` and the monitoring sample of ``evaluation.validation_users``."""
        from training.streaming import prepare_streaming
        from training.streaming_eval import collect_evaluation, select_users

        e, t = config.evaluation, config.training
        data = prepare_streaming(config, log)
        # A feature model's catalog is the interactions' items, then the item table's
        # other items (their columns follow, so the evaluation sets' columns still hold).
        features = prepare_streaming_features(config, data, log)
        catalog = data.items if features is None else features.stored.items.ids
        validate_catalog(config, len(catalog))
        for name in splits:
            if name not in FINAL_SPLITS:
                raise InputError(f"split {name!r} of a streaming source is not evaluated "
                                 f"(its rows are not kept); valid: {', '.join(FINAL_SPLITS)}")
        wanted, sample = {}, None
        if data.split_rows["validation"] > 0:
            candidates = data.split_users("validation")
            sample = select_users(candidates, e.validation_users or None, t.seed)
            wanted["validation"] = candidates if "validation" in splits else sample
        if "test" in splits:
            wanted["test"] = data.split_users("test")
        collected = collect_evaluation(data, wanted, log) if wanted else {}
        sets = {name: _evaluation_set(s, data.items, e.exclude_seen)
                for name, s in collected.items()}
        monitoring = None if sample is None else _subset(sets["validation"], sample)
        if features is not None:
            sets = {name: dataclasses.replace(s, items=catalog) for name, s in sets.items()}
            if monitoring is not None:
                monitoring = dataclasses.replace(monitoring, items=catalog)
        return cls(config, data, {n: s for n, s in sets.items() if n in splits}, monitoring,
                   features)

    @property
    def users(self) -> np.ndarray:
        return self.data.users

    @property
    def items(self) -> np.ndarray:
        return self.data.items if self.features is None else self.features.stored.items.ids

    def record(self) -> dict:
        s = self.data.scan
        return {
            "description": f"files {s.shards.describe()} (streamed)",
            "num_interactions": s.rows,
            "num_users": len(self.data.users),
            "num_items": len(self.data.items),
            **s.split_rows,
            "distinct_users": len(s.users.ids),
            "distinct_items": len(s.items.ids),
            "dropped_rows": s.dropped,
            "split_rule": s.rule.describe(),
        }

    def _input(self, distribution: Distribution):
        """The ``TrainingInput`` this process reads (made once per distribution)."""
        from training.streaming import WorkerShard, make_training_input

        key = (distribution.kind, distribution.num_pipelines, distribution.pipeline_id,
               distribution.replicas)
        if key not in self._inputs:
            t = self.config.training
            if self.features is not None and distribution.kind != ONE_DEVICE:
                raise InputError(_FEATURES_ON_ONE_DEVICE)
            if distribution.synchronous:
                self._inputs[key] = make_training_input(
                    self.data, self.config,
                    WorkerShard(distribution.num_pipelines, distribution.pipeline_id),
                    batch_size=distribution.per_replica_batch(t.batch_size),
                    replicas=distribution.replicas_per_pipeline,
                    features=self.features,
                )
            else:
                files, workers = self.data.shards.files, distribution.num_pipelines
                if self.data.shards.format == "parquet":
                    raise InputError(
                        "ParameterServerStrategy workers read shards with TensorFlow ops and "
                        "Parquet is read through Python: use CSV, TSV or TFRecord shards "
                        "(tfrs-cosine data write-shards --format tfrecord)")
                if len(files) < workers:
                    raise InputError(f"{len(files)} shard file(s) for {workers} "
                                     "parameter-server workers: each worker reads whole files")
                self._inputs[key] = make_training_input(self.data, self.config)
        return self._inputs[key]

    def _plan(self, distribution: Distribution) -> tuple[int, int]:
        training_input = self._input(distribution)
        if distribution.synchronous:
            return (training_input.steps_per_epoch,
                    training_input.rows_per_epoch * distribution.num_pipelines)
        rows = self.data.split_rows["train"]
        return math.ceil(rows / self.config.training.batch_size), rows

    def describe_pipeline(self, distribution: Distribution) -> str:
        text = self._input(distribution).describe()
        if not distribution.synchronous:
            steps, _ = self._plan(distribution)
            text += (f"; parameter-server workers read files k mod "
                     f"{distribution.num_pipelines}, {steps:,} steps per epoch in all")
        return text

    def rows_per_epoch(self, distribution: Distribution) -> int:
        return self._plan(distribution)[1]

    def fit_data(self, epoch: int, distribution: Distribution) -> EpochData:
        training_input = self._input(distribution)
        steps, rows = self._plan(distribution)
        if distribution.kind == ONE_DEVICE:
            return EpochData(training_input.epoch(epoch), None, rows)
        if distribution.synchronous:
            dataset = distribution.strategy.distribute_datasets_from_function(
                lambda context: training_input.epoch(epoch))
            return EpochData(dataset, steps, rows)
        workers = distribution.num_pipelines

        def worker_batches(context):
            worker = tf.distribute.coordinator.experimental_get_current_worker_index()
            return training_input.worker_epochs(epoch, worker, workers)

        return EpochData(tf.keras.utils.experimental.DatasetCreator(worker_batches), steps, rows)

    def monitoring_set(self) -> EvaluationSet | None:
        return self.monitoring

    def evaluate(self, model, log: Log = print,
                 splits: Sequence[str] = FINAL_SPLITS) -> dict[str, dict[str, float]]:
        sets = {name: s for name, s in self.sets.items() if name in splits}
        return evaluate_sets(model, sets, self.config, log, self.features)


def _evaluation_set(collected, items: np.ndarray, exclude_seen: bool) -> EvaluationSet:
    """A ``streaming_eval.EvaluationSet`` as the evaluator's ``EvaluationSet``."""
    seen = RowColumns(collected.seen_indptr, collected.seen_items) if exclude_seen else None
    return EvaluationSet(collected.users, collected.test_users, collected.test_items, seen, items)


def _subset(evaluation: EvaluationSet, users: np.ndarray) -> EvaluationSet:
    """The rows of ``users`` (sorted, all in ``evaluation.users``). O(t + s)."""
    row_of = np.full(len(evaluation.users), -1, np.int64)
    row_of[np.searchsorted(evaluation.users, users)] = np.arange(len(users))
    keep = row_of[evaluation.test_users] >= 0
    seen = None
    if evaluation.seen is not None:
        sizes = np.diff(evaluation.seen.offsets)
        owner = row_of[np.repeat(np.arange(len(sizes)), sizes)]
        mine = owner >= 0
        seen = RowColumns.from_pairs(owner[mine], evaluation.seen.columns[mine], len(users),
                                     len(evaluation.items))
    return EvaluationSet(np.asarray(users), row_of[evaluation.test_users[keep]],
                         evaluation.test_items[keep], seen, evaluation.items)


def evaluate_sets(model, sets: dict[str, EvaluationSet], config: Config,
                  log: Log = print, features: FeatureData | None = None,
                  ) -> dict[str, dict[str, float]]:
    """Exact metrics of each set, a progress line per split with users/s. A feature
    model's query side is each user's features and history as of the split's start."""
    e = config.evaluation
    metrics = {}
    for name, evaluation in sets.items():
        start = time.perf_counter()
        inputs = {} if features is None else features.evaluation_inputs(name)
        metrics[name] = evaluate_set(model, evaluation, e.ks, e.chunk_size, **inputs)
        seconds = time.perf_counter() - start
        users = len(evaluation.users)
        log(f"evaluation: {name}: {users:,} users x {len(evaluation.items):,} items, "
            f"{len(evaluation.test_users):,} held-out rows in {seconds:.1f} s "
            f"({users / max(seconds, 1e-9):,.0f} users/s)")
    return metrics


def _no_auto_shard() -> tf.data.Options:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options
