"""The end-to-end tier: the CLI, exports and servers in fresh processes.

Every test under ``tests/e2e`` is marked ``slow`` (``make test-fast`` runs only
``tests/unit``). Shared fixtures: tiny trained runs made through the real CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
E2E = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)


# Small enough to train in seconds on 2 CPU cores.
TINY = [
    "data.num_users=400",
    "data.num_items=120",
    "training.epochs=3",
    "training.batch_size=256",
    "evaluation.ks=[1, 5, 10, 50]",
]


def run_cli(*args: str, check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs ``tfrs-cosine ARGS`` in a fresh interpreter; returns the completed process."""
    env = dict(os.environ)
    process = subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and process.returncode != 0:
        raise AssertionError(
            f"tfrs-cosine {' '.join(args)} exited {process.returncode}:\n{process.stderr[-3000:]}"
        )
    return process


def train_tiny(run_dir: Path, *overrides: str) -> Path:
    sets = [arg for o in (*TINY, *overrides) for arg in ("--set", o)]
    run_cli("train", "--run-dir", str(run_dir), *sets, check=True)
    return run_dir


@pytest.fixture(scope="session")
def cosine_run_dir(tmp_path_factory) -> Path:
    """A complete run: cosine head with layer norm."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "cosine", "model.head=cosine")


@pytest.fixture(scope="session")
def dot_run_dir(tmp_path_factory) -> Path:
    """A complete run: dot head without layer norm."""
    return train_tiny(
        tmp_path_factory.mktemp("runs") / "dot",
        "model.head=dot",
        "model.layer_norm=false",
        "model.temperature=1.0",
    )
