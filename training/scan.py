"""The streaming pass: one read of every shard that counts what the pipeline needs.

``scan`` applies the split rule to every row (as the training pipeline will) and counts
rows per split, training rows per file (for per-worker steps), and rows per user and
per item and split (``IdCounter``: vocabularies, logQ frequencies, the users each
split evaluates). It also validates every row, so a bad shard fails here, named, and
not hours into training.

Cost: one read of the data; memory ``O(distinct users + distinct items)`` (``IdCounter``)
plus the reading buffers, which do not grow with the rows (BENCHMARKS.md, "Scale:
streaming input": about 400 MiB above the import, and 590 MiB more for 1.1M ids). ``sample_timestamps`` is a second, earlier pass, run only for a
time split whose cutoffs are quantiles: a seeded uniform sample of at most
``TIMESTAMP_SAMPLE`` timestamps (8 MB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from training.errors import InputError
from training.progress import Log, RateLog
from training.sources import ShardSet, for_each_chunk, keep_rows, position
from training.streaming_splits import SPLIT_NAMES, TIMESTAMP_SAMPLE, TRAIN, SplitRule
from training.vocabulary import NUM_SPLITS, IdCounter, IdCounts, count_by_id


@dataclass(frozen=True)
class ScanResult:
    """What one pass over the shards counted.

    ``rows`` kept (both ids), ``dropped`` (without an id); ``split_rows`` per split
    name; ``train_rows_per_file`` aligned with ``shards.files``; ``users`` and ``items``
    rows per id and split (train, validation, test).
    """

    shards: ShardSet
    rule: SplitRule
    rows: int
    dropped: int
    split_rows: dict[str, int]
    train_rows_per_file: np.ndarray
    users: IdCounts
    items: IdCounts
    seconds: float


def scan(shards: ShardSet, rule: SplitRule, log: Log = print, every: float = 30.0) -> ScanResult:
    """Reads every shard once (see the module doc)."""
    if rule.needs_timestamps and not shards.has_timestamp:
        raise InputError(f"time split needs a timestamp column; data {shards.describe()} has none")
    users, items = IdCounter(), IdCounter()
    per_file = np.zeros(len(shards.files), np.int64)
    split_rows = np.zeros(NUM_SPLITS, np.int64)
    dropped = 0
    progress = RateLog("vocabulary pass", log, every)

    def count(chunk: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        rows = keep_rows(chunk)
        codes = rule.assign(rows)
        return {
            "users": count_by_id(rows["user_id"], codes),
            "items": count_by_id(rows["item_id"], codes),
            "split_rows": tf.math.bincount(codes, minlength=NUM_SPLITS, maxlength=NUM_SPLITS,
                                           dtype=tf.int64),
            "dropped": tf.reduce_sum(tf.cast(~chunk["has_ids"], tf.int64)),
        }

    def add(chunk: dict[str, tf.Tensor]) -> None:
        nonlocal dropped
        users.add(chunk["users"])
        items.add(chunk["items"])
        counts = chunk["split_rows"].numpy()
        split_rows[:] += counts
        per_file[int(chunk["file"])] += counts[TRAIN]
        dropped += int(chunk["dropped"])
        progress.add(int(counts.sum()), position(chunk, shards))

    for_each_chunk(shards, add, transform=count)
    rows = int(split_rows.sum())
    if rows == 0:
        raise InputError(f"data {shards.describe()} has no row with both a user id and an item id")
    user_counts, item_counts = users.result(), items.result()
    shares = ", ".join(f"{n} {int(c):,}" for n, c in zip(SPLIT_NAMES, split_rows, strict=True))
    progress.done(
        f"{len(user_counts.ids):,} users, {len(item_counts.ids):,} items; {shares}"
        + (f"; {dropped:,} rows without ids dropped" if dropped else "")
    )
    return ScanResult(
        shards=shards,
        rule=rule,
        rows=rows,
        dropped=dropped,
        split_rows=dict(zip(SPLIT_NAMES, (int(c) for c in split_rows), strict=True)),
        train_rows_per_file=per_file,
        users=user_counts,
        items=item_counts,
        seconds=progress.seconds,
    )


def sample_timestamps(
    shards: ShardSet, size: int = TIMESTAMP_SAMPLE, seed: int = 0, log: Log = print,
    every: float = 30.0,
) -> np.ndarray:
    """A uniform sample of at most ``size`` timestamps of the kept rows (all when fewer).

    Each row draws a key from a generator seeded with ``seed``, in file order; the
    ``size`` smallest keys win (a reservoir sample, deterministic in the seed).
    """
    if not shards.has_timestamp:
        raise InputError(f"time split needs a timestamp column; data {shards.describe()} has none")
    rng = np.random.default_rng(seed)
    keys, values = np.zeros(0), np.zeros(0, np.int64)
    progress = RateLog("timestamp pass", log, every)

    def add(chunk: dict[str, tf.Tensor]) -> None:
        nonlocal keys, values
        stamps = chunk["timestamp"].numpy()[chunk["has_ids"].numpy()]
        keys = np.concatenate([keys, rng.random(len(stamps))])
        values = np.concatenate([values, stamps])
        if len(keys) > 2 * size:
            keep = np.argpartition(keys, size)[:size]
            keys, values = keys[keep], values[keep]
        progress.add(len(stamps), position(chunk, shards))

    for_each_chunk(shards, add)
    if len(keys) > size:
        keep = np.argpartition(keys, size)[:size]
        values = values[keep]
    progress.done(f"{len(values):,} timestamps sampled")
    return values

