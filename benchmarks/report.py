"""Where a benchmark's results go: the markdown to stdout and ``--out``, raw numbers to ``--json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np


def emit(text: str, out: Path | None, json_path: Path | None, results: Any) -> None:
    """Prints ``text``; writes it to ``out`` and ``results`` as JSON to ``json_path`` if given."""
    print(text)
    if out:
        out.write_text(text + "\n")
    if json_path:
        json_path.write_text(json.dumps(results, indent=1))


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for benchmark results: numpy scalars and dataclasses."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
