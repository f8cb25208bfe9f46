"""The exported ``tf.Module`` of a feature model: both towers in the graph.

Signatures (``contract.signatures_for(inputs)``), each shaped by ``export.contract``
through ``export.signatures.signature_function``:

* ``serving_default(user_id)``: the stored features and history of a known user (an
  unknown one: defaults, no history) and the timestamp context at the export's
  ``serving_timestamp`` -> the user tower -> top-K over the catalog, never returning the
  user's stored training items when ``exclude_seen``;
* ``recommend(user_id, <user features>, history, <context>, exclude_item_ids)``: the user
  tower on the request's raw values (a timestamp of 0 is the export's serving time). ``history`` ``[batch, N]``: any width; ``""``
  anywhere is padding; the last ``history_length`` non-empty items (most recent last)
  are what the model sees. ``exclude_item_ids`` are never returned; with
  ``exclude_seen`` neither are the known user's stored training items nor the request's
  history items;
* ``explain(user_id, item_ids)``: as for id models (stored query side), plus
  ``because_item_ids`` / ``because_cosine``: the user's stored recent items (its
  history) of highest cosine of item-tower outputs to each explained item;
* ``similar_items``, ``embed_users`` (stored query side) as for id models;
* ``embed_items(item_id, <item features>)``: the item tower on raw values.

Exclusion searches ``K + E`` candidates (``E``: the row's excluded items, padded to the
batch's widest) and drops the excluded ones exactly (``searchers.is_member``), so the
answer never holds one. As for id models (``searchers.top_k_of``), an exact plan's
candidates are only cut to ``K``; an approximate ScaNN plan's are rescored exactly. Cost per request:
the user tower (O(features + N) lookups and the Dense stack) and a search of ``K + E``.
The towers are saved as tracked objects of the module: loading needs TensorFlow only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from export import contract
from export.feature_model import FeatureExport
from export.index import PreparedIndexes
from export.options import ExportOptions
from export.recall import PADDING_SCORE
from export.searchers import make_searcher, top_k_of
from export.signatures import _id_to_row, _row_to_id, signature_function
from export.tables import EmbeddingTables
from tfrs_cosine import explain
from tfrs_cosine.heads import l2_normalize


def recent_items(history: tf.Tensor, length: int) -> tf.Tensor:
    """The last ``length`` non-empty entries of each row of ``history (b, w)``, in order,
    left-aligned and padded with ``""``: ``(b, length)`` (``HistoryEncoder``'s layout)."""
    width = tf.shape(history)[1]
    history = tf.pad(history, [[0, 0], [0, tf.maximum(length - width, 0)]], constant_values="")
    present = tf.not_equal(history, "")
    later = tf.cumsum(tf.cast(present, tf.int32), axis=1, reverse=True)  # this one included
    keep = present & (later <= length)
    columns = tf.range(tf.shape(history)[1])[tf.newaxis, :]
    order = tf.argsort(tf.where(keep, columns, columns + tf.shape(history)[1]), axis=1,
                       stable=True)
    first = tf.gather(history, order[:, :length], batch_dims=1)
    kept = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1, keepdims=True)
    return tf.where(tf.range(length)[tf.newaxis, :] < kept, first, "")


def build_feature_module(
    export: FeatureExport,
    tables: EmbeddingTables,
    indexes: PreparedIndexes,
    options: ExportOptions,
    vocabulary_dir: Path,
) -> tuple[tf.Module, dict[str, Any]]:
    """The module to save and its signatures (concrete functions by name)."""
    head = tables.head_layer()
    sizes = options.sizes(tables.dim)
    k, m = sizes["K"], sizes["m"]
    num_items = len(export.items)
    k_similar = options.similar_search_k(num_items)
    inputs = export.inputs

    user_file = vocabulary_dir / Path(contract.USER_VOCABULARY).name
    item_file = vocabulary_dir / Path(contract.ITEM_VOCABULARY).name
    user_file.write_text("\n".join(export.users) + "\n", encoding="utf-8")
    item_file.write_text("\n".join(export.items) + "\n", encoding="utf-8")

    module = tf.Module(name="tfrs_cosine_feature_export")
    module.user_tower = export.model.user_tower
    module.item_tower = export.model.item_tower
    module.log_temperature = head.log_temperature
    module.user_lookup = _id_to_row(user_file)
    module.item_lookup = _id_to_row(item_file)
    module.item_names = _row_to_id(item_file)
    module.item_vectors = tf.Variable(tables.item_vectors, trainable=False, name="item_vectors")
    stored = {}
    for name, values in export.user_values.items():  # row 0: an unknown user's defaults
        default = np.full((1, *values.shape[1:]), export.user_defaults[name], values.dtype)
        stored[name] = tf.Variable(np.concatenate([default, values]), trainable=False,
                                   name=f"stored_{name}")
        setattr(module, f"stored_{name}", stored[name])
    history_length = inputs.history_length
    if export.history_feature is not None:
        padding = np.full((1, history_length), "", dtype=export.history.dtype)
        module.stored_history = tf.Variable(np.concatenate([padding, export.history]),
                                            trainable=False, name="stored_history")
    module.seen_splits = tf.Variable(np.concatenate([[0], export.seen_indptr]).astype(np.int64),
                                     trainable=False, name="seen_splits")
    module.seen_rows = tf.Variable(export.seen_rows.astype(np.int64), trainable=False,
                                   name="seen_rows")
    because = np.concatenate([np.full((1, export.because_rows.shape[1]), -1, np.int64),
                              export.because_rows])
    module.because_rows = tf.Variable(because, trainable=False, name="because_rows")
    user_index = make_searcher(module, "user_index", indexes.user)
    similar_index = (
        user_index
        if indexes.similar is indexes.user
        else make_searcher(module, "similar_index", indexes.similar)
    )

    def catalog_rows(ids):  # (...) -> catalog rows, -1 unknown or ""
        return module.item_lookup.lookup(ids)

    def compared_items(rows):
        return head.normalize(tf.gather(module.item_vectors, rows + 1))

    def unit_items(rows):
        return l2_normalize(tf.gather(module.item_vectors, rows + 1))

    def names(rows, valid):
        return tf.where(valid, module.item_names.lookup(rows), "")

    def context(users) -> dict:
        return {name: tf.fill(tf.shape(users), tf.constant(when, tf.int64))
                for name, when in export.context.items()}

    def stored_query(users):  # (b,) -> table rows (0: unknown), the user tower's inputs
        rows = module.user_lookup.lookup(users) + 1
        features = {"user_id": users, **context(users)}
        for name, table in stored.items():
            features[name] = tf.gather(table, rows)
        if export.history_feature is not None:
            features[export.history_feature] = tf.gather(module.stored_history, rows)
        return rows, features

    def tower_output(tower, features):
        return tf.cast(tower(features), tf.float32)

    def seen_of(rows):  # (b,) table rows -> (b, S) catalog rows, -1 pads
        ragged = tf.RaggedTensor.from_row_splits(module.seen_rows, module.seen_splits)
        return tf.gather(ragged, rows).to_tensor(default_value=-1)

    def top_items(queries, rows, excluded):
        wanted = None if excluded is None else tf.minimum(k + tf.shape(excluded)[1], num_items)
        top, scores, top_valid = top_k_of(user_index, queries, k, compared_items,
                                          search_k=wanted, exclude=excluded)
        if tables.head == "cosine":
            scores = tf.where(top_valid, tf.clip_by_value(scores, -1.0, 1.0), scores)
        return {"item_ids": names(top, top_valid), "scores": scores, "known_user": rows > 0}

    def serve(users):
        rows, features = stored_query(users)
        queries = head.normalize(tower_output(module.user_tower, features))
        return top_items(queries, rows, seen_of(rows) if export.exclude_seen else None)

    recommend_signature = contract.signatures_for(inputs)[contract.RECOMMEND_NAME]

    def recommend(*values):
        given = dict(zip(recommend_signature.input_names, values, strict=True))
        users, history = given[contract.USER_ID.name], given[contract.HISTORY.name]
        rows = module.user_lookup.lookup(users) + 1
        features = {"user_id": users}
        for spec in inputs.user:
            features[spec.name] = given[spec.name]
        for name, when in context(users).items():  # 0: the export's serving time
            value = given[name]
            features[name] = tf.where(tf.equal(value, 0), when, value)
        if export.history_feature is not None:
            features[export.history_feature] = recent_items(history, history_length)
        excluded = [catalog_rows(given[contract.EXCLUDE_ITEM_IDS.name])]
        if export.exclude_seen:
            excluded += [seen_of(rows), catalog_rows(history)]
        queries = head.normalize(tower_output(module.user_tower, features))
        return top_items(queries, rows, tf.concat(excluded, axis=1))

    def explain_pairs(users, items):  # (b,), (b, n)
        rows, features = stored_query(users)
        columns = catalog_rows(items)
        item_vectors = tf.gather(module.item_vectors, columns + 1)
        values = explain(tower_output(module.user_tower, features), item_vectors, head, m)
        values["cosine_is_training_objective"] = tf.fill(
            tf.shape(users), values["cosine_is_training_objective"]
        )
        values.update(because_of(rows, columns))
        return {**values, "known_user": rows > 0, "known_items": columns >= 0}

    def because_of(rows, columns):  # the user's recent items nearest to each item
        recent = tf.gather(module.because_rows, rows)  # (b, B)
        cosine = tf.einsum("bnd,bhd->bnh", unit_items(columns), unit_items(recent))
        present = tf.broadcast_to((recent >= 0)[:, tf.newaxis, :], tf.shape(cosine))
        cosine = tf.where(present, cosine, PADDING_SCORE)
        width = min(m, because.shape[1])
        best, position = tf.math.top_k(cosine, k=width)
        found = tf.gather(tf.broadcast_to(recent[:, tf.newaxis, :], tf.shape(cosine)),
                          position, batch_dims=2)
        valid = best > PADDING_SCORE
        padding = [[0, 0], [0, 0], [0, m - width]]
        ids = tf.pad(names(found, valid), padding, constant_values="")
        best = tf.where(valid, tf.clip_by_value(best, -1.0, 1.0), PADDING_SCORE)
        best = tf.pad(best, padding, constant_values=PADDING_SCORE)
        return {contract.BECAUSE_ITEM_IDS.name: ids, contract.BECAUSE_COSINE.name: best}

    def similar_to(items):
        rows = catalog_rows(items)
        queries = unit_items(rows)
        top, cosine, top_valid = top_k_of(similar_index, queries, k, unit_items,
                                          search_k=k_similar, exclude=rows)
        cosine = tf.where(top_valid, tf.clip_by_value(cosine, -1.0, 1.0), cosine)
        return {"item_ids": names(top, top_valid), "cosine": cosine, "known_item": rows >= 0}

    def user_embeddings(users):
        _, features = stored_query(users)
        return {"embeddings": head.normalize(tower_output(module.user_tower, features))}

    embed_items_signature = contract.signatures_for(inputs)[contract.EMBED_ITEMS.name]

    def item_embeddings(*values):
        features = dict(zip(embed_items_signature.input_names, values, strict=True))
        return {"embeddings": head.normalize(tower_output(module.item_tower, features))}

    signatures = contract.signatures_for(inputs)
    bodies = {
        contract.SERVING_DEFAULT.name: serve,
        contract.RECOMMEND_NAME: recommend,
        contract.EXPLAIN.name: explain_pairs,
        contract.SIMILAR_ITEMS.name: similar_to,
        contract.EMBED_USERS.name: user_embeddings,
        contract.EMBED_ITEMS.name: item_embeddings,
    }
    missing = set(signatures) - set(bodies)
    if missing:
        raise ValueError(f"no implementation of {sorted(missing)}")
    functions = {
        name: signature_function(signatures[name], body, sizes) for name, body in bodies.items()
    }
    for name, function in functions.items():
        setattr(module, name, function)
    return module, {name: f.get_concrete_function() for name, f in functions.items()}
