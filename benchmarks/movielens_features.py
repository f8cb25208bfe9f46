"""MovieLens 100K with feature towers against strong simple baselines, same run, same splits.

    python -m benchmarks.movielens --features                # the full benchmark
    python -m benchmarks.movielens --features --protocols C --seeds 1   # a part of it

Headline metrics: per-user Recall@10 and NDCG@10 with each user's training items
excluded (what a served user sees). Protocol A keeps the tutorial's top-100 categorical
accuracy (training items *not* excluded) for the tutorial comparison only.

Protocols A (the tutorial's random 80/20 split) and B (per-user leave-last-out) are
``benchmarks.movielens``'s. Protocol C, cold start: 10% of the users (seeded) are held
out entirely and 10% of the items are dropped from training (every interaction of a
held-out user or a held-out item leaves the training set). Each held-out user is served
from their side features and the chronologically first half of their interactions as
history (the query timestamp is one second after the last history item) and scored on
the second half, over the whole catalog: the held-out items are embedded by the item
tower from their side features, as ``export --items`` indexes them. The history's items
are excluded from the ranking, as ``recommend`` does with ``--exclude-seen``.

Context rows (``training.baselines``; closed form, deterministic, tuned on the
protocol's validation split for Recall@10): EASE (lambda), item-KNN cosine (k nearest
neighbours), PureSVD (rank), most popular. Protocol C compares with most popular and EASE
folding-in (``x_u B`` of the history, native for a new user; lambda tuned on a pseudo
cold-start split of the training users).

Model rows: id-only, + side features (user age, gender, occupation, zip code; item
title, release year, genres; the timestamp as query context), + history (the user's 20
most recent earlier items, mean-pooled through the item tower's id table), + both; each
with the dot head and the cosine head, at the best id-only settings of
``benchmarks.movielens`` (dot: logQ, temperature 4, Adam 0.01, batch 1024; cosine:
layer norm, towers [64, 32], logQ, temperature 0.2, Adam 0.01, batch 1024). Feature dot
rows add towers [64, 32] (a feature tower must map both sides to one width). For each
row on A and B, seed 0 trains on the tuning part with early stopping on validation
Recall@10 (patience 3) to pick the number of epochs; each seed then trains on the whole
training part for that many epochs and is tested once. Protocol C reuses protocol A's
epoch count per row (the C split has no separate tuning run).

Cost: a model row is about (1 + seeds) trainings; the context rows take seconds
(EASE and item-KNN are dense ``items x items``, 1,682^2 here).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from benchmarks.movielens import Protocol, empty, log, machine, protocol_a, protocol_b  # noqa: E402
from benchmarks.report import json_default  # noqa: E402
from training import baselines  # noqa: E402
from training.config import Config, config_from_dict  # noqa: E402
from training.data import load_data  # noqa: E402
from training.evaluation import evaluate_embeddings, exact_top_k  # noqa: E402
from training.schema import Interactions, LoadedData  # noqa: E402
from training.splits import Split  # noqa: E402
from training.train import evaluate_split, fit  # noqa: E402

KS = (10, 50, 100)
HEADLINE = ("recall@10", "ndcg@10")
SEEDS = (0, 1, 2)
HISTORY = 20
EASE_LAMBDAS = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)
COLD_EASE_LAMBDAS = (*EASE_LAMBDAS, 3200.0, 6400.0)  # folding-in liked the largest one
KNN_NEIGHBOURS = (10, 20, 50, 100, 200, 1681)
SVD_RANKS = (10, 20, 50, 100, 200)
COLD_SHARE = 0.1

USER_SIDE = {
    "age": {"type": "numeric", "buckets": [18, 25, 35, 45, 50, 56], "embedding_dim": 8},
    "gender": {"type": "categorical", "embedding_dim": 4},
    "occupation": {"type": "categorical", "embedding_dim": 8},
    "zip_code": {"type": "categorical", "num_bins": 1000, "embedding_dim": 8},
}
ITEM_SIDE = {
    "title": {"type": "text", "embedding_dim": 16},
    "release_year": {"type": "numeric", "num_buckets": 10, "embedding_dim": 8},
    "genres": {"type": "multi_categorical", "separator": "|", "embedding_dim": 16},
}
CONTEXT = {"timestamp": {"type": "timestamp", "num_buckets": 100, "embedding_dim": 8}}
HISTORY_FEATURE = {"history": {"type": "history", "length": HISTORY, "pooling": "mean"}}

COMMON = {"model.logq_correction": True, "model.remove_accidental_hits": False,
          "model.embedding_dim": 32, "training.optimizer": "adam",
          "training.learning_rate": 0.01, "training.batch_size": 1024}
HEADS = {
    "dot": {"model.head": "dot", "model.temperature": 4.0},
    "cosine": {"model.head": "cosine", "model.temperature": 0.2, "model.layer_norm": True,
               "model.tower_layers": [64, 32]},
}
VARIANTS = ("id", "side", "history", "both")
VARIANT_NAMES = {"id": "id only", "side": "+ side features", "history": "+ history",
                 "both": "+ side features + history",
                 "side_nt": "+ side features, no timestamp context",
                 "both_nt": "+ side features + history, no timestamp context",
                 "side_idfree": "+ side features, id-free item tower, no timestamp context"}
Log = Callable[[str], None]


def feature_tables(variant: str) -> dict:
    """``model`` keys of a variant (``{}``: id towers, today's rows)."""
    if variant == "id":
        return {}
    user = {"user_id": {"type": "id"}}
    item = {"item_id": {"type": "id"}}
    context: dict = {}
    if variant in ("side", "both", "side_nt", "both_nt", "side_idfree"):
        user.update(USER_SIDE)
        item.update(ITEM_SIDE)
    if variant == "side_idfree":  # items by their features only: a new item is no different
        del item["item_id"]
    if variant in ("side", "both"):
        context = dict(CONTEXT)
    if variant in ("history", "both", "both_nt"):
        user.update(HISTORY_FEATURE)
    return {"user_features": user, "item_features": item, "query_context": context}


def row_config(head: str, variant: str, epochs: int, seed: int, patience: int) -> Config:
    raw: dict = {"data": {"source": "movielens-100k"}, "model": {}, "training": {},
                 "evaluation": {"ks": list(KS), "monitor_k": 10, "exclude_seen": True,
                                "validation_users": 0}}
    settings = {**COMMON, **HEADS[head]}
    if variant != "id" and head == "dot":
        settings["model.tower_layers"] = [64, 32]
    for name, value in settings.items():
        section, key = name.split(".")
        raw[section][key] = copy.deepcopy(value)
    raw["model"].update(copy.deepcopy(feature_tables(variant)))
    raw["training"].update({"epochs": epochs, "seed": seed, "early_stopping_patience": patience})
    return config_from_dict(raw)


# ----------------------------------------------------------------------------------------
# context rows: item-item models on the binary matrix


def item_item_metrics(x_train, weights: np.ndarray, data: LoadedData, test: Interactions,
                      seen: Interactions) -> dict[str, float]:
    """Metrics of the scores ``x_u W`` (``W (p, p)``), ``seen`` excluded per user."""
    users, test_users = np.unique(test.user_id, return_inverse=True)
    rows = np.searchsorted(data.users, users)
    x_seen = baselines.interaction_matrix(seen, data.users, data.items)
    excluded = [x_seen.indices[x_seen.indptr[r]:x_seen.indptr[r + 1]].astype(np.int64)
                for r in rows]
    test_items = _columns(data.items, test.item_id)
    return evaluate_embeddings(np.asarray(x_train[rows].toarray(), np.float32),
                               np.asarray(weights.T, np.float32), test_users, test_items,
                               list(KS), excluded)


def _columns(items: np.ndarray, ids: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(items, ids), len(items) - 1)
    return np.where(items[at] == ids, at, -1).astype(np.int64)


def context_rows(data: LoadedData, protocol: Protocol, log: Log) -> list[dict]:
    """EASE, item-KNN, PureSVD tuned on validation Recall@10; most popular."""
    x_tune = baselines.interaction_matrix(protocol.tune_train, data.users, data.items)
    x = baselines.interaction_matrix(protocol.train, data.users, data.items)

    def validate(w: np.ndarray) -> float:
        return item_item_metrics(x_tune, w, data, protocol.validation,
                                 protocol.tune_train)["recall@10"]

    def test(w: np.ndarray) -> dict:
        return item_item_metrics(x, w, data, protocol.test, protocol.train)

    rows = []
    start = time.perf_counter()
    lam, _, sweep = baselines.tune_ease(x_tune, EASE_LAMBDAS, validate)
    rows.append({"key": "ease", "name": f"EASE (lambda {lam:g})", "chosen": lam,
                 "validation": sweep, "metrics": test(baselines.ease_weights(x, lam))})
    knn = {k: validate(baselines.item_knn_weights(x_tune, neighbours=k)) for k in KNN_NEIGHBOURS}
    k = max(knn, key=lambda n: (knn[n], -n))
    rows.append({"key": "knn", "name": f"item-KNN cosine (k {k})", "chosen": k,
                 "validation": knn,
                 "metrics": test(baselines.item_knn_weights(x, neighbours=k))})
    svd = {}
    for rank in SVD_RANKS:
        v = baselines.pure_svd_factors(x_tune, rank)
        svd[rank] = validate(v @ v.T)
    rank = max(svd, key=lambda r: (svd[r], -r))
    v = baselines.pure_svd_factors(x, rank)
    rows.append({"key": "svd", "name": f"PureSVD (rank {rank})", "chosen": rank,
                 "validation": svd, "metrics": test(v @ v.T)})
    counts = baselines.popularity(x)
    # Ties broken by catalog order so ">= K-th score" cannot credit a tie.
    popular = counts - np.arange(len(counts)) / (2.0 * len(counts))
    rows.append({"key": "pop", "name": "most popular", "chosen": None, "validation": {},
                 "metrics": _score_metrics(np.tile(popular, (1, 1)), data, protocol)})
    for row in rows:
        m = row["metrics"]
        log(f"  context {row['name']}: test R@10 {m['recall@10']:.4f}, "
            f"NDCG@10 {m['ndcg@10']:.4f}")
    log(f"  context rows: {time.perf_counter() - start:.0f} s")
    return rows


def _score_metrics(scores: np.ndarray, data: LoadedData, protocol: Protocol) -> dict:
    """One score vector ``(1, p)`` for every test user (most popular)."""
    users, test_users = np.unique(protocol.test.user_id, return_inverse=True)
    x_seen = baselines.interaction_matrix(protocol.train, data.users, data.items)
    rows = np.searchsorted(data.users, users)
    excluded = [x_seen.indices[x_seen.indptr[r]:x_seen.indptr[r + 1]].astype(np.int64)
                for r in rows]
    return evaluate_embeddings(np.ones((len(users), 1), np.float32),
                               scores.T.astype(np.float32), test_users,
                               _columns(data.items, protocol.test.item_id), list(KS), excluded)


# ----------------------------------------------------------------------------------------
# model rows on A and B


@dataclass
class Budget:
    seeds: tuple[int, ...] = SEEDS
    max_epochs: int = 30
    patience: int = 3
    heads: tuple[str, ...] = ("dot", "cosine")
    variants: tuple[str, ...] = VARIANTS
    # rows (head, variant) that get every seed; the others only the first seed
    full_seed_rows: tuple[tuple[str, str], ...] | None = None


def model_rows(data: LoadedData, protocol: Protocol, budget: Budget, log: Log) -> list[dict]:
    rows = []
    for variant in budget.variants:
        for head in budget.heads:
            key = f"{head}/{variant}"
            tune = row_config(head, variant, budget.max_epochs, 0, budget.patience)
            split = Split(train=protocol.tune_train, validation=protocol.validation,
                          test=empty(protocol.tune_train))
            result = fit(tune, data, split)
            epochs = max(int(result.best_epoch or 1), 1)
            log(f"  {protocol.name} {key}: validation R@10 {result.best_value:.4f} at epoch "
                f"{epochs} ({result.epochs} run, {result.seconds:.0f} s)")
            seeds = budget.seeds
            if budget.full_seed_rows is not None and (head, variant) not in budget.full_seed_rows:
                seeds = seeds[:1]
            runs = []
            for seed in seeds:
                config = row_config(head, variant, epochs, seed, 0)
                final = Split(train=protocol.train, validation=empty(protocol.train),
                              test=protocol.test)
                trained = fit(config, data, final)
                metrics = evaluate_split(config, trained.model, data, final, "test",
                                         trained.features)
                runs.append({"seed": seed, "metrics": metrics, "seconds": trained.seconds})
                log(f"  {protocol.name} {key} seed {seed}: test R@10 {metrics['recall@10']:.4f}, "
                    f"NDCG@10 {metrics['ndcg@10']:.4f}, top-100 "
                    f"{metrics['top_100_categorical_accuracy']:.4f} ({trained.seconds:.0f} s)")
            rows.append({"key": key, "head": head, "variant": variant, "epochs": epochs,
                         "validation": result.best_value, "tune_seconds": result.seconds,
                         "runs": runs})
    return rows


# ----------------------------------------------------------------------------------------
# protocol C: cold-start users and items


@dataclass
class ColdStart:
    train: Interactions
    cold_users: np.ndarray  # sorted ids
    cold_items: np.ndarray  # sorted ids
    history: list[np.ndarray]  # per cold user (chronological), item ids
    history_time: np.ndarray  # per cold user: one second after the last history item
    test: Interactions  # the cold users' second halves


def cold_start(inter: Interactions, seed: int = 0, user_share: float = COLD_SHARE,
               item_share: float = COLD_SHARE) -> ColdStart:
    """Holds out a seeded ``user_share`` of the users of ``inter`` and ``item_share`` of
    its items (see the module doc). O(interactions x held-out users) (a scan per user)."""
    rng = np.random.default_rng(seed)
    users, items = np.unique(inter.user_id), np.unique(inter.item_id)
    cold_users = np.sort(rng.choice(users, int(round(user_share * len(users))), replace=False))
    cold_items = np.sort(rng.choice(items, int(round(item_share * len(items))), replace=False))
    is_cold_user = np.isin(inter.user_id, cold_users)
    train = inter.subset(~is_cold_user & ~np.isin(inter.item_id, cold_items))
    history, times, test_rows = [], [], []
    for user in cold_users:
        rows = np.flatnonzero(inter.user_id == user)
        rows = rows[np.argsort(inter.timestamp[rows], kind="stable")]
        half = len(rows) // 2
        history.append(inter.item_id[rows[:half]])
        times.append(int(inter.timestamp[rows[half - 1]]) + 1)
        test_rows.append(rows[half:])
    test = inter.subset(np.sort(np.concatenate(test_rows)))
    return ColdStart(train, cold_users, cold_items, history, np.array(times, np.int64), test)


def _cold_metrics(scores_or_vectors: tuple[np.ndarray, np.ndarray], data: LoadedData,
                  cold: ColdStart, exclude: list[np.ndarray]) -> dict[str, float]:
    """Metrics of cold users (rows in ``cold.cold_users`` order) and the share of their
    top-10 hits that are held-out items."""
    users, items = scores_or_vectors
    test_users = np.searchsorted(cold.cold_users, cold.test.user_id)
    test_items = _columns(data.items, cold.test.item_id)
    metrics = evaluate_embeddings(users, items, test_users, test_items, list(KS), exclude)
    _, top = exact_top_k(users, items, 10, exclude=exclude)
    wanted = set(zip(test_users.tolist(), test_items.tolist(), strict=True))
    cold_columns = set(_columns(data.items, cold.cold_items).tolist())
    hits = [(u, i) for u in range(len(users)) for i in top[u].tolist() if (u, i) in wanted]
    metrics["hits@10"] = len(hits)
    metrics["cold_item_hit_share@10"] = (
        sum(i in cold_columns for _, i in hits) / len(hits) if hits else 0.0)
    metrics["cold_item_share_of_test"] = float(np.isin(cold.test.item_id, cold.cold_items).mean())
    metrics["cold_item_share_of_top10"] = float(np.isin(top, list(cold_columns)).mean())
    return metrics


def _history_columns(data: LoadedData, cold: ColdStart) -> list[np.ndarray]:
    return [np.unique(c[c >= 0]) for c in (_columns(data.items, h) for h in cold.history)]


def cold_context_rows(data: LoadedData, cold: ColdStart, log: Log) -> list[dict]:
    """Most popular and EASE folding-in; lambda tuned on a pseudo cold-start split of the
    training users (10% of them, their first half as history, second half scored)."""
    x = baselines.interaction_matrix(cold.train, data.users, data.items)
    exclude = _history_columns(data, cold)
    pseudo = cold_start(cold.train, seed=1, item_share=0.0)
    x_pseudo = baselines.interaction_matrix(pseudo.train, data.users, data.items)
    pseudo_exclude = _history_columns(data, pseudo)

    def folded(w: np.ndarray, state: ColdStart, rows: list[np.ndarray]) -> tuple:
        hist = np.zeros((len(state.cold_users), len(data.items)), np.float32)
        for r, columns in enumerate(rows):
            hist[r, columns] = 1.0
        return hist, np.asarray(w.T, np.float32)

    sweep = {}
    for lam in COLD_EASE_LAMBDAS:
        w = baselines.ease_weights(x_pseudo, lam)
        sweep[lam] = _cold_metrics(folded(w, pseudo, pseudo_exclude), data, pseudo,
                                   pseudo_exclude)["recall@10"]
    lam = max(sweep, key=lambda v: (sweep[v], v))
    ease = _cold_metrics(folded(baselines.ease_weights(x, lam), cold, exclude), data, cold,
                         exclude)
    counts = baselines.popularity(x)
    popular = (counts - np.arange(len(counts)) / (2.0 * len(counts)))[:, None]
    pop = _cold_metrics((np.ones((len(cold.cold_users), 1), np.float32),
                         popular.astype(np.float32)), data, cold, exclude)
    rows = [{"key": "ease", "name": f"EASE folding-in (lambda {lam:g})", "chosen": lam,
             "validation": sweep, "metrics": ease},
            {"key": "pop", "name": "most popular", "chosen": None, "validation": {},
             "metrics": pop}]
    for row in rows:
        log(f"  C context {row['name']}: R@10 {row['metrics']['recall@10']:.4f}, NDCG@10 "
            f"{row['metrics']['ndcg@10']:.4f}")
    return rows


def cold_model_rows(data: LoadedData, cold: ColdStart, epochs: dict[str, int],
                    budget: Budget, log: Log) -> list[dict]:
    """Feature rows trained on the C split (protocol A's epochs), serving cold users."""
    exclude = _history_columns(data, cold)
    rows = []
    for variant in [v for v in budget.variants if v != "id"]:
        for head in budget.heads:
            key = f"{head}/{variant}"
            seeds = budget.seeds
            if budget.full_seed_rows is not None and (head, variant) not in budget.full_seed_rows:
                seeds = seeds[:1]
            runs = []
            for seed in seeds:
                config = row_config(head, variant, epochs.get(key, 5), seed, 0)
                split = Split(train=cold.train, validation=empty(cold.train),
                              test=empty(cold.train))
                trained = fit(config, data, split)
                users, items = _cold_vectors(trained, data, cold, variant)
                metrics = _cold_metrics((users, items), data, cold, exclude)
                runs.append({"seed": seed, "metrics": metrics, "seconds": trained.seconds})
                log(f"  C {key} seed {seed}: R@10 {metrics['recall@10']:.4f}, NDCG@10 "
                    f"{metrics['ndcg@10']:.4f}, cold-item share of hits "
                    f"{metrics['cold_item_hit_share@10']:.3f} ({trained.seconds:.0f} s)")
            rows.append({"key": key, "head": head, "variant": variant,
                         "epochs": epochs.get(key, 5), "runs": runs,
                         "epochs_note": ("epochs of protocol A" if key in epochs
                                         else "5 epochs (a default: no protocol A row)")})
    return rows


def _cold_vectors(trained, data: LoadedData, cold: ColdStart, variant: str):
    """Head-prepared vectors of the cold users (their features, history and time) and
    of every catalog item (from the item table: held-out items by their features)."""
    features = trained.features
    lookups = features._tensors()
    ids = tf.constant(cold.cold_users.astype(str))
    inputs = {"user_id": ids, **lookups.users(ids)}
    if features.stored.history_feature is not None:
        padded = np.full((len(cold.cold_users), HISTORY), "", dtype=object)
        for r, items in enumerate(cold.history):
            recent = items[-HISTORY:]
            padded[r, : len(recent)] = recent
        inputs[features.stored.history_feature] = tf.constant(padded.astype(str))
    for name in features.stored.timestamp_features:
        inputs[name] = tf.constant(cold.history_time)
    model = trained.model
    users = model.head.normalize(tf.cast(model.user_tower(inputs), tf.float32)).numpy()
    item_inputs = features.item_inputs()(data.items)
    items = model.head.normalize(tf.cast(model.item_tower(item_inputs), tf.float32)).numpy()
    return users, items


# ----------------------------------------------------------------------------------------
# report


def _mean_sd(runs: list[dict], key: str) -> tuple[float, float, int]:
    values = np.array([r["metrics"][key] for r in runs], dtype=np.float64)
    return (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            len(values))


def _cell(runs: list[dict], key: str) -> str:
    mean, sd, n = _mean_sd(runs, key)
    return f"{mean:.4f} ± {sd:.4f}" if n > 1 else f"{mean:.4f} (1 seed)"


def protocol_lines(name: str, description: str, context: list[dict], models: list[dict],
                   extra: Sequence[str] = ()) -> list[str]:
    metrics = [*HEADLINE, *extra]
    lines = [f"### Protocol {name}", "", description, "",
             "| row | " + " | ".join(metrics) + " | epochs | seeds | tuned on validation |",
             "|---|" + "---|" * len(metrics) + "---|---|---|"]
    for row in context:
        lines.append(f"| {row['name']} | "
                     + " | ".join(f"{row['metrics'][m]:.4f}" for m in metrics)
                     + f" | – | – (deterministic) | {_sweep(row['validation'])} |")
    for row in models:
        lines.append(f"| {row['head']}, {VARIANT_NAMES[row['variant']]} | "
                     + " | ".join(_cell(row["runs"], m) for m in metrics)
                     + f" | {row['epochs']} | {len(row['runs'])} | "
                     + (f"epochs (R@10 {row['validation']:.4f})" if "validation" in row
                        else row.get("epochs_note", "epochs of protocol A")) + " |")
    return lines


def _sweep(sweep: dict) -> str:
    return ", ".join(f"{float(k):g}: {v:.4f}" for k, v in sweep.items()) if sweep else "–"


def target_lines(name: str, context: list[dict], models: list[dict]) -> list[str]:
    """The cosine head with side features and history against every context row."""
    lines = []
    for row in models:
        if row["head"] == "cosine" and row["variant"] in ("both", "both_nt"):
            lines += _target(name, context, row)
    return lines


def _target(name: str, context: list[dict], row: dict) -> list[str]:
    lines = []
    for metric in HEADLINE:
        values = np.array([r["metrics"][metric] for r in row["runs"]])
        spread = float(values.max() - values.min())
        best = max(context, key=lambda c: c["metrics"][metric])
        gap = float(values.mean() - best["metrics"][metric])
        met = gap > spread and gap > 0
        lines.append(
            f"- Protocol {name}, {metric}: cosine {VARIANT_NAMES[row['variant']]} "
            f"{values.mean():.4f} (seed range {spread:.4f}, {len(values)} seeds) vs best "
            f"context row {best['name']} {best['metrics'][metric]:.4f}: gap {gap:+.4f}, "
            f"target {'MET' if met else 'MISSED'}.")
    return lines


def sections(results: dict[str, dict]) -> list[list[str]]:
    """The markdown of every protocol in ``results``, A, B, C order."""
    out = []
    for name in [n for n in "AB" if n in results]:
        r = results[name]
        extra = ("top_100_categorical_accuracy",) if name == "A" else ("hit_rate@50",)
        out.append(protocol_lines(name, r["description"], r["context"], r["models"], extra)
                   + [""] + target_lines(name, r["context"], r["models"]))
    if "C" in results:
        r = results["C"]
        share = r["context"][0]["metrics"]["cold_item_share_of_test"]
        out.append(protocol_lines("C", r["description"], r["context"], r["models"],
                                  ("cold_item_hit_share@10", "cold_item_share_of_top10"))
                   + ["", f"Held-out items are {share:.3f} of the held-out users' test "
                          "interactions."]
                   + [""] + target_lines("C", r["context"][:1], r["models"]))
    return out


def write_markdown(path: Path, headers: list[dict], sections: list[list[str]]) -> None:
    lines = ["## MovieLens 100K: feature towers", ""]
    for header in headers:
        lines += [
            f"Command: `{header['command']}`  ",
            f"Date: {header['date']}; wall time {header['minutes']:.1f} min  ",
            f"Machine: {header['machine']}  ",
            f"Data: {header['data']}  ",
            f"Budget: {header['budget']}",
            "",
        ]
    for section in sections:
        lines += section + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def write_plot(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("A", "B", "C") if n in results]
    figure, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        result = results[name]
        labels, means, sds, colours = [], [], [], []
        for row in result["context"]:
            labels.append(row["name"].split(" (")[0])
            means.append(row["metrics"]["recall@10"])
            sds.append(0.0)
            colours.append("0.6")
        for row in result["models"]:
            mean, sd, _ = _mean_sd(row["runs"], "recall@10")
            labels.append(f"{row['head']} {row['variant']}")
            means.append(mean)
            sds.append(sd)
            colours.append("tab:blue" if row["head"] == "dot" else "tab:orange")
        ax.barh(range(len(labels)), means, xerr=sds, color=colours, capsize=2)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("test Recall@10 (training / history items excluded)")
        ax.set_title(f"protocol {name}")
        ax.grid(True, axis="x", alpha=0.3)
    figure.suptitle("MovieLens 100K: feature towers vs context rows "
                    "(grey: context; blue: dot; orange: cosine; mean ± sd over seeds)",
                    fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ----------------------------------------------------------------------------------------
# main


def load() -> LoadedData:
    """MovieLens 100K from the cache, with its user and item tables."""
    return load_data(config_from_dict({"data": {"source": "movielens-100k"}}).data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.movielens --features",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", default="ABC")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the headline rows")
    parser.add_argument("--all-seeds", action="store_true",
                        help="every model row gets every seed (default: only the rows "
                             "dot/both and cosine/both, and the id-only rows)")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--heads", default="dot,cosine")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"of {', '.join(VARIANT_NAMES)} (_nt: without the timestamp "
                             "context)")
    parser.add_argument("--full-seed-variants", default="id,both",
                        help="variants whose rows get every seed (the others: seed 0)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/movielens_features.md"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/movielens_features.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/movielens_features.png"))
    parser.add_argument("--epochs-from", type=Path,
                        help="a previous --json whose protocol A epochs protocol C reuses "
                             "(when A is not run in this call)")
    parser.add_argument("--merge", type=Path, nargs="+",
                        help="only combine earlier --json outputs into --out and --plot")
    args = parser.parse_args(argv)
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        merged: dict[str, dict] = {}
        for part in parts:  # rows of one protocol from several runs: models appended, a
            for name, result in part["results"].items():  # later run of a row replaces it
                if name in merged:
                    later = {m["key"] for m in result["models"]}
                    merged[name]["models"] = [m for m in merged[name]["models"]
                                              if m["key"] not in later] + result["models"]
                else:
                    merged[name] = result
        write_markdown(args.out, [p["header"] for p in parts], sections(merged))
        write_plot(args.plot, merged)
        log(f"wrote {args.out} and {args.plot} from {len(parts)} runs")
        return 0
    heads = tuple(args.heads.split(","))
    variants = tuple(args.variants.split(","))
    headline = tuple((h, v) for h in heads for v in args.full_seed_variants.split(","))
    budget = Budget(seeds=tuple(range(args.seeds)), max_epochs=args.max_epochs, heads=heads,
                    variants=variants, full_seed_rows=None if args.all_seeds else headline)
    start = time.perf_counter()
    log("data: loading movielens-100k with its user and item tables")
    data = load()
    log(f"data: {data.description}")
    header = {
        "command": " ".join(["python -m benchmarks.movielens --features",
                             *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "data": data.description,
        "budget": (f"seeds {list(budget.seeds)} for "
                   + ("every model row" if args.all_seeds else
                      f"the rows of variants {args.full_seed_variants}; seed 0 only for "
                      "the others")
                   + f"; at most {budget.max_epochs} epochs, patience {budget.patience}"),
    }
    results: dict[str, dict] = {}

    def save() -> None:
        header["minutes"] = (time.perf_counter() - start) / 60
        write_markdown(args.out, [header], sections(results))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=1,
                                        default=json_default))
        log(f"wrote {args.out} and {args.json}")

    for name in [n for n in args.protocols if n in "AB"]:
        protocol = protocol_a(data) if name == "A" else protocol_b(data)
        log(f"protocol {name}: {protocol.description}")
        context = context_rows(data, protocol, log)
        results[name] = {"description": protocol.description, "context": context, "models": []}
        models = model_rows(data, protocol, budget, log)
        results[name]["models"] = models
        save()
    if "C" in args.protocols:
        source = results.get("A")
        if source is None and args.epochs_from:
            source = json.loads(args.epochs_from.read_text())["results"]["A"]
        epochs = {r["key"]: r["epochs"] for r in (source or {}).get("models", [])}
        cold = cold_start(data.interactions)
        description = (
            f"cold start: {len(cold.cold_users)} users and {len(cold.cold_items)} items held "
            f"out (seed 0); {len(cold.train)} training interactions; {len(cold.test)} test "
            "interactions (each held-out user's second half, scored over all "
            f"{len(data.items)} items with their first half as history and excluded)")
        log(f"protocol C: {description}")
        context = cold_context_rows(data, cold, log)
        models = cold_model_rows(data, cold, epochs, budget, log)
        results["C"] = {"description": description, "context": context, "models": models}
        save()
    write_plot(args.plot, results)
    log(f"wrote {args.plot}; total {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
