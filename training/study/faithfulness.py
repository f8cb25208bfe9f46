"""The cosine-faithfulness study (issues 6, 13): when does a cosine explanation mean something?

Reproduces Steck, Ekanadham & Kallus (2024), "Is Cosine-Similarity of Embeddings Really
About Similarity?", Section 4, and puts this project's two-tower heads beside the
paper's closed-form models:

* data: ``training.data.generate_synthetic`` (the paper's clustered simulation) and a
  random train / validation / test split (``training.splits``);
* models: Eq. 1 (``lambda1``, rank ``dim``) under the re-scalings ``D`` of Sections
  2.2-2.3, Eq. 2 at the paper's ``lambda2`` and at ``lambda2`` tuned on validation, and
  the two-tower models dot, dot + layer norm, cosine, cosine + layer norm trained with
  ``training.train.fit``, each explored over a grid (learning rate, temperature fixed or
  learned, remedies for cone-shaped embeddings) and picked on validation recall
  (``training.study.tuning``: per-epoch probes, the AUC-recall front, 3 seeds). Every
  model is served as a ``TwoTowerModel`` (the linear ones with
  ``DotHead`` and the closed-form embeddings as tower weights), so evaluation,
  explanation and re-scaling run through the same code for all of them;
* per model: cluster recovery by item-item cosine (ROC-AUC, AP, k-means ARI), the
  arbitrariness test with random diagonal ``D`` (scores must not move for dot heads;
  how far cosines, AUC and the training objective move), held-out Recall@10 / NDCG@10
  (``training.evaluation``), Spearman(item norm, popularity), explanation
  faithfulness (served ranking vs. ranking by the explanation's cosine), and the
  geometry of the item embeddings (within- / cross-cluster cosine, uniformity);
* real data (``training.study.genres``): MovieLens 100K genres as the ground truth for
  the MovieLens benchmark's best dot and cosine settings and for EASE, and Steck's
  random-``D`` test on those trained models (``--quick``: a synthetic stand-in).

Outputs in ``--out`` (``training.study.report``): ``report.md``, ``figures.json``, the
heatmaps ``item_cosine_heatmaps.png`` (the paper's Figure 1 with every model) and
``random_rescalings.png``, ``training_curves.png`` (per-epoch AUC and validation
recall), ``auc_recall_front.png`` and ``movielens_genres.png``. Run it with
``tfrs-cosine study cosine-faithfulness --out reports/cosine_faithfulness``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import InputError
from training.study import linear, metrics, tuning
from training.study.probes import (
    explanation_cosines,
    in_batch_loss,
    item_embeddings,
    jsonable,
    loss_batches,
    rescaled,
    served_scores,
)

Log = Callable[[str], None]

PAPER_SIZE = {"users": 20000, "items": 1000, "clusters": 5, "dim": 50, "seed": 0}
QUICK_SIZE = {"users": 1000, "items": 120, "dim": 16}
# The tuning grid (training.study.tuning): Adam, in-batch softmax with logQ correction.
# A dot head's temperature only rescales embeddings the towers can rescale themselves;
# a cosine head's bounds its logits to [-1/T, 1/T], so it is part of the cosine grid.
SCORE_TOLERANCE = 1e-4  # float32: max |score change| / max |score| for a dot model under D


@dataclass(frozen=True)
class StudySettings:
    """Everything that determines a run (written to figures.json and the report)."""

    users: int = 20000
    items: int = 1000
    clusters: int = 5
    dim: int = 50
    seed: int = 0
    quick: bool = False
    lambda1: float = 10_000.0
    lambda2: float = 100.0
    lambda2_grid: tuple[float, ...] = (25.0, 50.0, 100.0)
    grid: tuple[tuning.Setting, ...] = field(default_factory=lambda: tuple(tuning.full_grid()))
    grid_name: str = "full"  # "full", "reduced" (tuning.GRIDS) or "quick"
    seeds: tuple[int, ...] = tuning.SEEDS
    epochs: int = 6
    batch_size: int = 1024
    early_stopping_patience: int = 1
    optimizer: str = "adam"
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    split_seed: int = 42
    random_draws: int = 10
    rescaling_octaves: float = 2.0
    explain_users: int = 500
    loss_batches: int = 4
    genres: str = "movielens"  # or "synthetic" (a stand-in without download, --quick)
    genre_epochs: int | None = None  # None: the MovieLens benchmark's epoch counts

    def command(self, out: str | Path) -> str:
        parts = ["tfrs-cosine study cosine-faithfulness"]
        if self.quick:
            parts.append("--quick")
        parts += [
            f"--users {self.users}", f"--items {self.items}", f"--clusters {self.clusters}",
            f"--dim {self.dim}", f"--seed {self.seed}",
        ]
        scale = (self.users / PAPER_SIZE["users"]) * (PAPER_SIZE["items"] / self.items)
        if not math.isclose(self.lambda1, 10_000.0 * scale):
            parts.append(f"--lambda1 {self.lambda1:g}")
        if not math.isclose(self.lambda2, 100.0 * math.sqrt(scale)):
            parts.append(f"--lambda2 {self.lambda2:g}")
        if self.grid_name not in ("full", "quick"):
            parts.append(f"--grid {self.grid_name}")
        if self.genres != ("synthetic" if self.quick else "movielens"):
            parts.append(f"--genres {self.genres}")
        return " ".join([*parts, f"--out {out}"])


def make_settings(
    users: int | None = None,
    items: int | None = None,
    clusters: int | None = None,
    dim: int | None = None,
    seed: int = 0,
    quick: bool = False,
    lambda1: float | None = None,
    lambda2: float | None = None,
    grid: str = "full",
) -> StudySettings:
    """Settings for a size; ``quick`` shrinks the size (unless given), epochs and grids.

    Unless given, the lambdas follow the data's scale: squared singular values grow
    with the number of users and shrink with the number of items (same users' activity
    spread over more items), so ``lambda1 = 10000 s`` and ``lambda2 = 100 sqrt(s)`` with
    ``s = (users / 20000) (1000 / items)``: exactly the paper's values at its size.
    ``grid`` names a ``tuning.GRIDS`` entry (ignored with ``quick``).
    """
    if grid not in tuning.GRIDS:
        raise InputError(f"--grid must be one of {', '.join(tuning.GRIDS)}, got {grid!r}")
    size = dict(PAPER_SIZE) | (QUICK_SIZE if quick else {})
    users = size["users"] if users is None else users
    items = size["items"] if items is None else items
    clusters = size["clusters"] if clusters is None else clusters
    dim = size["dim"] if dim is None else dim
    for name, value, low in (("users", users, 20), ("items", items, 10), ("clusters", clusters, 2),
                             ("dim", dim, 2)):
        if value < low:
            raise InputError(f"--{name} must be >= {low}, got {value}")
    if clusters > items // 2:
        raise InputError(f"--clusters must be <= items / 2 = {items // 2}, got {clusters}")
    if dim > items:
        raise InputError(f"--dim must be <= --items ({items}), got {dim}")
    for name, value in (("lambda1", lambda1), ("lambda2", lambda2)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise InputError(f"--{name} must be a positive number, got {value}")
    scale = (users / PAPER_SIZE["users"]) * (PAPER_SIZE["items"] / items)
    lambda1 = 10_000.0 * scale if lambda1 is None else float(lambda1)
    lambda2 = 100.0 * math.sqrt(scale) if lambda2 is None else float(lambda2)
    common = dict(users=users, items=items, clusters=clusters, dim=dim, seed=seed, quick=quick,
                  lambda1=lambda1, lambda2=lambda2,
                  lambda2_grid=tuple(sorted({lambda2 / 4, lambda2 / 2, lambda2})))
    if quick:
        return StudySettings(**common, grid=tuple(tuning.quick_grid()), grid_name="quick",
                             seeds=(0, 1), epochs=2,
                             random_draws=3, explain_users=100, loss_batches=2,
                             genres="synthetic", genre_epochs=1)
    return StudySettings(**common, grid=tuple(tuning.GRIDS[grid]()), grid_name=grid)


# ----------------------------------------------------------------------------------------
# models


@dataclass
class StudyModel:
    """A model under study, served as a ``TwoTowerModel`` (``model``)."""

    key: str
    label: str
    family: str  # "Eq. 1", "Eq. 2" or "two-tower"
    model: Any  # tfrs_cosine.TwoTowerModel
    linear: linear.LinearModel | None = None
    objective: str = ""  # "eq1", "eq2" or "in-batch softmax"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return self.model.head.kind


def _config(settings: StudySettings, learning_rate: float = 0.01, seed: int | None = None,
            **model: Any):
    """The ``training.config.Config`` of a study model (``model``: [model] keys); ``seed``
    (default ``settings.seed``) seeds initialisation and batch order, not the data."""
    from training.config import config_from_dict

    return config_from_dict({
        "data": {
            "source": "synthetic", "num_users": settings.users, "num_items": settings.items,
            "num_clusters": settings.clusters, "seed": settings.seed, "split": "random",
            "test_fraction": settings.test_fraction,
            "validation_fraction": settings.validation_fraction,
            "split_seed": settings.split_seed,
        },
        "model": {"embedding_dim": settings.dim, **model},
        "training": {
            "epochs": settings.epochs, "batch_size": settings.batch_size,
            "optimizer": settings.optimizer, "seed": settings.seed if seed is None else seed,
            "early_stopping_patience": settings.early_stopping_patience,
            "learning_rate": learning_rate,
        },
        "evaluation": {"ks": [10], "monitor_k": 10, "exclude_seen": True},
    })


def serve_linear(
    settings: StudySettings, model: linear.LinearModel, x: np.ndarray, users, items
):
    """A ``TwoTowerModel`` with a dot head whose towers return ``X A`` and ``B``."""
    from training.modeling import build_model

    config = _config(settings, head="dot", layer_norm=False, temperature=1.0)
    config.model.embedding_dim = model.b.shape[1]
    served = build_model(config, list(users), list(items))
    for tower, table in ((served.user_tower, model.user_embeddings(x)), (served.item_tower, model.b)):
        tower.embedding.embeddings.assign(
            np.vstack([np.zeros((1, table.shape[1])), table]).astype(np.float32)
        )
    return served


# ----------------------------------------------------------------------------------------
# the run


class _Phases:
    """Logs a line per phase with the elapsed time."""

    def __init__(self, log: Log):
        self.log, self.start = log, time.perf_counter()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.cpu_start, self.load_start = time.process_time(), os.getloadavg()[0]

    def usage(self) -> dict[str, Any]:
        """CPU seconds since the start (all threads), and the 1-minute load average at the
        start and now: wall time depends on what else runs on the machine, CPU time less."""
        return {"cpu_seconds": round(time.process_time() - self.cpu_start, 1),
                "load_average_1min": [round(self.load_start, 2), round(os.getloadavg()[0], 2)]}

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        self.log(f"[{self.elapsed:7.1f} s] {message}")


def _fit_two_towers(settings, data, split, phase) -> tuple[list[StudyModel], dict]:
    """Explores every variant's grid (``tuning.explore``); returns the seed-0 models of
    the validation pick (key = variant) and, where it differs, of the highest-AUC
    setting near the best validation recall (key = variant + ``_balanced``), with the
    exploration record for figures.json."""
    from training.evaluation import evaluate_model

    def test_recall(model) -> float:
        return evaluate_model(model, split.test, data.items, [10], split.train)["recall@10"]

    pairs = metrics.PairLabels(data.item_cluster)
    results = tuning.explore(settings.grid, settings.seeds, functools.partial(_config, settings),
                             data, split, pairs, test_recall, phase)
    models, record = [], {"variants": {}}
    for key, result in results.items():
        label = tuning.VARIANTS[key][0]
        picks = [("chosen", key, label, result.chosen)]
        if result.balanced is not result.chosen:
            picks.append(("balanced", f"{key}_balanced",
                          f"{label} (highest AUC near the best recall)", result.balanced))
        for which, model_key, model_label, trial in picks:
            s = trial.setting
            models.append(StudyModel(
                key=model_key, label=model_label, family="two-tower", model=trial.model,
                objective="in-batch softmax",
                settings={"head": s.head, "layer_norm": s.layer_norm, "dim": settings.dim,
                          "learning_rate": s.learning_rate, "temperature": s.temperature,
                          "learn_temperature": s.learn_temperature,
                          "final_temperature": trial.best["temperature"], "remedy": s.remedy,
                          "setting": s.label, "selection": which,
                          "optimizer": settings.optimizer, "batch_size": settings.batch_size,
                          "epochs_max": settings.epochs, "logq_correction": True,
                          "epochs_run": len(trial.epochs), "best_epoch": trial.best_epoch},
            ))
        record["variants"][key] = {
            "label": label,
            "grid": [t.record() for t in result.trials],
            "chosen": result.chosen.setting.label,
            "balanced": result.balanced.setting.label,
            "seeds": {which: result.seed_summary(which) for which in ("chosen", "balanced")},
            "seed_runs": {which: [t.record() for t in result.seeds[which]]
                          for which in ("chosen", "balanced")},
        }
    record["remedies"] = _remedy_table(results)
    return models, record


def _at_best(trial: tuning.Trial) -> dict[str, Any]:
    """The probe at the best epoch, with the lowest temperature of any epoch run (shows
    whether a temperature floor ever bound)."""
    return trial.best | {"best_epoch": trial.best_epoch,
                         "lowest_temperature": min(e["temperature"] for e in trial.epochs)}


def _remedy_table(results: dict) -> list[dict[str, Any]]:
    """Each remedy's trial beside the same setting without it (seed 0)."""
    rows = []
    for key, result in results.items():
        by_setting = {t.setting: t for t in result.trials}
        for trial in result.trials:
            base = by_setting.get(trial.setting.base()) if trial.setting.remedy else None
            if base is None:
                continue
            rows.append({"variant": key, "remedy": trial.setting.remedy,
                         "setting": trial.setting.label, "base": base.setting.label,
                         "with": _at_best(trial), "without": _at_best(base)})
    return rows


def run_study(settings: StudySettings, out: str | Path | None = None, log: Log = print) -> dict:
    """Runs the study; writes the outputs to ``out`` (when given) and returns
    ``{"figures": <figures.json content>, "models": [StudyModel], "data", "split"}``.

    Raises ``RuntimeError`` if a dot-head model's scores move under a diagonal
    re-scaling beyond float32 tolerance (a bug, never a property of the data).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tfrs_cosine  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    from training.data import generate_synthetic
    from training.evaluation import evaluate_model
    from training.splits import split_data
    from training.study.report import write_outputs  # loaded now: the run takes long

    phase = _Phases(log)
    # The real data first: a missing copy fails now, not after the long synthetic part.
    genre_data = _genre_data(settings, phase)
    data = generate_synthetic(settings.users, settings.items, settings.clusters, settings.seed)
    split = split_data(data.interactions, _config(settings).data)
    phase(f"data: {data.description}: {len(data.interactions)} interactions; train "
          f"{len(split.train)}, validation {len(split.validation)}, test {len(split.test)}")

    # -- closed-form reference models, fitted on the training split ---------------------
    x = linear.interaction_matrix(split.train, data.users, data.items)
    svd = linear.truncated_svd(x, settings.dim)
    gram = x.T @ x
    base = linear.eq1_model(svd, settings.lambda1)
    candidates: list[tuple[str, str, str, linear.LinearModel, dict]] = []
    d_labels = {"I": "D = I", "g^1/2": "D = dMat(g)^1/2", "g^-1/2": "D = dMat(g)^-1/2",
                "sigma^-1/2": "D = dMat(sigma^-1/2)"}
    for name, d in linear.eq1_rescalings(svd, settings.lambda1).items():
        candidates.append((f"eq1_{name}", f"Eq. 1, {d_labels[name]}", "Eq. 1", base.rescale(d),
                           {"lambda": settings.lambda1, "D": name, "rank": len(svd.s)}))
    ranks = {lam: int(np.sum(linear.eq2_gain(svd.s, lam) > 0)) for lam in settings.lambda2_grid}
    sweep = {}
    for lam in settings.lambda2_grid:
        served = serve_linear(settings, linear.eq2_model(svd, lam), x, data.users, data.items)
        sweep[lam] = evaluate_model(served, split.validation, data.items, [10], split.train)
    tuned = max(settings.lambda2_grid, key=lambda lam: (sweep[lam]["recall@10"], lam))
    candidates.append(("eq2_paper", f"Eq. 2, lambda = {settings.lambda2:g}", "Eq. 2",
                       linear.eq2_model(svd, settings.lambda2),
                       {"lambda": settings.lambda2, "nonzero_dims": ranks[settings.lambda2]}))
    if tuned != settings.lambda2:
        candidates.append(("eq2_tuned", f"Eq. 2, lambda = {tuned:g} (tuned)", "Eq. 2",
                           linear.eq2_model(svd, tuned),
                           {"lambda": tuned, "nonzero_dims": ranks[tuned]}))
    models = [
        StudyModel(key=key, label=label, family=family, linear=lm,
                   model=serve_linear(settings, lm, x, data.users, data.items),
                   objective="eq1" if family == "Eq. 1" else "eq2", settings=extra)
        for key, label, family, lm, extra in candidates
    ]
    phase(f"closed form: sigma_1..5 = {np.round(svd.s[:5], 1).tolist()}; Eq. 2 keeps "
          + ", ".join(f"{ranks[lam]} dims at lambda {lam:g}" for lam in settings.lambda2_grid)
          + f"; lambda2 tuned on validation: {tuned:g}")

    # -- two-tower models ------------------------------------------------------------------
    two_tower_models, exploration = _fit_two_towers(settings, data, split, phase)
    models += two_tower_models

    # -- metrics ------------------------------------------------------------------------------
    pairs = metrics.PairLabels(data.item_cluster)
    diagonals = metrics.random_diagonals(settings.dim, settings.random_draws, settings.seed + 7,
                                         settings.rescaling_octaves)
    rng = np.random.default_rng(settings.seed + 11)
    explain_users = np.sort(rng.choice(data.users, min(settings.explain_users, len(data.users)),
                                       replace=False))
    train_counts = np.bincount(np.searchsorted(data.items, split.train.item_id),
                               minlength=len(data.items)).astype(np.float64)
    batches = loss_batches(split.train, data.items, settings.batch_size,
                           settings.loss_batches, settings.seed + 1)
    results: dict[str, dict[str, Any]] = {}
    for m in models:
        item_vectors = item_embeddings(m.model)
        row: dict[str, Any] = {"label": m.label, "family": m.family, "head": m.head,
                               "objective": m.objective, "settings": m.settings}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # k-means on a degenerate (rank-1) embedding
            row["cluster_recovery"] = metrics.cluster_recovery(item_vectors, pairs, settings.seed)
            row["geometry"] = metrics.geometry(item_vectors, pairs)
            row["arbitrariness"] = metrics.arbitrariness(item_vectors, pairs, diagonals,
                                                         settings.seed)
        row["arbitrariness"] |= _invariance(m, diagonals, explain_users, gram, batches, settings)
        row["held_out"] = {
            "validation": evaluate_model(m.model, split.validation, data.items, [10], split.train),
            "test": evaluate_model(m.model, split.test, data.items, [10], split.train),
        }
        row["popularity"] = {
            "spearman_norm_vs_train_count": metrics.popularity_spearman(item_vectors, train_counts),
            "spearman_norm_vs_baseline_popularity": metrics.popularity_spearman(
                item_vectors, data.item_popularity),
        }
        row["explanation"] = metrics.ranking_agreement(
            served_scores(m.model, explain_users), explanation_cosines(m.model, explain_users), 10)
        results[m.key] = row
        c, a, t, e = (row["cluster_recovery"], row["arbitrariness"], row["held_out"]["test"],
                      row["explanation"])
        phase(f"metrics {m.key}: AUC {c['auc']:.3f} ARI {c['ari']:.3f} | under D: AUC "
              f"[{a['auc_min']:.3f}, {a['auc_max']:.3f}], score change {a['max_score_change']:.1e}"
              f", objective change {a['max_objective_change']:.1e} | recall@10 "
              f"{t['recall@10']:.4f} | explanation tau {e['kendall_tau']:.3f}")

    figures = {
        "study": "cosine-faithfulness",
        "paper": "Steck, Ekanadham & Kallus (2024), arXiv:2403.05440, Section 4",
        "command": settings.command(out if out is not None else "OUT"),
        "settings": jsonable(dataclasses.asdict(settings)),
        "started": phase.started,
        "seconds": None,
        "versions": _versions(),
        "data": {
            "description": data.description,
            "interactions": len(data.interactions),
            "train": len(split.train), "validation": len(split.validation),
            "test": len(split.test),
            "cluster_sizes": np.bincount(data.item_cluster).tolist(),
            "items_without_training_interactions": int(np.sum(train_counts == 0)),
            "mean_items_per_user": len(data.interactions) / len(data.users),
            "singular_values": svd.s.tolist(),
        },
        "closed_form": {
            "sigma_convention": "sigma_i = singular values of the training matrix X in Eq. 1 "
                                "(g = 1/(1 + lambda/sigma^2)) and Eq. 2 ((1 - lambda/sigma)_+)",
            "lambda1": settings.lambda1, "lambda2": settings.lambda2,
            "eq2_lambda_grid": {f"{lam:g}": {"nonzero_dims": ranks[lam],
                                             "validation_recall@10": sweep[lam]["recall@10"],
                                             "validation_ndcg@10": sweep[lam]["ndcg@10"]}
                                for lam in settings.lambda2_grid},
            "eq2_lambda_tuned": tuned,
        },
        "rescalings": {"draws": settings.random_draws,
                       "distribution": f"log2 d_j ~ U(-{settings.rescaling_octaves:g}, "
                                       f"{settings.rescaling_octaves:g}), seed {settings.seed + 7}",
                       "diagonals": diagonals.tolist()},
        "explanation_users": {"count": len(explain_users), "seed": settings.seed + 11},
        "models": results,
        "two_tower": exploration | {
            "near_best": tuning.NEAR_BEST, "seeds": list(settings.seeds),
            "epochs_max": settings.epochs, "patience": settings.early_stopping_patience},
    }
    figures["two_tower"]["targets"] = tuning.targets(exploration["variants"])
    synthetic_seconds = phase.elapsed
    phase(f"synthetic part done in {synthetic_seconds:.0f} s")

    # -- real data: genres ----------------------------------------------------------------------
    figures["genres"] = _run_genres(settings, genre_data, phase)
    figures["seconds"] = round(phase.elapsed, 1)
    figures["timing"] = {"synthetic": round(synthetic_seconds, 1),
                         "genres": round(phase.elapsed - synthetic_seconds, 1),
                         **phase.usage(), "cpus": os.cpu_count()}
    if out is not None:
        write_outputs(Path(out), figures, models, data, diagonals, phase)
    phase(f"done in {figures['seconds']:.0f} s")
    return {"figures": figures, "models": models, "data": data, "split": split}


def _genre_data(settings: StudySettings, phase: _Phases):
    """MovieLens 100K with its genres, or the synthetic stand-in (``--genres synthetic``)."""
    from training.study import genres

    if settings.genres == "movielens":
        data = genres.movielens_genres()
    else:
        data = genres.synthetic_genres(max(settings.users // 3, 200), settings.items,
                                       settings.clusters, settings.seed)
    phase(f"genres data: {data.description}")
    return data


def _run_genres(settings: StudySettings, genre_data, phase: _Phases) -> dict[str, Any]:
    from training.study import genres

    return genres.run_genres(genre_data, settings.seeds, settings.random_draws,
                             settings.rescaling_octaves, settings.seed, phase,
                             epochs=settings.genre_epochs)


def rerun_genres(settings: StudySettings, out: str | Path, log: Log = print) -> dict:
    """Reruns only the MovieLens part into a finished study in ``out``: replaces
    ``figures.json``'s ``genres``, then rewrites ``movielens_genres.png`` and
    ``report.md`` (the synthetic part's numbers and figures stay as they are).

    Raises ``InputError`` when ``out`` holds no finished study."""
    import json

    from training.study.report import refresh_genres

    out = Path(out)
    path = out / "figures.json"
    try:
        figures = json.loads(path.read_text())
        finished = isinstance(figures, dict) and {"genres", "timing"} <= figures.keys()
    except (OSError, ValueError):
        finished = False
    if not finished:
        raise InputError(f"--only genres needs a finished study in {out} (a readable "
                         "figures.json); run the whole study there first")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tfrs_cosine  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

    phase = _Phases(log)
    genre_data = _genre_data(settings, phase)
    figures["genres"] = _run_genres(settings, genre_data, phase)
    figures["genres_rerun"] = {
        "command": settings.command(out) + " --only genres", "started": phase.started,
        "seconds": round(phase.elapsed, 1), **phase.usage(), "versions": _versions()}
    refresh_genres(out, figures)
    phase(f"MovieLens part rerun in {phase.elapsed:.0f} s; wrote figures.json, "
          f"movielens_genres.png and report.md to {out}")
    return figures


def _invariance(m: StudyModel, diagonals, users, gram, batches, settings) -> dict[str, Any]:
    """Score and training-objective changes under ``(U D, B D^-1)``, max over draws.

    Score change: ``max |s_D - s| / max |s|`` over ``users`` x catalog, the model's own
    scores (temperature included). Objective change: relative change of the closed-form
    objective (Eq. 1 / Eq. 2, float64) or of the in-batch softmax loss on fixed
    training batches (two-tower). For a dot head the score change must stay within
    float32 tolerance; a larger one raises ``RuntimeError``.
    """
    base_scores = served_scores(m.model, users)
    scale = max(float(np.max(np.abs(base_scores))), 1e-12)
    if m.linear is not None:
        objective = {"eq1": linear.eq1_objective, "eq2": linear.eq2_objective}[m.objective]
        lam = m.settings["lambda"]
        base_objective = objective(gram, m.linear, lam)
    else:
        base_objective = in_batch_loss(m.model, batches)
    score_changes, objective_changes = [], []
    for d in diagonals:
        with rescaled(m.model, d):
            moved = served_scores(m.model, users)
            if m.linear is None:
                changed = in_batch_loss(m.model, batches)
        if m.linear is not None:
            changed = objective(gram, m.linear.rescale(d), lam)
        score_changes.append(float(np.max(np.abs(moved - base_scores))) / scale)
        objective_changes.append(abs(changed - base_objective) / abs(base_objective))
    if m.head == "dot" and max(score_changes) > SCORE_TOLERANCE:
        raise RuntimeError(
            f"{m.label}: a diagonal re-scaling moved the dot scores by {max(score_changes):.2e} "
            f"(relative), beyond float32 tolerance {SCORE_TOLERANCE:g}"
        )
    return {"max_score_change": max(score_changes), "max_objective_change": max(objective_changes),
            "score_tolerance": SCORE_TOLERANCE}


def _versions() -> dict[str, str]:
    import sklearn
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    return {"python": platform.python_version(), "numpy": np.__version__,
            "tensorflow": tf.__version__, "tensorflow_recommenders": tfrs.__version__,
            "scikit-learn": sklearn.__version__}


# ----------------------------------------------------------------------------------------
