"""Scale benchmarks (issue 10), one function per part; the CLI picks the parts.

    python -m benchmarks.scale --parts a --out /tmp/scale_a.md --json /tmp/scale_a.json \
        --plot-a docs/img/scale_optimizers.png

(a) ``part_a``: steady-state training examples/s of the project's two-tower model
    against the user-table size (10k, 100k, 1M, 10M rows by default) at the same batch
    and embedding size, for tf-keras Adam, ``training.optimizers.LazyAdam`` and Adagrad
    in the same run; plus the synthetic generator's time and peak memory, with the
    original per-user sampler as the peer.
(b) ``part_b``: one epoch of ``tfrs-cosine train`` over 10M interactions (1M users x
    100k items, 16 Parquet shards, streamed): wall time, phase breakdown and peak RSS
    up to the end of training, then the final exact evaluation, timed separately.
(c) ``part_c``: the same job over growing interactions (users = rows / 10, items =
    rows / 100): examples/s of the epoch and peak RSS up to the end of training, for
    the streaming input and, at the sizes given by ``--in-memory-rows``, today's
    in-memory pipeline (one Parquet file, ``data.split = "random"``) in the same run;
    the curve goes to ``--plot`` (a PNG).
(d) ``part_d``: ``tfrs-cosine cluster-local --workers 2`` (MultiWorkerMirroredStrategy
    over loopback) against one process with one device and one with
    ``training.local_replicas = 2``: wall time, epoch time, and whether its history and
    metrics equal the 2-replica run's.

    python -m benchmarks.scale --parts bcd --data /tmp/scale_data --plot docs/img/scale_curve.png
    python -m benchmarks.scale --parts c --c-result C.json --b-result B.json --plot P.png  # replot

(b)-(d) run the real CLI in a subprocess (``python -m training.cli``), echo its lines
with the elapsed time, and read its peak RSS twice: ``VmHWM`` of ``/proc/PID/status``
when it prints ``train: N epochs in ...`` (training, before the final evaluation), and
``ru_maxrss`` of ``wait4`` at its end. Settings common to (b) and (c): the shipped
``synthetic.toml`` model (cosine head, layer norm, logQ), ``training.optimizer =
"lazy_adam"``, batch 1024, one epoch, a hash-interaction split holding out 0.5% of the
rows each for validation and test (the final exact evaluation costs held-out users x
items x dim, so the fraction sets its size), per-epoch monitoring on
``evaluation.validation_users`` (10,000).

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
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.report import emit

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
            self.cpu: list[float] = []  # this process's CPU seconds, all threads

        def on_train_batch_end(self, batch, logs=None):
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())
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
    cpu_seconds = timer.cpu[-1] - timer.cpu[warmup]
    return {
        "rows": rows, "optimizer": optimizer, "learning_rate": learning_rate,
        "steps": steps, "seconds": seconds, "ms_per_step": 1000 * seconds / steps,
        "cpu_ms_per_step": 1000 * cpu_seconds / steps,
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
        f"{n}: examples/s (wall ms/step) | {n}: vs its {rows[0]:,}-row rate" for n in names)
        + " |", "|---:|" + "---:|---:|" * len(names)]
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
    lines += ["", "CPU time per step (all threads of the process; less sensitive to other "
              "jobs on the machine than wall time), same cells:", "",
              "| user-table rows | optimizer | CPU ms/step | vs its smallest-table CPU time | "
              "timed steps | peak RSS GB | setup s |", "|---:|---|---:|---:|---:|---:|---:|"]
    for (r, n), row in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if "examples_per_second" in row:
            base = best.get((rows[0], n), {})
            ratio = (base["cpu_ms_per_step"] / row["cpu_ms_per_step"]
                     if "cpu_ms_per_step" in base else float("nan"))
            lines.append(f"| {r:,} | {n} | {row['cpu_ms_per_step']:.1f} | {ratio:.2f}x | "
                         f"{row['steps']} | {row['peak_rss_gb']:.2f} | "
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


def plot_a(results: dict, path: Path) -> None:
    """CPU ms/step and wall examples/s against user-table rows, a line per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: dict[str, dict[int, dict]] = {}
    for row in results["training"]:
        if "examples_per_second" in row:
            line = cells.setdefault(row["optimizer"], {})
            kept = line.get(row["rows"])
            if kept is None or row["examples_per_second"] > kept["examples_per_second"]:
                line[row["rows"]] = row
    fig, (cpu, wall) = plt.subplots(1, 2, figsize=(11, 4))
    for name, line in cells.items():
        rows = sorted(line)
        cpu.plot(rows, [line[r]["cpu_ms_per_step"] for r in rows], marker="o", label=name)
        wall.plot(rows, [line[r]["examples_per_second"] for r in rows], marker="o", label=name)
    cpu.set_ylabel("CPU ms per training step (all threads)")
    wall.set_ylabel("training examples/s (wall, steady state)")
    cpu.set_title("CPU time per step (robust to other jobs)")
    wall.set_title("Wall-time rate (noisy on a shared machine)")
    for ax in (cpu, wall):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("user-table rows")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Optimizer cost against table size (batch {BATCH_SIZE}, dim {EMBEDDING_DIM})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# (b)-(d) the training job end to end, through the CLI

B_ROWS, B_USERS, B_ITEMS, SHARDS = 10_000_000, 1_000_000, 100_000, 16
C_ROWS = (300_000, 1_000_000, 3_000_000)
C_IN_MEMORY_ROWS = (300_000, 1_000_000, 3_000_000)
HELD_OUT_FRACTION = 0.005  # validation and test, each
JOB_SETS = ("training.epochs=1", "training.optimizer=lazy_adam", "training.learning_rate=0.01",
            "training.batch_size=1024", "training.early_stopping_patience=0",
            f"data.test_fraction={HELD_OUT_FRACTION}",
            f"data.validation_fraction={HELD_OUT_FRACTION}")
D_SETS = ("data.num_users=10000", "data.num_items=500", "training.epochs=2",
          "training.optimizer=lazy_adam", "training.early_stopping_patience=0")
TRAINED = re.compile(r"^(\[\w+ \d+\] )?train: (\d+) epochs in ([\d.]+) s")
EPOCH = re.compile(r"epoch (\d+)/\d+: .*; ([\d,]+) rows in ([\d.]+) s \(([\d,]+) rows/s\), "
                   r"then ([\d.]+) s validation")
TIMED = re.compile(r"^(vocabulary pass|evaluation pass|evaluation: \w+): .* in ([\d.]+) s")


def vm_hwm_gb(pid: int) -> float | None:
    """Peak RSS so far of a live process (``VmHWM``), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds so far of a live process (``/proc/PID/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_job(argv: list[str], label: str, log: Log, timeout: float,
            stop_after_training: bool = False) -> dict:
    """``python -m training.cli ARGV`` with each output line echoed and kept with its
    elapsed seconds; ``stop_after_training`` kills it at its ``train: N epochs`` line
    (when only the training is measured). Returns the lines, the wall time, the exit
    code, the peak RSS at the end of training and at the end (GB)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "training.cli", *argv], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    lines: list[tuple[float, str]] = []
    training_rss = training_seconds = training_cpu = None
    try:
        for text in process.stdout:
            elapsed = time.perf_counter() - started
            text = text.rstrip()
            lines.append((elapsed, text))
            log(f"{label} +{elapsed:6.1f} s | {text[:200]}")
            trained = TRAINED.match(text)
            if trained and not trained.group(1) and training_seconds is None:
                training_seconds, training_rss = elapsed, vm_hwm_gb(process.pid)
                training_cpu = cpu_seconds(process.pid)
                if stop_after_training:
                    process.kill()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        watchdog.cancel()
    return {"lines": lines, "wall_seconds": time.perf_counter() - started,
            "exit": process.returncode, "killed_after_training": stop_after_training,
            "training_wall_seconds": training_seconds, "training_peak_rss_gb": training_rss,
            "training_cpu_seconds": training_cpu, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_gb": usage.ru_maxrss / 2**20}


def job_phases(job: dict) -> dict:
    """What the job's lines say: each timed phase, the epochs, the fit loop, and the
    start-up before the first pass (seconds)."""
    phases: dict = {"epochs": []}
    for elapsed, text in job["lines"]:
        timed = TIMED.match(text)
        if timed:
            phases[timed.group(1)] = float(timed.group(2))
            if timed.group(1) == "vocabulary pass":
                phases["start-up"] = elapsed - float(timed.group(2))
        epoch = EPOCH.search(text)
        if epoch and not text.startswith("["):
            phases["epochs"].append({
                "epoch": int(epoch.group(1)), "train_rows": int(epoch.group(2).replace(",", "")),
                "train_seconds": float(epoch.group(3)),
                "examples_per_second": int(epoch.group(4).replace(",", "")),
                "validation_and_checkpoint_seconds": float(epoch.group(5))})
        trained = TRAINED.match(text)
        if trained and not trained.group(1):
            phases["fit loop"] = float(trained.group(3))
    return phases


def write_shards(out: Path, rows: int, users: int, items: int, log: Log) -> Path:
    """Synthetic Parquet shards (``tfrs-cosine data write-shards``), kept for reuse."""
    if (out / "_complete").exists():
        log(f"shards: reusing {out}")
        return out
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "training.cli", "data", "write-shards",
                           str(out), "--rows", str(rows), "--users", str(users), "--items",
                           str(items), "--shards", str(SHARDS)], cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"write-shards failed: {done.stderr.strip()[-500:]}")
    log(f"shards: {done.stdout.strip().splitlines()[-1]}")
    (out / "_complete").write_text("")  # hidden from the source: names starting with _
    return out


def one_file(shards: Path) -> Path:
    """The shards concatenated into one Parquet file (the in-memory peer's input)."""
    import pyarrow.parquet as pq

    target = shards.with_name(shards.name + ".parquet")
    if not target.exists():
        pq.write_table(pq.read_table(sorted(map(str, shards.glob("part-*.parquet")))), target)
    return target


def train_argv(data_path: Path, run_dir: Path, streaming: bool,
               extra: tuple[str, ...] = ()) -> list[str]:
    sets = ("data.source=file", f"data.path={data_path}",
            "data.split=" + ("hash-interaction" if streaming else "random"), *JOB_SETS, *extra)
    return ["train", "--config", str(ROOT / "training/configs/synthetic.toml"), "--run-dir",
            str(run_dir), *[a for s in sets for a in ("--set", s)]]


def part_b(args: argparse.Namespace, log: Log) -> dict:
    """One epoch over ``B_ROWS`` streamed interactions, then the final evaluation."""
    shards = write_shards(args.data / f"b{B_ROWS}", B_ROWS, B_USERS, B_ITEMS, log)
    with tempfile.TemporaryDirectory(dir=args.data) as scratch:
        job = run_job(train_argv(shards, Path(scratch) / "run", True, tuple(args.b_set)), "(b)",
                      log, timeout=args.job_timeout, stop_after_training=args.b_training_only)
    job["phases"] = job_phases(job)
    job.update(rows=B_ROWS, users=B_USERS, items=B_ITEMS, shards=SHARDS)
    return job


def table_b(result: dict) -> list[str]:
    p = result["phases"]
    if (result["exit"] != 0 and not result["killed_after_training"]) or not p["epochs"]:
        return [f"(b) did not finish: exit {result['exit']}; last line: "
                f"{result['lines'][-1][1] if result['lines'] else '(none)'}"]
    epoch = p["epochs"][0]
    total_eval = sum(v for k, v in p.items() if k.startswith("evaluation: "))
    train_wall = result["training_wall_seconds"]
    rows = [
        ("start-up (Python, TensorFlow, project imports)", p.get("start-up")),
        ("vocabulary pass (one streaming pass)", p.get("vocabulary pass")),
        ("evaluation pass (held-out users' rows, seen items)", p.get("evaluation pass")),
        (f"epoch: {epoch['train_rows']:,} training rows ({epoch['examples_per_second']:,} "
         "examples/s)", epoch["train_seconds"]),
        ("epoch end: validation on the monitoring sample, checkpoint",
         epoch["validation_and_checkpoint_seconds"]),
        ("rest (model build, pipeline set-up, run directory)",
         train_wall - sum(x or 0 for x in (p.get("start-up"), p.get("vocabulary pass"),
                                           p.get("evaluation pass"), epoch["train_seconds"],
                                           epoch["validation_and_checkpoint_seconds"]))),
        ("**training wall time** (process start to `train: 1 epochs`)", train_wall),
    ]
    lines = [f"{result['rows']:,} interactions, {result['users']:,} users x "
             f"{result['items']:,} items, {result['shards']} Parquet shards", "",
             "| phase | seconds |", "|---|---:|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in rows if value is not None]
    lines += [f"| {k} (final, exact) | {v:.1f} |" for k, v in p.items()
              if k.startswith("evaluation: ")]
    lines += [f"| final evaluation, all splits | {total_eval:.1f} |",
              f"| whole command | {result['wall_seconds']:.1f} |", "",
              f"Peak RSS: {result['training_peak_rss_gb']:.2f} GB at the end of training "
              f"(VmHWM), {result['peak_rss_gb']:.2f} GB for the whole command (ru_maxrss).",
              f"Targets: training wall time <= 600 s: "
              f"{'met' if train_wall <= 600 else 'missed'} ({train_wall:.0f} s); "
              f"peak RSS <= 4 GB: {'met' if result['training_peak_rss_gb'] <= 4 else 'missed'}."]
    return lines


def part_c(args: argparse.Namespace, log: Log) -> dict:
    """Examples/s and peak RSS of one epoch against interactions, both pipelines."""
    if args.c_result:  # earlier runs of (c): only join (b) and plot
        results = [r for r in json.loads(args.c_result.read_text())["c"]["runs"]
                   if not r.get("from")]
        for r in results:
            r.setdefault("fit_loop_seconds", r.get("phases", {}).get("fit loop"))
    else:
        results = measure_c(args, log)
    if args.b_result:
        b = json.loads(args.b_result.read_text())["b"]
        epoch = job_phases(b)["epochs"][0]
        results.append({"rows": b["rows"], "pipeline": "streaming", "from": "(b)",
                        "training_wall_seconds": b["training_wall_seconds"],
                        "peak_rss_gb": b["training_peak_rss_gb"],
                        "training_cpu_seconds": b.get("training_cpu_seconds"),
                        "fit_loop_seconds": b["phases"].get("fit loop"), **epoch})
    if args.plot:
        plot_c(results, args.plot)
    return {"runs": results}


def measure_c(args: argparse.Namespace, log: Log) -> list[dict]:
    results = []
    for rows in args.c_rows:
        shards = write_shards(args.data / f"c{rows}", rows, rows // 10, rows // 100, log)
        paths = [("streaming", shards)]
        if rows in args.in_memory_rows:
            paths.append(("in-memory", one_file(shards)))
        for name, path in paths:
            if name == "in-memory" and rows * 1000 / 2**30 > 0.5 * available_gb():  # ~1 KB/row
                results.append({"rows": rows, "pipeline": name, "skipped": "memory"})
                continue
            with tempfile.TemporaryDirectory(dir=args.data) as scratch:
                job = run_job(train_argv(path, Path(scratch) / "run", name == "streaming"),
                              f"(c) {rows:,} {name}", log, timeout=args.job_timeout,
                              stop_after_training=True)
            phases = job_phases(job)
            row = {"rows": rows, "pipeline": name, "training_wall_seconds":
                   job["training_wall_seconds"], "peak_rss_gb": job["training_peak_rss_gb"],
                   "training_cpu_seconds": job["training_cpu_seconds"], "phases": phases}
            if phases["epochs"]:
                row.update(phases["epochs"][0], fit_loop_seconds=phases.get("fit loop"))
            else:
                row["error"] = job["lines"][-1][1] if job["lines"] else f"exit {job['exit']}"
            results.append(row)
    return results


def plot_c(results: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate, cpu, memory) = plt.subplots(1, 3, figsize=(14, 4.2))
    for name, marker in (("streaming", "o-"), ("in-memory", "s--")):
        runs = sorted((r for r in results if r["pipeline"] == name and "train_seconds" in r),
                      key=lambda r: r["rows"])
        if not runs:
            continue
        x = [r["rows"] for r in runs]
        rate.plot(x, [r["train_rows"] / r["fit_loop_seconds"] for r in runs], marker,
                  label=name)
        memory.plot(x, [r["peak_rss_gb"] for r in runs], marker, label=name)
        timed = [r for r in runs if r.get("training_cpu_seconds")]
        cpu.plot([r["rows"] for r in timed],
                 [r["train_rows"] / r["training_cpu_seconds"] for r in timed], marker, label=name)
    for axis, title in ((rate, "training examples/s (rows / fit-loop seconds)"),
                        (cpu, "training rows per CPU second (process, to end of training)"),
                        (memory, "peak RSS to the end of training (GiB)")):
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel("interactions (users = rows/10, items = rows/100)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    memory.axhline(4, color="grey", linestyle=":", linewidth=1)
    figure.suptitle("tfrs-cosine train, 1 epoch, lazy Adam, batch 1024, on 2 CPU cores shared "
                    "with other jobs (load 10-14)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def table_c(result: dict) -> list[str]:
    lines = ["| interactions | pipeline | training rows | epoch s (examples/s) | fit loop s "
             "(examples/s) | training wall s | training CPU s | peak RSS GB (training) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(result["runs"], key=lambda r: (r["rows"], r["pipeline"])):
        if "train_seconds" not in r:
            lines.append(f"| {r['rows']:,} | {r['pipeline']} | "
                         f"{r.get('skipped') or r.get('error')} | | | | | |")
            continue
        cpu = f"{r['training_cpu_seconds']:.0f}" if r.get("training_cpu_seconds") else "–"
        lines.append(f"| {r['rows']:,} | {r['pipeline']}{' (b)' if r.get('from') else ''} | "
                     f"{r['train_rows']:,} | {r['train_seconds']:.1f} "
                     f"({r['examples_per_second']:,}) | {r['fit_loop_seconds']:.1f} "
                     f"({r['train_rows'] / r['fit_loop_seconds']:,.0f}) | "
                     f"{r['training_wall_seconds']:.1f} | {cpu} | {r['peak_rss_gb']:.2f} |")
    return lines


def part_d(args: argparse.Namespace, log: Log) -> dict:
    """One device, 2 local replicas, 2 MultiWorkerMirrored workers on loopback."""
    config = ["--config", str(ROOT / "training/configs/synthetic.toml"),
              *[a for s in D_SETS for a in ("--set", s)]]
    variants = {
        "one process, one device": ([], False),
        "one process, local_replicas=2": (["--set", "training.local_replicas=2"], False),
        "cluster-local --workers 2 (MWMS)": (["cluster-local", "--workers", "2", "--"], True),
    }
    results = {}
    with tempfile.TemporaryDirectory(dir=args.data) as scratch:
        for name, (extra, cluster) in variants.items():
            run_dir = Path(scratch) / re.sub(r"\W+", "_", name)
            argv = ((extra + ["train", "--run-dir", str(run_dir)] + config) if cluster
                    else ["train", "--run-dir", str(run_dir)] + config + extra)
            job = run_job(argv, f"(d) {name}", log, timeout=args.job_timeout)
            row = {"wall_seconds": job["wall_seconds"], "exit": job["exit"],
                   "cpu_seconds": job["cpu_seconds"]}
            if job["exit"] == 0:
                metrics = json.loads((run_dir / "metrics.json").read_text())
                row.update(history=json.loads((run_dir / "history.json").read_text()),
                           test=metrics["test"], fit_seconds=metrics["training"]["seconds"],
                           examples_per_second=metrics["training"]["examples_per_second"])
            results[name] = row
    return results


def table_d(result: dict) -> list[str]:
    names = list(result)
    base, mirrored, workers = (result[n] for n in names)
    lines = ["| run | command wall s | CPU s, all processes | fit loop s (2 epochs) | "
             "examples/s | test recall@10 | final-epoch loss |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        r = result[name]
        if r["exit"] != 0:
            lines.append(f"| {name} | failed: exit {r['exit']} | | | | | |")
            continue
        lines.append(f"| {name} | {r['wall_seconds']:.1f} | {r['cpu_seconds']:.0f} | "
                     f"{r['fit_seconds']:.1f} | "
                     f"{r['examples_per_second']:,.0f} | {r['test']['recall@10']:.4f} | "
                     f"{r['history'][-1]['loss']:.4f} |")
    if all(r["exit"] == 0 for r in (base, mirrored, workers)):
        same = (workers["history"] == mirrored["history"]
                and workers["test"] == mirrored["test"])
        lines += ["", f"MWMS history and test metrics equal the local_replicas=2 run's "
                  f"exactly: {same}. |recall@10 (2 workers) - recall@10 (one device)| = "
                  f"{abs(workers['test']['recall@10'] - base['test']['recall@10']):.4f}. "
                  f"Overhead, fit loop: 2 workers / one device = "
                  f"{workers['fit_seconds'] / base['fit_seconds']:.2f}x, 2 workers / "
                  f"local_replicas=2 = {workers['fit_seconds'] / mirrored['fit_seconds']:.2f}x; "
                  f"command wall: {workers['wall_seconds'] / base['wall_seconds']:.2f}x and "
                  f"{workers['wall_seconds'] / mirrored['wall_seconds']:.2f}x."]
    return lines


# ----------------------------------------------------------------------------------------

PARTS: dict[str, tuple[Callable[[argparse.Namespace, Log], dict], Callable[[dict], list[str]]]] = {
    "a": (part_a, table_a),
    "b": (part_b, table_b),
    "c": (part_c, table_c),
    "d": (part_d, table_d),
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
    parser.add_argument("--parts", default="a", help="which parts to run, e.g. bcd (default a)")
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
    parser.add_argument("--plot-a", type=Path,
                        help="(a) the plot of CPU ms/step and examples/s against table rows (PNG)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "scale_data",
                        help="(b)-(d) where shards are written (and reused) and runs go")
    parser.add_argument("--b-set", action="append", default=[], metavar="KEY=VALUE",
                        help="(b) another config override, e.g. evaluation.chunk_size=256")
    parser.add_argument("--b-training-only", action="store_true",
                        help="(b) stop the job at the end of training (no final evaluation)")
    parser.add_argument("--c-rows", type=int, nargs="+", default=list(C_ROWS),
                        help="(c) interactions per point of the curve")
    parser.add_argument("--in-memory-rows", type=int, nargs="*", default=list(C_IN_MEMORY_ROWS),
                        help="(c) the sizes at which today's in-memory pipeline runs too")
    parser.add_argument("--b-result", type=Path,
                        help="(c) a --json file holding part (b): its run joins the curve")
    parser.add_argument("--c-result", type=Path,
                        help="(c) a --json file holding part (c): plot it instead of measuring")
    parser.add_argument("--plot", type=Path, help="(c) write the scale curve PNG here")
    parser.add_argument("--job-timeout", type=float, default=3600.0,
                        help="(b)-(d) kill a job after this many seconds")
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
    args.data.mkdir(parents=True, exist_ok=True)
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
    if args.plot_a and "a" in results:
        plot_a(results["a"], args.plot_a)
        log(f"(a) plot: {args.plot_a}")
    lines.append(f"Wall time {(time.perf_counter() - started) / 60:.1f} min; load average at "
                 f"the end {' / '.join(f'{x:.1f}' for x in os.getloadavg())}.")
    emit("\n".join(lines), args.out, args.json, results)


if __name__ == "__main__":
    main()
