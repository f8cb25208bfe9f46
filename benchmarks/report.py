"""Where a benchmark's results go: the markdown to stdout and ``--out``, raw numbers to ``--json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(text: str, out: Path | None, json_path: Path | None, results: Any) -> None:
    """Prints ``text``; writes it to ``out`` and ``results`` as JSON to ``json_path`` if given."""
    print(text)
    if out:
        out.write_text(text + "\n")
    if json_path:
        json_path.write_text(json.dumps(results, indent=1))
