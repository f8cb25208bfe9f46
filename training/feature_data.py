"""The data side of a feature model: statistics, joined side tables, histories, batches.

``prepare_features(config, data, split)`` (None for an id-only model) measures what the
encoders need on the **training split only** and returns a ``FeatureData``:

* side-table features (``[model.user_features]``, ``[model.item_features]`` of types
  categorical, multi_categorical, numeric, text): read from ``LoadedData.user_table`` /
  ``item_table`` (``data.user_features`` / ``data.item_features``, or the MovieLens files),
  joined by id. Statistics count each id of the training split once (a user with no
  training interaction, or an item never trained on, does not shape a vocabulary or a
  mean). A missing number is the training mean; an id without a row gets ``""`` and the
  means.
* ``id`` features: the vocabulary is the ids with training interactions, so an id seen
  only in held-out data (a cold-start user of a ``hash-user`` split, an item of the item
  table nobody interacted with) embeds as unknown (zeros) and is served by its features.
* ``timestamp`` context: the interaction's timestamp (statistics over training rows).
* ``history``: the user's most recent training items strictly before the row's timestamp
  (``training.history``), looked up per batch; never materialized per interaction.

``FeatureData.join`` maps a batch ``{"user_id", "item_id", "timestamp", ...}`` to the
same batch with every feature added, in the graph (a ``tf.data`` map over batches, for
the in-memory and the streaming pipeline alike). ``query_inputs(split)`` and
``item_inputs()`` give the evaluator's towers their inputs: each evaluated user's
features and history as of the split's start (training interactions only, so no
held-out item is ever in a history) and each catalog item's features.
``stored`` is what the run directory keeps (``training.feature_store``).

Cost: side tables O(users + items); histories 12 bytes per training interaction
(``training.history``); statistics one pass over the side tables and the training
timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.errors import InputError
from training.feature_spec import FeatureConfig, tower_features, uses_features
from training.feature_statistics import FeatureStatistics, StatisticsAccumulator
from training.feature_store import FeatureTable, StoredFeatures
from training.feature_values import feature_values, fill_missing
from training.history import HistoryLookup, UserSequences
from training.schema import Interactions, LoadedData
from training.side_tables import SideTable

SIDE_TYPES = ("categorical", "multi_categorical", "numeric", "text")
Log = Callable[[str], None]


@dataclass
class FeatureData:
    """A feature model's data (see the module doc)."""

    stored: StoredFeatures
    sequences: UserSequences
    as_of: dict[str, int]
    context: dict[str, str] = field(default_factory=dict)  # context feature -> its type
    _lookups: Any = None

    @property
    def statistics(self) -> dict[str, FeatureStatistics]:
        return self.stored.statistics

    @property
    def needs_timestamps(self) -> bool:
        return self.stored.history_feature is not None or bool(self.stored.timestamp_features)

    def batch_columns(self, train: Interactions) -> dict[str, np.ndarray]:
        """Per-row columns the batches must carry besides the ids (the timestamp)."""
        if not self.needs_timestamps:
            return {}
        return {"timestamp": train.timestamp.astype(np.int64)}

    def join(self, batch: dict) -> dict:
        """A batch with every feature added (in the graph; usable in ``Dataset.map``)."""
        lookups = self._tensors()
        out = dict(batch)
        out.update(lookups.users(batch["user_id"]))
        out.update(lookups.items(batch["item_id"]))
        if lookups.history is not None:
            out[self.stored.history_feature] = lookups.history(batch["user_id"],
                                                               batch["timestamp"])
        for name in self.stored.timestamp_features:
            out[name] = batch["timestamp"]
        return out

    def query_inputs(self, split: str) -> Callable[[np.ndarray], dict]:
        """``user_ids (b,) -> the user tower's inputs`` as of the start of ``split``."""
        import tensorflow as tf

        lookups = self._tensors()
        when = self.as_of.get(split, self.stored.serving_timestamp or 0)

        def inputs(user_ids) -> dict:
            ids = tf.constant(np.asarray(user_ids, dtype=str))
            out = {"user_id": ids, **lookups.users(ids)}
            times = tf.fill(tf.shape(ids), tf.constant(when, tf.int64))
            if lookups.history is not None:
                out[self.stored.history_feature] = lookups.history(ids, times)
            for name in self.stored.timestamp_features:
                out[name] = times
            return out

        return inputs

    def evaluation_inputs(self, split: str) -> dict:
        """``evaluate_set``'s ``query_inputs`` and ``item_inputs`` for ``split``."""
        return {"query_inputs": self.query_inputs(split), "item_inputs": self.item_inputs()}

    def item_inputs(self) -> Callable[[np.ndarray], dict]:
        """``item_ids (n,) -> the item tower's inputs``."""
        import tensorflow as tf

        lookups = self._tensors()

        def inputs(item_ids) -> dict:
            ids = tf.constant(np.asarray(item_ids, dtype=str))
            return {"item_id": ids, **lookups.items(ids)}

        return inputs

    def _tensors(self):
        if self._lookups is None:
            import tensorflow as tf

            # Made eagerly even when first asked for inside a graph (a ``Dataset.map``):
            # the evaluator later uses the same tables outside it.
            with tf.init_scope():
                self._lookups = _Lookups(self)
        return self._lookups


class TableLookup:
    """In-graph join of a ``FeatureTable``: ``ids (b,) -> {feature: (b, ...)}``."""

    def __init__(self, table: FeatureTable):
        import tensorflow as tf

        initializer = tf.lookup.KeyValueTensorInitializer(
            tf.constant(np.asarray(table.ids, dtype=str), tf.string),
            tf.range(len(table.ids), dtype=tf.int64),
        )
        self.rows = tf.lookup.StaticHashTable(initializer, default_value=-1)
        self.columns = {name: tf.constant(table.with_default_row(name)) for name in table.values}

    def __call__(self, ids) -> dict:
        import tensorflow as tf

        rows = self.rows.lookup(ids) + 1
        return {name: tf.gather(values, rows) for name, values in self.columns.items()}


class _Lookups:
    def __init__(self, data: FeatureData):
        self.users = TableLookup(data.stored.users)
        self.items = TableLookup(data.stored.items)
        self.history = (
            HistoryLookup(data.sequences, data.stored.history_length)
            if data.stored.history_feature is not None
            else None
        )


def prepare_features(config, data: LoadedData, split, log: Log = print) -> FeatureData | None:
    """The ``FeatureData`` of ``config``'s feature tables over in-memory data and its
    split; None for an id-only model.

    Raises ``InputError`` (one line) for a feature whose table or column is missing, a
    value of the wrong type, a history that names a column other than the item ids, or
    a history or timestamp without timestamps in the data.
    """
    if not uses_features(config.model):
        return None
    train = split.train
    _check_interaction_features(config, train.timestamp is not None)
    user_ids = _with_table_ids(data.users, data.user_table)
    timed = train if train.timestamp is not None else _untimed(train)
    sequences = UserSequences.build(timed, user_ids, data.items)
    serving = int(train.timestamp.max()) + 1 if train.timestamp is not None else None
    as_of = {name: _start_of(config, split.get(name), serving) for name in ("validation", "test")}
    return _assemble(
        config, data.user_table, data.item_table, sequences,
        np.intersect1d(data.users, np.unique(train.user_id)),
        np.intersect1d(data.items, np.unique(train.item_id)),
        [] if train.timestamp is None else [train.timestamp], serving, as_of, log,
    )


def prepare_streaming_features(config, data, log: Log = print) -> FeatureData | None:
    """``prepare_features`` for a streaming source (``training.streaming.StreamingData``):
    the side tables of ``data.user_features`` / ``data.item_features``, and one pass over
    the shards collecting the training rows' (user, item, timestamp) as integers for the
    histories (16 bytes per training row while reading, 12 kept) and the timestamp
    statistics. The catalog is ``data.items`` and the item table's ids
    (``FeatureData.stored.items.ids``: pass it to ``build_model`` as the items).
    """
    if not uses_features(config.model):
        return None
    import tensorflow as tf

    from training.side_tables import read_optional
    from training.sources import for_each_chunk, keep_rows
    from training.streaming_splits import SPLIT_NAMES, TRAIN

    d = config.data
    _check_interaction_features(config, data.shards.has_timestamp)
    user_table = read_optional(d.user_features, d.columns.get("user_id", "user_id"), "user table")
    item_table = read_optional(d.item_features, d.columns.get("item_id", "item_id"), "item table")
    user_ids = _with_table_ids(data.users, user_table)
    item_ids = _with_table_ids(data.items, item_table)
    tables = {
        kind: tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), default_value=-1)
        for kind, ids in (("user", user_ids), ("item", item_ids))
    }
    timed, rule = data.shards.has_timestamp, data.rule
    parts: dict[str, list[np.ndarray]] = {"user": [], "item": [], "time": []}

    def select(chunk):
        rows = keep_rows(chunk)
        train = rule.assign(rows) == TRAIN
        times = rows["timestamp"] if timed else tf.zeros_like(rows["user_id"], tf.int64)
        return {
            "train_user": tf.boolean_mask(tables["user"].lookup(rows["user_id"]), train),
            "train_item": tf.boolean_mask(tables["item"].lookup(rows["item_id"]), train),
            "train_time": tf.boolean_mask(times, train),
        }

    def add(chunk) -> None:
        for kind in parts:
            parts[kind].append(chunk[f"train_{kind}"].numpy())

    for_each_chunk(data.shards, add, transform=select)
    user_row, item_row, times = (np.concatenate(parts[k]) for k in ("user", "item", "time"))
    sequences = UserSequences.from_rows(user_ids, item_ids, user_row, item_row, times)
    counts = data.scan.items.counts[:, SPLIT_NAMES.index("train")]
    serving = int(times.max()) + 1 if timed and len(times) else None
    starts = {"validation": rule.validation_start, "test": rule.test_start}
    as_of = {name: (int(starts[name]) if rule.kind == "time" and starts[name] is not None
                    else serving or 0) for name in starts}
    return _assemble(
        config, user_table, item_table, sequences,
        np.intersect1d(data.users, data.split_users("train")),
        np.intersect1d(data.items, data.scan.items.ids[counts > 0]),
        [times] if timed else [], serving, as_of, log,
    )


def _assemble(
    config,
    user_table: SideTable | None,
    item_table: SideTable | None,
    sequences: UserSequences,
    train_users: np.ndarray,
    train_items: np.ndarray,
    train_times: list[np.ndarray],
    serving: int | None,
    as_of: dict[str, int],
    log: Log,
) -> FeatureData:
    """Statistics, joined side tables and stored histories over ``sequences``' users and
    items (the training ids decide the statistics and the id vocabularies)."""
    m = config.model
    user_features = {n: f for n, f in tower_features(m, "user").items() if n not in m.query_context}
    item_features = tower_features(m, "item")
    statistics: dict[str, FeatureStatistics] = {}
    users = _side_features(user_features, user_table, "user", sequences.users, train_users,
                           statistics, config.data.source)
    items = _side_features(item_features, item_table, "item", sequences.item_ids, train_items,
                           statistics, config.data.source)
    for name, trained in (("user_id", train_users), ("item_id", train_items)):
        if name in {**user_features, **item_features}:
            statistics[name] = FeatureStatistics(vocabulary=trained.tolist(), count=len(trained))
    timestamps = [n for n, f in m.query_context.items() if f.type == "timestamp"]
    for name in timestamps:
        accumulator = StatisticsAccumulator(name, m.query_context[name])
        for chunk in train_times:
            accumulator.update(chunk)
        statistics[name] = accumulator.result()
    history = next((n for n, f in user_features.items() if f.type == "history"), None)
    length = user_features[history].length if history else 0
    seen_indptr, seen_items = sequences.seen()
    stored = StoredFeatures(
        statistics=statistics,
        users=users,
        items=items,
        history_feature=history,
        history_length=length,
        history=sequences.latest(length) if history else None,
        seen_indptr=seen_indptr,
        seen_items=seen_items,
        timestamp_features=timestamps,
        serving_timestamp=serving,
    )
    log(
        f"features: user table {_describe(user_table, sequences.users)}; item table "
        f"{_describe(item_table, sequences.item_ids)}; id vocabularies {len(train_users):,} "
        f"users, {len(train_items):,} items (with training interactions)"
        + (f"; history: last {length} items, {sequences.nbytes / 1e6:.1f} MB of sequences "
           f"({len(sequences.items):,} training interactions)" if history else "")
    )
    return FeatureData(stored, sequences, as_of, {n: f.type for n, f in m.query_context.items()})


def _with_table_ids(ids: np.ndarray, table: SideTable | None) -> np.ndarray:
    """``ids`` and then the table's other ids (sorted): every id the run knows."""
    if table is None:
        return np.asarray(ids, dtype=str)
    extra = np.setdiff1d(table.ids, ids)
    return np.concatenate([np.asarray(ids, dtype=str), extra]).astype(str)


def _check_interaction_features(config, has_timestamps: bool) -> None:
    """History and context features read the interactions: check what they name."""
    m = config.model
    item_column = config.data.columns.get("item_id", "item_id")
    for name, feature in m.user_features.items():
        if feature.type == "history":
            if feature.column and feature.column not in ("item_id", item_column):
                raise InputError(
                    f"model.user_features.{name}.column = {feature.column!r}: a history is "
                    f"the user's earlier item ids, read from the interactions' item column "
                    f"{item_column!r}; leave the key out or name that column"
                )
            if not has_timestamps:
                raise InputError(f"feature {name!r} (history) needs timestamps to order a "
                                 "user's items; the interactions have none")
    time_column = config.data.columns.get("timestamp", "timestamp")
    for name, feature in m.query_context.items():
        if feature.type != "timestamp":
            raise InputError(
                f"model.query_context.{name}: only timestamp context is read from the "
                f"interactions so far; a {feature.type} context column is not supported"
            )
        if feature.column and feature.column not in ("timestamp", time_column):
            raise InputError(
                f"model.query_context.{name}.column = {feature.column!r}: a timestamp "
                f"context is the interactions' timestamp column {time_column!r}"
            )
        if not has_timestamps:
            raise InputError(f"feature {name!r} (timestamp) needs timestamps; the "
                             "interactions have none")


def _side_features(
    features: dict[str, FeatureConfig],
    table: SideTable | None,
    side: str,
    ids: np.ndarray,
    trained: np.ndarray,
    statistics: dict[str, FeatureStatistics],
    source: str = "",
) -> FeatureTable:
    """The ``FeatureTable`` of one tower's side-table features over ``ids``; fills
    ``statistics`` from the rows of the ``trained`` ids."""
    wanted = {n: f for n, f in features.items() if f.type in SIDE_TYPES}
    values: dict[str, np.ndarray] = {}
    defaults: dict[str, Any] = {}
    if not wanted:
        return FeatureTable(np.asarray(ids, dtype=str), values, defaults)
    if table is None:
        name = next(iter(wanted))
        hint = (f" (movielens-100k: run `tfrs-cosine data fetch movielens-100k` to cache its "
                f"{side} file)" if source == "movielens-100k" else "")
        raise InputError(
            f"feature {name!r} of [model.{side}_features] is read from a {side} table: set "
            f"data.{side}_features to a file with a {side}_id column and a {name!r} column"
            + hint
        )
    rows = table.rows(ids)
    trained_rows = table.rows(trained)
    trained_rows = trained_rows[trained_rows >= 0]
    for name, feature in wanted.items():
        raw = feature_values(name, feature, table.column(feature.column or name, name),
                             table.source)
        measured = raw[trained_rows]
        accumulator = StatisticsAccumulator(name, feature)
        if feature.type == "numeric":
            accumulator.update(measured[~np.isnan(measured)])
        elif feature.type == "multi_categorical":
            accumulator.update([[v for v in row if v] for row in measured])
        elif feature.type == "categorical":
            accumulator.update(measured[measured != ""])  # an empty cell is no category
        else:
            accumulator.update(measured)
        statistics[name] = accumulator.result()
        if feature.type == "numeric":
            default = float(statistics[name].mean)
            column = fill_missing(raw, default)
        else:
            default = ""
            column = raw
        filled = np.full((len(ids), *column.shape[1:]), default, dtype=column.dtype)
        filled[rows >= 0] = column[rows[rows >= 0]]
        values[name], defaults[name] = filled, default
    return FeatureTable(np.asarray(ids, dtype=str), values, defaults)


def _untimed(train: Interactions) -> Interactions:
    """The rows with every timestamp 0 (their order kept): seen items need no time."""
    return Interactions(train.user_id, train.item_id, np.zeros(len(train), np.int64),
                        train.weight)


def _start_of(config, held_out: Interactions, serving: int | None) -> int:
    """The timestamp of a split's queries: its first timestamp for a time split (every
    training interaction is earlier), else after the last training interaction."""
    if config.data.split == "time" and len(held_out) and held_out.timestamp is not None:
        return int(held_out.timestamp.min())
    return serving or 0


def _describe(table: SideTable | None, ids: np.ndarray) -> str:
    if table is None:
        return "none"
    missing = int((table.rows(ids) < 0).sum())
    return (f"{len(table):,} rows from {table.source}"
            + (f" ({missing:,} ids without a row)" if missing else ""))
