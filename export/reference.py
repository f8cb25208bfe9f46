"""What the verifier compares an export with: expected outputs computed in memory.

``reference`` evaluates every signature's expected answer on sampled ids (and an unknown
one) with numpy, ``tfrs_cosine.explain`` and the in-memory head, never through the
exported graph. ``verify_in_fresh_process`` writes it to ``reference.npz`` and runs
``python -m export.verify`` on the staged SavedModel in a new interpreter without
TensorFlow Recommenders, as a server would load it. Cost: one exact top-K of
``sample`` queries over the catalog, O(sample * n * d), and one process start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from export.errors import ExportError
from export.index import PreparedIndex, PreparedIndexes, scann_search
from export.options import ExportOptions
from export.recall import exact_top_k, recall_at_k
from export.searchers import PADDING_SCORE
from export.tables import EmbeddingTables, oov_id
from tfrs_cosine import explain
from tfrs_cosine.heads import ScoringHead


def reference(
    tables: EmbeddingTables,
    head_layer: ScoringHead,
    options: ExportOptions,
    rng: np.random.Generator,
    indexes: PreparedIndexes | None = None,
    sample: int = 32,
    items_per_user: int = 6,
) -> dict[str, np.ndarray]:
    """Expected outputs of every signature on sampled ids (plus one unknown id each).

    With ScaNN ``indexes``, also the recall@K the in-memory searchers reach on these very
    ids: the loaded index must match it (a 33-user sample is too small to hold against
    ``min_recall`` itself, which was enforced on ``recall_sample`` users).
    """
    num_users, num_items = len(tables.users), len(tables.items)
    k, m = options.k, options.sizes(tables.dim)["m"]
    user_rows = rng.choice(num_users, size=min(sample, num_users), replace=False) + 1
    item_rows = rng.choice(num_items, size=min(sample, num_items), replace=False) + 1
    oov_user, oov_item = oov_id(tables.users), oov_id(tables.items)
    user_ids = [tables.users[r - 1] for r in user_rows] + [oov_user]
    item_ids = [tables.items[r - 1] for r in item_rows] + [oov_item]
    user_rows = np.append(user_rows, 0)
    item_rows = np.append(item_rows, 0)

    normalize = head_layer.normalize
    queries = normalize(tf.constant(tables.user_vectors[user_rows])).numpy()
    catalog = normalize(tf.constant(tables.item_vectors[1:])).numpy()
    top_scores, top_rows = exact_top_k(queries, catalog, k)

    unit_catalog = tables.unit(tables.item_vectors[1:])
    item_queries = tables.unit(tables.item_vectors[item_rows])
    k_similar = options.similar_search_k(num_items)
    sim_scores, sim_rows = exact_top_k(item_queries, unit_catalog, k_similar)
    keep = sim_rows != (item_rows - 1)[:, None]
    # Drop the item itself (or the last one when the item is unknown or not among them).
    keep &= np.cumsum(keep, axis=1) <= k
    sim_rows = np.stack([r[mask] for r, mask in zip(sim_rows, keep, strict=True)])
    sim_scores = np.stack([s[mask] for s, mask in zip(sim_scores, keep, strict=True)])
    if sim_rows.shape[1] < k:  # K == catalog size: the last column is padding
        pad = k - sim_rows.shape[1]
        sim_rows = np.pad(sim_rows, ((0, 0), (0, pad)), constant_values=-1)
        sim_scores = np.pad(sim_scores, ((0, 0), (0, pad)), constant_values=PADDING_SCORE)

    # Explanations: each sampled user against a few catalog items and one unknown item.
    n = min(items_per_user, num_items)
    explain_rows = np.stack([rng.choice(num_items, size=n, replace=False) + 1 for _ in user_rows])
    explain_rows = np.concatenate([explain_rows, np.zeros((len(user_rows), 1), int)], axis=1)
    explain_ids = np.array(
        [[tables.items[r - 1] if r else oov_item for r in row] for row in explain_rows]
    )
    expected = explain(
        tf.constant(tables.user_vectors[user_rows]),
        tf.constant(tables.item_vectors[explain_rows]),
        head_layer,
        m,
    )

    def names(rows: np.ndarray) -> np.ndarray:
        items = np.array(tables.items + [""], dtype=object)
        return items[np.where(rows >= 0, rows, num_items)].astype(str)

    result = {
        "user_ids": np.array(user_ids),
        "known_user": user_rows > 0,
        "top_item_ids": names(top_rows),
        "top_scores": np.clip(top_scores, -1, 1) if tables.head == "cosine" else top_scores,
        "item_ids": np.array(item_ids),
        "known_item": item_rows > 0,
        "similar_item_ids": names(sim_rows),
        "similar_cosine": np.clip(sim_scores, -1, 1),
        "user_embeddings": queries,
        "item_embeddings": normalize(tf.constant(tables.item_vectors[item_rows])).numpy(),
        "explain_item_ids": explain_ids,
        "explain_known_items": explain_rows > 0,
        "expected_serving_recall": np.float32(
            _sample_recall(indexes and indexes.user, queries, catalog, k, top_scores, k)
        ),
        "expected_similar_recall": np.float32(
            _sample_recall(
                indexes and indexes.similar, item_queries, unit_catalog, k_similar, sim_scores, k,
                exclude=item_rows - 1,
            )
        ),
    }
    for name, value in expected.items():
        value = value.numpy()
        if name == "cosine_is_training_objective":
            value = np.full(len(user_rows), bool(value))
        result[f"explain_{name}"] = value
    return result


def _sample_recall(
    index: PreparedIndex | None,
    queries: np.ndarray,
    candidates: np.ndarray,
    k_search: int,
    exact_scores: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
) -> float:
    """Recall@k the in-memory ScaNN searcher reaches on these queries (1 for brute force)."""
    if index is None or index.kind != "scann":
        return 1.0
    found = scann_search(index.searcher, queries, k_search, index.plan)
    if exclude is not None:
        found = np.where(found == exclude[:, None], -1, found)
        order = np.argsort(found < 0, axis=1, kind="stable")  # drop the item itself
        found = np.take_along_axis(found, order, axis=1)[:, :k]
    scores = exact_scores[:, :k]
    rows = np.isfinite(scores).all(1) & (scores > PADDING_SCORE).all(1)
    if not rows.any():
        return 1.0
    return recall_at_k(queries[rows], candidates, found[rows], scores[rows])


def verify_in_fresh_process(
    export_dir: Path,
    expected: dict[str, np.ndarray],
    scratch: Path,
    min_recall: float,
) -> dict[str, Any]:
    """Runs ``python -m export.verify`` on ``export_dir``; returns its report.

    Raises:
      ExportError: the verifier failed to run or found a problem (the first is named).
    """
    path = scratch / "reference.npz"
    np.savez(path, **expected)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The child imports the ``export`` package: make sure it resolves to this one.
    project = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH")) if p)
    command = [
        sys.executable, "-m", "export.verify", str(export_dir),
        "--reference", str(path), "--min-recall", repr(float(min_recall)), "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=project)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"verification of the export failed to run: {tail}")
    report = json.loads(lines[-1])
    if not report.get("ok"):
        raise ExportError(f"verification of the export failed: {report['problems'][0]}")
    return report


def run_verification(
    tables: EmbeddingTables,
    head_layer: ScoringHead,
    options: ExportOptions,
    rng: np.random.Generator,
    indexes: PreparedIndexes,
    export_dir: Path,
    scratch: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The reference, then the fresh-process verification; the model card's summary of it."""
    log("export: verifying in a fresh Python process")
    expected = reference(tables, head_layer, options, rng, indexes)
    report = verify_in_fresh_process(export_dir, expected, scratch, options.min_recall)
    keys = ("checks", "serving_recall_at_k", "similar_items_recall_at_k", "seconds")
    return {key: report[key] for key in keys if key in report}
