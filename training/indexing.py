"""Ids -> positions in a catalog, and per-row column sets, with array operations only.

Both cost O((n + m) log n) comparisons for a catalog of n ids and m queries, with no
Python loop over rows (``searchsorted`` on the sorted catalog).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def catalog_index(catalog: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each of ``ids`` ``(m,)`` in ``catalog`` ``(n,)``; -1 where absent.

    The catalog need not be sorted. An id listed more than once maps to its last
    position (as ``{id: k for k, id in enumerate(catalog)}`` would). Returns ``(m,)``
    int64.
    """
    catalog, ids = np.asarray(catalog), np.asarray(ids)
    if len(catalog) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    order = np.argsort(catalog, kind="stable")
    ordered = catalog[order]
    # side="right" - 1: the last of equal ids, which a stable sort keeps in catalog order.
    position = np.searchsorted(ordered, ids, side="right") - 1
    safe = np.maximum(position, 0)
    found = (position >= 0) & (ordered[safe] == ids)
    return np.where(found, order[safe], -1).astype(np.int64)


@dataclass(frozen=True)
class RowColumns:
    """Sorted distinct column indices per row, CSR style: row ``r`` holds
    ``columns[offsets[r]:offsets[r + 1]]``.

    ``offsets`` is ``(rows + 1,)`` int64, ``columns`` ``(nnz,)`` int64. Memory O(rows + nnz).
    """

    offsets: np.ndarray
    columns: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_pairs(
        cls, rows: np.ndarray, columns: np.ndarray, num_rows: int, num_columns: int
    ) -> RowColumns:
        """From parallel ``(row, column)`` arrays; pairs with a negative index are dropped
        and duplicates kept once. O(nnz log nnz)."""
        rows, columns = np.asarray(rows, np.int64), np.asarray(columns, np.int64)
        valid = (rows >= 0) & (columns >= 0)
        keys = np.unique(rows[valid] * num_columns + columns[valid])
        counts = np.bincount(keys // num_columns, minlength=num_rows)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(offsets, keys % num_columns)

    @classmethod
    def from_lists(cls, lists: list[np.ndarray], num_columns: int) -> RowColumns:
        """From one array of column indices per row."""
        sizes = np.array([len(c) for c in lists], dtype=np.int64)
        rows = np.repeat(np.arange(len(lists), dtype=np.int64), sizes)
        columns = np.concatenate([np.asarray(c, np.int64) for c in lists] or [np.zeros(0, np.int64)])
        return cls.from_pairs(rows, columns, len(lists), max(num_columns, 1))

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows - start, columns)`` of rows ``start:stop``, for fancy indexing a block."""
        lo, hi = self.offsets[start], self.offsets[stop]
        sizes = np.diff(self.offsets[start : stop + 1])
        return np.repeat(np.arange(stop - start), sizes), self.columns[lo:hi]
