"""The data side of feature models: side tables joined by id, statistics on the training
split only, the run directory's features/, the streaming pipeline's feature batches and
the bad inputs (one line each)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from feature_tables import UNSEEN_ITEMS, feature_config, write_feature_data

from training import feature_store
from training.config import config_from_dict
from training.data import load_data
from training.errors import InputError
from training.feature_data import prepare_features, prepare_streaming_features
from training.side_tables import read_side_table
from training.splits import split_data
from training.streaming import make_training_input, prepare_streaming


def _quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    paths = write_feature_data(tmp_path_factory.mktemp("features"))
    config = config_from_dict(feature_config(paths))
    data = load_data(config.data)
    split = split_data(data.interactions, config.data)
    return paths, config, data, split, prepare_features(config, data, split, log=_quiet)


def test_side_tables_join_and_statistics_see_the_training_split_only(prepared):
    paths, config, data, split, features = prepared
    # The item table's items nobody interacted with are part of the catalog.
    assert len(data.items) == 40 + UNSEEN_ITEMS and "i44" in data.items
    users = pd.read_csv(paths["users"], dtype=str)
    trained = sorted(set(split.train.user_id))
    ages = users.set_index("user_id").loc[trained, "age"].astype(float)
    stats = features.statistics
    assert stats["age"].mean == pytest.approx(ages.mean())
    assert stats["age"].variance == pytest.approx(ages.var(ddof=0))
    assert stats["gender"].vocabulary == ["F", "M"]
    assert stats["user_id"].vocabulary == trained
    assert stats["item_id"].vocabulary == sorted(set(split.train.item_id))
    assert "i44" not in stats["item_id"].vocabulary  # never trained: served by its features
    assert set(stats["genres"].vocabulary) <= {"a", "b", "c", "d", "all"}
    assert stats["timestamp"].mean == pytest.approx(split.train.timestamp.mean())
    # The join: each id's row, defaults for an id without one.
    looked = features.stored.items.lookup(np.array(["i44", "nope"]))
    assert looked["genres"].tolist() == [["a", "all"], ["", ""]]
    assert looked["title"].tolist() == ["film a number 44", ""]
    batch = features.join({"user_id": tf.constant(["u3", "ghost"]),
                           "item_id": tf.constant(["i1", "i44"]),
                           "timestamp": tf.constant([1000, 1000], tf.int64)})
    np.testing.assert_allclose(batch["age"].numpy(), [33.0, stats["age"].mean], rtol=1e-6)
    assert batch["gender"].numpy().astype(str).tolist() == ["F", ""]


def test_a_value_seen_only_outside_training_stays_unknown_and_missing_numbers_are_the_mean(tmp_path):
    paths = write_feature_data(tmp_path)
    users = pd.read_csv(paths["users"], dtype=str)
    users.loc[users.user_id == "u5", "gender"] = "X"  # u5 will be a test-only user
    users.loc[users.user_id == "u6", "age"] = ""
    users.to_csv(paths["users"], index=False)
    inter = pd.read_csv(paths["inter"], dtype=str)
    inter = pd.concat([inter[inter.user_id != "u5"], inter[inter.user_id == "u5"].head(1)])
    inter.to_csv(paths["inter"], index=False)  # u5: one interaction, kept for training
    config = config_from_dict(feature_config(paths, **{}) | {
        "data": {**feature_config(paths)["data"], "split": "hash-user", "test_fraction": 0.3}})
    data = load_data(config.data)
    split = split_data(data.interactions, config.data)
    features = prepare_features(config, data, split, log=_quiet)
    in_training = "u5" in set(split.train.user_id)
    assert ("X" in features.statistics["gender"].vocabulary) == in_training
    row = features.stored.users.lookup(np.array(["u6"]))
    assert row["age"][0] == pytest.approx(features.statistics["age"].mean)
    held_out = sorted(set(split.test.user_id) - set(split.train.user_id))
    assert held_out and not set(held_out) & set(features.statistics["user_id"].vocabulary)


def test_side_tables_in_every_format(tmp_path):
    frame = pd.DataFrame({"item_id": ["a", "b"], "genres": ["x|y", "z"], "year": [1990.0, None]})
    frame.to_parquet(tmp_path / "items.parquet")
    (tmp_path / "shards").mkdir()
    frame.iloc[:1].to_csv(tmp_path / "shards" / "part-0.tsv", sep="\t", index=False)
    frame.iloc[1:].to_csv(tmp_path / "shards" / "part-1.tsv", sep="\t", index=False)
    for path in (tmp_path / "items.parquet", tmp_path / "shards"):
        table = read_side_table(str(path), "item_id", "item table")
        assert table.ids.tolist() == ["a", "b"]
        assert table.rows(np.array(["b", "zz", "a"])).tolist() == [1, -1, 0]
        assert [str(v) for v in table.columns["genres"]] == ["x|y", "z"]


def test_the_run_directory_features_round_trip(prepared, tmp_path):
    *_, features = prepared
    feature_store.write(tmp_path, features.stored)
    back = feature_store.read(tmp_path)
    stored = features.stored
    assert back.statistics == stored.statistics
    for side in ("users", "items"):
        a, b = getattr(stored, side), getattr(back, side)
        np.testing.assert_array_equal(a.ids, b.ids)
        assert a.defaults == b.defaults
        for name in a.values:
            np.testing.assert_array_equal(a.values[name], b.values[name])
    for name in ("history", "seen_indptr", "seen_items"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(back, name))
    assert (back.history_feature, back.history_length, back.serving_timestamp) == (
        "history", 4, stored.serving_timestamp)


def test_tables_first_used_inside_a_dataset_map_still_serve_the_evaluator(prepared):
    # A fit without validation first touches the lookups in the training pipeline's
    # Dataset.map; the final evaluation then uses them eagerly.
    paths, config, data, split, _ = prepared
    features = prepare_features(config, data, split, log=_quiet)
    train = split.train
    batch = {"user_id": train.user_id[:4], "item_id": train.item_id[:4],
             **features.batch_columns(train.subset(np.arange(4)))}
    joined = next(iter(tf.data.Dataset.from_tensors(batch).map(features.join)))
    eager = features.join({k: tf.constant(v) for k, v in batch.items()})
    for name, value in eager.items():
        np.testing.assert_array_equal(joined[name].numpy(), value.numpy())
    query = features.query_inputs("test")(train.user_id[:4])
    np.testing.assert_array_equal(query["user_id"].numpy().astype(str), train.user_id[:4])


def test_streaming_batches_carry_the_same_features_as_the_in_memory_join(tmp_path):
    paths = write_feature_data(tmp_path)
    raw = feature_config(paths)
    raw["data"] = {**raw["data"], "split": "hash-interaction", "test_fraction": 0.2}
    config = config_from_dict(raw)
    streaming = prepare_streaming(config, log=_quiet)
    features = prepare_streaming_features(config, streaming, log=_quiet)
    memory_data = load_data(config.data)
    memory = prepare_features(config, memory_data, split_data(memory_data.interactions,
                                                              config.data), log=_quiet)
    assert features.statistics == memory.statistics
    np.testing.assert_array_equal(features.sequences.indptr, memory.sequences.indptr)
    np.testing.assert_array_equal(features.sequences.times, memory.sequences.times)
    pipeline = make_training_input(streaming, dataclasses.replace(
        config, training=dataclasses.replace(config.training, batch_size=50)), features=features)
    batch = next(iter(pipeline.epoch(0)))
    assert {"age", "gender", "history", "genres", "title", "timestamp"} <= set(batch)
    again = memory.join({k: batch[k] for k in ("user_id", "item_id", "timestamp")})
    for name in ("history", "genres", "gender", "age"):
        np.testing.assert_array_equal(batch[name].numpy(), again[name].numpy())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"user_features": {"user_id": {"type": "id"}, "height": {"type": "numeric"}}},
         "user table {users} has no column 'height' for feature 'height'"),
        ({"user_features": {"user_id": {"type": "id"}, "gender": {"type": "numeric"}}},
         "feature 'gender' is numeric but user table {users} column 'gender' has 'M' at row 1"),
        ({"user_features": {"user_id": {"type": "id"},
                            "recent": {"type": "history", "column": "movie"}}},
         "model.user_features.recent.column = 'movie': a history is the user's earlier item "
         "ids, read from the interactions' item column 'item_id'"),
    ],
)
def test_bad_feature_data_is_one_line(tmp_path, change, message):
    paths = write_feature_data(tmp_path)
    raw = feature_config(paths, **change)
    raw["model"]["user_features"] = change["user_features"]  # replace, not merge
    raw["model"]["tower_layers"] = [8]
    config = config_from_dict(raw)
    data = load_data(config.data)
    split = split_data(data.interactions, config.data)
    with pytest.raises(InputError) as error:
        prepare_features(config, data, split, log=_quiet)
    assert message.format(users=paths["users"]) in str(error.value)
    assert "\n" not in str(error.value)


def test_an_unknown_feature_type_and_a_missing_table_are_one_line(tmp_path):
    paths = write_feature_data(tmp_path)
    raw = feature_config(paths)
    raw["model"]["user_features"]["age"] = {"type": "ordinal"}
    with pytest.raises(InputError, match="unknown feature type model.user_features.age.type"):
        config_from_dict(raw)
    raw = feature_config(paths)
    raw["data"]["user_features"] = ""
    config = config_from_dict(raw)
    data = load_data(config.data)
    with pytest.raises(InputError, match="feature 'age' of \\[model.user_features\\] is read "
                                         "from a user table: set data.user_features"):
        prepare_features(config, data, split_data(data.interactions, config.data), log=_quiet)


def test_a_feature_model_trains_from_the_streaming_input(tmp_path):
    from training.job_input import StreamingInput, prepare_input
    from training.train import fit_input

    paths = write_feature_data(tmp_path)
    raw = feature_config(paths)
    raw["data"] = {**raw["data"], "split": "hash-interaction", "test_fraction": 0.2,
                   "validation_fraction": 0.1}
    raw["training"] = {**raw["training"], "epochs": 1}
    config = config_from_dict(raw)
    source = prepare_input(config, log=_quiet)
    assert isinstance(source, StreamingInput) and source.features is not None
    # The catalog: the interactions' items, then the item table's items nobody rated.
    assert len(source.items) == len(source.data.items) + UNSEEN_ITEMS
    assert all(s.items is source.items or (s.items == source.items).all()
               for s in source.sets.values())
    result = fit_input(config, source)
    assert result.features is source.features and result.epochs == 1
    metrics = source.evaluate(result.model, log=_quiet)
    assert set(metrics) == {"validation", "test"}
    for values in metrics.values():
        assert all(np.isfinite(v) for v in values.values())
        assert values["recall@10"] > 0
