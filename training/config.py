"""The job configuration: one dataclass tree, loaded from TOML, overridable with ``--set``.

Sections: ``[data]``, ``[model]``, ``[training]``, ``[evaluation]``. Every key is validated
up front (unknown keys, wrong types, out-of-range values) and raises ``InputError`` with
a one-line message naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.errors import InputError

HEAD_NAMES = ("cosine", "dot")  # mirrors tfrs_cosine.HEADS without importing TensorFlow
SPLITS = ("random", "leave-last-out")
OPTIMIZERS = ("adagrad", "adam", "lazy_adam", "sgd")
FILE_FORMATS = ("", "csv", "tsv", "parquet")


@dataclass
class DataConfig:
    source: str = "synthetic"
    # synthetic: the clustered simulation of Steck et al. (2024), Section 4.
    num_users: int = 2000
    num_items: int = 300
    num_clusters: int = 5
    min_items_per_user: int = 5
    max_items_per_user: int = 100
    seed: int = 0
    # file: CSV, TSV or Parquet; `columns` maps our names to the file's column names.
    path: str = ""
    format: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    # splits
    split: str = "random"
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    split_seed: int = 42


@dataclass
class ModelConfig:
    head: str = "cosine"
    embedding_dim: int = 32
    tower_layers: list[int] = field(default_factory=list)
    user_tower_layers: list[int] | None = None
    item_tower_layers: list[int] | None = None
    layer_norm: bool = False
    temperature: float = 1.0
    learn_temperature: bool = False
    remove_accidental_hits: bool = True
    logq_correction: bool = False
    num_hard_negatives: int = 0  # 0: every in-batch negative

    def layers_for(self, tower: str) -> list[int]:
        own = self.user_tower_layers if tower == "user" else self.item_tower_layers
        return list(self.tower_layers if own is None else own)


@dataclass
class TrainingConfig:
    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 0.1
    optimizer: str = "adagrad"
    early_stopping_patience: int = 3  # epochs without validation improvement; 0 disables
    seed: int = 0
    mixed_precision: bool = False


@dataclass
class EvaluationConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 50, 100])
    monitor_k: int = 10  # early stopping watches validation recall@monitor_k
    exclude_seen: bool = True  # drop items the user had in training from the ranking
    chunk_size: int = 1024  # users scored per matmul
    # Per-epoch monitoring (early stopping) scores a seeded sample of this many
    # validation users, fixed for the run; 0 = all. The final evaluation uses every user.
    validation_users: int = 10_000


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            name: {k: v for k, v in dataclasses.asdict(getattr(self, name)).items() if v is not None}
            for name in SECTIONS
        }

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
}


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Reads TOML (or defaults when ``path`` is None), applies ``section.key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file not found: {path}")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"config file {path} is not valid TOML: {e}") from None
    for override in overrides:
        section, key, value = _parse_override(override)
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> Config:
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise InputError(
            f"unknown config section(s) {sorted(unknown)}; valid sections: {', '.join(SECTIONS)}"
        )
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise InputError(f"config section [{name}] must be a table")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in fields:
                raise InputError(
                    f"unknown config key {name}.{key}; valid keys in [{name}]: {', '.join(fields)}"
                )
            _check_type(f"{name}.{key}", value, typing.get_type_hints(cls)[key])
        sections[name] = cls(**values)
    config = Config(**sections)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Range and consistency checks; raises ``InputError`` naming the key."""
    d, m, t, e = config.data, config.model, config.training, config.evaluation

    def require(ok: bool, message: str) -> None:
        if not ok:
            raise InputError(message)

    require(d.source != "", "data.source must not be empty")
    require(d.split in SPLITS, f"unknown data.split {d.split!r}; valid: {', '.join(SPLITS)}")
    require(d.format in FILE_FORMATS, f"unknown data.format {d.format!r}; valid: csv, tsv, parquet")
    require(0 < d.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {d.test_fraction}")
    require(
        0 <= d.validation_fraction < 1,
        f"data.validation_fraction must be in [0, 1), got {d.validation_fraction}",
    )
    for key in ("num_users", "num_items", "num_clusters", "min_items_per_user"):
        require(getattr(d, key) >= 1, f"data.{key} must be >= 1, got {getattr(d, key)}")
    require(
        d.max_items_per_user >= d.min_items_per_user,
        "data.max_items_per_user must be >= data.min_items_per_user",
    )
    require(d.num_clusters <= d.num_items, "data.num_clusters must be <= data.num_items")
    require(d.source != "file" or d.path != "", "data.source = 'file' needs data.path")
    require(
        m.head in HEAD_NAMES, f"unknown model.head {m.head!r}; valid heads: {', '.join(HEAD_NAMES)}"
    )
    require(m.embedding_dim >= 1, f"model.embedding_dim must be >= 1, got {m.embedding_dim}")
    require(
        m.temperature > 0 and math.isfinite(m.temperature),
        f"model.temperature must be a positive number, got {m.temperature}",
    )
    require(m.num_hard_negatives >= 0, "model.num_hard_negatives must be >= 0")
    for tower in ("user", "item"):
        layers = m.layers_for(tower)
        require(all(w >= 1 for w in layers), f"model tower layer widths must be >= 1, got {layers}")
    out = {t_: (m.layers_for(t_) or [m.embedding_dim])[-1] for t_ in ("user", "item")}
    require(
        out["user"] == out["item"],
        f"user and item towers must end at the same width, got {out['user']} and {out['item']}",
    )
    require(t.epochs >= 1, f"training.epochs must be >= 1, got {t.epochs}")
    require(t.batch_size >= 2, f"training.batch_size must be >= 2, got {t.batch_size}")
    require(
        t.learning_rate > 0 and math.isfinite(t.learning_rate),
        f"training.learning_rate must be a positive number, got {t.learning_rate}",
    )
    require(
        t.optimizer in OPTIMIZERS,
        f"unknown training.optimizer {t.optimizer!r}; valid: {', '.join(OPTIMIZERS)}",
    )
    require(t.early_stopping_patience >= 0, "training.early_stopping_patience must be >= 0")
    require(len(e.ks) > 0 and all(k >= 1 for k in e.ks), f"evaluation.ks must be >= 1, got {e.ks}")
    require(e.monitor_k >= 1, f"evaluation.monitor_k must be >= 1, got {e.monitor_k}")
    require(e.chunk_size >= 1, f"evaluation.chunk_size must be >= 1, got {e.chunk_size}")
    require(
        e.validation_users >= 0,
        f"evaluation.validation_users must be >= 0 (0: all), got {e.validation_users}",
    )


def _parse_override(text: str) -> tuple[str, str, Any]:
    name, sep, value_text = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise InputError(f"--set expects section.key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {value_text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()  # a bare word is a string: model.head=cosine
    return section, key, value


def _check_type(name: str, value: Any, annotation: Any) -> None:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        annotation = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    ok: bool
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif annotation is str:
        ok = isinstance(value, str)
    elif origin is list:
        ok = isinstance(value, list) and all(
            isinstance(v, args[0]) and not isinstance(v, bool) for v in value
        )
    elif origin is dict:
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    else:
        ok = True
    if not ok:
        readable = getattr(annotation, "__name__", str(annotation))
        raise InputError(f"config key {name} must be {readable}, got {value!r}")


def dumps_toml(tables: dict[str, dict[str, Any]]) -> str:
    """Writes a two-level table dict as TOML (the subset our configs use)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    lines = []
    for section, values in tables.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
