"""Feature data at scale: history sequences and feature batches against the id-only pipeline.

    python -m benchmarks.features                      # 1M and 4M interactions
    python -m benchmarks.features --rows 200000        # a quick run

For each size (synthetic interactions: ``--users`` users, ``--items`` items, random
timestamps; a user table with a numeric and a categorical feature; an item table with a
list feature), in one process:

1. ``UserSequences.build``: seconds, and the bytes of its arrays per interaction;
2. the in-memory training pipeline for one epoch (batch ``--batch``), rows per second,
   with the feature join (side features, a 20-item history looked up per batch, the
   timestamp) and without it (the id-only peer, same rows, same batches): their ratio.

Peak RSS is read from ``/proc/self/status`` (``VmHWM``) after each size. Timings are
noisy on a shared machine: the ratio against the peer measured in the same run is the
number to read.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from training.config import config_from_dict  # noqa: E402
from training.feature_data import prepare_features  # noqa: E402
from training.history import UserSequences  # noqa: E402
from training.pipeline import make_training_dataset  # noqa: E402
from training.schema import Interactions, from_interactions  # noqa: E402
from training.side_tables import SideTable  # noqa: E402
from training.splits import Split  # noqa: E402

CONFIG = {
    "model": {
        "embedding_dim": 16, "tower_layers": [16],
        "user_features": {"user_id": {"type": "id"}, "age": {"type": "numeric"},
                          "region": {"type": "categorical"},
                          "history": {"type": "history", "length": 20}},
        "item_features": {"item_id": {"type": "id"},
                          "tags": {"type": "multi_categorical", "separator": "|"}},
        "query_context": {"timestamp": {"type": "timestamp", "num_buckets": 100}},
    },
}


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def synthetic(rows: int, users: int, items: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    user_ids = np.array([f"u{k}" for k in range(users)])
    item_ids = np.array([f"i{k}" for k in range(items)])
    interactions = Interactions(
        user_id=user_ids[rng.integers(0, users, rows)],
        item_id=item_ids[rng.integers(0, items, rows)],
        timestamp=rng.integers(0, 10**8, rows).astype(np.int64),
    )
    data = from_interactions(interactions, f"synthetic {rows:,} rows")
    user_table = SideTable("users", data.users, {
        "age": rng.integers(18, 70, len(data.users)).astype(np.float64),
        "region": np.array([f"r{k}" for k in rng.integers(0, 50, len(data.users))], dtype=object),
    })
    tags = np.array(["|".join(f"t{t}" for t in rng.integers(0, 30, 3)) for _ in data.items],
                    dtype=object)
    item_table = SideTable("items", data.items, {"tags": tags})
    return data.__class__(**{**data.__dict__, "user_table": user_table, "item_table": item_table})


def epoch_rate(dataset: tf.data.Dataset, rows: int) -> float:
    start = time.perf_counter()
    for _ in dataset:
        pass
    return rows / (time.perf_counter() - start)


def measure(rows: int, users: int, items: int, batch: int, log=print) -> dict:
    data = synthetic(rows, users, items)
    train = data.interactions
    empty = train.subset(np.zeros(len(train), bool))
    split = Split(train, empty, empty)
    start = time.perf_counter()
    sequences = UserSequences.build(train, data.users, data.items)
    build = time.perf_counter() - start
    log(f"{rows:,} rows: sequences built in {build:.2f} s, "
        f"{sequences.nbytes / rows:.1f} bytes per interaction")
    config = config_from_dict(CONFIG)
    features = prepare_features(config, data, split, log=lambda m: None)
    plain = make_training_dataset(train, batch, seed=1)
    joined = make_training_dataset(train, batch, seed=1, columns=features.batch_columns(train),
                                   map_batch=features.join)
    epoch_rate(joined.take(3), 3 * batch)  # trace the map once before timing
    ids_only = epoch_rate(plain, rows)
    with_features = epoch_rate(joined, rows)
    result = {
        "rows": rows, "build_seconds": build, "bytes_per_row": sequences.nbytes / rows,
        "ids_rows_per_s": ids_only, "features_rows_per_s": with_features,
        "ratio": with_features / ids_only, "peak_rss_mb": peak_rss_mb(),
    }
    log(f"{rows:,} rows: pipeline {ids_only:,.0f} rows/s id-only, {with_features:,.0f} rows/s "
        f"with features (ratio {result['ratio']:.2f}); peak RSS {result['peak_rss_mb']:,.0f} MB")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args(argv)
    for rows in args.rows:
        measure(rows, args.users, args.items, args.batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
