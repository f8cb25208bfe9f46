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
from training.feature_spec import (
    FEATURE_TABLES,
    FeatureConfig,
    check_tower_widths,
    parse_feature_table,
    validate_features,
)

HEAD_NAMES = ("cosine", "dot")  # mirrors tfrs_cosine.HEADS without importing TensorFlow
SPLITS = ("random", "leave-last-out", "time", "hash-user", "hash-interaction")
STREAMING_SPLITS = ("time", "hash-user", "hash-interaction")  # decided per row (streaming)
OPTIMIZERS = ("adagrad", "adam", "lazy_adam", "sgd")
FILE_FORMATS = ("", "csv", "tsv", "parquet", "tfrecord")


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
    # file: CSV, TSV, Parquet or TFRecord; one file, a directory or a glob of shards;
    # `columns` maps our names to the file's column names.
    path: str = ""
    format: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    interleave_files: int = 4  # shards read at once by the streaming pipeline
    deterministic_order: bool = True  # same row order for the same (seed, epoch)
    # vocabularies: from files (one id per line), else counted; the rest maps to OOV
    user_vocabulary: str = ""
    item_vocabulary: str = ""
    min_count: int = 1
    max_users: int = 0  # 0: no limit
    max_items: int = 0
    # splits
    split: str = "random"
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    split_seed: int = 42
    # time split: test from test_start, validation from validation_start (timestamps);
    # unset: quantiles of the timestamps by the fractions
    test_start: int | None = None
    validation_start: int | None = None


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
    # Remedies for anisotropic (cone-shaped) cosine embeddings; all off by default.
    min_temperature: float = 0.0  # floor of a learned temperature; 0: none (1e-3)
    center: bool = False  # subtract the towers' moving mean output before the head
    uniformity_weight: float = 0.0  # Wang & Isola's uniformity loss term, per example
    # feature towers (training/feature_spec.py); all empty: today's id towers
    user_features: dict[str, FeatureConfig] = field(default_factory=dict)
    item_features: dict[str, FeatureConfig] = field(default_factory=dict)
    query_context: dict[str, FeatureConfig] = field(default_factory=dict)

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
    shuffle_buffer: int = 100_000  # rows shuffled together by the streaming pipeline


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
        tables = {
            name: {k: v for k, v in dataclasses.asdict(getattr(self, name)).items() if v is not None}
            for name in SECTIONS
        }
        for key in FEATURE_TABLES:  # written only when set, each feature by its set keys
            del tables["model"][key]
            if getattr(self.model, key):
                tables["model"][key] = {n: f.to_dict() for n, f in getattr(self.model, key).items()}
        return tables

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
        raw = read_toml(path, "config file")
    for override in overrides:
        section, key, value = _parse_override(override)
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parses a UTF-8 TOML file; any unreadable, non-UTF-8 or invalid file is an ``InputError``."""
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{what} {path} is not valid TOML: {e}") from None


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
            if name == "model" and key in FEATURE_TABLES:
                continue
            _check_type(f"{name}.{key}", value, typing.get_type_hints(cls)[key])
        if name == "model":
            features = {k: parse_feature_table(k, values[k]) for k in FEATURE_TABLES if k in values}
            values = {**values, **features}
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
    require(
        d.format in FILE_FORMATS,
        f"unknown data.format {d.format!r}; valid: {', '.join(FILE_FORMATS[1:])}",
    )
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
    _validate_streaming(d, require)
    require(
        m.head in HEAD_NAMES, f"unknown model.head {m.head!r}; valid heads: {', '.join(HEAD_NAMES)}"
    )
    require(m.embedding_dim >= 1, f"model.embedding_dim must be >= 1, got {m.embedding_dim}")
    require(
        m.temperature > 0 and math.isfinite(m.temperature),
        f"model.temperature must be a positive number, got {m.temperature}",
    )
    require(m.num_hard_negatives >= 0, "model.num_hard_negatives must be >= 0")
    require(
        m.min_temperature == 0 or 1e-3 <= m.min_temperature <= m.temperature,
        "model.min_temperature must be 0 (no floor) or in [0.001, model.temperature], "
        f"got {m.min_temperature}",
    )
    require(
        m.uniformity_weight >= 0 and math.isfinite(m.uniformity_weight),
        f"model.uniformity_weight must be a number >= 0, got {m.uniformity_weight}",
    )
    for tower in ("user", "item"):
        layers = m.layers_for(tower)
        require(all(w >= 1 for w in layers), f"model tower layer widths must be >= 1, got {layers}")
    validate_features(m)
    check_tower_widths(m, m.layers_for)
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
    require(t.shuffle_buffer >= 1, f"training.shuffle_buffer must be >= 1, got {t.shuffle_buffer}")
    require(len(e.ks) > 0 and all(k >= 1 for k in e.ks), f"evaluation.ks must be >= 1, got {e.ks}")
    require(len(set(e.ks)) == len(e.ks), f"evaluation.ks has a repeated value: {e.ks}")
    require(e.monitor_k >= 1, f"evaluation.monitor_k must be >= 1, got {e.monitor_k}")
    require(e.chunk_size >= 1, f"evaluation.chunk_size must be >= 1, got {e.chunk_size}")
    require(
        e.validation_users >= 0,
        f"evaluation.validation_users must be >= 0 (0: all), got {e.validation_users}",
    )


def validate_catalog(config: Config, num_items: int) -> None:
    """Checks the evaluation cutoffs against the catalog (once the data is loaded).

    A cutoff of at least the catalog size ranks every item: recall@K is then 1.0 for
    any model, and early stopping on it would watch a constant.
    """
    e = config.evaluation
    if e.monitor_k >= num_items:
        raise InputError(
            f"evaluation.monitor_k={e.monitor_k} is not below the catalog size ({num_items} "
            f"items): validation recall@{e.monitor_k} would be 1.0 for any model"
        )
    too_large = [k for k in e.ks if k >= num_items]
    if too_large:
        raise InputError(
            f"evaluation.ks {too_large} not below the catalog size ({num_items} items): "
            "every item would be in the top K"
        )


def _validate_streaming(d: DataConfig, require) -> None:
    """The keys of streaming sources, vocabularies and per-row splits."""
    require(d.interleave_files >= 1, f"data.interleave_files must be >= 1, got {d.interleave_files}")
    require(d.min_count >= 1, f"data.min_count must be >= 1, got {d.min_count}")
    for key in ("max_users", "max_items"):
        require(getattr(d, key) >= 0, f"data.{key} must be >= 0 (0: no limit), got {getattr(d, key)}")
    if d.split in STREAMING_SPLITS:
        require(
            d.test_fraction + d.validation_fraction < 1,
            f"data.test_fraction + data.validation_fraction must be < 1 for split {d.split!r}",
        )
    cutoffs = d.test_start is not None or d.validation_start is not None
    require(not cutoffs or d.split == "time", "data.test_start and data.validation_start need "
            "data.split = 'time'")
    require(
        d.validation_start is None or d.test_start is not None,
        "data.validation_start needs data.test_start",
    )
    require(
        d.validation_start is None or d.test_start is None or d.validation_start <= d.test_start,
        f"data.validation_start ({d.validation_start}) must be <= data.test_start ({d.test_start})",
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
