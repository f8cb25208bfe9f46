"""Expected outputs of a feature export's own signatures, computed in memory.

``features_reference`` adds to ``export.reference.reference`` (which already holds the
stored users' top-K, with their training items left out when the export excludes them):

* ``recommend``: one batch of raw requests, written as the signature's inputs
  (``recommend_input:NAME``): the sampled known users with their stored features and
  history, new users (an empty and an unknown id) with default features and a history
  of catalog items, and a known user excluding its first three answers. The expected
  top-K comes from the in-memory user tower and an exact search that leaves out the
  request's exclusions (and, when the export excludes seen items, the known user's
  training items and the request's history);
* ``embed_items`` on raw item features (``embed_items_input:NAME``): sampled catalog
  items (their stored or ``--items`` features) and an unknown item with default features;
* ``because_item_ids`` / ``because_cosine`` of the explained pairs, from the item tables.

Cost: one tower call per request row and an exact search over the catalog, O(rows n d).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from export import contract
from export.feature_model import FeatureExport, run_tower
from export.index import PreparedIndexes, sample_recall
from export.options import ExportOptions
from export.recall import PADDING_SCORE, exact_top_k_excluding
from export.tables import EmbeddingTables, oov_id

RECOMMEND_INPUT = "recommend_input:"
EMBED_ITEMS_INPUT = "embed_items_input:"


def features_reference(
    features: FeatureExport,
    tables: EmbeddingTables,
    head_layer,
    options: ExportOptions,
    rng: np.random.Generator,
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    explain_rows: np.ndarray,
    base: dict[str, np.ndarray],
    indexes: PreparedIndexes | None,
) -> dict[str, Any]:
    """The feature signatures' expected values (see the module doc); ``*_rows`` are table
    rows (0: unknown) of ``base``'s sampled users, items and explained items."""
    k, m = options.k, options.sizes(tables.dim)["m"]
    num_items = len(features.items)
    signature = contract.signatures_for(features.inputs)[contract.RECOMMEND_NAME]

    # Requests: known users as stored, new users with a history, one exclusion request.
    known = user_rows[user_rows > 0] - 1
    width = max(features.inputs.history_length, 3)
    new_history = [rng.choice(num_items, size=min(3, num_items), replace=False) for _ in range(2)]
    rows = np.concatenate([known, [-1, -1], known[:1]])
    inputs = features.user_inputs(rows)
    inputs["user_id"] = np.concatenate([np.array(features.users)[known],
                                        ["", oov_id(features.users)],
                                        np.array(features.users)[known[:1]]]).astype(str)
    history = np.full((len(rows), width), "", dtype=object)
    if features.history_feature is not None:
        stored = inputs.pop(features.history_feature)
        history[:, : stored.shape[1]] = stored
    for row, chosen in zip(range(len(known), len(known) + 2), new_history, strict=True):
        history[row, : len(chosen)] = np.array(features.items)[chosen]
    history = history.astype(str)
    first_answers = base["top_item_ids"][0][:3]
    exclude = np.full((len(rows), 3), "", dtype=object)
    exclude[-1] = first_answers
    exclude = exclude.astype(str)
    request = {name: inputs[name] for name in signature.input_names if name in inputs}
    request[contract.HISTORY.name] = history
    request[contract.EXCLUDE_ITEM_IDS.name] = exclude

    tower_inputs = dict(inputs)
    if features.history_feature is not None:
        tower_inputs[features.history_feature] = _last(history, features.inputs.history_length)
    normalize = head_layer.normalize
    queries = normalize(tf.constant(run_tower(features.model.user_tower, tower_inputs))).numpy()
    catalog = normalize(tf.constant(tables.item_vectors[1:])).numpy()
    item_row = {item: r for r, item in enumerate(features.items)}
    excluded = []
    for r, user in enumerate(rows):
        drop = [item_row[i] for i in exclude[r] if i in item_row]
        if features.exclude_seen:
            drop += [item_row[i] for i in history[r] if i in item_row]
            if user >= 0:
                drop += features.seen_of(int(user)).tolist()
        excluded.append(np.array(sorted(set(drop)), np.int64))
    scores, found = exact_top_k_excluding(queries, catalog, k, excluded)
    names = np.array(features.items + [""], dtype=object)
    if tables.head == "cosine":
        scores = np.where(found >= 0, np.clip(scores, -1, 1), scores)

    out: dict[str, Any] = {RECOMMEND_INPUT + name: value for name, value in request.items()}
    out.update(
        recommend_item_ids=names[np.where(found >= 0, found, num_items)].astype(str),
        recommend_scores=scores.astype(np.float32),
        recommend_known_user=rows >= 0,
        recommend_known_rows=np.int64(len(known)),
        expected_recommend_recall=np.float32(sample_recall(
            indexes and indexes.user, queries, catalog, k, scores, k, excluded=excluded)),
    )

    # embed_items on raw features of the sampled items (the last one unknown).
    item_ids = base["item_ids"]
    item_inputs = features.item_inputs(item_rows - 1, item_ids)
    embed_signature = contract.signatures_for(features.inputs)[contract.EMBED_ITEMS.name]
    out.update({EMBED_ITEMS_INPUT + n: item_inputs[n] for n in embed_signature.input_names})

    # because: the explained users' recent items nearest (cosine) to each explained item.
    unit = EmbeddingTables.unit(tables.item_vectors)
    recent = np.concatenate([np.full((1, features.because_rows.shape[1]), -1),
                             features.because_rows])[user_rows]  # (b, B)
    cosine = np.einsum("bnd,bhd->bnh", unit[explain_rows], unit[recent + 1])
    cosine = np.where((recent >= 0)[:, None, :], cosine, -np.inf)
    order = np.argsort(-cosine, axis=2, kind="stable")[:, :, :m]
    best = np.take_along_axis(cosine, order, axis=2)
    ids = np.take_along_axis(np.broadcast_to(recent[:, None, :], cosine.shape), order, axis=2)
    valid = np.isfinite(best)
    pad = m - best.shape[2]
    best = np.pad(np.where(valid, np.clip(best, -1, 1), PADDING_SCORE), ((0, 0), (0, 0), (0, pad)),
                  constant_values=PADDING_SCORE)
    ids = np.pad(np.where(valid, names[np.where(ids >= 0, ids, num_items)], "").astype(str),
                 ((0, 0), (0, 0), (0, pad)), constant_values="")
    out.update(because_item_ids=ids, because_cosine=best.astype(np.float32))
    return out


def _last(history: np.ndarray, length: int) -> np.ndarray:
    """Each row's last ``length`` non-empty items, left-aligned, ``""`` padding (what the
    graph's ``recent_items`` gives the tower)."""
    out = np.full((len(history), length), "", dtype=object)
    for row, values in enumerate(history):
        kept = [v for v in values if v != ""][-length:]
        out[row, : len(kept)] = kept
    return out.astype(str)
