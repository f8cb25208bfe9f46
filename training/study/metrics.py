"""Metrics of the cosine-faithfulness study (numpy, scipy, scikit-learn).

* cluster recovery from item-item cosine similarity: ROC-AUC and average precision of
  same-cluster versus cross-cluster pairs (or, for multi-label ground truth such as
  genres, pairs sharing a label versus not), adjusted Rand index of k-means on the
  normalized item embeddings;
* anisotropy: mean within- and cross-cluster cosine, and the uniformity of Wang &
  Isola (2020) (a narrow cone has high cosines everywhere and uniformity near 0);
* the arbitrariness test: how item-item cosines and the AUC move when the embeddings
  are re-scaled by random diagonal matrices ``D`` (users ``U D``, items ``B D^-1``);
* popularity: Spearman correlation between item embedding norm and item popularity;
* explanation faithfulness: agreement between the served ranking and the ranking by
  the cosine an explanation reports (Kendall tau, top-k overlap, largest inversion).
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, average_precision_score, roc_auc_score

_EPSILON = 1e-12


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm, ``(n, d) -> (n, d)`` float64; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, _EPSILON)


def cosine_matrix(embeddings: np.ndarray) -> np.ndarray:
    """Item-item cosine similarities ``(p, d) -> (p, p)``; a zero row has cosine 0."""
    e = normalize_rows(embeddings)
    return e @ e.T


def block_matrix(clusters: np.ndarray) -> np.ndarray:
    """The ground truth ``(p, p)``: 1 for items of the same cluster, 0 otherwise."""
    return (clusters[:, None] == clusters[None, :]).astype(np.float64)


class PairLabels:
    """Same-cluster labels of the ``p (p - 1) / 2`` unordered item pairs (upper triangle).

    ``PairLabels(clusters)`` for one cluster per item; ``PairLabels.sharing(labels)`` for
    a multi-hot ``(p, g)`` label matrix (a pair is positive when it shares a label;
    ``clusters`` is then None).
    """

    def __init__(self, clusters: np.ndarray | None, same: np.ndarray | None = None):
        if same is None:
            self.clusters = np.asarray(clusters)
            self.rows, self.columns = np.triu_indices(len(self.clusters), k=1)
            self.same = self.clusters[self.rows] == self.clusters[self.columns]
        else:
            self.clusters = None
            self.rows, self.columns = np.triu_indices(len(same), k=1)
            self.same = np.asarray(same, dtype=bool)[self.rows, self.columns]

    @classmethod
    def sharing(cls, labels: np.ndarray) -> PairLabels:
        """Pairs labelled by whether they share at least one label of the multi-hot
        ``(p, g)`` matrix ``labels``. ``O(p^2 g)`` time, ``O(p^2)`` memory."""
        multi_hot = np.asarray(labels, dtype=np.float64)
        return cls(None, same=(multi_hot @ multi_hot.T) > 0)

    def values(self, matrix: np.ndarray) -> np.ndarray:
        """The upper-triangle entries of a ``(p, p)`` matrix, ``(pairs,)``."""
        return matrix[self.rows, self.columns]

    def auc(self, cosines: np.ndarray) -> float:
        """ROC-AUC of the pairs' cosines for separating same- from cross-cluster pairs."""
        return float(roc_auc_score(self.same, self.values(cosines)))

    def average_precision(self, cosines: np.ndarray) -> float:
        return float(average_precision_score(self.same, self.values(cosines)))


def anisotropy(embeddings: np.ndarray, pairs: PairLabels) -> dict[str, float]:
    """Mean item-item cosine over positive (same-cluster) pairs, ``within``, over the
    other pairs, ``cross``, and over all pairs, ``mean``; ``embeddings`` is ``(p, d)``."""
    values = pairs.values(cosine_matrix(embeddings))
    return {
        "within": float(values[pairs.same].mean()),
        "cross": float(values[~pairs.same].mean()),
        "mean": float(values.mean()),
    }


def uniformity(embeddings: np.ndarray, t: float = 2.0) -> float:
    """Wang & Isola (2020): ``log mean_{i<j} exp(-t |z_i - z_j|^2)`` over the unit-norm rows
    ``z`` of ``(p, d)`` embeddings. From 0 (every vector equal) down to about ``-2 t``
    for vectors spread evenly over a high-dimensional sphere. ``O(p^2 d)`` time, ``O(p^2)`` memory."""
    z = normalize_rows(embeddings)
    # |z_i - z_j|^2 = 2 - 2 cos for unit rows (a zero row counts as cosine 0).
    cosines = (z @ z.T)[np.triu_indices(len(z), k=1)]
    exponent = -t * np.maximum(2.0 - 2.0 * cosines, 0.0)
    peak = exponent.max()
    return float(peak + np.log(np.mean(np.exp(exponent - peak))))


def geometry(embeddings: np.ndarray, pairs: PairLabels) -> dict[str, float]:
    """``anisotropy`` and ``uniformity`` of item embeddings ``(p, d)``."""
    return anisotropy(embeddings, pairs) | {"uniformity": uniformity(embeddings)}


def kmeans_ari(embeddings: np.ndarray, clusters: np.ndarray, seed: int) -> float:
    """Adjusted Rand index of k-means (``C`` = number of true clusters, 10 restarts) on the
    normalized embeddings against the true clusters."""
    k = len(np.unique(clusters))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(
        normalize_rows(embeddings)
    )
    return float(adjusted_rand_score(clusters, labels))


def cluster_recovery(
    item_embeddings: np.ndarray, pairs: PairLabels, seed: int
) -> dict[str, float]:
    """``auc``, ``average_precision`` (item-item cosine) and ``ari`` (k-means)."""
    cosines = cosine_matrix(item_embeddings)
    return {
        "auc": pairs.auc(cosines),
        "average_precision": pairs.average_precision(cosines),
        "ari": kmeans_ari(item_embeddings, pairs.clusters, seed),
    }


def random_diagonals(dim: int, count: int, seed: int, octaves: float = 2.0) -> np.ndarray:
    """``(count, dim)`` diagonals with ``log2 d_j ~ U(-octaves, octaves)`` (default:
    each latent dimension scaled by a factor between 1/4 and 4)."""
    rng = np.random.default_rng(seed)
    return 2.0 ** rng.uniform(-octaves, octaves, size=(count, dim))


def arbitrariness(
    item_embeddings: np.ndarray, pairs: PairLabels, diagonals: np.ndarray, seed: int
) -> dict[str, float]:
    """How item-item cosines and cluster recovery move under ``B -> B D^-1``.

    Args:
      item_embeddings: ``(p, d)``.
      pairs: the ground-truth pair labels.
      diagonals: ``(r, d)`` random diagonals ``D``.

    Returns:
      ``mean_abs_cosine_change`` (mean over pairs and draws of ``|cos_D - cos|``),
      ``max_abs_cosine_change``, and the AUC and ARI under the draws: ``auc_min``,
      ``auc_max``, ``auc_std``, ``max_abs_auc_change``, ``ari_min``, ``ari_max``.
    """
    base = pairs.values(cosine_matrix(item_embeddings))
    base_auc = float(roc_auc_score(pairs.same, base))
    changes, aucs, aris = [], [], []
    for d in diagonals:
        rescaled = item_embeddings / d
        moved = pairs.values(cosine_matrix(rescaled))
        delta = np.abs(moved - base)
        changes.append((float(delta.mean()), float(delta.max())))
        aucs.append(float(roc_auc_score(pairs.same, moved)))
        aris.append(kmeans_ari(rescaled, pairs.clusters, seed))
    aucs_np = np.array(aucs)
    return {
        "num_draws": len(diagonals),
        "mean_abs_cosine_change": float(np.mean([c[0] for c in changes])),
        "max_abs_cosine_change": float(np.max([c[1] for c in changes])),
        "auc_min": float(aucs_np.min()),
        "auc_max": float(aucs_np.max()),
        "auc_std": float(aucs_np.std()),
        "max_abs_auc_change": float(np.max(np.abs(aucs_np - base_auc))),
        "ari_min": float(np.min(aris)),
        "ari_max": float(np.max(aris)),
    }


def popularity_spearman(item_embeddings: np.ndarray, popularity: np.ndarray) -> float:
    """Spearman rank correlation between item embedding norms ``(p,)`` and ``popularity``."""
    norms = np.linalg.norm(np.asarray(item_embeddings, np.float64), axis=1)
    if np.ptp(norms) == 0 or np.ptp(popularity) == 0:
        return float("nan")
    return float(stats.spearmanr(norms, popularity).statistic)


def max_inversion(served: np.ndarray, explained: np.ndarray) -> float:
    """The largest ``explained[j] - explained[i]`` over pairs the served ranking orders
    ``i`` strictly before ``j`` (0 when the explanation never ranks a later item higher).

    ``served`` and ``explained`` are ``(n,)`` scores of the same items. The result is in
    the explanation's units (cosine), so float32 noise shows as ~1e-7.
    """
    order = np.argsort(-served, kind="stable")
    s, e = served[order], explained[order]
    worst = 0.0
    running_min = np.inf
    start = 0
    # Items with equal served scores are tied: compare only against strictly better ones.
    while start < len(s):
        stop = start + 1
        while stop < len(s) and s[stop] == s[start]:
            stop += 1
        block = e[start:stop]
        if np.isfinite(running_min):
            worst = max(worst, float(block.max() - running_min))
        running_min = min(running_min, float(block.min()))
        start = stop
    return worst


def ranking_agreement(served: np.ndarray, explained: np.ndarray, k: int = 10) -> dict[str, float]:
    """Agreement of two rankings of the same catalog for ``b`` users.

    Args:
      served: ``(b, n)`` the scores the model ranks (serves) by.
      explained: ``(b, n)`` the cosines the explanation reports.
      k: cutoff for the top-k overlap.

    Returns:
      ``kendall_tau`` (mean over users, tau-b; 0 for a constant ranking against a
      non-constant one), ``top_k_overlap`` (mean share of the
      served top k that is also in the explanation's top k), ``identical_top_k`` (share
      of users whose top-k lists are identical, in order), ``max_inversion`` (largest,
      over users, of ``max_inversion``).
    """
    served = np.asarray(served, np.float64)
    explained = np.asarray(explained, np.float64)
    k = min(k, served.shape[1])
    taus, overlaps, identical, inversions = [], [], [], []
    for s, e in zip(served, explained, strict=True):
        if np.ptp(s) == 0 or np.ptp(e) == 0:
            # tau-b is undefined for a constant ranking: 1 if both are, else 0 (no agreement).
            taus.append(1.0 if np.ptp(s) == np.ptp(e) == 0 else 0.0)
        else:
            taus.append(float(stats.kendalltau(s, e).statistic))
        top_s = np.argsort(-s, kind="stable")[:k]
        top_e = np.argsort(-e, kind="stable")[:k]
        overlaps.append(len(np.intersect1d(top_s, top_e)) / k)
        identical.append(bool(np.array_equal(top_s, top_e)))
        inversions.append(max_inversion(s, e))
    return {
        "num_users": len(served),
        "kendall_tau": float(np.mean(taus)),
        f"top_{k}_overlap": float(np.mean(overlaps)),
        f"identical_top_{k}": float(np.mean(identical)),
        "max_inversion": float(np.max(inversions)) if inversions else 0.0,
    }
