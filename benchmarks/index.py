"""ScaNN against exact brute force, both on the SavedModel path (a loaded export).

    python -m benchmarks.index [--sizes 100000 1000000] [--dim 64] [--k 10]
        [--queries 1000] [--batches 20] [--run-dir RUN_DIR] [--out FILE.md]

For each catalog size: clustered synthetic vectors (``--clusters`` centres drawn from
N(0, I), each vector a centre plus N(0, sigma^2 I) noise; users drawn the same way) are
exported twice with ``export.export_tables`` (cosine head, K=``--k``): with
the ScaNN index its plan chooses from the catalog size, and with the exact brute-force
index of stock TensorFlow ops. Each export is then loaded (``tf.saved_model.load``
after ``register_scann_ops``) and its ``serving_default`` signature is timed with user ids
at batch 1 and batch 256: latency p50/p99, queries per second, recall@K against exact
top-K (numpy), export size and load time. ``--run-dir`` adds a trained run's own
embeddings. Prints a markdown table (and writes it to ``--out``).

The numbers are wall-clock on whatever machine runs this; compare the two indexes of
one run, not runs on different machines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered_vectors(
    count: int, centres: np.ndarray, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """``(count, d)`` float32: a random centre plus Gaussian noise of scale ``sigma``."""
    chosen = rng.integers(len(centres), size=count)
    out = np.empty((count, centres.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):  # bounded temporary memory
        stop = min(start + 100_000, count)
        noise = rng.standard_normal((stop - start, centres.shape[1]), dtype=np.float32)
        out[start:stop] = centres[chosen[start:stop]] + sigma * noise
    return out


def synthetic_tables(num_items: int, num_users: int, dim: int, clusters: int, sigma: float, seed: int):
    from export import EmbeddingTables

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    items = clustered_vectors(num_items + 1, centres, sigma, rng)  # row 0: the OOV row
    users = clustered_vectors(num_users + 1, centres, sigma, rng)
    return EmbeddingTables(
        head="cosine",
        temperature=1.0,
        users=[f"u{i}" for i in range(num_users)],
        items=[f"i{i}" for i in range(num_items)],
        user_vectors=users,
        item_vectors=items,
    )


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    values = np.array(seconds) * 1000.0
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def measure(
    export_dir: Path, tables, k: int, queries: int, batches: int, seed: int, log
) -> dict[str, float]:
    """Loads ``export_dir`` and times ``serving_default``; recall@k against exact top-k."""
    import tensorflow as tf

    from export.recall import exact_top_k, recall_at_k
    from export.scann_ops import register_scann_ops

    register_scann_ops()
    started = time.perf_counter()
    loaded = tf.saved_model.load(str(export_dir))
    load_seconds = time.perf_counter() - started
    serve = loaded.signatures["serving_default"]
    rng = np.random.default_rng(seed)
    users = np.array(tables.users)

    # Recall@k of what the loaded export serves, against exact top-k in numpy.
    sample = rng.choice(len(users), size=min(1000, len(users)), replace=False)
    vectors = tables.user_vectors[sample + 1]
    queries_unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)
    catalog = tables.item_vectors[1:]
    catalog = catalog / np.maximum(np.linalg.norm(catalog, axis=1, keepdims=True), 1e-6)
    exact_scores, _ = exact_top_k(queries_unit, catalog, k)
    found = []
    for start in range(0, len(sample), 256):
        ids = serve(user_id=tf.constant(users[sample[start : start + 256]]))["item_ids"].numpy()
        found.append(ids)
    found_ids = np.concatenate(found)
    position = {item: i for i, item in enumerate(tables.items)}
    found_rows = np.vectorize(lambda b: position.get(b.decode(), -1), otypes=[np.int64])(found_ids)
    recall = recall_at_k(queries_unit, catalog, found_rows, exact_scores)

    single = [tf.constant(users[rng.integers(len(users), size=1)]) for _ in range(queries)]
    for request in single[:20]:  # warm-up
        serve(user_id=request)
    times = []
    total = time.perf_counter()
    for request in single:
        t = time.perf_counter()
        serve(user_id=request)["item_ids"].numpy()
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - total
    p50_1, p99_1 = _percentiles(times)
    qps_1 = queries / total

    batched = [tf.constant(users[rng.integers(len(users), size=256)]) for _ in range(batches)]
    serve(user_id=batched[0])
    times = []
    total = time.perf_counter()
    for request in batched:
        t = time.perf_counter()
        serve(user_id=request)["item_ids"].numpy()
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - total
    p50_256, p99_256 = _percentiles(times)
    qps_256 = 256 * batches / total
    del loaded, serve
    gc.collect()
    result = {
        "load_s": load_seconds,
        "recall": recall,
        "p50_1": p50_1,
        "p99_1": p99_1,
        "qps_1": qps_1,
        "p50_256": p50_256,
        "p99_256": p99_256,
        "qps_256": qps_256,
    }
    log(
        f"  recall@{k} {recall:.4f}; batch 1: p50 {p50_1:.2f} ms, {qps_1:.0f} q/s; "
        f"batch 256: p50 {p50_256:.1f} ms, {qps_256:.0f} q/s; load {load_seconds:.2f}s"
    )
    return result


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def run_catalog(label: str, tables, args, work: Path, log, k: int | None = None) -> list[dict]:
    from export import ExportOptions, export_tables, read_model_card

    k = k or args.k
    rows = []
    for kind in ("scann", "brute-force"):
        log(f"{label}: exporting {kind}")
        started = time.perf_counter()
        options = ExportOptions(
            index=kind, k=k, min_recall=args.min_recall, verify=not args.no_verify
        )
        path = export_tables(
            tables, work / f"{label}-{kind}", options, log=lambda message: log(f"  {message}")
        )
        export_seconds = time.perf_counter() - started
        card = read_model_card(path)
        queries = args.queries
        batches = args.batches
        if kind == "brute-force" and len(tables.items) >= 500_000:
            queries, batches = args.large_bf_queries, args.large_bf_batches
        row = {
            "catalog": label,
            "items": len(tables.items),
            "index": kind,
            "plan": card["index"]["description"],
            "export_s": export_seconds,
            "size_mb": _size_mb(path),
            "queries": queries,
            "batches": batches,
        }
        row.update(measure(path, tables, k, queries, batches, args.seed, log))
        rows.append(row)
        shutil.rmtree(path.parent, ignore_errors=True)
        gc.collect()
    return rows


def markdown(rows: list[dict], k: int) -> str:
    header = (
        f"| catalog | index | recall@{k} | batch 1 p50 / p99 ms | batch 1 q/s | "
        "batch 256 p50 / p99 ms | batch 256 q/s | q/s vs brute force (b1 / b256) | "
        "export s | size MB | load s |"
    )
    lines = [header, "|" + "---|" * 11]
    by_catalog = {}
    for row in rows:
        by_catalog.setdefault(row["catalog"], {})[row["index"]] = row
    for row in rows:
        peer = by_catalog[row["catalog"]].get("brute-force")
        ratio = (
            f"{row['qps_1'] / peer['qps_1']:.1f}x / {row['qps_256'] / peer['qps_256']:.1f}x"
            if peer
            else "-"
        )
        lines.append(
            f"| {row['catalog']} | {row['index']} | {row['recall']:.4f} | "
            f"{row['p50_1']:.2f} / {row['p99_1']:.2f} | {row['qps_1']:.0f} | "
            f"{row['p50_256']:.1f} / {row['p99_256']:.1f} | {row['qps_256']:.0f} | {ratio} | "
            f"{row['export_s']:.1f} | {row['size_mb']:.1f} | {row['load_s']:.2f} |"
        )
    lines.append("")
    lines.append("Plans and query counts:")
    for row in rows:
        lines.append(
            f"- {row['catalog']}, {row['index']}: {row['plan']} "
            f"({row['queries']} queries at batch 1, {row['batches']} batches of 256)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=1.0, help="noise scale around centres")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--min-recall", type=float, default=0.95)
    parser.add_argument("--queries", type=int, default=1000, help="timed batch-1 queries")
    parser.add_argument("--batches", type=int, default=20, help="timed batches of 256")
    parser.add_argument("--large-bf-queries", type=int, default=200,
                        help="batch-1 queries for brute force at >= 500k items (slow)")
    parser.add_argument("--large-bf-batches", type=int, default=5)
    parser.add_argument("--run-dir", type=Path, help="also benchmark a trained run's embeddings")
    parser.add_argument("--no-verify", action="store_true", help="skip fresh-process verification")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, help="where exports are written (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def log(message: str) -> None:
        print(message, flush=True)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tfrs-cosine-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    started = time.time()
    try:
        for size in args.sizes:
            log(f"catalog {size:,} x {args.dim}: generating clustered vectors")
            tables = synthetic_tables(size, args.users, args.dim, args.clusters, args.sigma, args.seed)
            rows += run_catalog(f"clustered {size:,}", tables, args, work, log)
            del tables
            gc.collect()
        if args.run_dir is not None:
            from export import EmbeddingTables
            from training.modeling import load_run

            run = load_run(args.run_dir)
            tables = EmbeddingTables.from_model(run.model, run.users, run.items)
            k = min(args.k, len(tables.items))
            if k != args.k:
                log(f"trained run has {len(tables.items)} items: K={k}")
            label = f"trained run ({tables.head}, {len(tables.items):,} items)"
            rows += run_catalog(label, tables, args, work, log, k=k)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    import tensorflow as tf

    command = "python -m benchmarks.index " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(
        [
            f"Command: `{command.strip()}`",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
            f"Python {platform.python_version()}, TensorFlow {tf.__version__}",
            f"Date: {dt.datetime.now(dt.UTC).isoformat(timespec='minutes')} "
            f"({time.time() - started:.0f} s)",
            f"Data: clustered synthetic vectors, dim {args.dim}, {args.clusters} centres ~ N(0, I), "
            f"noise sigma {args.sigma}; {args.users:,} users drawn the same way; cosine head; K={args.k}.",
            "",
            markdown(rows, args.k),
            "",
        ]
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
