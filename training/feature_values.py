"""A side-table column -> the raw values an encoder takes, with the type checks.

Per feature type (``FeatureConfig.type``), what ``feature_values`` returns for ``r`` rows:

* ``numeric``: ``(r,)`` float64; an empty cell (``""``, null, NaN) is NaN, filled later
  with the training mean (``fill_missing``); text that is not a number is an
  ``InputError`` naming the feature, the file, the row and the value;
* ``categorical``, ``text``: ``(r,)`` str (``""`` for an empty cell: unknown to the encoder);
* ``multi_categorical``: ``(r, L)`` str, each row's entries (a string is split on the
  feature's ``separator``; a Parquet or TFRecord list is taken as is) padded with ``""``
  to the longest row (``L >= 1``).

Cost: one Python pass over the column, O(r) values.
"""

from __future__ import annotations

import math

import numpy as np

from training.errors import InputError
from training.feature_spec import FeatureConfig
from training.feature_statistics import split_values


def feature_values(
    name: str, feature: FeatureConfig, column: np.ndarray, source: str
) -> np.ndarray:
    """The encoder-ready values of ``column`` for feature ``name`` (see the module doc)."""
    kind = feature.type
    if kind == "numeric":
        return _numbers(name, column, source, feature.column or name)
    if kind == "multi_categorical":
        lists = [split_values(_as_list_or_text(v), feature.separator) for v in column]
        return pad_lists(lists)
    if kind in ("categorical", "text"):
        return np.array([_text(v) for v in column], dtype=str) if len(column) else np.zeros(0, str)
    raise InputError(f"feature {name!r} of type {kind!r} is not read from a side table")


def pad_lists(lists: list[list[str]], width: int | None = None) -> np.ndarray:
    """Lists of strings -> ``(r, L)`` str padded with ``""`` (``L``: the longest, at least 1)."""
    width = max([len(v) for v in lists] + [1]) if width is None else width
    out = np.full((len(lists), width), "", dtype=object)
    for row, values in enumerate(lists):
        out[row, : len(values)] = values[:width]
    return out.astype(str)


def fill_missing(values: np.ndarray, mean: float) -> np.ndarray:
    """Numeric values with NaN (missing) replaced by ``mean``, as float32."""
    return np.where(np.isnan(values), mean, values).astype(np.float32)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a Parquet number used as a category: "3", not "3.0"
    return str(value)


def _as_list_or_text(value):
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_text(v) for v in value]
    return _text(value)


def _numbers(name: str, column: np.ndarray, source: str, column_name: str) -> np.ndarray:
    if column.dtype.kind in "biuf":
        values = column.astype(np.float64)
    else:
        values = np.empty(len(column), np.float64)
        for row, value in enumerate(column):
            if isinstance(value, (list, tuple, np.ndarray)):
                _wrong_type(name, source, column_name, row, value)
            text = _text(value).strip() if not isinstance(value, (int, float)) else value
            if isinstance(text, str) and text == "":
                values[row] = np.nan
                continue
            try:
                values[row] = float(text)
            except ValueError:
                _wrong_type(name, source, column_name, row, value)
    bad = np.isinf(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        _wrong_type(name, source, column_name, row, column[row])
    return values


def _wrong_type(name: str, source: str, column: str, row: int, value) -> None:
    raise InputError(
        f"feature {name!r} is numeric but {source} column {column!r} has {str(value)[:40]!r} "
        f"at row {row + 1}"
    )
