"""Scale benchmarks (issue 10), one function per part; the CLI picks the parts.

    python -m benchmarks.scale --parts a --out /tmp/scale_a.md --json /tmp/scale_a.json

(a) ``part_a``: steady-state training examples/s of the project's two-tower model
    against the user-table size (10k, 100k, 1M, 10M rows by default) at the same batch
    and embedding size, for tf-keras Adam, ``training.optimizers.LazyAdam`` and Adagrad
    in the same run; plus the synthetic generator's time and peak memory, with the
    original per-user sampler as the peer.

Every measurement runs in a fresh subprocess (``--child``), one after the other, so
each one's peak RSS is its own and nothing is left over from the previous one. A
configuration whose estimated memory exceeds what the machine has available is skipped
and reported as skipped. Progress goes to stdout, a line per phase.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

ROOT = Path(__file__).resolve().parents[1]
Log = Callable[[str], None]

# (a) defaults
TABLE_ROWS = (10_000, 100_000, 1_000_000, 10_000_000)
OPTIMIZERS = {"adam": 0.01, "lazy_adam": 0.01, "adagrad": 0.1}  # name: learning rate
BATCH_SIZE, EMBEDDING_DIM, NUM_ITEMS = 1024, 32, 10_000
# (users, items, min items per user, max items per user)
GENERATOR_SIZES = (
    (20_000, 1_000, 5, 100),  # the paper's size
    (1_000_000, 100_000, 5, 100),
    (1_000_000, 100_000, 5, 20),  # about 12M interactions
)
PER_USER_SIZES = ((20_000, 1_000, 5, 100), (20_000, 100_000, 5, 100))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def peak_rss_gb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def run_child(args: list[str], timeout: float) -> dict:
    """Runs ``python -m benchmarks.scale --child ARGS`` and returns its JSON line."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--child", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
# (a) optimizer cost against table size


def training_rate(rows: int, optimizer: str, learning_rate: float, min_seconds: float,
                  max_seconds: float, warmup: int = 5, min_steps: int = 20) -> dict:
    """Steady-state steps of ``model.fit`` on a model whose user table has ``rows`` rows.

    The model is the shipped synthetic config's (cosine head, layer norm, logQ) at
    ``BATCH_SIZE`` and ``EMBEDDING_DIM`` over a ``NUM_ITEMS`` catalog; batches hold
    uniformly random users and items. After ``warmup`` steps (tracing), steps are timed
    until at least ``min_steps`` and ``min_seconds``, or ``max_seconds`` (at least 3).
    """
    import numpy as np
    import tensorflow as tf

    from training.config import load_config
    from training.modeling import build_model, make_optimizer

    config = load_config(ROOT / "training/configs/synthetic.toml", [
        f"training.optimizer={optimizer}", f"training.learning_rate={learning_rate}",
        f"training.batch_size={BATCH_SIZE}", f"model.embedding_dim={EMBEDDING_DIM}",
    ])
    start = time.perf_counter()
    users = np.char.add("u", np.arange(rows).astype(str))
    items = np.char.add("i", np.arange(NUM_ITEMS).astype(str))
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, users.tolist(), items.tolist())
    model.compile(optimizer=make_optimizer(config))
    rng = np.random.default_rng(0)
    pool = 64 * BATCH_SIZE
    features = {
        "user_id": users[rng.integers(0, rows, pool)],
        "item_id": items[rng.integers(0, NUM_ITEMS, pool)],
        "item_probability": np.full(pool, 1.0 / NUM_ITEMS, np.float32),
    }
    del users, items
    dataset = tf.data.Dataset.from_tensor_slices(features).batch(BATCH_SIZE).cache().repeat()
    setup = time.perf_counter() - start

    class Timer(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.stamps: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.stamps.append(time.perf_counter())
            timed = len(self.stamps) - 1 - warmup
            if timed < 3:
                return
            elapsed = self.stamps[-1] - self.stamps[warmup]
            if (timed >= min_steps and elapsed >= min_seconds) or elapsed >= max_seconds:
                self.model.stop_training = True

    timer = Timer()
    model.fit(dataset, epochs=1, steps_per_epoch=10**6, verbose=0, callbacks=[timer])
    steps = len(timer.stamps) - 1 - warmup
    seconds = timer.stamps[-1] - timer.stamps[warmup]
    return {
        "rows": rows, "optimizer": optimizer, "learning_rate": learning_rate,
        "steps": steps, "seconds": seconds, "ms_per_step": 1000 * seconds / steps,
        "examples_per_second": BATCH_SIZE * steps / seconds, "setup_seconds": setup,
        "peak_rss_gb": peak_rss_gb(),
    }


def estimated_training_gb(rows: int, optimizer: str) -> float:
    """A rough upper bound: the table, its slots, dense Adam's full-table temporaries,
    and the vocabulary (Python strings plus the lookup table, about 300 B per id)."""
    table = rows * EMBEDDING_DIM * 4 / 2**30
    slots = {"adagrad": 1, "lazy_adam": 2, "adam": 2}[optimizer]
    temporaries = 4 if optimizer == "adam" else 0
    return table * (1 + slots + temporaries) + rows * 300 / 2**30 + 1.0


def generator_cost(users: int, items: int, low: int, high: int, method: str) -> dict:
    from training.data import generate_synthetic

    start = time.perf_counter()
    data = generate_synthetic(users, items, 5, seed=0, min_items_per_user=low,
                              max_items_per_user=high, method=method)
    seconds = time.perf_counter() - start
    return {"users": users, "items": items, "items_per_user": [low, high], "method": method,
            "interactions": len(data.interactions), "seconds": seconds,
            "peak_rss_gb": peak_rss_gb()}


def part_a(args: argparse.Namespace, log: Log) -> dict:
    """Training rate against user-table rows per optimizer, and generator costs."""
    results: dict = {"training": [], "generator": []}
    for round_ in range(args.rounds):
        for rows in args.rows:
            for name in args.optimizers:
                need, have = estimated_training_gb(rows, name), available_gb()
                label = f"(a) round {round_ + 1}: {rows:,} rows, {name}"
                if need > 0.8 * have:
                    log(f"{label}: skipped, needs about {need:.1f} GB, {have:.1f} GB available")
                    results["training"].append({"rows": rows, "optimizer": name, "round": round_,
                                                "skipped": f"needs about {need:.1f} GB, "
                                                           f"{have:.1f} GB available"})
                    continue
                log(f"{label}: training (estimated peak {need:.1f} GB of {have:.1f} available)")
                row = run_child(["train", str(rows), name, str(OPTIMIZERS[name]),
                                 str(args.min_seconds), str(args.max_seconds)],
                                timeout=args.max_seconds * 4 + 1800)
                row.update(rows=rows, optimizer=name, round=round_)
                results["training"].append(row)
                log(f"{label}: " + (row.get("error") or
                    f"{row['examples_per_second']:,.0f} examples/s, {row['ms_per_step']:.1f} "
                    f"ms/step over {row['steps']} steps, peak RSS {row['peak_rss_gb']:.2f} GB"))
    if args.generator:
        for method, sizes in (("draws", GENERATOR_SIZES), ("per-user", PER_USER_SIZES)):
            for users, items, low, high in sizes:
                log(f"(a) generator {method}: {users:,} users x {items:,} items, "
                    f"{low}-{high} items per user")
                row = run_child(["generate", str(users), str(items), str(low), str(high), method],
                                timeout=7200)
                results["generator"].append(row)
                log("(a) generator: " + (row.get("error") or
                    f"{row['interactions']:,} interactions in {row['seconds']:.1f} s, "
                    f"peak RSS {row['peak_rss_gb']:.2f} GB"))
    return results


def table_a(results: dict) -> list[str]:
    """Markdown: best round per (rows, optimizer); ratio to the same optimizer at the
    smallest table."""
    best: dict[tuple[int, str], dict] = {}
    for row in results["training"]:
        key = (row["rows"], row["optimizer"])
        if "examples_per_second" in row:
            if key not in best or row["examples_per_second"] > best[key].get(
                    "examples_per_second", -1):
                best[key] = row
        else:
            best.setdefault(key, row)
    rows = sorted({r for r, _ in best})
    names = list(dict.fromkeys(name for _, name in best))
    lines = ["| user-table rows | " + " | ".join(
        f"{n} examples/s (ms/step) | {n} vs its {rows[0]:,}-row rate" for n in names) + " |",
        "|---:|" + "---:|---:|" * len(names)]
    for r in rows:
        cells = []
        for n in names:
            row, base = best.get((r, n), {}), best.get((rows[0], n), {})
            if "examples_per_second" not in row:
                cells += [row.get("skipped") or row.get("error") or "not run", "–"]
                continue
            ratio = (row["examples_per_second"] / base["examples_per_second"]
                     if "examples_per_second" in base else float("nan"))
            cells += [f"{row['examples_per_second']:,.0f} ({row['ms_per_step']:.1f})",
                      f"{ratio:.2f}x"]
        lines.append(f"| {r:,} | " + " | ".join(cells) + " |")
    lines += ["", "| user-table rows | optimizer | timed steps | peak RSS GB | setup s |",
              "|---:|---|---:|---:|---:|"]
    for (r, n), row in sorted(best.items()):
        if "examples_per_second" in row:
            lines.append(f"| {r:,} | {n} | {row['steps']} | {row['peak_rss_gb']:.2f} | "
                         f"{row['setup_seconds']:.1f} |")
    if results["generator"]:
        lines += ["", "| generator | users x items | items per user | interactions | seconds | "
                  "us per interaction | peak RSS GB |", "|---|---|---|---:|---:|---:|---:|"]
        for row in results["generator"]:
            if "error" in row:
                lines.append(f"| {row.get('method', '?')} | | | {row['error']} | | | |")
                continue
            low, high = row["items_per_user"]
            lines.append(
                f"| {row['method']} | {row['users']:,} x {row['items']:,} | {low}-{high} | "
                f"{row['interactions']:,} | {row['seconds']:.1f} | "
                f"{1e6 * row['seconds'] / row['interactions']:.2f} | {row['peak_rss_gb']:.2f} |")
    return lines


# ----------------------------------------------------------------------------------------

PARTS: dict[str, tuple[Callable[[argparse.Namespace, Log], dict], Callable[[dict], list[str]]]] = {
    "a": (part_a, table_a),
}


def child(argv: list[str]) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    kind, *rest = argv
    if kind == "train":
        rows, name, lr, min_s, max_s = rest
        result = training_rate(int(rows), name, float(lr), float(min_s), float(max_s))
    elif kind == "generate":
        users, items, low, high, method = rest
        result = generator_cost(int(users), int(items), int(low), int(high), method)
    else:
        raise SystemExit(f"unknown child measurement {kind!r}")
    print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="a", help="which parts to run, e.g. a (default a)")
    parser.add_argument("--rows", type=int, nargs="+", default=list(TABLE_ROWS),
                        help="(a) user-table sizes")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS),
                        choices=list(OPTIMIZERS), help="(a) optimizers to compare")
    parser.add_argument("--rounds", type=int, default=1,
                        help="(a) repeat the grid; the best round per cell is reported")
    parser.add_argument("--min-seconds", type=float, default=10.0,
                        help="(a) time at least this long per cell (and >= 20 steps)")
    parser.add_argument("--max-seconds", type=float, default=90.0,
                        help="(a) stop timing a cell after this long (>= 3 steps)")
    parser.add_argument("--no-generator", dest="generator", action="store_false",
                        help="(a) skip the generator timings")
    parser.add_argument("--out", type=Path, help="write the markdown tables here")
    parser.add_argument("--json", type=Path, help="write every raw number here")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {''.join(sorted(unknown))}; available: {''.join(PARTS)}")
    started = time.perf_counter()
    header = (f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
              f"load average at start {os.getloadavg()[0]:.1f}")
    log(header)
    results, lines = {}, [header, ""]
    for part in args.parts:
        run, table = PARTS[part]
        log(f"part ({part})")
        results[part] = run(args, log)
        lines += [f"({part})", "", *table(results[part]), ""]
    lines.append(f"Wall time {(time.perf_counter() - started) / 60:.1f} min; load average at "
                 f"the end {' / '.join(f'{x:.1f}' for x in os.getloadavg())}.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
