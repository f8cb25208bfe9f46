"""Vocabularies and item sampling probabilities, from counts or from vocabulary files.

* ``IdCounter``: occurrences per id and split over a stream of chunks. Memory
  ``O(distinct ids)``: per-chunk counts (``count_by_id``, in tf.data) are buffered and
  merged into a table sorted by fingerprint whenever the buffer outgrows the table, so
  each chunk's counts are merged a constant number of times on average; each id's
  string is copied once.
* ``choose_vocabulary``: ids with at least ``data.min_count`` rows (all splits), the
  ``data.max_users`` / ``data.max_items`` most frequent of them (ties by id), sorted
  like ``np.unique``. Everything else maps to the tower's out-of-vocabulary row.
* ``read_vocabulary_file``: one id per line, in file order (``data.user_vocabulary``,
  ``data.item_vocabulary``); ``min_count`` and the maximum sizes do not apply to it.
* ``item_sampling_probabilities``: the logQ ``q`` per vocabulary item, as
  ``training.pipeline.item_probabilities`` defines it for in-memory data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.errors import InputError
from training.schema import LoadedData
from training.sources import decode_strings

NUM_SPLITS = 3
_FINGERPRINTS = (1 << 63) - 1  # to_hash_bucket_fast: FarmHash64 modulo this
_CHECKS = (1 << 63) - 1
_CHECK_KEY = [0x1E3779B97F4A7C15, 0x32B2AE3D27D4EB4F]  # any two int64


@dataclass(frozen=True)
class IdCounts:
    """``ids (n,)`` str and ``counts (n, 3)`` int64: rows per (id, train/validation/test)."""

    ids: np.ndarray
    counts: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.counts.sum(axis=1)


def count_by_id(ids: tf.Tensor, codes: tf.Tensor) -> dict[str, tf.Tensor]:
    """Distinct ids of a chunk and their rows per split, keyed by 64-bit fingerprint.

    Returns ``fingerprints (m,)`` int64 (FarmHash), ``checks (m,)`` int64 (a second,
    independent SipHash fingerprint that detects collisions when merging), ``ids (m,)``
    (each fingerprint's first id), ``counts (m, 3)`` int64 and ``collision (2,)``: two
    ids of the chunk with one fingerprint, or two empty strings.
    """
    fingerprints = tf.strings.to_hash_bucket_fast(ids, _FINGERPRINTS)
    distinct, index = tf.unique(fingerprints)
    size = tf.size(distinct)
    first = tf.math.unsorted_segment_min(tf.range(tf.size(ids)), index, size)
    firsts = tf.gather(ids, first)
    per_split = tf.one_hot(codes, NUM_SPLITS, dtype=tf.int64)
    return {
        "fingerprints": distinct,
        "checks": tf.strings.to_hash_bucket_strong(firsts, _CHECKS, key=_CHECK_KEY),
        "ids": firsts,
        "counts": tf.math.unsorted_segment_sum(per_split, index, size),
        "collision": _disagreement(tf.gather(firsts, index), ids),
    }


def _disagreement(expected: tf.Tensor, actual: tf.Tensor) -> tf.Tensor:
    """The first ``(expected[k], actual[k])`` that differ, else two empty strings
    (ids are never empty)."""
    differs = tf.cast(expected != actual, tf.int32)
    k = tf.argmax(tf.concat([differs, [1]], axis=0))
    return tf.stack([tf.concat([expected, [""]], 0)[k], tf.concat([actual, [""]], 0)[k]])


def _raise_if_collision(pair: tf.Tensor) -> None:
    a, b = (value.decode("utf-8") for value in pair.numpy())
    if a:
        raise InputError(f"ids {a!r} and {b!r} share a 64-bit fingerprint; rename one of them")


class IdCounter:
    """Sums ``count_by_id`` outputs over a stream in ``O(distinct ids)`` memory.

    The table is numpy, 48 B per id, sorted by fingerprint: fingerprint, check, counts
    per split, and the id's slot in a string store that only grows (each id's string
    is copied once, when first merged). Merging is therefore numeric: a sort of the
    table and the pending fingerprints. Two different ids with one fingerprint
    (probability about ``n^2 / 2^65``: 3e-6 at 10M ids) differ in their check and raise
    ``InputError`` rather than merge silently.
    """

    def __init__(self, min_buffer: int = 1 << 20):
        self.min_buffer = min_buffer
        self._fingerprints = np.zeros(0, np.int64)
        self._checks = np.zeros(0, np.int64)
        self._counts = np.zeros((0, NUM_SPLITS), np.int64)
        self._slots = np.zeros(0, np.int64)
        self._store: list[tf.Tensor] = []
        self._stored = 0
        self._pending: list[dict] = []
        self._pending_rows = 0

    def add(self, counted: dict[str, tf.Tensor]) -> None:
        """Adds one ``count_by_id`` result."""
        _raise_if_collision(counted["collision"])
        part = {k: counted[k].numpy() for k in ("fingerprints", "checks", "counts")}
        part["ids"] = counted["ids"]
        self._pending.append(part)
        self._pending_rows += len(part["fingerprints"])
        if self._pending_rows >= max(self.min_buffer, len(self._fingerprints)):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return

        def stacked(key: str, table: np.ndarray) -> np.ndarray:
            return np.concatenate([table, *(p[key] for p in self._pending)])

        fingerprints = stacked("fingerprints", self._fingerprints)
        checks = stacked("checks", self._checks)
        counts = stacked("counts", self._counts)
        pending_ids = tf.concat([p["ids"] for p in self._pending], axis=0)
        kept = len(self._fingerprints)
        distinct, first, inverse = _unique(fingerprints)
        wrong = np.flatnonzero(checks != checks[first][inverse])
        if len(wrong):
            owner = first[inverse[wrong[0]]]
            a = self._string(owner, pending_ids, kept)
            _raise_if_collision(tf.constant([a, self._string(wrong[0], pending_ids, kept)]))
        merged = np.zeros((len(distinct), NUM_SPLITS), np.int64)
        for split in range(NUM_SPLITS):
            merged[:, split] = np.bincount(inverse, counts[:, split], len(distinct)).round()
        new = first >= kept
        slots = np.empty(len(distinct), np.int64)
        slots[~new] = self._slots[first[~new]]
        slots[new] = self._stored + np.arange(int(new.sum()))
        self._store.append(tf.gather(pending_ids, first[new] - kept))
        self._stored += int(new.sum())
        self._fingerprints, self._checks, self._counts, self._slots = (
            distinct, checks[first], merged, slots
        )
        self._pending, self._pending_rows = [], 0

    def _string(self, row: int, pending_ids: tf.Tensor, kept: int) -> bytes:
        """The id of a row of the table (``row < kept``) or of the pending part."""
        if row >= kept:
            return pending_ids[row - kept].numpy()
        return tf.concat(self._store, axis=0)[self._slots[row]].numpy()

    def __len__(self) -> int:
        self._merge()
        return len(self._fingerprints)

    def result(self) -> IdCounts:
        self._merge()
        store = tf.concat([tf.constant([], tf.string), *self._store], axis=0)
        return IdCounts(decode_strings(tf.gather(store, self._slots)), self._counts)


def _unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(values, return_index=True, return_inverse=True)`` (index: the first
    occurrence) on an unstable sort, about 1.5x faster than ``np.unique``'s."""
    order = np.argsort(values)
    ordered = values[order]
    starts = np.empty(len(ordered), bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    inverse = np.empty(len(ordered), np.int64)
    inverse[order] = np.cumsum(starts) - 1
    first = np.minimum.reduceat(order, np.flatnonzero(starts)) if len(order) else order
    return ordered[starts], first, inverse


def choose_vocabulary(
    ids: np.ndarray, counts: np.ndarray, min_count: int = 1, max_size: int = 0
) -> np.ndarray:
    """The ids kept in the vocabulary, sorted: ``count >= min_count``, then the
    ``max_size`` most frequent (0: all; ties broken by id)."""
    keep = counts >= min_count
    ids, counts = ids[keep], counts[keep]
    if 0 < max_size < len(ids):
        ids = ids[np.lexsort((ids, -counts))[:max_size]]
    return np.sort(ids)


def read_vocabulary_file(path: str | Path, key: str) -> np.ndarray:
    """Ids of a vocabulary file (one per line, blank lines skipped), in file order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{key} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {key} file {path}: {e}") from None
    ids, seen = [], {}
    for number, line in enumerate(lines, start=1):
        token = line.strip()
        if not token:
            continue
        if token in seen:
            raise InputError(f"{key} file {path}: id {token!r} on line {number} repeats line "
                             f"{seen[token]}")
        seen[token] = number
        ids.append(token)
    if not ids:
        raise InputError(f"{key} file {path} has no id")
    return np.array(ids, dtype=str)


def vocabulary(counts: IdCounts, config, kind: str, given: np.ndarray | None = None) -> np.ndarray:
    """The user or item (``kind``) vocabulary a ``DataConfig`` asks for: ``given`` (read
    from the vocabulary file), else chosen from ``counts``."""
    if given is not None:
        return given
    path = getattr(config, f"{kind}_vocabulary")
    if path:
        return read_vocabulary_file(path, f"data.{kind}_vocabulary")
    return choose_vocabulary(
        counts.ids, counts.total, config.min_count, getattr(config, f"max_{kind}s")
    )


def vocabulary_files(config) -> dict[str, np.ndarray | None]:
    """The vocabularies given as files, read before any pass (None where not given)."""
    return {
        kind: read_vocabulary_file(path, f"data.{kind}_vocabulary") if path else None
        for kind in ("user", "item")
        for path in [getattr(config, f"{kind}_vocabulary")]
    }


def item_sampling_probabilities(
    items: np.ndarray, item_ids: np.ndarray, train_counts: np.ndarray
) -> tuple[np.ndarray, float]:
    """``(q (len(items),) float32, q_oov)``: each vocabulary item's share of training rows.

    As for in-memory data, a vocabulary item without training rows counts 0.5. Rows of
    items outside the vocabulary share the OOV row; an OOV id gets their mean share
    (the smallest vocabulary share when no training row is OOV).
    """
    import pandas as pd

    counts = pd.Series(train_counts, index=item_ids).reindex(items, fill_value=0)
    counts = counts.to_numpy(np.float64)
    counts = np.where(counts > 0, counts, 0.5)
    in_vocabulary = np.isin(item_ids, items)
    oov_rows = float(train_counts[~in_vocabulary].sum())
    oov_ids = int(((train_counts > 0) & ~in_vocabulary).sum())
    total = counts.sum() + oov_rows
    shares = (counts / total).astype(np.float32)
    oov = float(np.float32(oov_rows / oov_ids / total)) if oov_ids else float(shares.min())
    return shares, oov


def apply_vocabulary(data: LoadedData, config) -> LoadedData:
    """In-memory data with the vocabulary a ``DataConfig`` asks for (unchanged by default).

    ``LoadedData.users`` and ``items`` are the model's vocabularies; ids left out map to
    the OOV row. Synthetic ground truth follows the kept items.
    """
    import pandas as pd

    d = config
    limits = d.min_count > 1 or d.max_users > 0 or d.max_items > 0
    if not (limits or d.user_vocabulary or d.item_vocabulary):
        return data
    interactions = data.interactions
    split = np.zeros(len(interactions), dtype=np.int64)
    chosen = {}
    for kind, ids in (("user", interactions.user_id), ("item", interactions.item_id)):
        distinct, inverse = np.unique(ids, return_inverse=True)
        counts = np.zeros((len(distinct), NUM_SPLITS), np.int64)
        np.add.at(counts, (inverse, split), 1)
        chosen[kind] = vocabulary(IdCounts(distinct, counts), d, kind)
    changes = {"users": chosen["user"], "items": chosen["item"]}
    position = pd.Index(data.items).get_indexer(chosen["item"])
    for name in ("item_cluster", "item_popularity"):
        truth = getattr(data, name)
        if truth is not None:
            changes[name] = truth[position] if (position >= 0).all() else None
    return dataclasses.replace(
        data,
        description=f"{data.description}; vocabulary {len(chosen['user'])} users, "
        f"{len(chosen['item'])} items",
        **changes,
    )
