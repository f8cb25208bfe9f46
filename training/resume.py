"""What ``train --resume`` accepts: the run's own config, with a short list of changes.

A resumed run must be the run it continues: the data it trains on, the model whose
checkpoint it restores and the way it learns and is judged stay as they were. Only
keys that change neither the epochs already trained nor the meaning of their metrics
may change, and each change is recorded in ``run.json`` (``resumes``):

* ``training.epochs``: train longer (or stop sooner, but never below the epochs the
  checkpoint already holds). Each epoch's data order depends on the seed and the
  epoch alone, so the result equals a run started with the new value.
* ``training.early_stopping_patience``: wait longer (or less) for an improvement. It
  only decides when to stop; a resumed run equals a run started with the new value
  unless the old value had already stopped it or the new one is below the current
  wait count (it then stops at once).
* ``evaluation.chunk_size``: how many users one evaluation matmul scores (memory
  only, not the metrics).

Everything else (``data.*``, ``model.*``, the rest of ``training.*`` and
``evaluation.*``) is refused, naming each key as ``old -> new``. Nothing here imports
TensorFlow, so a refusal answers before TensorFlow loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training import rundir
from training.config import Config
from training.errors import InputError

RESUMABLE_KEYS = ("training.epochs", "training.early_stopping_patience", "evaluation.chunk_size")


def config_changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (old, new)}`` for every key whose value differs."""
    before, after = old.to_dict(), new.to_dict()
    changes = {}
    for section in before.keys() | after.keys():
        keys = before.get(section, {}).keys() | after.get(section, {}).keys()
        for key in sorted(keys):
            a, b = before.get(section, {}).get(key), after.get(section, {}).get(key)
            if a != b:
                changes[f"{section}.{key}"] = (a, b)
    return dict(sorted(changes.items()))


def check_resume(run_dir: Path, config: Config) -> tuple[dict[str, tuple[Any, Any]], int]:
    """Checks that ``run_dir`` can be resumed with ``config``.

    Returns the allowed changes and the epochs its latest checkpoint holds; raises
    ``InputError`` for a complete run, a run without a checkpoint, or a refused change.
    """
    info = rundir.read_info(run_dir)
    if info.get("status") == "complete":
        raise InputError(f"run {run_dir} is already complete; nothing to resume")
    completed = rundir.latest_checkpoint_epoch(run_dir)
    if completed is None:
        raise InputError(f"cannot resume {run_dir}: it has no checkpoint")
    changes = config_changes(rundir.read_config(run_dir), config)
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_KEYS}
    if refused:
        listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in refused.items())
        raise InputError(
            f"cannot resume {run_dir} with a changed {listed}; a resumed run keeps its "
            f"config except {', '.join(RESUMABLE_KEYS)} (start a new --run-dir instead)"
        )
    if config.training.epochs < completed:
        raise InputError(
            f"cannot resume {run_dir} with training.epochs={config.training.epochs}: "
            f"its checkpoint already holds {completed} epochs"
        )
    return changes, completed
