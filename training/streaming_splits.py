"""Splits decided per row inside tf.data, so no split is ever materialized.

* ``hash-interaction``: a row's split is a keyed hash (SipHash,
  ``tf.strings.to_hash_bucket_strong`` with key ``(data.split_seed, salt)``) of its user
  and item id. A repeated (user, item) pair always lands in one split, so a test item is
  never also a training item of the same user.
* ``hash-user``: the hash of the user id alone, so a user's rows all land in one split
  (cold-start evaluation: test users have no training rows).
* ``time``: ``timestamp >= data.test_start`` is test, ``data.validation_start <=
  timestamp < data.test_start`` validation, the rest training. Without ``test_start``,
  both cutoffs are quantiles of the timestamps (``time_cutoffs``), the streaming source
  computing them from a seeded uniform sample of ``TIMESTAMP_SAMPLE`` rows (exact when
  there are fewer rows).

Fractions are shares of all rows (hash-interaction, time) or of all users (hash-user):
``test_fraction`` is test, ``validation_fraction`` validation. Split codes: ``TRAIN``,
``VALIDATION``, ``TEST``. The same rule splits in-memory data (``split_in_memory``), so
small data splits identically through both paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from training.errors import InputError
from training.schema import Interactions

STREAMING_SPLITS = ("time", "hash-user", "hash-interaction")
TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")
TIMESTAMP_SAMPLE = 1 << 20
_BUCKETS = 1 << 32
_SALT = 0x7F5C0517


@dataclass(frozen=True)
class SplitRule:
    """Which split each row belongs to: ``assign(chunk) -> (n,) int32`` split codes."""

    kind: str
    test_fraction: float
    validation_fraction: float
    seed: int
    test_start: int | None = None
    validation_start: int | None = None

    @property
    def needs_timestamps(self) -> bool:
        return self.kind == "time"

    def assign(self, chunk: dict[str, tf.Tensor]) -> tf.Tensor:
        """Split codes ``(n,)`` int32 for a chunk with ``user_id``, ``item_id``[, ``timestamp``]."""
        if self.kind == "time":
            return self._by_time(chunk["timestamp"])
        key = chunk["user_id"]
        if self.kind == "hash-interaction":
            key = tf.strings.join([chunk["user_id"], chunk["item_id"]], separator="\x1f")
        bucket = tf.strings.to_hash_bucket_strong(key, _BUCKETS, key=[self.seed, _SALT])
        test = int(round(self.test_fraction * _BUCKETS))
        held = int(round((self.test_fraction + self.validation_fraction) * _BUCKETS))
        return tf.where(bucket < test, TEST, tf.where(bucket < held, VALIDATION, TRAIN))

    def _by_time(self, timestamp: tf.Tensor) -> tf.Tensor:
        if self.test_start is None:
            raise ValueError("time split without cutoffs: call with_cutoffs first")
        codes = tf.where(timestamp >= self.test_start, TEST, TRAIN)
        if self.validation_start is not None:
            validation = (timestamp >= self.validation_start) & (timestamp < self.test_start)
            codes = tf.where(validation, VALIDATION, codes)
        return codes

    def with_cutoffs(self, timestamps: np.ndarray) -> SplitRule:
        """The time rule with quantile cutoffs of ``timestamps`` (a sample or all of them)."""
        if self.kind != "time" or self.test_start is not None:
            return self
        validation_start, test_start = time_cutoffs(
            timestamps, self.test_fraction, self.validation_fraction
        )
        return SplitRule(self.kind, self.test_fraction, self.validation_fraction, self.seed,
                         test_start, validation_start)

    def describe(self) -> str:
        if self.kind == "time":
            return (f"time (validation from {self.validation_start}, test from "
                    f"{self.test_start})")
        return (f"{self.kind} (test {self.test_fraction:g}, validation "
                f"{self.validation_fraction:g}, seed {self.seed})")


def split_rule(config) -> SplitRule:
    """The rule a ``DataConfig`` names (``split`` in ``STREAMING_SPLITS``)."""
    if config.split not in STREAMING_SPLITS:
        raise InputError(
            f"data.split {config.split!r} needs the whole data in memory; a streaming source "
            f"takes one of {', '.join(STREAMING_SPLITS)}"
        )
    return SplitRule(
        config.split, config.test_fraction, config.validation_fraction, config.split_seed,
        config.test_start, config.validation_start,
    )


def time_cutoffs(
    timestamps: np.ndarray, test_fraction: float, validation_fraction: float
) -> tuple[int | None, int]:
    """``(validation_start, test_start)``: the ``1 - test_fraction`` quantile starts test,
    the ``1 - test_fraction - validation_fraction`` one validation (None without one).

    Quantiles use numpy's ``higher`` method, so a cutoff is an observed timestamp; rows
    tied at a cutoff all go to the later split.
    """
    if len(timestamps) == 0:
        raise InputError("time split: the data has no timestamps")
    test_start = int(np.quantile(timestamps, 1 - test_fraction, method="higher"))
    validation_start = None
    if validation_fraction > 0:
        share = 1 - test_fraction - validation_fraction
        validation_start = int(np.quantile(timestamps, share, method="higher"))
    return validation_start, test_start


def assign_in_memory(interactions: Interactions, rule: SplitRule) -> np.ndarray:
    """Split codes ``(N,)`` of in-memory interactions under ``rule``."""
    chunk = {"user_id": tf.constant(interactions.user_id), "item_id": tf.constant(interactions.item_id)}
    if rule.needs_timestamps:
        if interactions.timestamp is None:
            raise InputError("time split needs timestamps; the data has none")
        chunk["timestamp"] = tf.constant(interactions.timestamp, tf.int64)
    return rule.assign(chunk).numpy()


def split_in_memory(
    interactions: Interactions, config
) -> tuple[Interactions, Interactions, Interactions]:
    """``(train, validation, test)`` of in-memory data by a streaming rule (exact
    quantiles); ``training.splits.split_data`` wraps them."""
    rule = split_rule(config)
    if rule.needs_timestamps:
        if interactions.timestamp is None:
            raise InputError("time split needs timestamps; the data has none")
        rule = rule.with_cutoffs(interactions.timestamp)
    codes = assign_in_memory(interactions, rule)
    train, validation, test = (interactions.subset(codes == code) for code in (TRAIN, VALIDATION, TEST))
    return train, validation, test
