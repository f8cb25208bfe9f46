"""Side tables: the user and item feature files, joined to the interactions by id.

``read_side_table(path, id_column, what)`` reads ``data.user_features`` or
``data.item_features``: CSV, TSV or Parquet (one file, a directory or a glob of shards,
as for the interactions; TFRecord of ``tf.train.Example`` too), one row per id. CSV and
TSV values are read as text (``""`` for an empty cell); Parquet keeps its types, list
columns included. ``SideTable.rows(ids)`` is the join: each id's row, -1 when the table
has none.

Bad input is one ``InputError`` line naming the file: a missing id column, an empty id,
an id given twice, an unreadable file. Which columns a feature reads, and their types,
are checked by ``training.feature_values``.

Cost: a side table is held whole, O(rows x columns) Python objects for text columns
(tens of bytes per value); it has one row per user (item), never per interaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.errors import InputError
from training.shard_files import list_files


@dataclass(frozen=True)
class SideTable:
    """One row per id: ``ids (r,)`` str (unique) and ``columns`` name -> ``(r,)`` values.

    ``source`` names the file(s) in errors.
    """

    source: str
    ids: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def column(self, name: str, feature: str) -> np.ndarray:
        """The values of ``name``; ``InputError`` naming ``feature`` when there is no such column."""
        if name not in self.columns:
            raise InputError(
                f"{self.source} has no column {name!r} for feature {feature!r}; "
                f"columns: {', '.join(self.columns) or '(none)'}"
            )
        return self.columns[name]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Each id's row ``(n,)`` int64; -1 for an id the table does not have."""
        order = np.argsort(self.ids, kind="stable")
        ids = np.asarray(ids, dtype=str)
        if len(self.ids) == 0:
            return np.full(len(ids), -1, np.int64)
        sorted_ids = self.ids[order]
        at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        found = sorted_ids[at] == ids
        return np.where(found, order[at], -1).astype(np.int64)

    def subset(self, index: np.ndarray) -> SideTable:
        return SideTable(self.source, self.ids[index],
                         {k: v[index] for k, v in self.columns.items()})


def read_side_table(path: str, id_column: str, what: str) -> SideTable:
    """Reads the side table at ``path`` whose ids are in ``id_column``.

    ``what`` names the table in messages (``"user table"``, ``"item table"``).
    """
    files, format = list_files(path)
    source = f"{what} {path}"
    if format == "tfrecord":
        frames = [_tfrecord_frame(f) for f in files]
    else:
        frames = [_pandas_frame(f, format, what) for f in files]
    columns: dict[str, list[np.ndarray]] = {}
    for f, frame in zip(files, frames, strict=True):
        if id_column not in frame:
            raise InputError(
                f"{what} {f} has no id column {id_column!r}; columns: {', '.join(frame) or '(none)'}"
            )
        for name, values in frame.items():
            columns.setdefault(name, []).append(values)
    if any(len(parts) != len(files) for parts in columns.values()):
        raise InputError(f"the shards of {source} do not have the same columns")
    merged = {name: np.concatenate(parts) for name, parts in columns.items()}
    ids = np.array([_text(v) for v in merged.pop(id_column)], dtype=str)
    ids = np.char.strip(ids) if len(ids) else ids
    empty = np.flatnonzero(ids == "")
    if len(empty):
        raise InputError(f"{source}: row {int(empty[0]) + 1} has an empty {id_column!r}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        repeated = unique[np.argmax(counts > 1)]
        raise InputError(f"{source}: id {repeated!r} is given on more than one row")
    return SideTable(source, ids, merged)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def read_frame(path, format: str, what: str):
    """One CSV, TSV (all text, ``""`` for an empty cell) or Parquet file as a pandas frame;
    ``InputError`` naming ``what`` and the file when it is empty or unreadable."""
    import pandas as pd

    try:
        if format == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if format == "tsv" else ",", dtype=str,
                           keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} {path} is empty") from None
    except Exception as e:  # parser errors name the line; keep them on one line
        raise InputError(f"cannot read {what} {path}: {str(e).splitlines()[0]}") from None


def _pandas_frame(path: str, format: str, what: str) -> dict[str, np.ndarray]:
    frame = read_frame(path, format, what)
    return {str(name): _column_values(frame[name]) for name in frame.columns}


def _column_values(series) -> np.ndarray:
    """A column as numpy: numbers stay numeric, everything else an object array."""
    values = series.to_numpy()
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    out = np.empty(len(values), dtype=object)
    out[:] = [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
    return out


def _tfrecord_frame(path: str) -> dict[str, np.ndarray]:
    """A TFRecord of ``tf.train.Example``: a one-value feature is a scalar, more a list."""
    import tensorflow as tf

    rows: list[dict] = []
    try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            example = tf.train.Example.FromString(record).features.feature
            row = {}
            for name, feature in example.items():
                kind = feature.WhichOneof("kind")
                values = list(getattr(feature, kind).value) if kind else []
                values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                          for v in values]
                row[name] = values[0] if len(values) == 1 else values
            rows.append(row)
    except (tf.errors.OpError, ValueError) as e:
        message = e.message if isinstance(e, tf.errors.OpError) else str(e)
        raise InputError(f"cannot read {path} as TFRecord of tf.train.Example: "
                         f"{message.splitlines()[0]}") from None
    names = sorted({name for row in rows for name in row})
    out = {}
    for name in names:
        column = np.empty(len(rows), dtype=object)
        column[:] = [row.get(name) for row in rows]
        out[name] = column
    return out


def read_optional(path: str, id_column: str, what: str) -> SideTable | None:
    """``read_side_table`` for a configured path; None when the path is ``""``."""
    return read_side_table(path, id_column, what) if path else None


def describe(table: SideTable | None) -> str:
    return "none" if table is None else f"{len(table):,} rows from {table.source}"

