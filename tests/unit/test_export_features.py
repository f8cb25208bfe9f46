"""A feature model's export graph, built in memory (export.feature_signatures): the
contract with the model's inputs, recommend never returning excluded items, recommend on
stored features equal to serving_default, and the in-graph helpers against numpy."""

from __future__ import annotations

import types

import numpy as np
import pytest
import tensorflow as tf
from feature_tables import feature_config, write_feature_data

from export import ExportOptions, contract
from export.feature_model import FeatureExport
from export.feature_signatures import build_feature_module, recent_items
from export.index import prepare_indexes
from export.searchers import is_member
from training.config import config_from_dict
from training.data import load_data
from training.splits import split_data
from training.train import fit

K = 5


def _quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    paths = write_feature_data(tmp_path_factory.mktemp("data"))
    raw = feature_config(paths)
    raw["data"]["validation_fraction"] = 0.0  # no per-epoch validation: a faster fixture
    raw["training"]["epochs"] = 1
    config = config_from_dict(raw)
    data = load_data(config.data)
    split = split_data(data.interactions, config.data)
    result = fit(config, data, split)
    return types.SimpleNamespace(config=config, model=result.model,
                                 features=result.features.stored, items=data.items.tolist())


@pytest.fixture(scope="module", params=["brute-force", "scann"])
def built(request, trained, tmp_path_factory):
    options = ExportOptions(index=request.param, k=K, top_dimensions=3, verify=False)
    export = FeatureExport.from_run(trained, options)
    tables = export.tables()
    indexes = prepare_indexes(tables, options, np.random.default_rng(0), _quiet)
    module, functions = build_feature_module(export, tables, indexes, options,
                                             tmp_path_factory.mktemp("vocab"))
    return export, tables, options, functions


def _metadata(functions) -> dict:
    def describe(shape, dtype):
        return dtype.name, [-1 if d is None else d for d in shape.as_list()]

    return {
        name: {
            "inputs": {s.name: describe(s.shape, s.dtype)
                       for s in function.structured_input_signature[0]},
            "outputs": {k: describe(t.shape, t.dtype)
                        for k, t in function.structured_outputs.items()},
        }
        for name, function in functions.items()
    }


def test_the_signatures_are_the_contract_with_the_model_s_inputs(built):
    export, tables, options, functions = built
    sizes = options.sizes(tables.dim)
    assert contract.contract_problems(_metadata(functions), sizes, export.inputs) == []
    assert [s.name for s in export.inputs.user] == ["age", "gender"]
    assert [s.dtype for s in export.inputs.context] == ["int64"]
    assert [(s.name, s.shape) for s in export.inputs.item] == [
        ("genres", ("batch", "L")), ("title", ("batch",))]
    # Without the features the id-only contract does not hold, and vice versa.
    assert contract.contract_problems(_metadata(functions), sizes)


def _requests(export, rng, rows: int):
    """Random recommend inputs: known and unknown users, histories, exclusions."""
    users = np.array([export.users[i] if i >= 0 else ("" if i == -1 else "stranger")
                      for i in rng.integers(-2, len(export.users), rows)])
    history = rng.choice(export.items + [""] * 10, size=(rows, 5))
    exclude = rng.choice(export.items + ["", "not-an-item"], size=(rows, 7))
    return {
        "user_id": users,
        "age": rng.uniform(10, 70, rows).astype(np.float32),
        "gender": rng.choice(["F", "M", "", "?"], rows),
        "history": history,
        "timestamp": rng.choice([0, 1000, 1100], rows).astype(np.int64),
        "exclude_item_ids": exclude,
    }


def test_recommend_never_returns_excluded_history_or_training_items(built):
    export, _, _, functions = built
    recommend = functions[contract.RECOMMEND_NAME]
    request = _requests(export, np.random.default_rng(7), 40)
    out = recommend(**{k: tf.constant(v) for k, v in request.items()})
    answers = out["item_ids"].numpy().astype(str)
    assert answers.shape == (40, K) and (answers != "").all()
    for row, user in enumerate(request["user_id"]):
        returned = set(answers[row])
        assert not returned & set(request["exclude_item_ids"][row])
        assert not returned & set(request["history"][row])  # exclude_seen is on
        if user in export.users:
            seen = {export.items[r] for r in export.seen_of(export.users.index(user))}
            assert not returned & seen
    assert out["known_user"].numpy().tolist() == [u in export.users for u in request["user_id"]]


def test_recommend_on_stored_features_equals_serving_default(built):
    export, _, _, functions = built
    users = np.array(export.users)
    stored = export.user_inputs(np.arange(len(users)))
    request = {
        "user_id": users, "age": stored["age"], "gender": stored["gender"],
        "history": stored["history"], "timestamp": np.zeros(len(users), np.int64),
        "exclude_item_ids": np.full((len(users), 1), ""),
    }
    got = functions[contract.RECOMMEND_NAME](**{k: tf.constant(v) for k, v in request.items()})
    expected = functions[contract.SERVING_DEFAULT.name](user_id=tf.constant(users))
    np.testing.assert_array_equal(got["item_ids"].numpy(), expected["item_ids"].numpy())
    np.testing.assert_allclose(got["scores"].numpy(), expected["scores"].numpy(), atol=1e-6)
    for row in range(len(users)):  # serving_default leaves out the training items
        seen = {export.items[r] for r in export.seen_of(row)}
        assert not seen & set(expected["item_ids"].numpy()[row].astype(str))


def test_because_names_history_items_by_item_tower_cosine(built):
    export, tables, options, functions = built
    user = export.users[0]
    items = np.array([export.items[:4]])
    out = functions[contract.EXPLAIN.name](user_id=tf.constant([user]), item_ids=tf.constant(items))
    because = out[contract.BECAUSE_ITEM_IDS.name].numpy().astype(str)[0]
    cosine = out[contract.BECAUSE_COSINE.name].numpy()[0]
    history = [i for i in export.history[0] if i]
    unit = tables.unit(tables.item_vectors)
    for j, item in enumerate(items[0]):
        row = unit[export.items.index(item) + 1]
        expected = sorted(((float(unit[export.items.index(h) + 1] @ row), h) for h in set(history)),
                          reverse=True)[:3]
        assert [c for c, _ in expected] == pytest.approx(list(cosine[j][: len(expected)]), abs=1e-5)
        assert set(because[j][: len(expected)]) <= set(history)


def test_recent_items_keeps_the_last_n_present_in_order():
    rng = np.random.default_rng(3)
    history = rng.choice(["a", "b", "c", "", ""], size=(20, 7))
    for length in (1, 3, 9):
        got = recent_items(tf.constant(history), length).numpy().astype(str)
        for row, values in enumerate(history):
            kept = [v for v in values if v][-length:]
            assert got[row].tolist() == kept + [""] * (length - len(kept))


def test_is_member_against_numpy():
    rng = np.random.default_rng(4)
    values = rng.integers(-1, 30, size=(6, 9))
    sets = rng.integers(-1, 30, size=(6, 5))
    got = is_member(tf.constant(values), tf.constant(sets)).numpy()
    expected = np.stack([np.isin(v, s[s >= 0]) & (v >= 0) for v, s in zip(values, sets, strict=True)])
    np.testing.assert_array_equal(got & (values >= 0), expected)
    empty = is_member(tf.constant(values), tf.zeros((6, 0), tf.int64)).numpy()
    assert not empty.any()


def test_the_docs_show_the_feature_contract():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    table = contract.markdown_table(contract.EXAMPLE_FEATURES)
    for doc in ("docs/architecture.md", "README.md"):
        assert table in (root / doc).read_text(), f"{doc}: regenerate the feature table"
    # The example is the shipped config's inputs.
    config = config_from_dict(__import__("tomllib").loads(
        (root / "training/configs/movielens-features.toml").read_text()))
    m = config.model
    user = [n for n, f in m.user_features.items() if f.type not in ("id", "history")]
    item = [n for n, f in m.item_features.items() if f.type != "id"]
    assert [s.name for s in contract.EXAMPLE_FEATURES.user] == user
    assert [s.name for s in contract.EXAMPLE_FEATURES.item] == item
    assert [s.name for s in contract.EXAMPLE_FEATURES.context] == list(m.query_context)
    assert contract.EXAMPLE_FEATURES.history_length == m.user_features["history"].length


def test_exact_plans_answer_numpys_top_k_less_the_seen_items_without_rescoring(built):
    """At this catalog size both indexes are exact: ``serving_default`` is numpy's exact
    top-K of the stored user's query less its training items, straight from the search
    (no rescoring Einsum, no second TopKV2)."""
    export, tables, _, functions = built
    serving = functions[contract.SERVING_DEFAULT.name]
    ops = serving.graph.get_operations()
    assert not [op for op in ops if op.type == "Einsum"]
    # Brute force's own TopKV2 (ScaNN searches without one); tf.sort of the exclusion
    # sets (is_member) is the other, never one over the candidates.
    top_ks = [op.name for op in ops if op.type == "TopKV2" and not op.name.startswith("sort")]
    assert len(top_ks) <= 1, top_ks
    users = np.array(export.users)
    queries = functions[contract.EMBED_USERS.name](user_id=tf.constant(users))["embeddings"]
    scores = queries.numpy() @ tables.compared(tables.item_vectors[1:]).T
    out = serving(user_id=tf.constant(users))
    got_ids, got_scores = out["item_ids"].numpy().astype(str), out["scores"].numpy()
    for row in range(len(users)):
        row_scores = scores[row].copy()
        row_scores[list(export.seen_of(row))] = -np.inf
        best = np.argsort(-row_scores, kind="stable")[:K]
        assert got_ids[row].tolist() == [export.items[i] for i in best]
        np.testing.assert_allclose(got_scores[row], np.clip(row_scores[best], -1, 1), atol=1e-5)
