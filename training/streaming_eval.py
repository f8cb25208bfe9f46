"""Evaluation input of a streaming source, per user, without holding the training set.

The evaluator (``training.evaluation.evaluate_embeddings``) needs, for each evaluated
user, its held-out items and (to exclude them from the ranking) its training items.
``collect_evaluation`` gathers both for chosen users in one streaming pass:

* which users: ``select_users`` keeps all users with a row in the split, or the
  ``max_users`` of them with the smallest keyed hash (a seeded sample that does not
  depend on file order); ``StreamingData.split_users`` lists the candidates;
* what is kept, as integers only: per held-out row its user's row in ``users`` and its
  item's vocabulary index (-1 outside the vocabulary: always a miss), and per distinct
  (user, training item) pair the item's index (CSR).

Memory: ``16 B`` per held-out row of the chosen users, ``8 B`` per distinct (chosen
user, training item) pair (``8 B`` per training row of theirs while reading, twice that
while merging), plus the chosen user ids and two lookup tables (``O(users + items)``). With every user
evaluated that is ``O(training rows of test users)`` integers, about 1/40 of what the
in-memory rows cost; a sample of users bounds it by the sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from training.errors import InputError
from training.progress import Log, RateLog
from training.sources import for_each_chunk, keep_rows, position
from training.streaming import StreamingData
from training.streaming_splits import SPLIT_NAMES, TRAIN

_SALT = 0x3C6EF372


@dataclass(frozen=True)
class EvaluationSet:
    """One split's evaluation input, in ``evaluate_embeddings``'s terms.

    ``users (u,)`` str, sorted; ``test_users (t,)`` int64 row in ``users`` of each
    held-out row; ``test_items (t,)`` int64 vocabulary index of its item (-1 outside
    the vocabulary); ``seen_indptr (u + 1,)`` and ``seen_items (s,)`` int64: user ``r``'s
    distinct training items are ``seen_items[seen_indptr[r]:seen_indptr[r + 1]]``
    (sorted vocabulary indices).
    """

    split: str
    users: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    seen_indptr: np.ndarray
    seen_items: np.ndarray

    def seen(self) -> list[np.ndarray]:
        """Per-user training items, the ``seen`` argument of ``evaluate_embeddings``."""
        return np.split(self.seen_items, self.seen_indptr[1:-1])

    @property
    def nbytes(self) -> int:
        arrays = (self.test_users, self.test_items, self.seen_indptr, self.seen_items)
        return sum(a.nbytes for a in arrays)


def select_users(candidates: np.ndarray, max_users: int | None, seed: int) -> np.ndarray:
    """All ``candidates`` (sorted), or the ``max_users`` with the smallest keyed hash."""
    candidates = np.sort(np.asarray(candidates, dtype=str))
    if max_users is None or max_users >= len(candidates):
        return candidates
    keys = tf.strings.to_hash_bucket_strong(candidates, 1 << 62, key=[seed, _SALT]).numpy()
    chosen = np.lexsort((candidates, keys))[:max_users]
    return np.sort(candidates[chosen])


def collect_evaluation(
    data: StreamingData,
    users: Mapping[str, np.ndarray],
    log: Log = print,
    every: float = 30.0,
) -> dict[str, EvaluationSet]:
    """One pass collecting the ``EvaluationSet`` of each split in ``users``
    (``{"validation": ids, "test": ids}``; ids as ``select_users`` returns them)."""
    for split in users:
        if split not in SPLIT_NAMES[1:]:
            raise InputError(f"cannot evaluate split {split!r}; valid: validation, test")
    rule = data.rule
    item_index = _index_table(data.items)
    user_rows = {split: _index_table(ids) for split, ids in users.items()}
    parts: dict[str, list[np.ndarray]] = {
        f"{split}_{kind}": [] for split in users
        for kind in ("test_users", "test_items", "seen_pairs")
    }
    progress = RateLog("evaluation pass", log, every)

    def select(chunk):
        rows = keep_rows(chunk)
        codes = rule.assign(rows)
        items = item_index.lookup(rows["item_id"])
        out = {}
        for split, table in user_rows.items():
            row = table.lookup(rows["user_id"])
            held = (codes == SPLIT_NAMES.index(split)) & (row >= 0)
            seen = (codes == TRAIN) & (row >= 0) & (items >= 0)
            out[f"{split}_test_users"] = tf.boolean_mask(row, held)
            out[f"{split}_test_items"] = tf.boolean_mask(items, held)
            pairs = tf.cast(row, tf.int64) * len(data.items) + tf.cast(items, tf.int64)
            out[f"{split}_seen_pairs"] = tf.boolean_mask(pairs, seen)
        out["kept_rows"] = tf.size(codes)
        return out

    def add(chunk) -> None:
        for key, values in parts.items():
            values.append(chunk[key].numpy())
        progress.add(int(chunk["kept_rows"]), position(chunk, data.shards))

    for_each_chunk(data.shards, add, transform=select)
    result = {}
    for split, ids in users.items():
        arrays = {kind: np.concatenate(parts[f"{split}_{kind}"]).astype(np.int64)
                  for kind in ("test_users", "test_items", "seen_pairs")}
        indptr, seen_items = _csr(arrays["seen_pairs"], len(ids), len(data.items))
        result[split] = EvaluationSet(split, np.asarray(ids), arrays["test_users"],
                                      arrays["test_items"], indptr, seen_items)
    progress.done(", ".join(
        f"{s}: {len(e.users):,} users, {len(e.test_users):,} held-out rows, "
        f"{len(e.seen_items):,} training pairs, {e.nbytes / 1e6:.1f} MB"
        for s, e in result.items()
    ))
    return result


def _index_table(ids: np.ndarray) -> tf.lookup.StaticHashTable:
    """Id -> position in ``ids`` (int32), -1 for others."""
    initializer = tf.lookup.KeyValueTensorInitializer(
        tf.constant(np.asarray(ids, dtype=str)), tf.range(len(ids), dtype=tf.int32)
    )
    return tf.lookup.StaticHashTable(initializer, default_value=-1)


def _csr(pairs: np.ndarray, num_rows: int, num_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``row * num_columns + column`` keys as ``(indptr (num_rows + 1,), columns)``."""
    pairs = np.unique(pairs)
    counts = np.bincount(pairs // num_columns, minlength=num_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, (pairs % num_columns).astype(np.int64)
