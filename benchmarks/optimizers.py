"""Which optimizer the shipped configs use, by measurement: quality of Adam (tf-keras),
LazyAdam (``training.optimizers``) and Adagrad in the same run.

    python -m benchmarks.optimizers --out /tmp/optimizers.md --json /tmp/optimizers.json

* **synthetic**: ``training/configs/synthetic.toml`` as shipped (or ``--set`` overrides,
  e.g. the paper's size), trained by ``training.train.fit`` with its early stopping on
  validation. Each optimizer's learning rate is picked from a small grid
  (``LEARNING_RATES``) by the best validation recall@10 of seed 0 (``--no-tune``: the
  grid's first, usual value); the pick is then trained with every seed and tested once.
* **MovieLens 100K**: the rows of ``BENCHMARKS.md``'s MovieLens table that use Adam (3e
  and 3g of protocols A and B). Adam: retrained with the settings and epoch counts
  chosen there (``benchmarks.movielens.run_project``, same splits and seeds), which
  reproduces the table and checks the setup. LazyAdam: the same settings with its
  learning rate and epoch count tuned on the protocol's validation split the way the
  table's rows were (``benchmarks.movielens.tune``: early stopping, patience 3, at most
  40 epochs), then retrained with every seed and tested once (``--no-tune``: Adam's
  settings and epochs with LazyAdam at 0.01).

Lazy Adam moves a row only when it is in the batch, while dense Adam keeps moving it by
its decaying momentum for the following steps; rows of rare ids therefore travel less
per appearance under lazy Adam, which is why its learning rate is tuned here rather
than copied from Adam.

Output: per row, mean ± sample standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from benchmarks.movielens import (  # noqa: E402
    MAX_EPOCHS,
    PATIENCE,
    base_config,
    protocol_a,
    protocol_b,
    run_project,
    tune,
    with_settings,
)
from benchmarks.report import emit
from training.config import load_config  # noqa: E402
from training.train import evaluate_split, fit, prepare  # noqa: E402

SEEDS = (0, 1, 2)
# Learning-rate grids; the first is each optimizer's usual value (Adam's in the
# MovieLens table, Adagrad's in the TFRS tutorial).
LEARNING_RATES = {"adam": (0.01, 0.003, 0.03), "lazy_adam": (0.01, 0.03, 0.1),
                  "adagrad": (0.1, 0.03, 0.3)}
# BENCHMARKS.md, "MovieLens 100K" (run of 2026-11-23): the rows trained with Adam 0.01,
# with the settings and epoch counts chosen there on validation.
MOVIELENS_ROWS = {
    "A": {
        "3e": {"model.head": "cosine", "model.layer_norm": True, "model.tower_layers": [64, 32],
               "model.logq_correction": True, "model.temperature": 0.2,
               "training.batch_size": 1024, "training.epochs": 7},
        "3g": {"model.logq_correction": True, "model.temperature": 4.0,
               "training.batch_size": 1024, "training.epochs": 5},
    },
    "B": {
        "3e": {"model.head": "cosine", "model.logq_correction": True, "model.temperature": 0.1,
               "training.batch_size": 1024, "training.epochs": 4},
        "3g": {"model.logq_correction": True, "model.temperature": 4.0,
               "training.batch_size": 1024, "training.epochs": 14},
    },
}
METRICS = {"A": ("top_100_categorical_accuracy", "recall@10", "ndcg@10"),
           "B": ("recall@10", "ndcg@10", "hit_rate@50")}
SYNTHETIC_METRICS = ("recall@10", "ndcg@10", "recall@100", "top_100_categorical_accuracy")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _cell(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.4f}"


def synthetic(overrides: list[str], optimizers: list[str], seeds: tuple[int, ...],
              tune_learning_rate: bool = True) -> dict:
    base = load_config("training/configs/synthetic.toml", overrides)
    data, split = prepare(base, log)
    monitor = f"val_recall_at_{base.evaluation.monitor_k}"

    def config(name: str, learning_rate: float, seed: int):
        return load_config("training/configs/synthetic.toml", [
            *overrides, f"training.optimizer={name}", f"training.learning_rate={learning_rate}",
            f"training.seed={seed}"])

    rows = {}
    for name in optimizers:
        trials = []
        for learning_rate in LEARNING_RATES[name] if tune_learning_rate else ():
            result = fit(config(name, learning_rate, seeds[0]), data, split)
            best = max(row[monitor] for row in result.history)
            trials.append({"learning_rate": learning_rate, "validation": best,
                           "best_epoch": result.best_epoch})
            log(f"synthetic {name} lr {learning_rate}: validation {monitor} {best:.4f} "
                f"(best epoch {result.best_epoch})")
        chosen = (max(trials, key=lambda t: t["validation"])["learning_rate"] if trials
                  else LEARNING_RATES[name][0])
        runs = []
        for seed in seeds:
            c = config(name, chosen, seed)
            result = fit(c, data, split)
            metrics = evaluate_split(c, result.model, data, split, "test")
            runs.append({"seed": seed, "epochs": result.epochs, "best_epoch": result.best_epoch,
                         "seconds": result.seconds,
                         **{k: metrics[k] for k in SYNTHETIC_METRICS}})
            log(f"synthetic {name} lr {chosen} seed {seed}: test recall@10 "
                f"{metrics['recall@10']:.4f}, {result.epochs} epochs (best {result.best_epoch})")
        rows[name] = {"learning_rate": chosen, "trials": trials, "runs": runs}
    return {"description": data.description, "overrides": overrides, "rows": rows,
            "tuned": tune_learning_rate}


def movielens(optimizers: list[str], seeds: tuple[int, ...], path: str | None,
              tune_learning_rate: bool = True) -> dict:
    from training.movielens import load_movielens_100k

    data = load_movielens_100k(path=path)
    out = {}
    for protocol in (protocol_a(data), protocol_b(data)):
        for key, settings in MOVIELENS_ROWS[protocol.name].items():
            for name in optimizers:
                chosen = {**settings, "training.optimizer": name,
                          "training.learning_rate": LEARNING_RATES[name][0]}
                trials = []
                if name != "adam" and tune_learning_rate:  # Adam: the table's own choice
                    fixed = {k: v for k, v in chosen.items() if k != "training.epochs"}
                    log(f"MovieLens {protocol.name} row {key} {name}: tuning the learning rate")
                    best, epochs, trials = tune(
                        with_settings(base_config(), fixed),
                        [{"training.learning_rate": lr} for lr in LEARNING_RATES[name]],
                        data, protocol, MAX_EPOCHS, PATIENCE, log)
                    chosen = {**fixed, **best, "training.epochs": max(epochs, 1)}
                runs = []
                for seed in seeds:
                    config = with_settings(base_config(), {**chosen, "training.seed": seed})
                    result = run_project(config, data, protocol.train, protocol.test)
                    runs.append({"seed": seed, "seconds": result["seconds"],
                                 **{m: result["metrics"][m] for m in METRICS[protocol.name]}})
                    log(f"MovieLens {protocol.name} row {key} {name} seed {seed}: "
                        + ", ".join(f"{m} {runs[-1][m]:.4f}" for m in METRICS[protocol.name]))
                out[f"{protocol.name}/{key}/{name}"] = {
                    "learning_rate": chosen["training.learning_rate"],
                    "epochs": chosen["training.epochs"], "trials": trials, "runs": runs}
    return out


def markdown(results: dict) -> list[str]:
    lines = []
    if "synthetic" in results:
        s = results["synthetic"]
        lines += [f"Synthetic: {s['description']}, `training/configs/synthetic.toml`"
                  + (f" with {' '.join(s['overrides'])}" if s["overrides"] else "")
                  + "; test split, training items excluded; "
                  + ("learning rate picked on validation (seed 0)." if s.get("tuned", True)
                     else "each optimizer at its usual learning rate."), "",
                  "| optimizer | learning rate (validation recall@10 per candidate) | "
                  + " | ".join(SYNTHETIC_METRICS) + " | epochs (best) | train s |",
                  "|---|---|" + "---|" * len(SYNTHETIC_METRICS) + "---|---|"]
        for name, row in s["rows"].items():
            runs = row["runs"]
            grid = ", ".join(f"{t['learning_rate']}: {t['validation']:.4f}"
                             for t in row["trials"]) or "not tuned"
            epochs = ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in runs)
            lines.append(f"| {name} | {row['learning_rate']} ({grid}) | "
                         + " | ".join(_cell([r[m] for r in runs]) for m in SYNTHETIC_METRICS)
                         + f" | {epochs} | {np.mean([r['seconds'] for r in runs]):.1f} |")
        lines.append("")
    if "movielens" in results:
        for protocol in ("A", "B"):
            metrics = METRICS[protocol]
            lines += [f"MovieLens 100K, protocol {protocol}:", "",
                      "| row | optimizer | learning rate | epochs | " + " | ".join(metrics)
                      + " | train s |", "|---|---|---|---|" + "---|" * len(metrics) + "---|"]
            for key, row in results["movielens"].items():
                p, name_row, name = key.split("/")
                if p == protocol:
                    runs = row["runs"]
                    lines.append(
                        f"| {name_row} | {name} | {row['learning_rate']} | {row['epochs']} | "
                        + " | ".join(_cell([r[m] for r in runs]) for m in metrics)
                        + f" | {np.mean([r['seconds'] for r in runs]):.1f} |")
            lines.append("")
            for key, row in results["movielens"].items():
                if key.startswith(protocol) and row["trials"]:
                    lines.append(f"- {key}: validation per learning rate: " + ", ".join(
                        f"{t['settings']['training.learning_rate']}: {t['validation']:.4f} "
                        f"(best epoch {t['best_epoch']})" for t in row["trials"]))
            lines.append("")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", nargs="+", default=list(LEARNING_RATES),
                        choices=list(LEARNING_RATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override the synthetic config, e.g. data.num_users=20000")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=LR,LR,...",
                        help="replace an optimizer's learning-rate grid (first = usual value)")
    parser.add_argument("--no-tune", dest="tune", action="store_false",
                        help="each optimizer at its usual learning rate (the grid's first), "
                             "MovieLens rows with the table's epochs")
    parser.add_argument("--no-synthetic", dest="synthetic", action="store_false")
    parser.add_argument("--no-movielens", dest="movielens", action="store_false")
    parser.add_argument("--path", help="a local u.data / ml-100k.zip (default: the cache)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    for text in args.grid:
        name, _, rates = text.partition("=")
        if name not in LEARNING_RATES or not rates:
            parser.error(f"--grid expects NAME=LR,LR,... with NAME in {', '.join(LEARNING_RATES)}")
        LEARNING_RATES[name] = tuple(float(r) for r in rates.split(","))
    started = time.perf_counter()
    results: dict = {}
    if args.synthetic:
        results["synthetic"] = synthetic(args.overrides, args.optimizers, tuple(args.seeds),
                                         args.tune)
    if args.movielens:
        movielens_optimizers = [n for n in args.optimizers if n != "adagrad"]
        results["movielens"] = movielens(movielens_optimizers, tuple(args.seeds), args.path,
                                         args.tune)
    lines = markdown(results)
    lines.append(f"Wall time {(time.perf_counter() - started) / 60:.1f} min.")
    emit("\n".join(lines), args.out, args.json, results)


if __name__ == "__main__":
    main()
