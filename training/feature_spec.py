"""The feature spec of the towers: ``[model.user_features]``, ``[model.item_features]``,
``[model.query_context]``.

Each table maps a feature name to its settings::

    [model.user_features.user_id]
    type = "id"
    [model.user_features.age]
    type = "numeric"
    buckets = [18, 25, 35, 45, 50, 56]
    [model.user_features.history]
    type = "history"
    length = 20
    [model.query_context.timestamp]
    type = "timestamp"
    num_buckets = 1000

Where the values come from: ``user_features`` from the user table joined on
``user_id`` (``history`` from the user's interactions strictly before the current one),
``item_features`` from the item table joined on ``item_id``, ``query_context`` from the
interaction itself (at serving time: the request). The feature name is the key of the
value in a training batch and in an export's signature, so names are unique across the
three tables. An empty table means the default: ``user_id`` (``item_id``) as an ``id``.

Parsing (``parse_feature_table``) and checks (``validate_features``) raise
``InputError`` with one line naming the key. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from training.errors import InputError

FEATURE_TYPES = (
    "id", "categorical", "multi_categorical", "numeric", "text", "timestamp", "history",
)
POOLINGS = ("mean", "gru", "attention")  # mirrors tfrs_cosine.features.POOLINGS
FEATURE_TABLES = ("user_features", "item_features", "query_context")
ID_FEATURES = {"user_features": "user_id", "item_features": "item_id"}
# Batch keys with another meaning, and an input name of the export's `recommend`.
RESERVED_NAMES = ("weight", "item_probability", "exclude_item_ids")
TYPES_BY_TABLE = {
    "user_features": ("id", "categorical", "multi_categorical", "numeric", "text", "history"),
    "item_features": ("id", "categorical", "multi_categorical", "numeric", "text"),
    "query_context": ("categorical", "numeric", "timestamp"),
}
KEYS_BY_TYPE = {
    "id": ("embedding_dim",),
    "categorical": ("column", "embedding_dim", "num_bins"),
    "multi_categorical": ("column", "embedding_dim", "num_bins", "separator"),
    "numeric": ("column", "embedding_dim", "buckets", "num_buckets"),
    "timestamp": ("column", "embedding_dim", "buckets", "num_buckets"),
    "text": ("column", "embedding_dim", "max_tokens"),
    "history": ("length", "pooling"),
}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


@dataclass
class FeatureConfig:
    """One feature of a tower (``[model.user_features.NAME]`` and the like)."""

    type: str
    # the column of the side table (or of the interactions, for context); "": the name
    column: str = ""
    # width of the feature's embedding; 0: model.embedding_dim
    embedding_dim: int = 0
    # categorical, multi_categorical: hash into this many rows; 0: a vocabulary of the
    # values seen in training, unknown values sharing one row
    num_bins: int = 0
    # multi_categorical: separator of the values when a file holds them as one string
    separator: str = " "
    # numeric, timestamp: explicit bucket boundaries, or num_buckets equal-width buckets
    # over the training range (boundaries measured by the data pass); a numeric
    # feature with neither is the standardized value alone
    buckets: list[float] = field(default_factory=list)
    num_buckets: int = 0
    # text: vocabulary size, the most frequent training tokens
    max_tokens: int = 10_000
    # history: the N most recent items before the interaction, pooled
    length: int = 20
    pooling: str = "mean"

    @property
    def bucketized(self) -> bool:
        return bool(self.buckets) or self.num_buckets > 0

    def to_dict(self) -> dict[str, Any]:
        """``type`` and the keys that differ from their defaults (what a config shows)."""
        defaults = FeatureConfig(self.type)
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name == "type" or getattr(self, f.name) != getattr(defaults, f.name)
        }


def default_features(table: str) -> dict[str, FeatureConfig]:
    """The features an empty table stands for."""
    if table in ID_FEATURES:
        return {ID_FEATURES[table]: FeatureConfig("id")}
    return {}


def tower_features(model: Any, tower: str) -> dict[str, FeatureConfig]:
    """Name -> feature of the ``user`` tower (its features, then the query context) or
    of the ``item`` tower, with empty tables as their defaults."""
    own = getattr(model, f"{tower}_features") or default_features(f"{tower}_features")
    return {**own, **(model.query_context if tower == "user" else {})}


def uses_features(model: Any) -> bool:
    """Whether any feature table is set (else the towers are today's ``IdTower``)."""
    return any(getattr(model, table) for table in FEATURE_TABLES)


def feature_width(feature: FeatureConfig, model: Any) -> int:
    """The width of a feature's encoding in a tower's concatenation."""
    if feature.type == "history":
        return item_id_dim(model)
    dim = feature.embedding_dim or model.embedding_dim
    if feature.type in ("numeric", "timestamp"):
        return 1 + (dim if feature.bucketized else 0)
    return dim


def item_id_dim(model: Any) -> int:
    item_id = tower_features(model, "item").get("item_id")
    return (item_id.embedding_dim if item_id else 0) or model.embedding_dim


def parse_feature_table(table: str, raw: Any) -> dict[str, FeatureConfig]:
    """``[model.TABLE]`` as read from TOML -> name -> ``FeatureConfig``."""
    where = f"model.{table}"
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a table of features, e.g. [{where}.NAME] type = ...")
    return {name: _parse_feature(f"{where}.{name}", values) for name, values in raw.items()}


def _parse_feature(where: str, raw: Any) -> FeatureConfig:
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a table with a type, e.g. [{where}] type = \"numeric\"")
    kind = raw.get("type")
    if kind is None:
        raise InputError(f"{where} needs a type; valid types: {', '.join(FEATURE_TYPES)}")
    if kind not in FEATURE_TYPES:
        raise InputError(
            f"unknown feature type {where}.type = {kind!r}; valid: {', '.join(FEATURE_TYPES)}"
        )
    hints = {f.name: f.type for f in dataclasses.fields(FeatureConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "type":
            continue
        if key not in KEYS_BY_TYPE[kind]:
            valid = ", ".join(("type", *KEYS_BY_TYPE[kind]))
            raise InputError(f"unknown key {where}.{key} for type {kind!r}; valid keys: {valid}")
        values[key] = _typed(f"{where}.{key}", value, hints[key])
    return FeatureConfig(kind, **values)


def _typed(name: str, value: Any, hint: str) -> Any:
    """Checks a value against its field's annotation; integers count as floats."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if hint == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint == "str" and isinstance(value, str):
        return value
    if hint == "list[float]" and isinstance(value, list) and all(number(v) for v in value):
        return [float(v) for v in value]
    readable = {"list[float]": "a list of numbers"}.get(hint, hint)
    raise InputError(f"config key {name} must be {readable}, got {value!r}")


def validate_features(model: Any) -> None:
    """Checks every feature table of ``model`` (a ``ModelConfig``) and the towers' widths."""
    seen: dict[str, str] = {}
    for table in FEATURE_TABLES:
        histories = 0
        for name, feature in getattr(model, table).items():
            where = f"model.{table}.{name}"
            _require(_NAME.match(name) is not None,
                     f"{where}: a feature name is a letter then letters, digits or _")
            _require(name not in RESERVED_NAMES,
                     f"{where}: {name!r} is reserved; reserved: {', '.join(RESERVED_NAMES)}")
            _require(name not in seen,
                     f"{where}: the name {name!r} is also a feature of [model.{seen.get(name)}]")
            seen[name] = table
            _check_feature(where, table, name, feature)
            histories += feature.type == "history"
        _require(histories <= 1, f"[model.{table}] has {histories} history features; keep one")
    if any(f.type == "history" for f in model.user_features.values()):
        item_id = tower_features(model, "item").get("item_id")
        _require(
            item_id is not None and item_id.type == "id",
            "a history feature embeds with the item tower's id table: "
            "add [model.item_features.item_id] type = \"id\"",
        )


def _check_feature(where: str, table: str, name: str, feature: FeatureConfig) -> None:
    kind = feature.type
    allowed = TYPES_BY_TABLE[table]
    _require(kind in allowed,
             f"{where}: type {kind!r} is not allowed in [model.{table}]; "
             f"allowed: {', '.join(allowed)}")
    id_name = ID_FEATURES.get(table)
    if kind == "id":
        _require(name == id_name, f"{where}: the id feature of [model.{table}] is named {id_name}")
    if name in ID_FEATURES.values():
        _require(name == id_name, f"{where}: {name!r} names the id of another table")
    for key in ("embedding_dim", "num_bins", "num_buckets"):
        _require(getattr(feature, key) >= 0, f"{where}.{key} must be >= 0, got "
                 f"{getattr(feature, key)}")
    _require(feature.max_tokens >= 1, f"{where}.max_tokens must be >= 1")
    _require(feature.length >= 1, f"{where}.length must be >= 1, got {feature.length}")
    _require(feature.pooling in POOLINGS,
             f"unknown {where}.pooling {feature.pooling!r}; valid: {', '.join(POOLINGS)}")
    _require(feature.separator != "", f"{where}.separator must not be empty")
    b = feature.buckets
    _require(all(math.isfinite(x) for x in b) and all(x < y for x, y in pairwise(b)),
             f"{where}.buckets must be finite and strictly increasing, got {b}")
    _require(not (b and feature.num_buckets),
             f"{where}: give buckets or num_buckets, not both")
    if kind == "timestamp":
        _require(feature.bucketized, f"{where}: a timestamp needs buckets or num_buckets "
                 "(TFRS's context-features tutorial uses num_buckets = 1000)")
    if kind == "numeric":
        _require(feature.bucketized or feature.embedding_dim == 0,
                 f"{where}.embedding_dim needs buckets or num_buckets (an unbucketed "
                 "numeric feature is one standardized value)")


def check_tower_widths(model: Any, layers_for: Any) -> None:
    """Both towers must end at the same width (``layers_for(tower)``: Dense widths)."""
    out = {}
    for tower in ("user", "item"):
        layers = layers_for(tower)
        if layers:
            out[tower] = layers[-1]
        elif uses_features(model):
            out[tower] = sum(feature_width(f, model) for f in tower_features(model, tower).values())
        else:
            out[tower] = model.embedding_dim
    _require(
        out["user"] == out["item"],
        f"user and item towers must end at the same width, got {out['user']} and "
        f"{out['item']}" + (" (with no tower layers, a feature tower's width is the sum of "
                            "its features' widths)" if uses_features(model) else ""),
    )


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)
