import numpy as np
import pytest
import tensorflow as tf

from tfrs_cosine import CosineHead, DotHead, IdTower, make_head


def _cos(a, b):
    return (a @ b.T) / (np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :])


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)


def test_dot_head_equals_matmul(vectors):
    q, c = vectors
    np.testing.assert_allclose(DotHead()(q, c).numpy(), q @ c.T, rtol=1e-5, atol=1e-5)


def test_cosine_head_matches_numpy_and_is_bounded(vectors):
    q, c = vectors
    got = CosineHead()(q * 100.0, c * 0.01).numpy()
    np.testing.assert_allclose(got, _cos(q, c), rtol=1e-5, atol=1e-6)
    assert got.min() >= -1.0 - 1e-6 and got.max() <= 1.0 + 1e-6


def test_cosine_of_zero_vector_is_zero_not_nan(vectors):
    _, c = vectors
    got = CosineHead()(np.zeros((2, 8), np.float32), c).numpy()
    assert np.all(np.isfinite(got)) and np.all(got == 0.0)
    with tf.GradientTape() as tape:
        zero = tf.Variable(tf.zeros((1, 8)))
        score = tf.reduce_sum(CosineHead()(zero, c))
    assert np.all(np.isfinite(tape.gradient(score, zero).numpy()))


@pytest.mark.parametrize("head_cls", [DotHead, CosineHead])
def test_temperature_divides_scores(head_cls, vectors):
    q, c = vectors
    plain = head_cls()(q, c).numpy()
    np.testing.assert_allclose(head_cls(temperature=0.25)(q, c).numpy(), plain / 0.25, rtol=1e-5)


@pytest.mark.parametrize("head_cls", [DotHead, CosineHead])
def test_batched_list_shape_matches_pairwise(head_cls, vectors):
    q, _ = vectors
    items = np.random.default_rng(1).normal(size=(4, 5, 8)).astype(np.float32)
    head = head_cls(temperature=0.5)
    got = head(q[:, None, :], items).numpy()
    assert got.shape == (4, 5)
    for b in range(4):
        np.testing.assert_allclose(got[b], head(q[b : b + 1], items[b]).numpy()[0], rtol=1e-5)


@pytest.mark.parametrize("kind", ["dot", "cosine"])
def test_prepared_sides_reproduce_the_score(kind, vectors):
    q, c = vectors
    head = make_head(kind, temperature=0.3)
    via_sides = head.prepare_query(q).numpy() @ head.prepare_candidate(c).numpy().T
    np.testing.assert_allclose(via_sides, head(q, c).numpy(), rtol=1e-5, atol=1e-6)


def test_learned_temperature_stays_positive_and_trains(vectors):
    q, c = vectors
    head = CosineHead(temperature=0.5, learn_temperature=True)
    head.build()
    assert [v.name for v in head.trainable_variables] == ["log_temperature:0"]
    optimizer = tf.keras.optimizers.SGD(10.0)
    for _ in range(20):  # push the temperature down hard: it must stay > 0
        with tf.GradientTape() as tape:
            loss = -tf.reduce_sum(head(q, c) ** 2)
        gradients = tape.gradient(loss, head.trainable_variables)
        optimizer.apply_gradients(zip(gradients, head.trainable_variables, strict=True))
    assert 1e-3 - 1e-9 <= float(head.temperature) < 0.5


def test_fixed_temperature_is_not_trainable():
    head = DotHead(temperature=2.0)
    head.build()
    assert head.trainable_variables == []


def test_get_config_round_trip():
    head = CosineHead(temperature=0.2, learn_temperature=True, name="h")
    clone = CosineHead.from_config(head.get_config())
    assert clone.get_config() == head.get_config()
    assert abs(float(clone.temperature) - 0.2) < 1e-6


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_rejected(bad):
    with pytest.raises(ValueError, match="temperature"):
        DotHead(temperature=bad)


def test_unknown_head_lists_valid_names():
    with pytest.raises(ValueError, match="valid heads: cosine, dot"):
        make_head("euclid")


def test_rejects_mismatched_ranks(vectors):
    q, c = vectors
    with pytest.raises(ValueError, match="expected query"):
        DotHead()(q[:, None, :], c)


def test_layer_norm_standardizes_each_tower_output():
    vocabulary = [f"u{i}" for i in range(50)]
    ids = tf.constant(vocabulary)
    tower = IdTower(vocabulary, 16, hidden_layers=[32, 16], layer_norm=True)
    y = tower(ids).numpy()
    x = ids_to_pre_norm(tower, ids)
    assert np.abs(x.mean(axis=1)).max() > 1e-4  # the raw rows are not centred...
    expected = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-3)
    # ...the normalized rows are: mean 0, variance ~1, norm ~sqrt(d)
    np.testing.assert_allclose(y.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.var(axis=1), x.var(1) / (x.var(1) + 1e-6), rtol=1e-3)


def ids_to_pre_norm(tower, ids):
    h = tower.embedding(tower.lookup(ids))
    for layer in tower.dense:
        h = layer(h)
    return h.numpy().astype(np.float64)


def test_tower_flags_unknown_ids_and_shapes():
    tower = IdTower(["a", "b"], 8, hidden_layers=[4])
    out = tower(tf.constant(["a", "zz", "b"]))
    assert out.shape == (3, 4) and tower.output_dim == 4
    assert tower.known(tf.constant(["a", "zz"])).numpy().tolist() == [True, False]
    assert IdTower.from_config(tower.get_config()).get_config() == tower.get_config()
