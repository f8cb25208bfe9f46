"""Writing interaction shards: Parquet, CSV, TSV or TFRecord, one chunk at a time.

``write_interactions`` writes in-memory interactions as N shards (tests, conversions);
``write_synthetic_shards`` streams synthetic interactions of any size to N shards for
benchmarks, holding one chunk (``WRITE_CHUNK_ROWS`` rows) plus the user and item
popularity tables (``O(users + items)``) in memory. ``tfrs-cosine data write-shards``
is its CLI.

The synthetic stream is a popularity model, not the clustered simulation of
``training.data.generate_synthetic``: user activity and item popularity follow power
laws over a random permutation of the ids, rows are independent draws, and timestamps
are the global row number (so a time split holds out the last rows written).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from training.data_cli import data_commands
from training.errors import InputError
from training.schema import Interactions

WRITE_CHUNK_ROWS = 131072
SUFFIX = {"parquet": ".parquet", "csv": ".csv", "tsv": ".tsv", "tfrecord": ".tfrecord"}
Columns = dict[str, np.ndarray]


class ShardWriter:
    """Appends column chunks (``user_id``, ``item_id`` str; optional ``timestamp`` int64,
    ``weight`` float32) to one file of a format. Use as a context manager."""

    def __init__(self, path: str | Path, format: str):
        if format not in SUFFIX:
            raise InputError(f"unknown shard format {format!r}; valid: {', '.join(SUFFIX)}")
        self.path, self.format = str(path), format
        self._writer = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()

    def write(self, columns: Columns) -> None:
        if self.format == "tfrecord":
            self._write_examples(columns)
            return
        import pyarrow as pa

        table = pa.table({name: pa.array(values) for name, values in columns.items()})
        if self._writer is None:
            self._writer = self._open(table.schema)
        self._writer.write_table(table)

    def _open(self, schema):
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetWriter(self.path, schema)
        import pyarrow.csv as pcsv

        options = pcsv.WriteOptions(delimiter="\t" if self.format == "tsv" else ",")
        return pcsv.CSVWriter(self.path, schema, write_options=options)

    def _write_examples(self, columns: Columns) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.io.TFRecordWriter(self.path)
        feature = tf.train.Feature
        encoded = {n: np.char.encode(columns[n].astype(str), "utf-8") for n in ("user_id", "item_id")}
        for row in range(len(columns["user_id"])):
            features = {n: feature(bytes_list=tf.train.BytesList(value=[encoded[n][row]]))
                        for n in encoded}
            if "timestamp" in columns:
                features["timestamp"] = feature(
                    int64_list=tf.train.Int64List(value=[int(columns["timestamp"][row])])
                )
            if "weight" in columns:
                features["weight"] = feature(
                    float_list=tf.train.FloatList(value=[float(columns["weight"][row])])
                )
            example = tf.train.Example(features=tf.train.Features(feature=features))
            self._writer.write(example.SerializeToString())


def shard_paths(out_dir: str | Path, num_shards: int, format: str) -> list[Path]:
    width = len(str(num_shards - 1))
    return [Path(out_dir) / f"part-{k:0{width}d}{SUFFIX[format]}" for k in range(num_shards)]


def write_interactions(
    interactions: Interactions, out_dir: str | Path, num_shards: int, format: str
) -> list[Path]:
    """Writes ``interactions`` as ``num_shards`` contiguous shards; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = shard_paths(out_dir, num_shards, format)
    bounds = np.linspace(0, len(interactions), num_shards + 1).astype(int)
    for path, start, stop in zip(paths, bounds[:-1], bounds[1:], strict=True):
        part = interactions.subset(np.arange(start, stop))
        columns = {"user_id": part.user_id, "item_id": part.item_id}
        if part.timestamp is not None:
            columns["timestamp"] = part.timestamp.astype(np.int64)
        if part.weight is not None:
            columns["weight"] = part.weight.astype(np.float32)
        with ShardWriter(path, format) as writer:
            writer.write(columns)
    return paths


def synthetic_chunks(
    rows: int, num_users: int, num_items: int, seed: int = 0, weights: bool = False,
    start: int = 0, stop: int | None = None,
) -> Iterator[Columns]:
    """Rows ``[start, stop)`` of the synthetic stream, ``WRITE_CHUNK_ROWS`` at a time.

    Row ``r`` depends only on ``(seed, r // WRITE_CHUNK_ROWS)``, so any row range is
    reproducible on its own. Users: activity ``~ rank^-0.5``; items: popularity
    ``~ rank^-0.9``; both over seeded permutations of ``u0..`` and ``i0..``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    stop = rows if stop is None else stop
    rng = np.random.default_rng([seed, 0])
    user_cdf = np.cumsum(np.arange(1, num_users + 1, dtype=np.float64) ** -0.5)
    item_cdf = np.cumsum(np.arange(1, num_items + 1, dtype=np.float64) ** -0.9)
    user_of_rank = rng.permutation(num_users)
    item_of_rank = rng.permutation(num_items)

    def names(prefix: str, index: np.ndarray) -> np.ndarray:
        text = pc.binary_join_element_wise(prefix, pc.cast(pa.array(index), pa.string()), "")
        return text.to_numpy(zero_copy_only=False).astype(str)

    first = start // WRITE_CHUNK_ROWS
    for block in range(first, -(-stop // WRITE_CHUNK_ROWS)):
        lo, hi = block * WRITE_CHUNK_ROWS, min((block + 1) * WRITE_CHUNK_ROWS, rows)
        draw = np.random.default_rng([seed, 1, block])
        n = hi - lo
        users = user_of_rank[np.searchsorted(user_cdf, draw.random(n) * user_cdf[-1])]
        items = item_of_rank[np.searchsorted(item_cdf, draw.random(n) * item_cdf[-1])]
        columns = {
            "user_id": names("u", users),
            "item_id": names("i", items),
            "timestamp": np.arange(lo, hi, dtype=np.int64) + 1_600_000_000,
        }
        if weights:
            columns["weight"] = draw.uniform(0.5, 1.5, n).astype(np.float32)
        keep = slice(max(start - lo, 0), min(stop, hi) - lo)
        yield {k: v[keep] for k, v in columns.items()}


def write_synthetic_shards(
    out_dir: str | Path,
    rows: int,
    num_users: int,
    num_items: int,
    num_shards: int,
    format: str = "parquet",
    seed: int = 0,
    weights: bool = False,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Streams ``rows`` synthetic interactions into ``num_shards`` files of ``format``."""
    if min(rows, num_users, num_items, num_shards) < 1:
        raise InputError("write-shards needs rows, users, items and shards >= 1")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"output directory {out_dir} is not empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = shard_paths(out_dir, num_shards, format)
    bounds = np.linspace(0, rows, num_shards + 1).astype(np.int64)
    started = time.perf_counter()
    for path, lo, hi in zip(paths, bounds[:-1], bounds[1:], strict=True):
        with ShardWriter(path, format) as writer:
            for chunk in synthetic_chunks(rows, num_users, num_items, seed, weights, lo, hi):
                writer.write(chunk)
        seconds = time.perf_counter() - started
        log(f"write-shards: {path.name} done, {hi:,} of {rows:,} rows "
            f"({hi / max(seconds, 1e-9):,.0f} rows/s)")
    return paths


# ----------------------------------------------------------------------------------------
# CLI: tfrs-cosine data write-shards OUT --rows N --users U --items I --shards S


def register(subparsers) -> None:
    """Adds ``data write-shards`` to the CLI (the ``data`` group may already exist)."""
    commands = data_commands(subparsers)
    p = commands.add_parser(
        "write-shards",
        help="write synthetic interactions as Parquet/CSV/TSV/TFRecord shards",
        description=(
            "Streams synthetic interactions (power-law users and items, timestamps = row "
            "number) into SHARDS files under OUT, one chunk in memory at a time."
        ),
    )
    p.add_argument("out", type=Path, help="output directory (must be empty or absent)")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--format", choices=list(SUFFIX), default="parquet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", action="store_true", help="add a weight column")
    p.set_defaults(func=_write_shards_command)


def _write_shards_command(args) -> int:
    paths = write_synthetic_shards(
        args.out, args.rows, args.users, args.items, args.shards, args.format, args.seed,
        args.weights,
    )
    print(f"wrote {len(paths)} {args.format} shard(s), {args.rows:,} rows, to {args.out}")
    return 0
