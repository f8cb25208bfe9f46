"""Histories built on the fly (training.history): the in-graph lookup against a numpy
reference, the tie rule, latest histories and seen items, and no leakage of a later or
held-out item into a history, in training batches and in evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfrs_cosine import FeatureTower, HistoryEncoder, IdEncoder, TwoTowerModel, make_head
from training.config import config_from_dict
from training.evaluation import evaluate_model
from training.feature_data import prepare_features
from training.history import HistoryLookup, UserSequences
from training.schema import Interactions, from_interactions
from training.splits import Split


def reference_history(train: Interactions, user: str, timestamp: int, length: int) -> list[str]:
    """The user's ``length`` most recent items strictly before ``timestamp``, oldest first
    (ties: later rows are more recent), written without the module under test."""
    rows = [(t, r, i) for r, (u, i, t) in enumerate(
        zip(train.user_id, train.item_id, train.timestamp, strict=True)) if u == user and t < timestamp]
    items = [i for _, _, i in sorted(rows)][-length:]
    return items + [""] * (length - len(items))


def random_interactions(seed: int, users: int = 30, items: int = 25, rows: int = 400):
    rng = np.random.default_rng(seed)
    return Interactions(
        user_id=np.array([f"u{k}" for k in rng.integers(0, users, rows)]),
        item_id=np.array([f"i{k}" for k in rng.integers(0, items, rows)]),
        timestamp=rng.integers(0, 60, rows).astype(np.int64),  # many ties on purpose
    )


@pytest.mark.parametrize("length", [1, 3, 8])
def test_the_lookup_equals_a_numpy_reference(length):
    train = random_interactions(length)
    users = np.unique(train.user_id)
    items = np.unique(train.item_id)
    sequences = UserSequences.build(train, users, items)
    lookup = HistoryLookup(sequences, length)
    rng = np.random.default_rng(1)
    queries = np.concatenate([users, ["nobody", "u0"]])
    times = np.concatenate([rng.integers(-5, 70, len(users)), [30, -100]])
    got = lookup(tf.constant(queries), tf.constant(times, tf.int64)).numpy().astype(str)
    expected = [reference_history(train, u, t, length) for u, t in zip(queries, times, strict=True)]
    np.testing.assert_array_equal(got, np.array(expected))
    # After every interaction: latest() as catalog rows, the same lists.
    latest = sequences.latest(length)
    names = np.append(items, "")
    after = [reference_history(train, u, 10**9, length) for u in users]
    np.testing.assert_array_equal(names[np.where(latest >= 0, latest, len(items))], after)


def test_the_tie_rule_and_an_empty_catalog_row():
    train = Interactions(
        user_id=np.array(["u", "u", "u", "u"]),
        item_id=np.array(["a", "b", "c", "d"]),
        timestamp=np.array([5, 5, 7, 9], np.int64),
    )
    sequences = UserSequences.build(train, np.array(["u", "v"]), np.array(["a", "b", "c", "d"]))
    lookup = HistoryLookup(sequences, 3)
    got = lookup(tf.constant(["u", "u", "u", "v"]), tf.constant([5, 7, 10, 10], tf.int64))
    # Strictly before: nothing at 5 (a and b are at 5), a then b at 7 (b later in the data).
    assert got.numpy().astype(str).tolist() == [
        ["", "", ""], ["a", "b", ""], ["b", "c", "d"], ["", "", ""]]


def test_seen_items_are_distinct_most_recent_first_and_bounded():
    train = Interactions(
        user_id=np.array(["u", "u", "u", "v", "u"]),
        item_id=np.array(["a", "b", "a", "c", "c"]),
        timestamp=np.array([1, 2, 3, 1, 4], np.int64),
    )
    items = np.array(["a", "b", "c"])
    sequences = UserSequences.build(train, np.array(["u", "v", "w"]), items)
    indptr, rows = sequences.seen()
    assert indptr.tolist() == [0, 3, 4, 4]
    assert items[rows].tolist() == ["c", "a", "b", "c"]
    indptr, rows = sequences.seen(limit=2)
    assert items[rows].tolist() == ["c", "a", "c"] and indptr.tolist() == [0, 2, 3, 3]
    assert sequences.nbytes == 8 * 4 + 5 * (4 + 8)


# ----------------------------------------------------------------------------------------
# leakage


def _leakage_case():
    """u0 trains on i0 (t=1), holds out i2 (t=5); u1 makes i1 and i2 known items."""
    interactions = Interactions(
        user_id=np.array(["u0", "u1", "u1", "u0"]),
        item_id=np.array(["i0", "i1", "i2", "i2"]),
        timestamp=np.array([1, 2, 3, 5], np.int64),
    )
    data = from_interactions(interactions, "leakage")
    train, test = interactions.subset(np.array([0, 1, 2])), interactions.subset(np.array([3]))
    split = Split(train, test.subset(np.zeros(1, bool)), test)
    config = config_from_dict({
        "data": {"split": "leave-last-out", "validation_fraction": 0.0},
        "model": {"embedding_dim": 3,
                  "user_features": {"history": {"type": "history", "length": 4}},
                  "item_features": {"item_id": {"type": "id"}}},
    })
    return config, data, split


def _history_model(items):
    """User tower: the mean of the history's item rows; item tower: the same rows."""
    item_ids = IdEncoder(items, 3, name="item_id")
    user = FeatureTower({"history": HistoryEncoder(item_ids, 4, name="history")})
    model = TwoTowerModel(user, FeatureTower({"item_id": item_ids}), make_head("dot"))
    model({"history": tf.constant([["i0", "", "", ""]]), "item_id": tf.constant(["i0"])})
    rows = {"i0": [1.0, 0.0, 0.0], "i1": [0.6, 0.8, 0.0], "i2": [0.0, 0.0, 1.0]}
    table = np.zeros((len(items) + 1, 3), np.float32)
    for name, row in rows.items():
        table[items.index(name) + 1] = row
    item_ids.embedding.embeddings.assign(table)
    return model


def test_no_held_out_or_later_item_reaches_a_history():
    config, data, split = _leakage_case()
    features = prepare_features(config, data, split, log=lambda m: None)
    model = _history_model(data.items.tolist())
    # Evaluation: u0's query as of the test split holds i0 only. With it, i1 (0.6) beats
    # the held-out i2 (0): recall@1 is 0. Had i2 leaked into the history, i2 (0.5) would
    # beat i1 (0.3) and recall@1 would be 1: the case tells the two apart.
    query = features.query_inputs("test")(np.array(["u0"]))
    assert query["history"].numpy().astype(str).tolist() == [["i0", "", "", ""]]
    metrics = evaluate_model(model, split.test, data.items, [1], split.train,
                             query_inputs=features.query_inputs("test"),
                             item_inputs=features.item_inputs())
    assert metrics["recall@1"] == 0.0

    def leaked(users):
        return {"history": tf.constant([["i0", "i2", "", ""]] * len(users))}

    leaked_metrics = evaluate_model(model, split.test, data.items, [1], split.train,
                                    query_inputs=leaked, item_inputs=features.item_inputs())
    assert leaked_metrics["recall@1"] == 1.0
    # Training batches: a row's history holds only items strictly before its timestamp,
    # never its own item, and no held-out item.
    batch = features.join({
        "user_id": tf.constant(["u1", "u1", "u0", "u0"]),
        "item_id": tf.constant(["i1", "i2", "i0", "i2"]),
        "timestamp": tf.constant([2, 3, 1, 9], tf.int64),
    })
    assert batch["history"].numpy().astype(str).tolist() == [
        ["", "", "", ""], ["i1", "", "", ""], ["", "", "", ""], ["i0", "", "", ""]]
