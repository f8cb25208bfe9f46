"""A trained two-tower model -> ``models/NAME/<version>/``, the SavedModel TF Serving loads.

The export holds, for every known id, the tower outputs (row 0 of each table is the
out-of-vocabulary row, as in ``IdTower``), the vocabularies as assets, a top-K index and
five signatures (docs/architecture.md):

* ``serving_default``: ``user_id (b,)`` -> ``item_ids (b, K)``, ``scores (b, K)`` (the
  head's similarity: cosine for the cosine head, dot for the dot head; exact scores of
  the returned items, ordered), ``known_user (b,)``;
* ``explain``: ``user_id (b,)``, ``item_ids (b, n)`` -> ``tfrs_cosine.explain``'s outputs
  plus ``known_user``, ``known_items`` and ``cosine_is_training_objective (b,)``;
* ``similar_items``: ``item_id (b,)`` -> ``item_ids (b, K)``, ``cosine (b, K)`` (the item
  itself excluded), ``known_item (b,)``;
* ``embed_users`` / ``embed_items``: ids -> ``embeddings (b, d)`` as the head sees them.

The index is ScaNN (``index="scann"``, tuned from the catalog size and measured against
exact top-K, see ``export.index``) or an exact top-K of stock TensorFlow ops
(``index="brute-force"``) that stock ``tensorflow_model_server`` can serve.

Writing is atomic: the SavedModel is built in a hidden temporary folder beside the
target (TF Serving only picks up integer folder names), verified in a fresh Python
process (``export.verify``), then renamed into place. A failure or an interrupt at any
point removes the temporary folder; existing versions are never touched.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from export import index as index_lib
from export.errors import ExportError
from tfrs_cosine import TwoTowerModel, explain, make_head
from tfrs_cosine.heads import l2_normalize

Log = Callable[[str], None]
INDEX_KINDS = ("scann", "brute-force")
MODEL_CARD = Path("assets.extra") / "model_card.json"
SIGNATURES = ("serving_default", "explain", "similar_items", "embed_users", "embed_items")
_LOWEST = float(np.finfo(np.float32).min)  # score of padding when fewer than K are found
_CHUNK = 65_536
_WIDENINGS = 3  # times a ScaNN plan is widened when its measured recall is short


# ----------------------------------------------------------------------------------------
# embedding tables


@dataclass
class EmbeddingTables:
    """Tower outputs for every id: what an id-tower model serves from.

    Attributes:
      head: ``"cosine"`` or ``"dot"``.
      temperature: the head's temperature (the learned value when it was learned).
      users, items: the vocabularies, in table order.
      user_vectors: ``(len(users) + 1, d)`` float32; row 0 is the OOV row, row i+1 users[i].
      item_vectors: ``(len(items) + 1, d)`` float32; row 0 is the OOV row.
    """

    head: str
    temperature: float
    users: list[str]
    items: list[str]
    user_vectors: np.ndarray
    item_vectors: np.ndarray

    def __post_init__(self):
        for name, ids, vectors in (
            ("user", self.users, self.user_vectors),
            ("item", self.items, self.item_vectors),
        ):
            if vectors.ndim != 2 or len(vectors) != len(ids) + 1:
                raise ValueError(f"{name}_vectors must be (len({name}s) + 1, d), got {vectors.shape}")
            if len(set(ids)) != len(ids):
                raise ValueError(f"the {name} vocabulary has duplicate ids")
            bad = [i for i in ids if i == "" or "\n" in i or "\r" in i]
            if bad:
                raise ValueError(f"{name} id {bad[0]!r} cannot be exported (empty or multi-line)")
        if self.user_vectors.shape[1] != self.item_vectors.shape[1]:
            raise ValueError("user and item vectors differ in width")

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    @classmethod
    def from_model(
        cls, model: TwoTowerModel, users: Sequence[str], items: Sequence[str]
    ) -> EmbeddingTables:
        """Runs both towers of ``model`` over their vocabularies (and the OOV row)."""
        return cls(
            head=model.head.kind,
            temperature=float(model.head.temperature.numpy()),
            users=[str(u) for u in users],
            items=[str(i) for i in items],
            user_vectors=_tower_table(model.user_tower, users),
            item_vectors=_tower_table(model.item_tower, items),
        )


def _oov_id(vocabulary: Sequence[str]) -> str:
    known = set(vocabulary)
    candidate = "<out-of-vocabulary>"
    while candidate in known:
        candidate += "_"
    return candidate


def _tower_table(tower, vocabulary: Sequence[str]) -> np.ndarray:
    """``(len(vocabulary) + 1, d)``: the tower's output for an unknown id, then each id."""
    ids = [_oov_id(vocabulary)] + [str(v) for v in vocabulary]
    if bool(tower.known(tf.constant(ids[:1]))[0]):
        raise ValueError("could not find an id outside the tower's vocabulary")
    parts = [
        tower(tf.constant(ids[start : start + _CHUNK])).numpy()
        for start in range(0, len(ids), _CHUNK)
    ]
    return np.concatenate(parts).astype(np.float32)


_unit = l2_normalize  # the cosine head's normalization, traced into the exported graph


def _unit_np(x: np.ndarray) -> np.ndarray:
    return _unit(tf.constant(x, tf.float32)).numpy()


# ----------------------------------------------------------------------------------------
# the exported module


def _id_to_row(vocabulary_file: Path) -> tf.lookup.StaticHashTable:
    """id -> line number (0-based), -1 when unknown; the file becomes a SavedModel asset."""
    return tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            str(vocabulary_file),
            key_dtype=tf.string,
            key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            value_dtype=tf.int64,
            value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        ),
        default_value=-1,
    )


def _row_to_id(vocabulary_file: Path) -> tf.lookup.StaticHashTable:
    """line number -> id, "" for anything else (padding)."""
    return tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            str(vocabulary_file),
            key_dtype=tf.int64,
            key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            value_dtype=tf.string,
            value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
        ),
        default_value="",
    )


class _Index:
    """One searchable set of prepared item vectors: ``search(q (b, d), k) -> (idx, valid)``.

    ``idx (b, m)`` int64 rows of the catalog (``m`` <= k when fewer were found), ``valid``
    (b, m) bool. Subclasses hold their tensors on ``owner`` so the SavedModel tracks them.
    """

    def search(self, queries: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        raise NotImplementedError


class _BruteForceIndex(_Index):
    """Exact top-K with stock TensorFlow ops (MatMul + TopKV2)."""

    def __init__(self, owner: tf.Module, name: str, vectors: np.ndarray):
        self.vectors = tf.Variable(vectors, trainable=False, name=name)
        setattr(owner, name, self.vectors)

    def search(self, queries, k):
        scores = tf.linalg.matmul(queries, self.vectors, transpose_b=True)
        _, indices = tf.math.top_k(scores, k=k)
        indices = tf.cast(indices, tf.int64)
        return indices, tf.ones_like(indices, dtype=tf.bool)


class _ScannIndex(_Index):
    """A ScaNN searcher serialized into the SavedModel (``Scann>`` ops).

    The searcher resource is recreated from the saved tensors under a shared name unique
    to this index. ``ScannState.recreate_handle`` (what TFRS's ScaNN layer uses) leaves
    it empty, and then every ScaNN index in a process resolves to the same resource name
    (the node name): a second index in the same model, or a second model version loaded
    beside the first, would silently search the first one's data.
    """

    def __init__(self, owner: tf.Module, name: str, searcher, plan: index_lib.IndexPlan):
        self.state = searcher.serialize_to_module()
        setattr(owner, name, self.state)
        self.plan = plan
        self.shared_name = f"tfrs_cosine/{name}/{uuid.uuid4().hex}"

    def search(self, queries, k):
        from scann.scann_ops.py import scann_ops

        s = self.state
        handle = scann_ops.tensors_to_scann(
            s.dataset, s.scann_config, s.serialized_partitioner, s.datapoint_to_token,
            s.ah_codebook, s.hashed_dataset, s.int8_dataset, s.int8_multipliers, s.dp_norms,
            shared_name=self.shared_name,
        )
        indices, distances = scann_ops.ScannSearcher(handle).search_batched_parallel(
            queries, **self.plan.search_parameters(k)
        )
        # ScaNN pads with index 0 and a NaN distance when it finds fewer than k.
        return tf.cast(indices, tf.int64), tf.math.is_finite(distances)


def _top_k_of(
    queries: tf.Tensor,
    indices: tf.Tensor,
    valid: tf.Tensor,
    vectors_of: Callable[[tf.Tensor], tf.Tensor],
    k: int,
    exclude: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The best ``k`` of the candidates, rescored exactly and ordered.

    Args:
      queries: ``(b, d)`` prepared queries.
      indices: ``(b, m)`` candidate catalog rows; ``valid`` ``(b, m)`` marks real ones.
      vectors_of: catalog rows ``(b, m)`` -> prepared vectors ``(b, m, d)``.
      exclude: ``(b,)`` a catalog row to drop from each row's candidates (or -1).

    Returns:
      ``indices (b, k)`` int64 (-1 for padding), ``scores (b, k)`` float32 (lowest float
      for padding), ``valid (b, k)``.
    """
    if exclude is not None:
        valid = valid & tf.not_equal(indices, exclude[:, tf.newaxis])
    shortfall = tf.maximum(k - tf.shape(indices)[1], 0)
    indices = tf.pad(indices, [[0, 0], [0, shortfall]], constant_values=-1)
    valid = tf.pad(valid, [[0, 0], [0, shortfall]], constant_values=False)
    safe = tf.where(valid, indices, tf.zeros_like(indices))
    scores = tf.einsum("bd,bmd->bm", queries, vectors_of(safe))
    scores = tf.where(valid, scores, tf.fill(tf.shape(scores), _LOWEST))
    top_scores, position = tf.math.top_k(scores, k=k)
    top_valid = tf.gather(valid, position, batch_dims=1)
    top_indices = tf.where(top_valid, tf.gather(indices, position, batch_dims=1), -1)
    return top_indices, top_scores, top_valid


def _build_module(
    tables: EmbeddingTables,
    indexes: dict[str, Any],
    k: int,
    top_m: int,
    vocabulary_dir: Path,
) -> tuple[tf.Module, dict[str, Any]]:
    """The ``tf.Module`` to save and its signatures.

    ``indexes`` maps ``"user"`` and ``"similar"`` to ``("brute-force", vectors)`` or
    ``("scann", searcher, plan)``; ``"similar"`` may be the same object as ``"user"``.
    """
    head = make_head(tables.head, temperature=tables.temperature)
    head.build()
    d, num_items = tables.dim, len(tables.items)
    m = min(int(top_m), d)
    k_similar = min(k + 1, num_items)

    (vocabulary_dir / "users.txt").write_text("\n".join(tables.users) + "\n", encoding="utf-8")
    (vocabulary_dir / "items.txt").write_text("\n".join(tables.items) + "\n", encoding="utf-8")

    module = tf.Module(name="tfrs_cosine_export")
    # The head layer is captured by the signatures, not tracked as a Keras layer: only
    # its temperature variable is saved, so loading needs no Keras.
    module.log_temperature = head.log_temperature
    module.user_lookup = _id_to_row(vocabulary_dir / "users.txt")
    module.item_lookup = _id_to_row(vocabulary_dir / "items.txt")
    module.item_names = _row_to_id(vocabulary_dir / "items.txt")
    module.user_vectors = tf.Variable(tables.user_vectors, trainable=False, name="user_vectors")
    module.item_vectors = tf.Variable(tables.item_vectors, trainable=False, name="item_vectors")

    def make_index(name: str, spec) -> _Index:
        if spec[0] == "brute-force":
            return _BruteForceIndex(module, name, spec[1])
        return _ScannIndex(module, name, spec[1], spec[2])

    user_index = make_index("user_index", indexes["user"])
    similar_index = (
        user_index
        if indexes["similar"] is indexes["user"]
        else make_index("similar_index", indexes["similar"])
    )

    def user_rows(ids):  # (b,) -> (b,) int64, 0 for unknown
        return module.user_lookup.lookup(ids) + 1

    def item_rows(ids):
        return module.item_lookup.lookup(ids) + 1

    def prepared_items(catalog_rows):  # catalog row r is table row r + 1
        return head.normalize(tf.gather(module.item_vectors, catalog_rows + 1))

    def unit_items(catalog_rows):
        return _unit(tf.gather(module.item_vectors, catalog_rows + 1))

    def names(catalog_rows, valid):
        return tf.where(valid, module.item_names.lookup(catalog_rows), "")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serving_default(user_id):
        rows = user_rows(user_id)
        queries = head.normalize(tf.gather(module.user_vectors, rows))
        found, valid = user_index.search(queries, k)
        top, scores, top_valid = _top_k_of(queries, found, valid, prepared_items, k)
        if tables.head == "cosine":
            scores = tf.where(top_valid, tf.clip_by_value(scores, -1.0, 1.0), scores)
        return {
            "item_ids": tf.ensure_shape(names(top, top_valid), [None, k]),
            "scores": tf.ensure_shape(scores, [None, k]),
            "known_user": tf.ensure_shape(rows > 0, [None]),
        }

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="user_id"),
            tf.TensorSpec([None, None], tf.string, name="item_ids"),
        ]
    )
    def explain_signature(user_id, item_ids):
        rows = user_rows(user_id)
        items = item_rows(item_ids)
        values = explain(
            tf.gather(module.user_vectors, rows), tf.gather(module.item_vectors, items), head, m
        )
        values["cosine_is_training_objective"] = tf.fill(
            tf.shape(user_id), values["cosine_is_training_objective"]
        )
        values["known_user"] = rows > 0
        values["known_items"] = items > 0
        shapes = {"top_dimensions": [None, None, m], "contributions": [None, None, m]}
        for name in ("user_norm", "known_user", "cosine_is_training_objective"):
            shapes[name] = [None]
        return {
            name: tf.ensure_shape(value, shapes.get(name, [None, None]))
            for name, value in values.items()
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id")])
    def similar_items(item_id):
        rows = item_rows(item_id)
        queries = _unit(tf.gather(module.item_vectors, rows))
        found, valid = similar_index.search(queries, k_similar)
        top, cosine, top_valid = _top_k_of(queries, found, valid, unit_items, k, exclude=rows - 1)
        cosine = tf.where(top_valid, tf.clip_by_value(cosine, -1.0, 1.0), cosine)
        return {
            "item_ids": tf.ensure_shape(names(top, top_valid), [None, k]),
            "cosine": tf.ensure_shape(cosine, [None, k]),
            "known_item": tf.ensure_shape(rows > 0, [None]),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def embed_users(user_id):
        vectors = head.normalize(tf.gather(module.user_vectors, user_rows(user_id)))
        return {"embeddings": tf.ensure_shape(vectors, [None, d])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id")])
    def embed_items(item_id):
        vectors = head.normalize(tf.gather(module.item_vectors, item_rows(item_id)))
        return {"embeddings": tf.ensure_shape(vectors, [None, d])}

    functions = {
        "serving_default": serving_default,
        "explain": explain_signature,
        "similar_items": similar_items,
        "embed_users": embed_users,
        "embed_items": embed_items,
    }
    for name, function in functions.items():
        setattr(module, name, function)  # callable as loaded.NAME(...) after loading too
    return module, {name: f.get_concrete_function() for name, f in functions.items()}


# ----------------------------------------------------------------------------------------
# checks, versions, atomic publishing


def _check_arguments(index: str, k: int, min_recall: float, top_dimensions: int, num_items: int):
    if index not in INDEX_KINDS:
        raise ExportError(f"unknown index {index!r}; valid: {', '.join(INDEX_KINDS)}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ExportError(f"--k must be an integer >= 1, got {k!r}")
    if k > num_items:
        raise ExportError(f"--k {k} is larger than the catalog ({num_items} items)")
    if not (isinstance(min_recall, (int, float)) and 0.0 <= min_recall <= 1.0):
        raise ExportError(f"--min-recall must be in [0, 1], got {min_recall!r}")
    if not isinstance(top_dimensions, int) or top_dimensions < 1:
        raise ExportError(f"--top-dimensions must be an integer >= 1, got {top_dimensions!r}")


def existing_versions(model_base_path: str | Path) -> list[int]:
    """The integer version folders under ``model_base_path`` (TF Serving's layout), sorted."""
    base = Path(model_base_path)
    if not base.is_dir():
        return []
    return sorted(
        int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()
    )


def _resolve_version(model_base_path: Path, version: int | None) -> int:
    if model_base_path.exists() and not model_base_path.is_dir():
        raise ExportError(f"model base path {model_base_path} is a file, not a directory")
    if version is None:
        versions = existing_versions(model_base_path)
        return versions[-1] + 1 if versions else 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportError(f"--version must be an integer >= 1, got {version!r}")
    if (model_base_path / str(version)).exists():
        raise ExportError(
            f"version {version} already exists in {model_base_path}; "
            "choose another --version (existing versions are never overwritten)"
        )
    return version


def _publish(staging: Path, target: Path) -> None:
    """Renames the finished export into place (atomic on one filesystem; never overwrites)."""
    if target.exists():
        raise ExportError(f"version {target.name} already exists in {target.parent}")
    try:
        os.rename(staging, target)
    except OSError as e:
        raise ExportError(f"cannot move the export into {target}: {e.strerror}") from None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------
# verification reference (computed in memory, checked in a fresh process)


def _reference(
    tables: EmbeddingTables,
    head_layer,
    k: int,
    top_m: int,
    rng: np.random.Generator,
    indexes: dict[str, Any] | None = None,
    sample: int = 32,
    items_per_user: int = 6,
) -> dict[str, np.ndarray]:
    """Expected outputs of every signature on sampled ids (plus one unknown id each).

    With ScaNN ``indexes``, also the recall@K the in-memory searchers reach on these very
    ids: the loaded index must match it (a 33-user sample is too small to hold against
    ``min_recall`` itself, which was enforced on ``recall_sample`` users).
    """
    num_users, num_items = len(tables.users), len(tables.items)
    user_rows = rng.choice(num_users, size=min(sample, num_users), replace=False) + 1
    item_rows = rng.choice(num_items, size=min(sample, num_items), replace=False) + 1
    oov_user, oov_item = _oov_id(tables.users), _oov_id(tables.items)
    user_ids = [tables.users[r - 1] for r in user_rows] + [oov_user]
    item_ids = [tables.items[r - 1] for r in item_rows] + [oov_item]
    user_rows = np.append(user_rows, 0)
    item_rows = np.append(item_rows, 0)

    normalize = head_layer.normalize
    queries = normalize(tf.constant(tables.user_vectors[user_rows])).numpy()
    catalog = normalize(tf.constant(tables.item_vectors[1:])).numpy()
    top_scores, top_rows = index_lib.exact_top_k(queries, catalog, k)

    unit_catalog = _unit_np(tables.item_vectors[1:])
    item_queries = _unit_np(tables.item_vectors[item_rows])
    k_similar = min(k + 1, num_items)
    sim_scores, sim_rows = index_lib.exact_top_k(item_queries, unit_catalog, k_similar)
    keep = sim_rows != (item_rows - 1)[:, None]
    # Drop the item itself (or the last one when the item is unknown or not among them).
    keep &= np.cumsum(keep, axis=1) <= k
    sim_rows = np.stack([r[m] for r, m in zip(sim_rows, keep, strict=True)])
    sim_scores = np.stack([s[m] for s, m in zip(sim_scores, keep, strict=True)])
    if sim_rows.shape[1] < k:  # K == catalog size: the last column is padding
        pad = k - sim_rows.shape[1]
        sim_rows = np.pad(sim_rows, ((0, 0), (0, pad)), constant_values=-1)
        sim_scores = np.pad(sim_scores, ((0, 0), (0, pad)), constant_values=_LOWEST)

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
        top_m,
    )

    expected_recall = {"user": 1.0, "similar": 1.0}
    for key, spec, q, c, k_search, exclude, scores in (
        ("user", (indexes or {}).get("user"), queries, catalog, k, None, top_scores),
        ("similar", (indexes or {}).get("similar"), item_queries, unit_catalog, k_similar,
         item_rows - 1, sim_scores),
    ):
        if spec is None or spec[0] != "scann":
            continue
        found = index_lib.scann_search(spec[1], q, k_search, spec[2])
        if exclude is not None:
            found = np.where(found == exclude[:, None], -1, found)
            order = np.argsort(found < 0, axis=1, kind="stable")  # drop the item itself
            found = np.take_along_axis(found, order, axis=1)[:, :k]
        valid_scores = scores[:, :k]
        keep_rows = np.isfinite(valid_scores).all(1) & (valid_scores > _LOWEST).all(1)
        if keep_rows.any():
            expected_recall[key] = index_lib.recall_at_k(
                q[keep_rows], c, found[keep_rows], valid_scores[keep_rows]
            )

    def names(rows: np.ndarray) -> np.ndarray:
        items = np.array(tables.items + [""], dtype=object)
        return items[np.where(rows >= 0, rows, num_items)].astype(str)

    reference = {
        "user_ids": np.array(user_ids),
        "known_user": user_rows > 0,
        "top_item_ids": names(top_rows),
        "top_scores": np.clip(top_scores, -1, 1) if tables.head == "cosine" else top_scores,
        "item_ids": np.array(item_ids),
        "known_item": item_rows > 0,
        "similar_item_ids": names(sim_rows),
        "similar_cosine": np.clip(sim_scores, -1, 1),
        "embed_users": queries,
        "embed_items": normalize(tf.constant(tables.item_vectors[item_rows])).numpy(),
        "explain_item_ids": explain_ids,
        "explain_known_items": explain_rows > 0,
        "expected_serving_recall": np.float32(expected_recall["user"]),
        "expected_similar_recall": np.float32(expected_recall["similar"]),
    }
    for name, value in expected.items():
        value = value.numpy()
        if name == "cosine_is_training_objective":
            value = np.full(len(user_rows), bool(value))
        reference[f"explain_{name}"] = value
    return reference


def _verify_in_fresh_process(export_dir: Path, reference: dict, scratch: Path, min_recall: float, log: Log) -> dict:
    path = scratch / "reference.npz"
    np.savez(path, **reference)
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


# ----------------------------------------------------------------------------------------
# exporting


def _prepare_indexes(
    tables: EmbeddingTables,
    index: str,
    k: int,
    min_recall: float,
    plan: index_lib.IndexPlan | None,
    recall_sample: int,
    rng: np.random.Generator,
    log: Log,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Builds the index(es), measures recall; returns (index specs, card section)."""
    head = make_head(tables.head, temperature=tables.temperature)
    prepared = head.normalize(tf.constant(tables.item_vectors[1:])).numpy()
    unit = prepared if tables.head == "cosine" else _unit_np(tables.item_vectors[1:])
    num_items = len(tables.items)
    k_similar = min(k + 1, num_items)

    if index == "brute-force":
        user = ("brute-force", prepared)
        similar = user if tables.head == "cosine" else ("brute-force", unit)
        card = {
            "type": "brute-force",
            "description": f"Exact top-K over all {num_items:,} items with stock TensorFlow ops.",
            "recall_at_k": 1.0,
            "similar_items_recall_at_k": 1.0,
        }
        return {"user": user, "similar": similar}, card

    chosen = plan or index_lib.plan_index(num_items, k, normalized=tables.head == "cosine")
    log(f"index: {chosen.sentence(num_items)}")
    sample_users = rng.choice(len(tables.users), size=min(recall_sample, len(tables.users)), replace=False)
    queries = head.normalize(tf.constant(tables.user_vectors[sample_users + 1])).numpy()
    sample_items = rng.choice(num_items, size=min(recall_sample, num_items), replace=False)
    item_queries = unit[sample_items]

    started = time.perf_counter()
    user_searcher = index_lib.build_scann(prepared, chosen, k)
    similar_searcher = (
        user_searcher if tables.head == "cosine" else index_lib.build_scann(unit, chosen, k_similar)
    )
    build_seconds = time.perf_counter() - started
    log(f"index: built in {build_seconds:.1f}s; measuring recall@{k} on {len(queries)} users")

    current, widenings = chosen, 0
    while True:
        user_recall = index_lib.measure_recall(user_searcher, queries, prepared, k, current)
        similar_recall = index_lib.measure_recall(
            similar_searcher, item_queries, unit, k_similar, current
        )
        log(
            f"index: recall@{k} {user_recall:.4f} (users), {similar_recall:.4f} (similar items)"
            f" searching {current.leaves_to_search or 'all'} leaves, reordering {current.reorder}"
        )
        if min(user_recall, similar_recall) >= min_recall or plan is not None:
            break
        widened = current.widened()
        if widened == current or widenings == _WIDENINGS:
            break
        current, widenings = widened, widenings + 1
        log("index: recall below --min-recall; widening the search")
    if min(user_recall, similar_recall) < min_recall:
        raise ExportError(
            f"ScaNN index recall@{k} is {min(user_recall, similar_recall):.3f}, below "
            f"--min-recall {min_recall} ({current.sentence(num_items)}); nothing was written"
        )
    card = {
        "type": "scann",
        "description": current.sentence(num_items),
        "parameters": current.to_dict(),
        "planned_parameters": chosen.to_dict(),
        "distance": "dot_product over L2-normalized vectors (cosine)"
        if tables.head == "cosine"
        else "dot_product",
        "recall_at_k": round(user_recall, 5),
        "similar_items_recall_at_k": round(similar_recall, 5),
        "recall_sample_users": len(queries),
        "build_seconds": round(build_seconds, 2),
    }
    user = ("scann", user_searcher, current)
    similar = user if tables.head == "cosine" else ("scann", similar_searcher, current)
    return {"user": user, "similar": similar}, card


def export_tables(
    tables: EmbeddingTables,
    model_base_path: str | Path,
    *,
    version: int | None = None,
    index: str = "scann",
    k: int = 100,
    min_recall: float = 0.95,
    top_dimensions: int = 5,
    plan: index_lib.IndexPlan | None = None,
    recall_sample: int = 1000,
    card: dict[str, Any] | None = None,
    verify: bool = True,
    head_layer=None,
    seed: int = 0,
    log: Log = print,
) -> Path:
    """Exports precomputed tower outputs to ``model_base_path/<version>/``; returns that path.

    Args:
      tables: the tower outputs and vocabularies (``EmbeddingTables``).
      model_base_path: TF Serving's model base path; created when missing.
      version: the version folder; None takes the next after the highest existing one.
      index: ``"scann"`` or ``"brute-force"``.
      k: K of ``serving_default`` and ``similar_items`` (fixed in the signatures).
      min_recall: least recall@K of the ScaNN index against exact top-K, measured on
        ``recall_sample`` sampled users (and items, for ``similar_items``).
      top_dimensions: m of ``explain``'s ``top_dimensions``/``contributions`` (capped at d).
      plan: a fixed ScaNN plan (default: ``export.index.plan_index`` from the catalog
        size, widened up to 3 times if its recall is short; a fixed plan is never widened).
      card: extra model-card fields (the run's config, data and metrics).
      verify: load the export in a fresh process and compare every signature with
        the in-memory values (``export.verify``) before publishing it.
      head_layer: the in-memory model's head for the verification reference (default: a
        head rebuilt from ``tables``).

    Raises:
      ExportError: bad arguments, an existing version, a base path that is a file,
        recall below ``min_recall`` or a failed verification; nothing is written then.
    """
    started = time.perf_counter()
    _check_arguments(index, k, min_recall, top_dimensions, len(tables.items))
    base = Path(model_base_path)
    version = _resolve_version(base, version)
    target = base / str(version)
    rng = np.random.default_rng(seed)
    log(
        f"export: {tables.head} head, {len(tables.users):,} users, {len(tables.items):,} items, "
        f"dim {tables.dim}, index {index}, K={k} -> {target}"
    )

    indexes, index_card = _prepare_indexes(
        tables, index, k, min_recall, plan, recall_sample, rng, log
    )
    base_existed = base.exists()
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        with tempfile.TemporaryDirectory(prefix="tfrs-cosine-export-") as scratch:
            scratch = Path(scratch)
            log(f"export: writing the SavedModel to {staging.name}")
            module, signatures = _build_module(tables, indexes, k, top_dimensions, scratch)
            options = tf.saved_model.SaveOptions(
                namespace_whitelist=["Scann"] if index == "scann" else None
            )
            tf.saved_model.save(module, str(staging), signatures=signatures, options=options)
            del module, signatures

            model_card = _model_card(tables, index, k, top_dimensions, index_card, card or {})
            _write_card(staging, model_card)
            if verify:
                log("export: verifying in a fresh Python process")
                reference = _reference(
                    tables,
                    head_layer or make_head(tables.head, temperature=tables.temperature),
                    k,
                    top_dimensions,
                    rng,
                    indexes,
                )
                report = _verify_in_fresh_process(staging, reference, scratch, min_recall, log)
                model_card["verification"] = {
                    key: report[key]
                    for key in ("checks", "serving_recall_at_k", "similar_items_recall_at_k", "seconds")
                    if key in report
                }
            model_card["export_seconds"] = round(time.perf_counter() - started, 2)
            model_card["size_bytes"] = _directory_bytes(staging)
            _write_card(staging, model_card)
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not base_existed and base.is_dir() and not any(base.iterdir()):
            base.rmdir()
        raise
    log(f"export: wrote {target} in {time.perf_counter() - started:.1f}s")
    return target


def export_model(
    model: TwoTowerModel,
    users: Sequence[str],
    items: Sequence[str],
    model_base_path: str | Path,
    **kwargs,
) -> Path:
    """Exports an in-memory ``TwoTowerModel`` over its vocabularies; see ``export_tables``.

    The towers are run once over every id (and the out-of-vocabulary row); the export
    serves those outputs, so it answers exactly as the model does for id features.
    """
    if len(items) == 0 or len(users) == 0:
        raise ExportError("cannot export a model with an empty vocabulary")
    _check_arguments(
        kwargs.get("index", "scann"),
        kwargs.get("k", 100),
        kwargs.get("min_recall", 0.95),
        kwargs.get("top_dimensions", 5),
        len(items),
    )
    _resolve_version(Path(model_base_path), kwargs.get("version"))
    tables = EmbeddingTables.from_model(model, users, items)
    card = dict(kwargs.pop("card", None) or {})
    card.setdefault("model", {}).update(
        {
            "head": model.head.kind,
            "temperature": tables.temperature,
            "learn_temperature": bool(model.head.learn_temperature),
            "layer_norm": bool(model.user_tower.layer_norm),
            "embedding_dim": int(model.user_tower.embedding_dim),
            "output_dim": tables.dim,
            "user_tower_layers": list(model.user_tower.hidden_layers),
            "item_tower_layers": list(model.item_tower.hidden_layers),
        }
    )
    kwargs.setdefault("head_layer", model.head)
    return export_tables(tables, model_base_path, card=card, **kwargs)


def export_savedmodel(
    run_dir: str | Path,
    model_base_path: str | Path,
    version: int | None = None,
    index: str = "scann",
    k: int = 100,
    min_recall: float = 0.95,
    log: Log = print,
    top_dimensions: int = 5,
) -> Path:
    """Exports a complete run directory (``tfrs-cosine train``) as a new model version.

    Returns ``model_base_path/<version>``. Raises ``ExportError`` (nothing written) for a
    missing or unfinished run, bad arguments, an existing version, a base path that is a
    file, recall below ``min_recall`` or a failed verification.
    """
    from training import rundir
    from training.errors import InputError
    from training.modeling import load_run

    run_dir = Path(run_dir)
    try:
        info = rundir.read_info(run_dir)
    except InputError as e:
        raise ExportError(str(e)) from None
    if info.get("status") != "complete":
        raise ExportError(
            f"run {run_dir} is not complete (status: {info.get('status', 'unknown')}); "
            "only complete runs are exported"
        )
    try:
        items = rundir.read_vocabulary(run_dir, "items")
    except InputError as e:
        raise ExportError(str(e)) from None
    # Cheap checks first: nothing is loaded for a bad K, version or base path.
    _check_arguments(index, k, min_recall, top_dimensions, len(items))
    _resolve_version(Path(model_base_path), version)

    log(f"export: loading {run_dir}")
    try:
        run = load_run(run_dir)
    except InputError as e:
        raise ExportError(str(e)) from None
    card = {
        "run_dir": str(run_dir.resolve()),
        "run": {key: info.get(key) for key in ("started", "finished", "epochs_completed", "best_epoch")},
        "dataset": info.get("data", {}),
        "metrics": run.metrics,
        "config": run.config.to_dict(),
    }
    return export_model(
        run.model,
        run.users,
        run.items,
        model_base_path,
        version=version,
        index=index,
        k=k,
        min_recall=min_recall,
        top_dimensions=top_dimensions,
        card=card,
        log=log,
    )


# ----------------------------------------------------------------------------------------
# the model card


def _model_card(
    tables: EmbeddingTables,
    index: str,
    k: int,
    top_dimensions: int,
    index_card: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    model = {"head": tables.head, "temperature": tables.temperature, "output_dim": tables.dim}
    model.update(extra.get("model", {}))
    card = {
        "format": "tfrs-cosine export 1",
        "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": model,
        "k": k,
        "top_dimensions": min(top_dimensions, tables.dim),
        "num_items": len(tables.items),
        "num_users": len(tables.users),
        "index": index_card,
        "signatures": list(SIGNATURES),
        "scores": "cosine similarity (without temperature)"
        if tables.head == "cosine"
        else "dot product (without temperature)",
        "cosine_is_training_objective": tables.head == "cosine",
        "versions": {
            "tensorflow": tf.__version__,
            "tensorflow_recommenders": _package_version("tensorflow-recommenders"),
            "scann": _package_version("scann"),
            "python": sys.version.split()[0],
        },
    }
    for key, value in extra.items():
        if key != "model":
            card[key] = value
    return card


def _write_card(export_dir: Path, card: dict[str, Any]) -> None:
    path = export_dir / MODEL_CARD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"cannot write {type(value).__name__} to the model card")


def read_model_card(export_dir: str | Path) -> dict[str, Any]:
    """The model card of an export."""
    return json.loads((Path(export_dir) / MODEL_CARD).read_text())
