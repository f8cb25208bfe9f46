"""The run directory an export reads: checked without TensorFlow, then loaded.

``check_run`` reads ``run.json``, ``config.toml`` and both vocabularies (no TensorFlow):
a missing, unfinished, corrupt or non-UTF-8 run is refused in well under a second with
one line naming the file. ``load_run`` then restores the trained model. Every problem
becomes an ``ExportError``. Cost: reading the vocabularies, O(users + items).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import ExportError
from training import rundir
from training.errors import InputError


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turns the ways reading ``path`` can fail into one-line ``ExportError``s."""
    try:
        yield
    except InputError as e:
        raise ExportError(str(e)) from None
    except UnicodeDecodeError as e:
        raise ExportError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ExportError(f"{path} is not valid TOML: {e}") from None
    except OSError as e:
        raise ExportError(f"cannot read {path}: {e.strerror or e}") from None


@dataclass(frozen=True)
class CheckedRun:
    """A complete run whose files read: ``info`` is its ``run.json``."""

    path: Path
    info: dict[str, Any]
    num_users: int
    num_items: int


def check_run(run_dir: str | Path) -> CheckedRun:
    """Reads a run's ``run.json``, ``config.toml`` and vocabularies, without TensorFlow.

    Raises:
      ExportError: the run is missing, unfinished, or a file of it is unreadable.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} is a file, not a directory")
    with _reading(run_dir / rundir.RUN_INFO):
        info = rundir.read_info(run_dir)
    if not isinstance(info, dict):
        raise ExportError(f"{run_dir / rundir.RUN_INFO} is not a JSON object")
    if info.get("status") != "complete":
        raise ExportError(
            f"run {run_dir} is not complete (status: {info.get('status', 'unknown')}); "
            "only complete runs are exported"
        )
    with _reading(run_dir / rundir.CONFIG):
        rundir.read_config(run_dir)
    sizes = {}
    for name in ("users", "items"):
        path = run_dir / "vocab" / f"{name}.txt"
        with _reading(path):
            ids = rundir.read_vocabulary(run_dir, name)
        check_vocabulary(ids, f"vocabulary {path}")
        sizes[name] = len(ids)
    return CheckedRun(run_dir, info, sizes["users"], sizes["items"])


def check_vocabulary(ids: list[str], where: str) -> None:
    """One id per line, each once, none empty: what the lookups and the assets need.

    ``where`` names the vocabulary in the error (a file, or "the item vocabulary").
    """
    if not ids:
        raise ExportError(f"{where} is empty")
    seen: set[str] = set()
    for line, id_ in enumerate(ids, 1):
        if id_ == "" or "\n" in id_ or "\r" in id_:
            raise ExportError(f"{where} has an empty or multi-line id at line {line}: {id_!r}")
        if id_ in seen:
            raise ExportError(f"{where} repeats id {id_!r} at line {line}")
        seen.add(id_)


def load_run(run_dir: str | Path):
    """The trained run (``training.modeling.TrainedRun``); loads TensorFlow."""
    import tensorflow as tf

    from training.modeling import load_run as load

    with _reading(Path(run_dir)):
        try:
            return load(run_dir)
        except (IndexError, tf.errors.OpError) as e:  # a truncated or corrupt checkpoint
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(f"cannot restore weights of {run_dir}: {first}") from None


def card_fields(run) -> dict[str, Any]:
    """What the model card records of the run an export came from."""
    info = run.info
    return {
        "run_dir": str(Path(run.path).resolve()),
        "run": {key: info.get(key) for key in ("started", "finished", "epochs_completed", "best_epoch")},
        "dataset": info.get("data", {}),
        "metrics": run.metrics,
        "config": run.config.to_dict(),
    }
