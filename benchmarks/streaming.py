"""The streaming input: vocabulary pass and pipeline rows/s and peak RSS, with today's
in-memory pipeline as the peer at a size it can finish.

Each phase runs in its own process so its peak RSS (``ru_maxrss``) is its own; the
``import`` line gives the fixed cost of TensorFlow and the project's modules.

    python -m benchmarks.streaming write DIR --rows 10000000 --users 1000000 \\
        --items 100000 --shards 16
    python -m benchmarks.streaming pass DIR         # the vocabulary pass alone
    python -m benchmarks.streaming pipeline DIR     # the pass, then two epochs of batches
    python -m benchmarks.streaming in-memory FILE   # peer: pandas read -> split ->
                                                    # from_tensor_slices/cache/shuffle, two epochs

``pass`` and ``pipeline`` use the hash-interaction split (test 0.2, validation 0.1),
logQ on, batch 1024, shuffle blocks of 100,000 rows (the config defaults otherwise).
The peer uses the random split (same fractions) and the same batch and logQ.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def settings(path: str, *extra: str):
    from training.config import load_config

    return load_config(None, [
        "data.source='file'", f"data.path='{path}'", "data.split='hash-interaction'",
        "model.logq_correction=true", "training.batch_size=1024", *extra,
    ])


def iterate(dataset, key: str = "user_id") -> tuple[int, int, float]:
    """``(batches, rows, seconds)`` of one pass over ``dataset``."""
    started = time.perf_counter()
    batches = rows = 0
    for batch in dataset:
        batches += 1
        rows += int(batch[key].shape[0])
    return batches, rows, time.perf_counter() - started


def run_pass(args) -> None:
    from training.streaming import prepare_streaming

    print(f"import: peak RSS {peak_rss_mb():,.0f} MB; load average {load_average()}")
    data = prepare_streaming(settings(args.path), every=60)
    rows, seconds = data.scan.rows, data.scan.seconds
    print(f"RESULT pass: {rows:,} rows in {seconds:.1f} s = {rows / seconds:,.0f} rows/s; "
          f"{len(data.scan.users.ids):,} users, {len(data.scan.items.ids):,} items; "
          f"peak RSS {peak_rss_mb():,.0f} MB; load average {load_average()}")


def run_pipeline(args) -> None:
    from training.streaming import make_training_input, prepare_streaming

    print(f"import: peak RSS {peak_rss_mb():,.0f} MB; load average {load_average()}")
    config = settings(args.path, f"training.shuffle_buffer={args.shuffle_buffer}")
    data = prepare_streaming(config, every=60)
    after_pass = peak_rss_mb()
    training = make_training_input(data, config)
    print(training.describe())
    read = data.scan.rows + data.scan.dropped
    for epoch in range(2):
        batches, rows, seconds = iterate(training.epoch(epoch))
        print(f"RESULT pipeline epoch {epoch + 1}: {batches:,} batches, {rows:,} training rows "
              f"in {seconds:.1f} s = {rows / seconds:,.0f} training rows/s "
              f"({read / seconds:,.0f} rows read/s); peak RSS {after_pass:,.0f} MB after the "
              f"pass, {peak_rss_mb():,.0f} MB now; load average {load_average()}")


def run_in_memory(args) -> None:
    from training.data import read_interactions_file
    from training.pipeline import item_probabilities, make_training_dataset
    from training.splits import split_data

    print(f"import: peak RSS {peak_rss_mb():,.0f} MB; load average {load_average()}")
    config = settings(args.path, "data.split='random'")
    started = time.perf_counter()
    data = read_interactions_file(args.path)
    split = split_data(data.interactions, config.data)
    shares = item_probabilities(split.train, data.items)
    probabilities = dict(zip(data.items.tolist(), shares.tolist(), strict=True))
    dataset = make_training_dataset(split.train, 1024, probabilities, seed=0)
    prepared = time.perf_counter() - started
    print(f"in-memory: read, split and prepared {len(data.interactions):,} rows in "
          f"{prepared:.1f} s; peak RSS {peak_rss_mb():,.0f} MB")
    for epoch in range(2):  # the first fills the cache and the shuffle buffer
        batches, rows, seconds = iterate(dataset)
        print(f"RESULT in-memory pipeline epoch {epoch + 1}: {batches:,} batches, {rows:,} "
              f"training rows in {seconds:.1f} s = {rows / seconds:,.0f} training rows/s; "
              f"preparation {prepared:.1f} s; peak RSS {peak_rss_mb():,.0f} MB; load average "
              f"{load_average()}")


def run_write(args) -> None:
    from training.shards import write_synthetic_shards

    started = time.perf_counter()
    write_synthetic_shards(args.path, args.rows, args.users, args.items, args.shards,
                           args.format, log=print)
    print(f"RESULT write: {args.rows:,} rows in {time.perf_counter() - started:.1f} s; "
          f"peak RSS {peak_rss_mb():,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="synthetic shards")
    write.add_argument("path")
    write.add_argument("--rows", type=int, default=10_000_000)
    write.add_argument("--users", type=int, default=1_000_000)
    write.add_argument("--items", type=int, default=100_000)
    write.add_argument("--shards", type=int, default=16)
    write.add_argument("--format", default="parquet")
    write.set_defaults(func=run_write)
    for name, func in (("pass", run_pass), ("pipeline", run_pipeline),
                       ("in-memory", run_in_memory)):
        p = commands.add_parser(name)
        p.add_argument("path")
        p.add_argument("--shuffle-buffer", type=int, default=100_000)
        p.set_defaults(func=func)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
