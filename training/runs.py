"""``tfrs-cosine runs``: run directories at a glance, from ``run.json`` and ``config.toml``.

Per run: the status, whether its process is alive (``training.locking``), epochs done
of those configured, the best monitored validation value and the head. A ``running``
run whose process is gone (killed, machine lost) shows ``interrupted (process gone)``.
No TensorFlow: it answers in a fraction of a second, and costs one small file read
per run directory.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training import rundir
from training.errors import InputError
from training.locking import Process


@dataclass(frozen=True)
class RunState:
    path: str
    status: str  # as shown: the stored status, or "interrupted (process gone)"
    live: bool | None  # None when the run is not running
    process: str  # "pid N on HOST" of the process that runs or last ran it
    heartbeat_age: float | None
    epochs_completed: int | None
    epochs: int | None
    best_epoch: int | None
    best_value: float | None
    monitor: str | None
    head: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_runs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Each path that is a run directory, else the run directories directly inside it."""
    for path in map(Path, paths):
        if (path / rundir.RUN_INFO).is_file():
            yield path
        elif path.is_dir():
            children = sorted(p for p in path.iterdir() if (p / rundir.RUN_INFO).is_file())
            if not children:
                raise InputError(f"{path} is neither a run directory nor a directory of runs")
            yield from children
        else:
            raise InputError(f"run directory not found: {path}")


def describe(path: Path, at: dt.datetime | None = None) -> RunState:
    """The state of one run directory (``at``: the time heartbeats are compared with)."""
    try:
        info = rundir.read_info(path)
    except InputError as e:
        return RunState(str(path), f"unreadable ({e})", None, "", None, *[None] * 6)
    status = str(info.get("status", "unknown"))
    process = Process.from_record(info)
    live = None
    if status == "running":
        live = process is not None and process.alive(at)
        if not live:
            status = "interrupted (process gone)"
    return RunState(
        path=str(path), status=status, live=live, process=str(process or ""),
        heartbeat_age=process.heartbeat_age(at) if process and live else None,
        epochs_completed=info.get("epochs_completed"), epochs=info.get("epochs"),
        best_epoch=info.get("best_epoch"), best_value=info.get("best_value"),
        monitor=info.get("monitor"), head=_head(path),
    )


def _head(path: Path) -> str | None:
    try:
        model = tomllib.loads((path / rundir.CONFIG).read_text()).get("model", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    head = model.get("head")
    return f"{head}+ln" if head and model.get("layer_norm") else head


def describe_runs(paths: Iterable[str | Path]) -> list[RunState]:
    return [describe(path) for path in find_runs(paths)]


def format_runs(runs: list[RunState]) -> str:
    """A plain-text table, one row per run."""
    rows = [("run", "status", "process", "epochs", "best", "head")]
    for run in runs:
        if run.live:
            beat = f", heartbeat {run.heartbeat_age:.0f} s ago" if run.heartbeat_age is not None else ""
            process = f"live: {run.process}{beat}"
        elif run.live is False:
            process = f"dead: {run.process}" if run.process else "dead"
        else:
            process = "-"
        epochs = f"{run.epochs_completed if run.epochs_completed is not None else '?'}/" \
                 f"{run.epochs if run.epochs is not None else '?'}"
        best = "-"
        if run.best_value is not None:
            metric = (run.monitor or "").replace("val_recall_at_", "val recall@")
            best = f"{metric} {run.best_value:.4f} (epoch {run.best_epoch})".strip()
        rows.append((run.path, run.status, process, epochs, best, run.head or "-"))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
