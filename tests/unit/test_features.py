"""Feature encoders and FeatureTower against numpy: every preprocessing path, shapes, configs,
the shared history table, and a SavedModel taking raw values."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_cosine import (
    CategoricalEncoder,
    FeatureTower,
    HistoryEncoder,
    IdEncoder,
    MultiCategoricalEncoder,
    NumericEncoder,
    TextEncoder,
    TimestampEncoder,
)
from tfrs_cosine.features import masked_mean, placeholder_features
from training.feature_statistics import equal_width_boundaries

ITEMS = ["i1", "i2", "i3", "i4"]


def table(layer) -> np.ndarray:
    return layer.embedding.embeddings.numpy().astype(np.float64)


def test_numeric_is_standardized_in_float64_and_bucketized_like_digitize():
    x = np.array([-3.0, 17.9, 18.0, 24.5, 60.0, 1e6])
    boundaries = [18.0, 25.0, 35.0]
    encoder = NumericEncoder(mean=30.0, variance=144.0, boundaries=boundaries, embedding_dim=3)
    out = encoder(tf.constant(x, tf.float32)).numpy()
    assert out.shape == (6, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 3], (x - 30.0) / 12.0, rtol=1e-6)
    buckets = np.digitize(x, boundaries)  # boundaries[i-1] <= x < boundaries[i]
    assert buckets.tolist() == [0, 0, 1, 1, 3, 3]
    np.testing.assert_allclose(out[:, :3], table(encoder)[buckets], rtol=1e-6)
    plain = NumericEncoder(mean=30.0, variance=0.0)  # a constant feature divides by 1
    np.testing.assert_allclose(plain(tf.constant([31, 29])).numpy(), [[1.0], [-1.0]])


def test_timestamps_keep_second_precision_and_use_equal_width_buckets():
    t = np.array([880_000_000, 880_000_001, 885_000_000, 893_286_638], np.int64)
    low, high = 874_724_710, 893_286_638  # MovieLens 100K's range
    boundaries = equal_width_boundaries(low, high, 1000)
    assert len(boundaries) == 999
    mean, variance = 883_000_000.5, 3.1e13
    encoder = TimestampEncoder(mean, variance, boundaries, embedding_dim=2)
    out = encoder(tf.constant(t)).numpy()
    np.testing.assert_allclose(out[:, 2], (t - mean) / np.sqrt(variance), rtol=1e-6)
    # One second apart is a distinct value after standardization (float32 input would
    # round both to the same 64-second step).
    assert out[1, 2] > out[0, 2]
    np.testing.assert_array_equal(encoder.bucketize(tf.constant(t)).numpy(),
                                  np.digitize(t, boundaries))
    assert encoder.feature_spec == tf.TensorSpec([None], tf.int64)


def test_categorical_vocabulary_embeds_unknown_values_as_zeros():
    encoder = CategoricalEncoder(4, vocabulary=["F", "M"])
    out = encoder(tf.constant(["M", "F", "X", ""])).numpy()
    t = table(encoder)  # row 0 is the unused out-of-vocabulary row, then the vocabulary
    np.testing.assert_allclose(out, np.stack([t[2], t[1], np.zeros(4), np.zeros(4)]), rtol=1e-6)
    assert np.abs(t[0]).max() > 0  # the zeros are a mask, not that row


def test_hashed_categorical_uses_to_hash_bucket_fast_bins():
    values = tf.constant([f"zip{k}" for k in range(50)])
    encoder = CategoricalEncoder(3, num_bins=7)
    bins = tf.strings.to_hash_bucket_fast(values, 7).numpy()
    assert 0 <= bins.min() and bins.max() < 7 and len(set(bins.tolist())) > 3
    np.testing.assert_allclose(encoder(values).numpy(), table(encoder)[bins], rtol=1e-6)
    assert table(encoder).shape == (7, 3)


def test_multi_categorical_is_a_masked_mean_and_empty_lists_are_zeros():
    encoder = MultiCategoricalEncoder(3, vocabulary=["Action", "Comedy", "Drama"])
    padded = tf.constant([["Action", "Drama", ""], ["Comedy", "", ""], ["", "", ""],
                          ["Horror", "Comedy", ""]])
    out = encoder(padded).numpy()
    t = table(encoder)
    expected = np.stack([(t[1] + t[3]) / 2, t[2], np.zeros(3), t[2]])  # Horror: unknown
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    ragged = tf.ragged.constant([["Action", "Drama"], ["Comedy"], [], ["Horror", "Comedy"]])
    np.testing.assert_allclose(encoder(ragged).numpy(), out, rtol=1e-6)
    hashed = MultiCategoricalEncoder(2, num_bins=5)
    bins = tf.strings.to_hash_bucket_fast(["Action", "Drama"], 5).numpy()
    np.testing.assert_allclose(hashed(padded[:1]).numpy()[0], table(hashed)[bins].mean(0),
                               rtol=1e-6)


def test_text_is_the_mean_of_its_token_embeddings():
    vocabulary = ["the", "matrix", "1999", "list"]
    encoder = TextEncoder(vocabulary, 3)
    texts = ["The Matrix (1999)", "Schindler's List", "", "MATRIX matrix unknown"]
    out = encoder(tf.constant(texts)).numpy()
    t = table(encoder)  # row 0 padding, 1 unknown, then the vocabulary
    row = {w: k + 2 for k, w in enumerate(vocabulary)}
    tokens = [["the", "matrix", "1999"], ["schindlers", "list"], [],
              ["matrix", "matrix", "unknown"]]
    known = [[row[w] for w in ws if w in row] for ws in tokens]  # unknown tokens are skipped
    expected = [t[rows].mean(0) if rows else np.zeros(3) for rows in known]
    np.testing.assert_allclose(out, np.stack(expected), rtol=1e-6, atol=1e-7)


def test_masked_mean_matches_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 4, 2))
    mask = np.array([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    got = masked_mean(tf.constant(values), tf.constant(mask)).numpy()
    expected = [values[r][mask[r]].mean(0) if mask[r].any() else np.zeros(2) for r in range(3)]
    np.testing.assert_allclose(got, np.stack(expected))


def _history(pooling="mean"):
    items = IdEncoder(ITEMS, 4, name="item_id")
    return items, HistoryEncoder(items, length=3, pooling=pooling)


def test_history_mean_uses_the_item_table_and_skips_padding_and_unknown_items():
    items, history = _history()
    batch = tf.constant([["i2", "i4", ""], ["i1", "new", ""], ["", "", ""]])
    out = history(batch).numpy()
    t = table(items)  # row 0 unknown, then ITEMS
    np.testing.assert_allclose(out, np.stack([(t[2] + t[4]) / 2, t[1], np.zeros(4)]), rtol=1e-6)
    assert history.item_ids.embedding.embeddings is items.embedding.embeddings


def test_a_gradient_through_the_history_reaches_only_its_item_rows():
    items, history = _history()
    items(tf.constant(["i1"]))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(history(tf.constant([["i2", "i3", ""]])))
    (grad,) = tape.gradient(loss, [items.embedding.embeddings])
    dense = tf.convert_to_tensor(grad).numpy()
    assert np.abs(dense[[2, 3]]).min() > 0  # the history's items i2, i3
    assert np.abs(dense[[0, 1, 4]]).max() == 0  # unknown row, i1, i4


@pytest.mark.parametrize("pooling", ["gru", "attention"])
def test_pooled_histories_ignore_padding_and_are_zero_when_empty(pooling):
    _, history = _history(pooling)
    padded = history(tf.constant([["i2", "i4", ""], ["", "", ""], ["i2", "i4", "gone"]]))
    short = history(tf.constant([["i2", "i4"]]))
    np.testing.assert_allclose(padded.numpy()[0], short.numpy()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(padded.numpy()[2], short.numpy()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(padded.numpy()[1], np.zeros(4))


def test_attention_pooling_is_a_softmax_weighted_mean():
    items, history = _history("attention")
    out = history(tf.constant([["i1", "i3", ""]])).numpy()[0]
    e = table(items)[[1, 3]]
    scores = e @ history.attention_score.kernel.numpy()[:, 0]
    weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(out, weights @ e, rtol=1e-5)


def _all_encoders():
    items = IdEncoder(ITEMS, 4, name="item_id")
    return {
        "user_id": IdEncoder(["u1", "u2"], 4),
        "gender": CategoricalEncoder(2, vocabulary=["F", "M"]),
        "zip_code": CategoricalEncoder(2, num_bins=5),
        "genres": MultiCategoricalEncoder(2, vocabulary=["a", "b"]),
        "age": NumericEncoder(30.0, 100.0, [20.0, 40.0], 2),
        "income": NumericEncoder(1.0, 2.0),
        "timestamp": TimestampEncoder(8.8e8, 1e14, [8.7e8, 8.9e8], 2),
        "bio": TextEncoder(["hello", "world"], 3),
        "history": HistoryEncoder(items, 3, "gru"),
    }, items


def test_shapes_and_dtypes_with_batch_one_and_batch_zero():
    encoders, _ = _all_encoders()
    tower = FeatureTower(encoders, hidden_layers=[6], layer_norm=True)
    assert tower.output_dim == 6 and tower.input_names == list(encoders)
    for batch in (1, 0):
        features = placeholder_features(tower.feature_spec, batch)
        for name, encoder in encoders.items():
            out = encoder(features[name])
            assert out.shape == (batch, encoder.output_dim) and out.dtype == tf.float32, name
        assert tower(features).shape == (batch, 6)
    no_layers = FeatureTower(encoders)
    widths = 4 + 2 + 2 + 2 + 3 + 1 + 3 + 3 + 4
    assert no_layers.output_dim == widths
    assert no_layers(placeholder_features(tower.feature_spec, 2)).shape == (2, widths)


def test_the_tower_concatenates_its_encoders_in_order_then_applies_the_stack():
    encoders, _ = _all_encoders()
    tower = FeatureTower(encoders, hidden_layers=[5, 3])
    features = placeholder_features(tower.feature_spec, 2)
    features.update(user_id=tf.constant(["u1", "zz"]), age=tf.constant([25.0, 70.0]),
                    history=tf.constant([["i1", "", ""], ["i3", "i2", ""]]))
    got = tower(features).numpy()
    x = np.concatenate([encoders[n](features[n]).numpy() for n in encoders], axis=1)
    k0, b0 = (w.numpy() for w in tower.dense[0].weights)
    k1, b1 = (w.numpy() for w in tower.dense[1].weights)
    expected = np.maximum(x @ k0 + b0, 0) @ k1 + b1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert tower.known(features).numpy().tolist() == [True, False]
    np.testing.assert_array_equal(x[1, :4], np.zeros(4))  # a new user: features only
    assert tower.id_feature == "user_id"


def test_numeric_inputs_are_not_cast_to_float16_under_mixed_precision():
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tower = FeatureTower({"year": NumericEncoder(2049.0, 1.0),
                              "user_id": IdEncoder(["u"], 3)}, hidden_layers=[2])
        out = tower({"year": tf.constant([2049.5]), "user_id": tf.constant(["u"])})
        z = tower.encoders["year"](tf.constant([2049.5]))
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    assert out.dtype == tf.float16
    assert float(z[0, 0]) == 0.5  # 2049.5 in float16 would be 2050 -> 1.0


def test_configs_round_trip():
    encoders, _ = _all_encoders()
    for encoder in encoders.values():
        config = encoder.get_config()
        assert type(encoder).from_config(config).get_config() == config
    tower = FeatureTower(encoders, hidden_layers=[4], layer_norm=True, name="user_tower")
    config = tower.get_config()
    rebuilt = FeatureTower.from_config(config)
    assert rebuilt.get_config() == config
    features = placeholder_features(tower.feature_spec, 2)
    assert rebuilt(features).shape == tower(features).shape == (2, 4)


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(ValueError, match="exactly one of vocabulary and num_bins"):
        CategoricalEncoder(2)
    with pytest.raises(ValueError, match='holds ""'):
        IdEncoder(["a", ""], 2)
    with pytest.raises(ValueError, match="strictly increasing"):
        NumericEncoder(0.0, 1.0, [2.0, 1.0], 2)
    with pytest.raises(ValueError, match="need an embedding_dim"):
        NumericEncoder(0.0, 1.0, [1.0])
    with pytest.raises(ValueError, match="unknown pooling"):
        HistoryEncoder(IdEncoder(["a"], 2), 3, "max")
    with pytest.raises(ValueError, match="at least one feature"):
        FeatureTower({})


def test_a_saved_feature_tower_takes_raw_values(tmp_path):
    encoders, items = _all_encoders()
    encoders["history"] = HistoryEncoder(items, 3, "mean")  # the default; a GRU saves slower
    tower = FeatureTower(encoders, hidden_layers=[4], layer_norm=True)
    module = tf.Module()
    module.tower = tower
    spec = tower.feature_spec
    signature = tf.function(lambda **f: {"embeddings": tower(f)}).get_concrete_function(**spec)
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": signature})
    raw = {
        "user_id": tf.constant(["u2", "nobody"]),
        "gender": tf.constant(["F", "?"]),
        "zip_code": tf.constant(["10001", "94110"]),
        "genres": tf.constant([["a", "b"], ["", ""]]),
        "age": tf.constant([33.0, 71.0]),
        "income": tf.constant([0.5, 3.0]),
        "timestamp": tf.constant([880_000_000, 890_000_000], tf.int64),
        "bio": tf.constant(["Hello there, World!", ""]),
        "history": tf.constant([["i1", "i4", ""], ["", "", ""]]),
    }
    loaded = tf.saved_model.load(str(tmp_path))
    got = loaded.signatures["serving_default"](**raw)["embeddings"].numpy()
    np.testing.assert_allclose(got, tower(raw).numpy(), rtol=1e-6)
    inputs = loaded.signatures["serving_default"].structured_input_signature[1]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in inputs.items()} == {
        k: (v.dtype, v.shape.as_list()) for k, v in spec.items()
    }
