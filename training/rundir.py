"""Run directories: what ``tfrs-cosine train`` writes and ``evaluate``/``export``/``runs`` read.

Layout (docs/architecture.md)::

    run.json  config.toml  vocab/users.txt  vocab/items.txt  model/  checkpoints/
    metrics.json  history.json  logs/  .lock

``run.json`` carries ``status``: ``running`` while training, ``complete`` once the
final weights and metrics are written, ``failed`` or ``interrupted`` otherwise; the
process that runs or ran the job (``pid``, ``host``, ``pid_start``, ``heartbeat``); its
progress (``epochs``, ``epochs_completed``, ``best_epoch``, ``best_value``,
``monitor``); and ``resumes``, one entry per ``--resume`` with the keys it changed.
JSON files are written to a temporary name and renamed, so a crash never leaves a
truncated one; within a process, updates of ``run.json`` (the job and its heartbeat
thread) are serialized. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from training.config import Config, config_from_dict, read_toml
from training.errors import InputError
from training.locking import LOCK, Process, timestamp

RUN_INFO = "run.json"
CONFIG = "config.toml"
CHECKPOINTS = "checkpoints"
MODEL = "model"
METRICS = "metrics.json"
HISTORY = "history.json"
_INFO_LOCK = threading.Lock()


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Writes ``path`` through a temporary file and a rename (never half a file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def read_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_INFO
    if not Path(run_dir).is_dir():
        raise InputError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise InputError(f"{run_dir} is not a run directory (no {RUN_INFO})")
    try:
        info = json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(info, dict):
        raise InputError(f"{path} is not a JSON object")
    return info


def update_info(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Sets ``fields`` in ``run.json`` (read, update, atomic rewrite); returns the result."""
    with _INFO_LOCK:
        info = read_info(run_dir)
        info.update(updated=timestamp(), **fields)
        write_json(Path(run_dir) / RUN_INFO, info)
        return info


def mark(run_dir: Path, status: str, **fields: Any) -> None:
    update_info(run_dir, status=status, **fields)


def heartbeat(run_dir: Path) -> None:
    update_info(run_dir, heartbeat=timestamp())


def check_new(run_dir: Path) -> None:
    """Raises ``InputError`` unless ``run_dir`` is absent or empty (a held lock file aside)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and (
        not run_dir.is_dir() or any(p.name != LOCK for p in run_dir.iterdir())
    ):
        holder = live_holder(run_dir)
        if holder is not None:
            raise InputError(f"run directory in use by {holder}: {run_dir}")
        raise InputError(
            f"run directory {run_dir} already exists; pass --resume to continue it or "
            "choose a new --run-dir"
        )


def live_holder(run_dir: Path) -> Process | None:
    """The live process of a ``running`` run, if any (``locking.Process.alive``)."""
    try:
        info = read_info(run_dir)
    except InputError:
        return None
    holder = Process.from_record(info)
    if info.get("status") == "running" and holder is not None and holder.alive():
        return holder
    return None


def write_start(
    run_dir: Path, config: Config, data, split, versions: dict[str, str], process: Process
) -> None:
    """Writes config, vocabularies and a ``running`` run.json for a new run."""
    run_dir = Path(run_dir)
    (run_dir / "vocab").mkdir(parents=True, exist_ok=True)
    (run_dir / "vocab" / "users.txt").write_text("\n".join(data.users.tolist()) + "\n")
    (run_dir / "vocab" / "items.txt").write_text("\n".join(data.items.tolist()) + "\n")
    write_text(run_dir / CONFIG, config.to_toml())
    write_json(
        run_dir / RUN_INFO,
        {
            "status": "running",
            "started": timestamp(),
            **process.record(),
            "epochs": config.training.epochs,
            "epochs_completed": 0,
            "resumes": [],
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


def write_resume(
    run_dir: Path, config: Config, changes: dict[str, tuple[Any, Any]], from_epoch: int,
    process: Process,
) -> None:
    """Marks a resumed run ``running``: the config in effect, the changes, the new process."""
    run_dir = Path(run_dir)
    write_text(run_dir / CONFIG, config.to_toml())
    resumes = read_info(run_dir).get("resumes", [])
    resumes.append({
        "time": timestamp(), "from_epoch": from_epoch, "pid": process.pid,
        "host": process.host,
        "changed": {key: [old, new] for key, (old, new) in changes.items()},
    })
    update_info(run_dir, status="running", **process.record(), epochs=config.training.epochs,
                resumes=resumes, error=None)


def write_progress(run_dir: Path, epochs_completed: int, best_epoch: int | None,
                   best_value: float | None, monitor: str | None) -> None:
    """Records a completed epoch in ``run.json`` (after its checkpoint)."""
    update_info(run_dir, epochs_completed=epochs_completed, best_epoch=best_epoch,
                best_value=best_value, monitor=monitor, heartbeat=timestamp())


def write_finish(run_dir: Path, metrics: dict, history: list[dict]) -> None:
    """Writes metrics and history (after the final weights), then marks the run complete."""
    run_dir = Path(run_dir)
    write_json(run_dir / METRICS, metrics)
    write_json(run_dir / HISTORY, history)
    training = metrics.get("training", {})
    mark(
        run_dir,
        "complete",
        finished=timestamp(),
        epochs_completed=training.get("epochs"),
        best_epoch=training.get("best_epoch"),
        best_value=training.get("best_value"),
        weights_epoch=training.get("weights_epoch"),
    )


def read_config(run_dir: Path) -> Config:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise InputError(f"{run_dir} has no {CONFIG}")
    return config_from_dict(read_toml(path, "run config"))


def latest_checkpoint_epoch(run_dir: Path) -> int | None:
    """Epochs completed by the latest training checkpoint (``ckpt-N``), read without
    TensorFlow from ``checkpoints/checkpoint``; None when there is none."""
    path = Path(run_dir) / CHECKPOINTS / "checkpoint"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    match = re.search(r'^model_checkpoint_path: "(?:.*/)?ckpt-(\d+)"', text, re.MULTILINE)
    return int(match.group(1)) if match else None


def read_vocabulary(run_dir: Path, name: str) -> list[str]:
    path = Path(run_dir) / "vocab" / f"{name}.txt"
    if not path.is_file():
        raise InputError(f"{run_dir} has no vocabulary {path.name}")
    return path.read_text().splitlines()


def load_metrics(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / METRICS
    return json.loads(path.read_text()) if path.is_file() else {}
