"""Run directories: what ``tfrs-cosine train`` writes and ``evaluate``/``export`` read.

Layout (docs/architecture.md)::

    run.json  config.toml  vocab/users.txt  vocab/items.txt  model/  checkpoints/
    metrics.json  history.json  logs/

``run.json`` carries ``status``: ``running`` while training, ``complete`` once the
final weights and metrics are written, ``failed`` or ``interrupted`` otherwise.
JSON files are written to a temporary name and renamed, so a crash never leaves a
truncated one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from training.config import Config, config_from_dict, read_toml
from training.errors import InputError

RUN_INFO = "run.json"
CONFIG = "config.toml"
CHECKPOINTS = "checkpoints"
MODEL = "model"
METRICS = "metrics.json"
HISTORY = "history.json"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)


def read_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_INFO
    if not Path(run_dir).is_dir():
        raise InputError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise InputError(f"{run_dir} is not a run directory (no {RUN_INFO})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from None


def mark(run_dir: Path, status: str, **fields: Any) -> None:
    info = read_info(run_dir)
    info.update(status=status, updated=_now(), **fields)
    write_json(Path(run_dir) / RUN_INFO, info)


def write_start(
    run_dir: Path, config: Config, data, split, versions: dict[str, str], resumed: bool = False
) -> None:
    """Writes config, vocabularies and a ``running`` run.json."""
    run_dir = Path(run_dir)
    if resumed:
        mark(run_dir, "running", resumed=_now())
        return
    (run_dir / "vocab").mkdir(parents=True, exist_ok=True)
    (run_dir / "vocab" / "users.txt").write_text("\n".join(data.users.tolist()) + "\n")
    (run_dir / "vocab" / "items.txt").write_text("\n".join(data.items.tolist()) + "\n")
    (run_dir / CONFIG).write_text(config.to_toml())
    write_json(
        run_dir / RUN_INFO,
        {
            "status": "running",
            "started": _now(),
            "data": {
                "description": data.description,
                "num_interactions": len(data.interactions),
                "num_users": len(data.users),
                "num_items": len(data.items),
                "train": len(split.train),
                "validation": len(split.validation),
                "test": len(split.test),
            },
            "versions": versions,
        },
    )


def write_finish(run_dir: Path, metrics: dict, history: list[dict]) -> None:
    """Writes metrics and history (after the final weights), then marks the run complete."""
    run_dir = Path(run_dir)
    write_json(run_dir / METRICS, metrics)
    write_json(run_dir / HISTORY, history)
    training = metrics.get("training", {})
    mark(
        run_dir,
        "complete",
        finished=_now(),
        epochs_completed=training.get("epochs"),
        best_epoch=training.get("best_epoch"),
    )


def read_config(run_dir: Path) -> Config:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise InputError(f"{run_dir} has no {CONFIG}")
    return config_from_dict(read_toml(path, "run config"))


def read_vocabulary(run_dir: Path, name: str) -> list[str]:
    path = Path(run_dir) / "vocab" / f"{name}.txt"
    if not path.is_file():
        raise InputError(f"{run_dir} has no vocabulary {path.name}")
    return path.read_text().splitlines()


def load_metrics(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / METRICS
    return json.loads(path.read_text()) if path.is_file() else {}
