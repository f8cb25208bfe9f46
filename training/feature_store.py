"""What a feature run stores for export and evaluation: ``RUN_DIR/features/``.

Written by ``tfrs-cosine train`` for a model with feature tables (an id-only run has no
``features/`` folder and is unchanged); read by ``training.modeling.load_run`` and the
export. No TensorFlow here.

    features/features.json    format, history feature and length, timestamp features,
                              serving_timestamp, the tables' columns and defaults
    features/statistics.json  feature name -> FeatureStatistics (training split only)
    features/users.npz        ids; each user-table feature; history (u, N) int32 and the
                              seen items (CSR: seen_indptr (u + 1,), seen_items) as
                              catalog rows (vocab/items.txt line - 1), -1 padding
    features/items.npz        ids (the catalog, vocab/items.txt order); each item-table feature

``FeatureTable`` holds encoder-ready values per id (``training.feature_values``) and the
value an id without a row gets (``""``, the training mean for numbers). Histories are
each user's ``N`` most recent training items as of after the last training interaction;
seen items are each user's distinct training items, most recent first.

Cost on disk and in memory: side tables O(users + items) values (fixed-width strings:
4 bytes per character of the longest value of a column); ``history`` 4 N bytes per user;
seen items 4 bytes per distinct (user, training item) pair.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import InputError
from training.feature_statistics import FeatureStatistics

FOLDER = "features"
FORMAT = 1


@dataclass
class FeatureTable:
    """Encoder-ready feature values of one tower's side table, one row per id.

    ``values``: name -> ``(r,)`` float32 or str, or ``(r, L)`` str (lists, ``""`` padding);
    ``defaults``: name -> the value of an id without a row.
    """

    ids: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    def rows(self, ids) -> np.ndarray:
        """Row of each id, -1 when absent."""
        ids = np.asarray(ids, dtype=str)
        if len(self.ids) == 0:
            return np.full(len(ids), -1, np.int64)
        order = np.argsort(self.ids, kind="stable")
        ranked = self.ids[order]
        at = np.minimum(np.searchsorted(ranked, ids), len(ranked) - 1)
        return np.where(ranked[at] == ids, order[at], -1).astype(np.int64)

    def with_default_row(self, name: str) -> np.ndarray:
        """``values[name]`` with the default prepended as row 0: ``(r + 1, ...)``."""
        values = self.values[name]
        first = np.full((1, *values.shape[1:]), self.defaults[name], dtype=values.dtype)
        return np.concatenate([first, values])

    def lookup(self, ids) -> dict[str, np.ndarray]:
        """Every feature of ``ids`` (numpy), defaults for ids without a row."""
        rows = self.rows(ids) + 1
        return {name: self.with_default_row(name)[rows] for name in self.values}


@dataclass
class StoredFeatures:
    """The contents of ``features/`` (see the module doc)."""

    statistics: dict[str, FeatureStatistics]
    users: FeatureTable
    items: FeatureTable
    history_feature: str | None = None
    history_length: int = 0
    history: np.ndarray | None = None  # (u, N) int32 catalog rows, -1 padding
    seen_indptr: np.ndarray | None = None  # (u + 1,) int64
    seen_items: np.ndarray | None = None  # (s,) int32 catalog rows, most recent first
    timestamp_features: list[str] = field(default_factory=list)
    serving_timestamp: int | None = None

    def seen(self, row: int) -> np.ndarray:
        """Catalog rows of user row ``row``'s training items, most recent first."""
        return self.seen_items[self.seen_indptr[row] : self.seen_indptr[row + 1]]


def write(run_dir: str | Path, stored: StoredFeatures) -> None:
    folder = Path(run_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    users = {"ids": stored.users.ids, **_prefixed(stored.users.values)}
    if stored.history is not None:
        users["history"] = stored.history
    if stored.seen_indptr is not None:
        users["seen_indptr"], users["seen_items"] = stored.seen_indptr, stored.seen_items
    _write_npz(folder / "users.npz", users)
    _write_npz(folder / "items.npz", {"ids": stored.items.ids, **_prefixed(stored.items.values)})
    statistics = {name: s.to_dict() for name, s in stored.statistics.items()}
    _write_text(folder / "statistics.json", json.dumps(statistics, indent=1) + "\n")
    info = {
        "format": FORMAT,
        "history_feature": stored.history_feature,
        "history_length": stored.history_length,
        "timestamp_features": stored.timestamp_features,
        "serving_timestamp": stored.serving_timestamp,
        "user_defaults": _json_values(stored.users.defaults),
        "item_defaults": _json_values(stored.items.defaults),
    }
    _write_text(folder / "features.json", json.dumps(info, indent=1) + "\n")


def read_statistics(run_dir: str | Path) -> dict[str, FeatureStatistics]:
    """``features/statistics.json`` (all build_model needs)."""
    path = Path(run_dir) / FOLDER / "statistics.json"
    raw = _read_json(path)
    try:
        return {name: FeatureStatistics.from_dict(values) for name, values in raw.items()}
    except (TypeError, AttributeError) as e:
        raise InputError(f"{path} does not hold feature statistics: {e}") from None


def read(run_dir: str | Path) -> StoredFeatures:
    """Everything in ``features/``; ``InputError`` naming the file when one is missing or bad."""
    folder = Path(run_dir) / FOLDER
    info = _read_json(folder / "features.json")
    if info.get("format") != FORMAT:
        raise InputError(f"{folder / 'features.json'} has format {info.get('format')!r}, "
                         f"expected {FORMAT}")
    users = _read_npz(folder / "users.npz")
    items = _read_npz(folder / "items.npz")
    return StoredFeatures(
        statistics=read_statistics(run_dir),
        users=FeatureTable(users["ids"], _unprefixed(users), info["user_defaults"]),
        items=FeatureTable(items["ids"], _unprefixed(items), info["item_defaults"]),
        history_feature=info["history_feature"],
        history_length=int(info["history_length"]),
        history=users.get("history"),
        seen_indptr=users.get("seen_indptr"),
        seen_items=users.get("seen_items"),
        timestamp_features=list(info["timestamp_features"]),
        serving_timestamp=info["serving_timestamp"],
    )


def exists(run_dir: str | Path) -> bool:
    return (Path(run_dir) / FOLDER / "features.json").is_file()


# Feature columns are stored as "feature:NAME" so no feature name can collide with "ids",
# "history" or the seen arrays.
_PREFIX = "feature:"


def _prefixed(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {_PREFIX + name: v for name, v in values.items()}


def _unprefixed(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len(_PREFIX):]: v for k, v in arrays.items() if k.startswith(_PREFIX)}


def _json_values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in values.items()}


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as f:
        np.savez(f, **{k: _storable(v) for k, v in arrays.items()})
    os.replace(temporary, path)


def _storable(values: np.ndarray) -> np.ndarray:
    """Object arrays of strings as fixed-width unicode (readable without pickle)."""
    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"feature run is missing {path}")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path} is not a JSON object")
    return value


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"feature run is missing {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
