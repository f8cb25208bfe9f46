"""The exported ``tf.Module`` and its signatures, shaped by ``export.contract``.

Every signature's ``input_signature`` (names, dtypes, free dimensions) is made from the
contract, and every output is checked against it when the graph is traced: the names
and dtypes must be the contract's, and ``tf.ensure_shape`` gives each output the
contract's static shape (ScaNN's outputs have none of their own). A signature with more
than one input checks in the graph that their batch sizes agree, so a mismatched
request fails with ``InvalidArgumentError`` (INVALID_ARGUMENT from a server) instead of
being broadcast.

The module holds the tower outputs (``user_vectors``, ``item_vectors``), the id lookups
(vocabulary files as assets), the head's temperature variable and the index(es). Each
request costs one hash lookup per id, a gather, and the index's search.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tensorflow as tf

from export import contract
from export.index import PreparedIndexes
from export.options import ExportOptions
from export.searchers import make_searcher, rescore_top_k
from export.tables import EmbeddingTables
from tfrs_cosine import explain
from tfrs_cosine.heads import l2_normalize


def build_module(
    tables: EmbeddingTables,
    indexes: PreparedIndexes,
    options: ExportOptions,
    vocabulary_dir: Path,
) -> tuple[tf.Module, dict[str, Any]]:
    """The ``tf.Module`` to save and its signatures (concrete functions by name).

    ``vocabulary_dir`` receives the vocabulary files; saving copies them into the
    SavedModel's assets, so it may be removed once the module is saved.
    """
    head = tables.head_layer()
    sizes = options.sizes(tables.dim)
    k, m = sizes["K"], sizes["m"]
    k_similar = options.similar_search_k(len(tables.items))

    user_file = vocabulary_dir / Path(contract.USER_VOCABULARY).name
    item_file = vocabulary_dir / Path(contract.ITEM_VOCABULARY).name
    user_file.write_text("\n".join(tables.users) + "\n", encoding="utf-8")
    item_file.write_text("\n".join(tables.items) + "\n", encoding="utf-8")

    module = tf.Module(name="tfrs_cosine_export")
    # The head layer is captured by the signatures, not tracked as a Keras layer: only
    # its temperature variable is saved, so loading needs no Keras.
    module.log_temperature = head.log_temperature
    module.user_lookup = _id_to_row(user_file)
    module.item_lookup = _id_to_row(item_file)
    module.item_names = _row_to_id(item_file)
    module.user_vectors = tf.Variable(tables.user_vectors, trainable=False, name="user_vectors")
    module.item_vectors = tf.Variable(tables.item_vectors, trainable=False, name="item_vectors")
    user_index = make_searcher(module, "user_index", indexes.user)
    similar_index = (
        user_index
        if indexes.similar is indexes.user
        else make_searcher(module, "similar_index", indexes.similar)
    )

    def user_rows(ids):  # (b,) -> (b,) int64 table rows, 0 for unknown
        return module.user_lookup.lookup(ids) + 1

    def item_rows(ids):
        return module.item_lookup.lookup(ids) + 1

    def compared_items(catalog_rows):  # catalog row r is table row r + 1
        return head.normalize(tf.gather(module.item_vectors, catalog_rows + 1))

    def unit_items(catalog_rows):
        return l2_normalize(tf.gather(module.item_vectors, catalog_rows + 1))

    def names(catalog_rows, valid):
        return tf.where(valid, module.item_names.lookup(catalog_rows), "")

    def top_items(users):
        rows = user_rows(users)
        queries = head.normalize(tf.gather(module.user_vectors, rows))
        found, valid = user_index.search(queries, k)
        top, scores, top_valid = rescore_top_k(queries, found, valid, compared_items, k)
        if tables.head == "cosine":
            scores = tf.where(top_valid, tf.clip_by_value(scores, -1.0, 1.0), scores)
        return {"item_ids": names(top, top_valid), "scores": scores, "known_user": rows > 0}

    def explain_pairs(users, items):  # (b,), (b, n)
        rows, columns = user_rows(users), item_rows(items)
        values = explain(
            tf.gather(module.user_vectors, rows), tf.gather(module.item_vectors, columns), head, m
        )
        values["cosine_is_training_objective"] = tf.fill(
            tf.shape(users), values["cosine_is_training_objective"]
        )
        return {**values, "known_user": rows > 0, "known_items": columns > 0}

    def similar_to(items):
        rows = item_rows(items)
        queries = l2_normalize(tf.gather(module.item_vectors, rows))
        found, valid = similar_index.search(queries, k_similar)
        top, cosine, top_valid = rescore_top_k(
            queries, found, valid, unit_items, k, exclude=rows - 1
        )
        cosine = tf.where(top_valid, tf.clip_by_value(cosine, -1.0, 1.0), cosine)
        return {"item_ids": names(top, top_valid), "cosine": cosine, "known_item": rows > 0}

    def user_embeddings(users):
        return {"embeddings": head.normalize(tf.gather(module.user_vectors, user_rows(users)))}

    def item_embeddings(items):
        return {"embeddings": head.normalize(tf.gather(module.item_vectors, item_rows(items)))}

    bodies = {
        contract.SERVING_DEFAULT: top_items,
        contract.EXPLAIN: explain_pairs,
        contract.SIMILAR_ITEMS: similar_to,
        contract.EMBED_USERS: user_embeddings,
        contract.EMBED_ITEMS: item_embeddings,
    }
    missing = set(contract.SIGNATURES.values()) - set(bodies)
    if missing:
        raise ValueError(f"no implementation of {sorted(s.name for s in missing)}")
    functions = {s.name: signature_function(s, body, sizes) for s, body in bodies.items()}
    for name, function in functions.items():
        setattr(module, name, function)  # callable as loaded.NAME(...) after loading too
    return module, {name: f.get_concrete_function() for name, f in functions.items()}


def signature_function(
    signature: contract.Signature,
    body: Callable[..., Mapping[str, tf.Tensor]],
    sizes: Mapping[str, int],
) -> tf.types.experimental.PolymorphicFunction:
    """``body`` as a ``tf.function`` with the contract's inputs and outputs.

    ``body`` takes the inputs positionally, in the contract's order, and returns a dict
    of outputs by name.
    """
    specs = [
        tf.TensorSpec(spec.dims(sizes), tf.as_dtype(spec.dtype), name=spec.name)
        for spec in signature.inputs
    ]

    def conformed(*inputs):
        checks = same_batch_checks(signature, inputs)
        with tf.control_dependencies(checks):
            inputs = [tf.identity(x) for x in inputs]
        return conform(signature, body(*inputs), sizes)

    conformed.__name__ = signature.name  # names the graph's function
    return tf.function(conformed, input_signature=specs)


def same_batch_checks(signature: contract.Signature, inputs) -> list:
    """Assertions that every input of ``signature`` has the first input's batch size."""
    first = signature.inputs[0]
    batch = tf.shape(inputs[0])[0]
    checks = []
    for spec, value in zip(signature.inputs[1:], inputs[1:], strict=True):
        size = tf.shape(value)[0]
        checks.append(
            tf.debugging.Assert(  # stock Equal + Assert ops: stock TF Serving runs them
                tf.equal(batch, size),
                [
                    f"{signature.name}: {first.name} has", batch,
                    f"rows but {spec.name} has", size,
                    "rows; the batch sizes must be equal",
                ],
            )
        )
    return checks


def conform(
    signature: contract.Signature, outputs: Mapping[str, tf.Tensor], sizes: Mapping[str, int]
) -> dict[str, tf.Tensor]:
    """``outputs`` checked against the contract (names, dtypes) and given its static shapes."""
    if set(outputs) != set(signature.output_names):
        raise ValueError(
            f"{signature.name} returns {sorted(outputs)}, "
            f"the contract says {sorted(signature.output_names)}"
        )
    result = {}
    for spec in signature.outputs:
        value = outputs[spec.name]
        if value.dtype.name != spec.dtype:
            raise ValueError(
                f"{signature.name}.{spec.name} is {value.dtype.name}, the contract says {spec.dtype}"
            )
        result[spec.name] = tf.ensure_shape(value, spec.dims(sizes))
    return result


def _id_to_row(vocabulary_file: Path) -> tf.lookup.StaticHashTable:
    """id -> line number (0-based), -1 when unknown; the file becomes a SavedModel asset."""
    return _line_table(vocabulary_file, by_id=True)


def _row_to_id(vocabulary_file: Path) -> tf.lookup.StaticHashTable:
    """line number -> id, "" for anything else (padding)."""
    return _line_table(vocabulary_file, by_id=False)


def _line_table(vocabulary_file: Path, by_id: bool) -> tf.lookup.StaticHashTable:
    ids = (tf.string, tf.lookup.TextFileIndex.WHOLE_LINE)
    rows = (tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
    (key_dtype, key_index), (value_dtype, value_index) = (ids, rows) if by_id else (rows, ids)
    initializer = tf.lookup.TextFileInitializer(
        str(vocabulary_file), key_dtype, key_index, value_dtype, value_index
    )
    return tf.lookup.StaticHashTable(initializer, default_value=-1 if by_id else "")
