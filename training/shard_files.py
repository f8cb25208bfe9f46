"""Which files a file source names: one file, a directory or a glob, and their format.

No TensorFlow here: ``training.data`` asks ``is_sharded`` before deciding how to read.
"""

from __future__ import annotations

import glob
from pathlib import Path

from training.errors import InputError

FORMATS = ("csv", "tsv", "parquet", "tfrecord")
_SUFFIXES = {
    ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
    ".tfrecord": "tfrecord", ".tfrecords": "tfrecord", ".tfr": "tfrecord",
}

def is_sharded(path: str, format: str = "") -> bool:
    """Whether ``path`` needs the shard reader: a directory, a glob, or TFRecord."""
    return Path(path).is_dir() or glob.has_magic(path) or _format_of(path, format) == "tfrecord"


def _format_of(path: str, format: str = "") -> str:
    if format:
        return format
    return _SUFFIXES.get(Path(path).suffix.lower(), "")


def list_files(path: str, format: str = "") -> tuple[tuple[str, ...], str]:
    """The shard files ``path`` names (sorted) and their format.

    A directory contributes its files except hidden ones and ones starting with ``_``
    (``_SUCCESS``, ``.crc`` files of Spark and Hadoop writers); a glob its matches.
    Without ``format``, the suffix decides; shards of different formats are an error.
    """
    if Path(path).is_dir():
        files = sorted(
            str(p) for p in Path(path).iterdir()
            if p.is_file() and not p.name.startswith((".", "_"))
        )
        if not files:
            raise InputError(f"data directory {path} has no data files")
    elif glob.has_magic(path):
        files = sorted(f for f in glob.glob(path) if Path(f).is_file())
        if not files:
            raise InputError(f"data glob {path} matches no file")
    elif Path(path).is_file():
        files = [path]
    else:
        raise InputError(f"data file not found: {path}")
    if format:
        return tuple(files), format
    formats = {f: _format_of(f) for f in files}
    for f, found in formats.items():
        if not found:
            raise InputError(
                f"data file {f}: cannot tell its format from the suffix; set data.format "
                f"to one of {', '.join(FORMATS)}"
            )
        if found != formats[files[0]]:
            raise InputError(
                f"data file {f} is {found} but {files[0]} is {formats[files[0]]}; "
                "a source's shards must share one format"
            )
    return tuple(files), formats[files[0]]
