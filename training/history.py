"""User histories built on the fly: per-user time-sorted item sequences and an in-graph lookup.

``UserSequences.build(train, users, items)`` keeps each user's training interactions in
time order as CSR arrays: ``indptr (u + 1,)`` int64, ``items (I,)`` int32 (catalog index)
and ``times (I,)`` int64, sorted by (user, timestamp, row order). A history is never
materialized per interaction: ``HistoryLookup`` answers, for a batch of rows ``(user_id,
timestamp)``, the user's ``N`` most recent items **strictly before** the timestamp,
``(b, N)`` strings, oldest first, ``""`` padding at the end (``HistoryEncoder``'s layout).

Tie rule: an item whose timestamp equals the row's is not in its history (neither the
row's own item nor another item at the same second); among earlier items with equal
timestamps, the one later in the data counts as more recent. Items outside the catalog
are dropped from the sequences (they would embed as unknown anyway).

Cost: memory 12 bytes per training interaction (int64 time + int32 item) plus 8 bytes
per user, built with one O(I log I) sort; a lookup is a binary search in the user's
sequence, ``O(b (log L + N))`` for users with at most ``L`` items (``steps`` fixed when
the lookup is built). The in-graph lookup holds the arrays as constants (once more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.errors import InputError
from training.schema import Interactions


@dataclass(frozen=True)
class UserSequences:
    """Each user's training items in time order (CSR over ``users``).

    ``users (u,)`` str: row ``r`` of ``indptr`` is ``users[r]``; ``item_ids (n,)`` str the
    catalog ``items`` index into; user ``r``'s sequence is ``items[indptr[r]:indptr[r+1]]``
    with ``times`` alongside (ascending).
    """

    users: np.ndarray
    item_ids: np.ndarray
    indptr: np.ndarray
    items: np.ndarray
    times: np.ndarray

    @classmethod
    def build(cls, train: Interactions, users: np.ndarray, items: np.ndarray) -> UserSequences:
        """The sequences of ``train`` over the user rows ``users`` and the catalog ``items``."""
        if train.timestamp is None:
            raise InputError("a history feature needs timestamps; the interactions have none")
        users, items = np.asarray(users, dtype=str), np.asarray(items, dtype=str)
        return cls.from_rows(users, items, _index_of(users, train.user_id),
                             _index_of(items, train.item_id), train.timestamp)

    @classmethod
    def from_rows(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        user_row: np.ndarray,
        item_row: np.ndarray,
        times: np.ndarray,
    ) -> UserSequences:
        """The sequences of rows given as ``user_row``/``item_row`` (positions in ``users``
        and ``items``, -1: dropped) and ``times``, in data order (a streaming pass)."""
        keep = (user_row >= 0) & (item_row >= 0)
        user_row, item_row = user_row[keep], item_row[keep]
        times = np.asarray(times)[keep].astype(np.int64)
        order = np.lexsort((np.arange(len(times)), times, user_row))
        counts = np.bincount(user_row, minlength=len(users))
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(np.asarray(users, dtype=str), np.asarray(items, dtype=str), indptr,
                   item_row[order].astype(np.int32), times[order])

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.items.nbytes + self.times.nbytes

    @property
    def longest(self) -> int:
        """Items of the longest sequence."""
        return int(np.diff(self.indptr).max(initial=0))

    def latest(self, length: int) -> np.ndarray:
        """Every user's ``length`` most recent items ``(u, length)`` int32 catalog indices,
        oldest first, -1 padding at the end (the history as of after the last interaction)."""
        end = self.indptr[1:]
        first = np.maximum(self.indptr[:-1], end - length)
        positions = first[:, None] + np.arange(length)[None, :]
        valid = positions < end[:, None]
        padded = np.append(self.items, -1)  # a safe target for invalid positions
        return np.where(valid, padded[np.minimum(positions, len(self.items))], -1).astype(np.int32)

    def seen(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each user's distinct training items, most recent first, at most ``limit``:
        ``(indptr (u + 1,) int64, items (s,) int32)``."""
        user_row = np.repeat(np.arange(len(self.users)), np.diff(self.indptr))
        position = np.arange(len(self.items))
        # Latest occurrence of each (user, item) first, then keep the first of each pair.
        order = np.lexsort((-position, user_row))
        keys = user_row[order].astype(np.int64) * max(len(self.item_ids), 1) + self.items[order]
        _, first = np.unique(keys, return_index=True)
        chosen = order[first]
        chosen = chosen[np.lexsort((-chosen, user_row[chosen]))]  # by user, latest first
        rows, items = user_row[chosen], self.items[chosen]
        if limit is not None:
            rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
            rows, items = rows[rank < limit], items[rank < limit]
        counts = np.bincount(rows, minlength=len(self.users))
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), items.astype(np.int32)


def _index_of(vocabulary: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each id in ``vocabulary`` (unique ids, any order), -1 when absent: one
    hash lookup per id (pandas), O(len(ids))."""
    import pandas as pd

    return pd.Index(np.asarray(vocabulary, dtype=object)).get_indexer(
        np.asarray(ids, dtype=object)).astype(np.int64)


class HistoryLookup:
    """In-graph: ``(user_id (b,) string, timestamp (b,) int64) -> history (b, N) string``.

    The ``N`` most recent items of each user strictly before the row's timestamp (see
    the module doc); an unknown user has an empty history. Usable in ``tf.data`` maps
    and eagerly.
    """

    def __init__(self, sequences: UserSequences, length: int):
        import tensorflow as tf

        if length < 1:
            raise ValueError(f"history length must be >= 1, got {length}")
        self.length = int(length)
        self.steps = max(1, math.ceil(math.log2(sequences.longest + 1)))
        initializer = tf.lookup.KeyValueTensorInitializer(
            tf.constant(sequences.users, tf.string),
            tf.range(len(sequences.users), dtype=tf.int64),
        )
        self.user_row = tf.lookup.StaticHashTable(initializer, default_value=-1)
        self.indptr = tf.constant(sequences.indptr, tf.int64)
        # One sentinel element at the end, so gathers are safe when there are no items.
        self.times = tf.constant(np.append(sequences.times, 0), tf.int64)
        self.items = tf.constant(np.append(sequences.items, -1), tf.int64)
        self.names = tf.constant(np.concatenate([[""], sequences.item_ids]), tf.string)

    def __call__(self, user_ids, timestamps):
        import tensorflow as tf

        row = self.user_row.lookup(user_ids)
        known = row >= 0
        safe = tf.maximum(row, 0)
        start = tf.where(known, tf.gather(self.indptr, safe), 0)
        end = tf.where(known, tf.gather(self.indptr, safe + 1), 0)
        timestamps = tf.cast(timestamps, tf.int64)
        lo, hi = start, end
        for _ in range(self.steps):  # lo: the first position whose time is >= timestamp
            active = lo < hi
            mid = (lo + hi) // 2
            before = tf.gather(self.times, mid) < timestamps
            lo = tf.where(active & before, mid + 1, lo)
            hi = tf.where(active & ~before, mid, hi)
        first = tf.maximum(start, lo - self.length)
        positions = first[:, tf.newaxis] + tf.range(self.length, dtype=tf.int64)[tf.newaxis, :]
        valid = positions < lo[:, tf.newaxis]
        items = tf.gather(self.items, tf.where(valid, positions, tf.size(self.items, tf.int64) - 1))
        return tf.gather(self.names, tf.where(valid, items, -1) + 1)
