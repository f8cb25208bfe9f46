"""The paper's point on real data: MovieLens 100K, genres as the ground truth.

For the MovieLens benchmark's best dot setting (row 3g of BENCHMARKS.md: dot + logQ,
the tutorial's towers) and its best cosine setting (row 3e: cosine + layer norm +
towers [64, 32] + logQ), trained on protocol A's training part (the TFRS tutorial's
split) with 3 seeds; for each head's picks from a grid explored on the tuning split
(``training.study.genre_grid``: the best validation Recall@10, and the highest genre AUC
within 5% of it), trained the same way; and for closed-form references (EASE with lambda
tuned on validation, item-KNN cosine, PureSVD; ``training.baselines``):

* genre AUC: ROC-AUC of the item-item similarity (cosine of the item tower outputs;
  the item-item matrix of a reference) for item pairs sharing a genre versus not;
* precision@10: share of each item's 10 nearest neighbours sharing a genre with it;
* Steck's arbitrariness test: a random diagonal ``D`` applied to the towers (users
  ``u D``, items ``i D^-1``) leaves a dot model's scores unchanged but moves the cosine
  neighbour lists (mean Jaccard of each item's top 10 before / after); on a cosine
  model ``D`` is not a symmetry: its training loss changes.

Items: those with at least ``MIN_TRAIN_COUNT`` training interactions and a known genre.
Cost: one ``fit`` per grid setting, and per measured model and seed (seconds each at this
size), an ``O(p^3)`` EASE solve per lambda, ``O(p^2)`` similarity matrices (``p`` = 1,682
items).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from training import baselines
from training.schema import Interactions, LoadedData
from training.splits import Split, random_split
from training.study import genre_grid, metrics
from training.study.neighbours import jaccard, neighbour_precision, top_k_neighbours

K = 10
MIN_TRAIN_COUNT = 5
EASE_LAMBDAS = (25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)
SVD_RANKS = (16, 32, 64, 128)
# BENCHMARKS.md, MovieLens 100K, protocol A (the settings and epoch counts chosen there
# on validation; batch 1024, Adam, no accidental-hit removal as in that benchmark).
BENCHMARK_MODELS = {
    "dot": ("row 3g: dot + logQ (the tutorial's towers)",
            {"head": "dot", "temperature": 4.0},
            {"learning_rate": 0.01, "epochs": 5}),
    "cosine": ("row 3e: cosine + layer norm + towers [64, 32] + logQ",
               {"head": "cosine", "layer_norm": True, "tower_layers": [64, 32],
                "temperature": 0.2},
               {"learning_rate": 0.01, "epochs": 7}),
}


@dataclass(frozen=True)
class GenreData:
    """Interactions, the split, and the genre ground truth of the catalog."""

    data: LoadedData
    split: Split  # protocol A: train / (empty validation) / test
    genres: np.ndarray  # (p, g) bool multi-hot, aligned with data.items
    genre_names: tuple[str, ...]
    description: str


def tutorial_split(interactions: Interactions, seed: int = 42,
                   test_fraction: float = 0.2) -> tuple[Interactions, Interactions]:
    """The TFRS basic retrieval tutorial's split (the MovieLens benchmark's protocol A):
    ``Dataset.shuffle(N, seed, reshuffle_each_iteration=False)`` after
    ``tf.random.set_seed(seed)``, first 80% train, the rest test."""
    import tensorflow as tf

    n = len(interactions)
    tf.random.set_seed(seed)
    order = np.fromiter(
        tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=False)
        .as_numpy_iterator(), dtype=np.int64, count=n)
    cut = int(round((1 - test_fraction) * n))
    return interactions.subset(order[:cut]), interactions.subset(order[cut:])


def movielens_genres(cache_dir=None, expected=None) -> GenreData:
    """MovieLens 100K from the verified cache (fetched if absent), genres from its items
    (``expected``: what the copy must hold, default ``MOVIELENS_100K``)."""
    from training.movielens import GENRES, MOVIELENS_100K, load_movielens_100k, read_items

    expected = expected or MOVIELENS_100K
    data = load_movielens_100k(cache_dir=cache_dir, expected=expected)
    items = read_items(cache_dir, expected)
    names = tuple(g for g in GENRES if g != "unknown")
    genres = np.array([[g in items[i].genres for g in names] for i in data.items.tolist()])
    train, test = tutorial_split(data.interactions)
    return GenreData(data, Split(train, train.subset(np.zeros(len(train), bool)), test),
                     genres, names, data.description)


def synthetic_genres(users: int, items: int, clusters: int, seed: int) -> GenreData:
    """A stand-in for ``--quick`` runs (no download): the synthetic data, its clusters
    as one genre per item."""
    from training.data import generate_synthetic

    data = generate_synthetic(users, items, clusters, seed)
    train, test = tutorial_split(data.interactions)
    genres = data.item_cluster[:, None] == np.arange(clusters)[None, :]
    return GenreData(data, Split(train, train.subset(np.zeros(len(train), bool)), test),
                     genres, tuple(f"cluster {c}" for c in range(clusters)),
                     f"{data.description}, clusters as genres (a --quick stand-in for MovieLens)")


# ----------------------------------------------------------------------------------------
# evaluation of item-item references


@dataclass(frozen=True)
class _Rows:
    """Test interactions as rows of ``X`` and catalog columns, and each user's seen items."""

    user_rows: np.ndarray  # (u,) rows of X of the test users
    test_users: np.ndarray  # (t,) index into user_rows
    test_items: np.ndarray  # (t,) catalog index
    seen: list[np.ndarray]


def _rows(x: Any, data: LoadedData, test: Interactions) -> _Rows:
    rows = np.searchsorted(data.users, test.user_id)
    user_rows, test_users = np.unique(rows, return_inverse=True)
    columns = np.searchsorted(data.items, test.item_id)
    seen = [x.indices[x.indptr[r]:x.indptr[r + 1]].astype(np.int64) for r in user_rows]
    return _Rows(user_rows, test_users, columns.astype(np.int64), seen)


def evaluate_factors(user_vectors: np.ndarray, item_vectors: np.ndarray, rows: _Rows,
                     ks=(10, 100)) -> dict[str, float]:
    """Metrics of scores ``user_vectors @ item_vectors^T`` (``(u, d)``, ``(p, d)``),
    training items excluded (``training.evaluation.evaluate_embeddings``)."""
    from training.evaluation import evaluate_embeddings

    return evaluate_embeddings(user_vectors, item_vectors, rows.test_users, rows.test_items,
                               list(ks), rows.seen)


def evaluate_item_item(x, weights: np.ndarray, rows: _Rows) -> dict[str, float]:
    """Metrics of the scores ``x_u W`` of an item-item matrix ``W (p, p)``."""
    return evaluate_factors(x[rows.user_rows].toarray(), weights.T, rows)


# ----------------------------------------------------------------------------------------
# the measurements


class GenreTruth:
    """Genre AUC and precision@k over the evaluated items (``among``)."""

    def __init__(self, genres: np.ndarray, train_counts: np.ndarray):
        self.among = np.flatnonzero((train_counts >= MIN_TRAIN_COUNT) & genres.any(axis=1))
        self.labels = genres[self.among]
        self.pairs = metrics.PairLabels.sharing(self.labels)

    @property
    def base_rate(self) -> float:
        """Share of item pairs that share a genre (a random neighbour's precision)."""
        return float(self.pairs.same.mean())

    def neighbours(self, similarity: np.ndarray) -> np.ndarray:
        return top_k_neighbours(similarity, K, among=self.among)

    def measure(self, similarity: np.ndarray) -> dict[str, float]:
        """``genre_auc`` and ``precision@10`` of a ``(p, p)`` item-item similarity."""
        s = np.asarray(similarity)[np.ix_(self.among, self.among)]
        return {"genre_auc": self.pairs.auc(s),
                "precision@10": neighbour_precision(self.neighbours(similarity), self.labels)}


def model_config(model_keys: dict[str, Any], training_keys: dict[str, Any]):
    """The MovieLens benchmark's protocol A config with ``model_keys`` / ``training_keys``
    on top (dim 32, logQ, no accidental-hit removal, Adam, batch 1024)."""
    from training.config import config_from_dict

    return config_from_dict({
        "model": {"embedding_dim": 32, "remove_accidental_hits": False,
                  "logq_correction": True, **model_keys},
        "training": {"optimizer": "adam", "batch_size": 1024, "early_stopping_patience": 0,
                     **training_keys},
        "evaluation": {"ks": [10, 100]},
    })


def _train_model(model_keys: dict[str, Any], training_keys: dict[str, Any], seed: int,
                 gd: GenreData):
    from training.train import fit

    config = model_config(model_keys, {**training_keys, "seed": seed})
    return fit(config, gd.data, gd.split, verbose=0), config


def rescaling_test(model, truth: GenreTruth, diagonals: np.ndarray, users: np.ndarray,
                   batches: list[dict]) -> dict[str, Any]:
    """Steck's test on a trained model: for each diagonal ``d`` (``(r, dim)``), the towers
    re-scaled to ``(u D, i D^-1)``: relative score change, relative loss change on
    ``batches``, Jaccard of each item's top-10 cosine neighbours before / after, and the
    genre AUC after."""
    from training.study.probes import in_batch_loss, item_embeddings, rescaled, served_scores

    before = item_embeddings(model)
    base_neighbours = truth.neighbours(metrics.cosine_matrix(before))
    base_scores = served_scores(model, users)
    scale = max(float(np.abs(base_scores).max()), 1e-12)
    base_loss = in_batch_loss(model, batches)
    jaccards, aucs, score_changes, loss_changes = [], [], [], []
    for d in diagonals:
        with rescaled(model, d):
            after = item_embeddings(model)
            moved = served_scores(model, users)
            loss = in_batch_loss(model, batches)
        cosines = metrics.cosine_matrix(after)
        jaccards.append(jaccard(base_neighbours, truth.neighbours(cosines)))
        aucs.append(truth.measure(cosines)["genre_auc"])
        score_changes.append(float(np.abs(moved - base_scores).max()) / scale)
        loss_changes.append((loss - base_loss) / abs(base_loss))
    per_item = np.mean(jaccards, axis=0)
    return {"draws": len(diagonals), "mean_jaccard@10": float(np.mean(jaccards)),
            "min_jaccard@10": float(np.min(np.mean(jaccards, axis=1))),
            "max_jaccard@10": float(np.max(np.mean(jaccards, axis=1))),
            "per_item_jaccard@10": np.round(per_item, 4).tolist(),
            "genre_auc_min": float(min(aucs)), "genre_auc_max": float(max(aucs)),
            "max_score_change": float(max(score_changes)),
            "loss_change_min": float(min(loss_changes)),
            "loss_change_max": float(max(loss_changes))}


def run_genres(gd: GenreData, seeds: tuple[int, ...], draws: int, octaves: float, seed: int,
               phase: Callable[[str], None], epochs: int | None = None) -> dict[str, Any]:
    """Everything of this part; ``epochs`` overrides the benchmark's (``--quick``)."""
    from training.study.probes import item_embeddings, loss_batches

    data, split = gd.data, gd.split
    x = baselines.interaction_matrix(split.train, data.users, data.items)
    counts = baselines.popularity(x)
    truth = GenreTruth(gd.genres, counts)
    rows = _rows(x, data, split.test)
    out: dict[str, Any] = {
        "data": gd.description, "genres": list(gd.genre_names),
        "train": len(split.train), "test": len(split.test),
        "items_evaluated": len(truth.among), "items": len(data.items),
        "min_train_count": MIN_TRAIN_COUNT, "pairs_sharing_a_genre": truth.base_rate,
        "k": K, "models": {}, "references": {},
    }
    phase(f"genres: {gd.description}; {len(truth.among)} of {len(data.items)} items with "
          f">= {MIN_TRAIN_COUNT} training interactions and a genre; "
          f"{truth.base_rate:.3f} of their pairs share a genre")

    # -- references: EASE (lambda tuned on validation), item-KNN, PureSVD, popularity -----
    # As the benchmark's protocol A: a random 10% of the training part (seed 43).
    tune_train, validation = random_split(split.train, 0.1, 43)
    x_tune = baselines.interaction_matrix(tune_train, data.users, data.items)
    tune_rows = _rows(x_tune, data, validation)

    def validate(w: np.ndarray) -> float:
        return evaluate_item_item(x_tune, w, tune_rows)["recall@10"]

    lam, _, sweep = baselines.tune_ease(x_tune, EASE_LAMBDAS, validate)
    svd_sweep = {}
    for rank in [r for r in SVD_RANKS if r < min(x_tune.shape)] or [1]:
        v = baselines.pure_svd_factors(x_tune, rank, seed)
        svd_sweep[rank] = evaluate_factors(x_tune[tune_rows.user_rows] @ v, v,
                                           tune_rows)["recall@10"]
    rank = max(svd_sweep, key=lambda r: (svd_sweep[r], -r))
    ease = baselines.ease_weights(x, lam)
    knn = baselines.item_knn_weights(x)
    v = baselines.pure_svd_factors(x, rank, seed)
    references = {
        "ease": (f"EASE (lambda {lam:g}, tuned)", ease, {"lambda": lam, "validation": sweep}),
        "item_knn": ("item-KNN cosine", knn, {}),
        "pure_svd": (f"PureSVD (rank {rank}, tuned)", v @ v.T,
                     {"rank": rank, "validation": svd_sweep}),
    }
    for key, (label, w, extra) in references.items():
        held_out = evaluate_item_item(x, w, rows)
        out["references"][key] = {"label": label, **truth.measure(0.5 * (w + w.T)),
                                  "test": _headline(held_out), **extra}
        r = out["references"][key]
        phase(f"genres {key}: genre AUC {r['genre_auc']:.3f}, precision@10 "
              f"{r['precision@10']:.3f}, test recall@10 {r['test']['recall@10']:.4f}")
    pop = evaluate_factors(np.ones((len(rows.user_rows), 1)), counts[:, None], rows)
    out["references"]["popularity"] = {"label": "most popular", "test": _headline(pop)}

    # -- each head explored over a grid on the tuning split ------------------------------
    grid = genre_grid.QUICK_GRID if epochs else genre_grid.GRID
    out["grid"] = genre_grid.explore(
        grid, data, split.train, truth.measure, model_config, seed, phase,
        max_epochs=epochs or genre_grid.MAX_EPOCHS)

    # -- the benchmark's rows and each head's picks, trained on the training part, 3 seeds --
    dim = 32
    diagonals = metrics.random_diagonals(dim, draws, seed + 7, octaves)
    users = np.array(data.users)
    batches = loss_batches(split.train, data.items, 1024, 4, seed + 1)
    for key, (label, model_keys, training_keys) in _models_to_measure(out["grid"], epochs).items():
        runs, lists = [], []
        for s in seeds:
            result, config = _train_model(model_keys, training_keys, s, gd)
            vectors = item_embeddings(result.model)
            cosines = metrics.cosine_matrix(vectors)
            held_out = evaluate_factors(
                result.model.head.normalize(_embed(result.model.user_tower, data.users[rows.user_rows])).numpy(),
                result.model.head.normalize(_embed(result.model.item_tower, data.items)).numpy(), rows)
            run = {"seed": s, **truth.measure(cosines), "test": _headline(held_out),
                   "epochs": result.epochs, "seconds": round(result.seconds, 1),
                   "temperature": float(result.model.head.temperature.numpy())}
            run["rescaling"] = rescaling_test(result.model, truth, diagonals, users, batches)
            lists.append(truth.neighbours(cosines))
            runs.append(run)
            rs = run["rescaling"]
            phase(f"genres {key} seed {s}: genre AUC {run['genre_auc']:.3f}, precision@10 "
                  f"{run['precision@10']:.3f}, test recall@10 {run['test']['recall@10']:.4f}; "
                  f"under random D: Jaccard@10 {rs['mean_jaccard@10']:.3f}, score change "
                  f"{rs['max_score_change']:.1e}, loss change {rs['loss_change_min']:+.1e}.."
                  f"{rs['loss_change_max']:+.1e} ({result.seconds:.0f} s)")
        across = [float(jaccard(lists[a], lists[b]).mean())
                  for a in range(len(lists)) for b in range(a + 1, len(lists))]
        out["models"][key] = {
            "label": label, "head": model_keys["head"],
            "settings": {**config.to_dict()["model"], **config.to_dict()["training"]},
            "runs": runs,
            "summary": {name: _summary([_get(r, name) for r in runs]) for name in (
                "genre_auc", "precision@10", "test.recall@10", "test.top_100_categorical_accuracy",
                "rescaling.mean_jaccard@10", "rescaling.max_score_change",
                "rescaling.loss_change_min", "rescaling.loss_change_max")},
            "jaccard@10_across_seeds": across,
        }
    out["rescalings"] = {"draws": draws, "octaves": octaves, "seed": seed + 7,
                         "users_scored": len(users), "loss_batches": len(batches)}
    return out


def _models_to_measure(grid: dict[str, Any], epochs: int | None
                       ) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """``key -> (label, model keys, training keys)``: the benchmark's two rows, then each
    head's validation pick (``dot_chosen``, ``cosine_chosen``) and, when it differs, its
    highest genre AUC near the best recall (``*_balanced``), at their best epoch counts."""
    models = {key: (label, model_keys, training_keys | ({"epochs": epochs} if epochs else {}))
              for key, (label, model_keys, training_keys) in BENCHMARK_MODELS.items()}
    for head, picks in grid["picks"].items():
        for which in ("chosen", "balanced"):
            if which == "balanced" and picks["balanced"] == picks["chosen"]:
                continue
            record = grid["settings"][picks[which]]
            what = "validation pick" if which == "chosen" else "highest genre AUC near the best recall"
            models[f"{head}_{which}"] = (
                f"{head} {what}: {record['label']}", record["model"],
                {"learning_rate": grid["learning_rate"], "epochs": record["best_epoch"],
                 "batch_size": record["batch_size"]})
    return models


def _embed(tower, ids):
    from training.evaluation import embed

    return embed(tower, np.asarray(ids))


def _headline(m: dict[str, float]) -> dict[str, float]:
    return {k: m[k] for k in ("recall@10", "ndcg@10", "recall@100",
                              "top_100_categorical_accuracy") if k in m}


def _get(row: dict, dotted: str) -> float:
    for part in dotted.split("."):
        row = row[part]
    return float(row)


def _summary(values: list[float]) -> dict[str, float]:
    from training.study.tuning import summarize

    return summarize(values)
