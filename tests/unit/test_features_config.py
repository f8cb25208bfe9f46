"""The feature spec of the config (one-line errors, TOML round trip) and the statistics
a training-data pass measures for the encoders (against numpy and Keras)."""

import tomllib

import numpy as np
import pytest
import tensorflow as tf

from training.config import config_from_dict, load_config
from training.errors import InputError
from training.feature_spec import FeatureConfig, tower_features
from training.feature_statistics import (
    StatisticsAccumulator,
    equal_width_boundaries,
    required_statistics,
    split_values,
    tokenize,
)

FEATURES = """
[model]
tower_layers = [32]
[model.user_features.user_id]
type = "id"
[model.user_features.age]
type = "numeric"
buckets = [18, 25, 35, 45, 50, 56]
embedding_dim = 8
[model.user_features.occupation]
type = "categorical"
[model.user_features.zip_code]
type = "categorical"
num_bins = 1000
column = "zip"
[model.user_features.history]
type = "history"
length = 20
pooling = "gru"
[model.item_features.item_id]
type = "id"
[model.item_features.genres]
type = "multi_categorical"
[model.item_features.title]
type = "text"
max_tokens = 5000
[model.query_context.timestamp]
type = "timestamp"
num_buckets = 1000
"""


def _tables(**tables):
    return {"model": {"tower_layers": [8], **tables}}


def test_a_feature_config_parses_and_round_trips_through_toml(tmp_path):
    path = tmp_path / "features.toml"
    path.write_text(FEATURES)
    config = load_config(path)
    m = config.model
    assert m.user_features["age"] == FeatureConfig(
        "numeric", buckets=[18.0, 25.0, 35.0, 45.0, 50.0, 56.0], embedding_dim=8
    )
    assert m.user_features["history"].pooling == "gru" and m.user_features["history"].length == 20
    assert list(tower_features(m, "user")) == [
        "user_id", "age", "occupation", "zip_code", "history", "timestamp"
    ]
    assert config_from_dict(tomllib.loads(config.to_toml())) == config
    written = config.to_dict()["model"]["user_features"]
    assert written["zip_code"] == {"type": "categorical", "column": "zip", "num_bins": 1000}


def test_an_id_only_config_writes_no_feature_keys():
    assert "features" not in load_config(None).to_toml()
    assert "query_context" not in load_config(None).to_toml()


def test_empty_tables_stand_for_the_id_features():
    config = config_from_dict(_tables(query_context={"hour": {"type": "numeric"}}))
    assert list(tower_features(config.model, "user")) == ["user_id", "hour"]
    assert list(tower_features(config.model, "item")) == ["item_id"]


@pytest.mark.parametrize(
    "tables, message",
    [
        ({"user_features": {"age": {"type": "real"}}},
         "unknown feature type model.user_features.age.type = 'real'; valid: id, categorical"),
        ({"user_features": {"age": {"buckets": [1]}}},
         "model.user_features.age needs a type; valid types: id"),
        ({"user_features": {"age": {"type": "numeric", "pooling": "mean"}}},
         "unknown key model.user_features.age.pooling for type 'numeric'; valid keys: type, "
         "column"),
        ({"user_features": {"recent": {"type": "history"}},
          "item_features": {"genres": {"type": "multi_categorical"}}},
         "a history feature embeds with the item tower's id table: add "
         "[model.item_features.item_id]"),
        ({"item_features": {"recent": {"type": "history"}}},
         "model.item_features.recent: type 'history' is not allowed in [model.item_features]"),
        ({"user_features": {"timestamp": {"type": "timestamp", "num_buckets": 10}}},
         "type 'timestamp' is not allowed in [model.user_features]"),
        ({"query_context": {"timestamp": {"type": "timestamp"}}},
         "model.query_context.timestamp: a timestamp needs buckets or num_buckets"),
        ({"user_features": {"uid": {"type": "id"}}},
         "model.user_features.uid: the id feature of [model.user_features] is named user_id"),
        ({"user_features": {"item_id": {"type": "categorical"}}},
         "model.user_features.item_id: 'item_id' names the id of another table"),
        ({"user_features": {"genre": {"type": "categorical"}},
          "item_features": {"genre": {"type": "categorical"}}},
         "model.item_features.genre: the name 'genre' is also a feature of [model.user_features]"),
        ({"user_features": {"weight": {"type": "numeric"}}},
         "model.user_features.weight: 'weight' is reserved"),
        ({"user_features": {"2nd": {"type": "numeric"}}},
         "model.user_features.2nd: a feature name is a letter then letters, digits or _"),
        ({"user_features": {"age": {"type": "numeric", "buckets": [30, 20]}}},
         "model.user_features.age.buckets must be finite and strictly increasing"),
        ({"user_features": {"age": {"type": "numeric", "buckets": [1], "num_buckets": 3}}},
         "model.user_features.age: give buckets or num_buckets, not both"),
        ({"user_features": {"age": {"type": "numeric", "embedding_dim": 4}}},
         "model.user_features.age.embedding_dim needs buckets or num_buckets"),
        ({"user_features": {"recent": {"type": "history", "pooling": "max"}}},
         "unknown model.user_features.recent.pooling 'max'; valid: mean, gru, attention"),
        ({"user_features": {"recent": {"type": "history", "length": "20"}}},
         "config key model.user_features.recent.length must be int, got '20'"),
        ({"user_features": {"recent": {"type": "history", "length": 0}}},
         "model.user_features.recent.length must be >= 1"),
        ({"user_features": {"age": {"type": "numeric", "buckets": ["a"]}}},
         "config key model.user_features.age.buckets must be a list of numbers"),
        ({"user_features": {"age": "numeric"}},
         "model.user_features.age must be a table with a type"),
        ({"user_features": ["age"]}, "model.user_features must be a table of features"),
        ({"user_features": {"a": {"type": "history"}, "b": {"type": "history"}}},
         "[model.user_features] has 2 history features; keep one"),
    ],
)
def test_bad_feature_specs_get_one_line_naming_the_key(tables, message):
    with pytest.raises(InputError) as error:
        config_from_dict(_tables(**tables))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_widths_must_match_when_the_towers_have_no_layers():
    tables = {"user_features": {"user_id": {"type": "id"}, "age": {"type": "numeric"}}}
    with pytest.raises(InputError, match="got 33 and 32 .with no tower layers, a feature "
                                         "tower's width is the sum of its features' widths"):
        config_from_dict({"model": tables})
    config_from_dict({"model": {"item_tower_layers": [33], **tables}})  # fine: both end at 33


def test_required_statistics_per_type():
    assert required_statistics(FeatureConfig("categorical")) == ("vocabulary",)
    assert required_statistics(FeatureConfig("categorical", num_bins=10)) == ()
    assert required_statistics(FeatureConfig("numeric")) == ("mean", "variance")
    assert required_statistics(FeatureConfig("timestamp", num_buckets=3)) == (
        "mean", "variance", "boundaries")
    assert required_statistics(FeatureConfig("history")) == ()


def test_numeric_statistics_over_chunks_and_shards_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(8.8e8, 5e6, size=1000).round()  # timestamp-sized values
    feature = FeatureConfig("timestamp", num_buckets=10)
    whole = StatisticsAccumulator("t", feature).update(x).result()
    first = StatisticsAccumulator("t", feature)
    for chunk in np.array_split(x[:600], 7):
        first.update(chunk)
    second = StatisticsAccumulator("t", feature).update(x[600:])
    merged = first.merge(second).result()
    for got in (whole, merged):
        assert got.count == 1000
        assert got.mean == pytest.approx(x.mean(), rel=1e-12)
        assert got.variance == pytest.approx(x.var(), rel=1e-9)
        np.testing.assert_allclose(got.boundaries, np.linspace(x.min(), x.max(), 11)[1:-1])
    explicit = FeatureConfig("numeric", buckets=[1.0, 2.0])
    assert StatisticsAccumulator("a", explicit).update([0, 3]).result().boundaries == [1.0, 2.0]
    with pytest.raises(InputError, match="feature 'a' has NaN values"):
        StatisticsAccumulator("a", explicit).update([1.0, np.nan])
    assert equal_width_boundaries(5.0, 5.0, 10) == []


def test_vocabularies_of_categories_lists_and_texts():
    categorical = StatisticsAccumulator("g", FeatureConfig("categorical"))
    assert categorical.update(["M", "F", "M", "X"]).result().vocabulary == ["F", "M", "X"]
    multi = StatisticsAccumulator("genres", FeatureConfig("multi_categorical", separator="|"))
    result = multi.update(["Drama|Comedy", "", ["Action", "Drama"], "Comedy||War"]).result()
    assert result.vocabulary == ["Action", "Comedy", "Drama", "War"]
    assert split_values("a||b", "|") == ["a", "b"] and split_values([], "|") == []
    text = StatisticsAccumulator("title", FeatureConfig("text", max_tokens=3))
    titles = ["The Matrix", "the Godfather", "Matrix, The (1999)", "Zorro"]
    assert text.update(titles).result().vocabulary == ["the", "matrix", "1999"]
    with pytest.raises(InputError, match="feature 'g' has no training values"):
        StatisticsAccumulator("g", FeatureConfig("categorical")).result()


def test_tokenize_is_what_text_vectorization_sees():
    texts = ["The Matrix (1999)", "Schindler's List", "  ", "Ünïcode CAFÉ\tend",
             "a-b_c.d!e?f", "x\u00a0y z"]
    expected = [["the", "matrix", "1999"], ["schindlers", "list"], [], ["Ünïcode", "cafÉ", "end"],
                ["abcdef"], ["x\u00a0y", "z"]]
    assert [tokenize(t) for t in texts] == expected
    vocabulary = sorted({token for tokens in expected for token in tokens})
    layer = tf.keras.layers.TextVectorization(vocabulary=vocabulary)
    rows = layer(tf.constant(texts)).numpy()
    words = np.array(layer.get_vocabulary(), dtype=object)
    assert [[w for w in words[r] if w != ""] for r in rows] == expected
