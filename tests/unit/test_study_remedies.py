"""The model-internal remedies for cone-shaped cosine embeddings (issue 13), each off by
default: tower mean centring, a uniformity loss term, a floor for a learned temperature;
and their config keys."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfrs_cosine import IdTower, TwoTowerModel, make_head
from tfrs_cosine.model import uniformity
from tfrs_cosine.towers import MeanCentering
from training.config import config_from_dict
from training.errors import InputError

USERS = [f"u{k}" for k in range(6)]
ITEMS = [f"i{k}" for k in range(5)]
BATCH = {"user_id": tf.constant(["u0", "u1", "u2", "u3"]),
         "item_id": tf.constant(["i0", "i1", "i0", "i4"])}


def test_centering_subtracts_the_batch_mean_in_training_and_the_moving_mean_after():
    layer = MeanCentering(momentum=0.5)
    first = tf.constant([[1.0, 2.0], [3.0, 6.0]])  # mean (2, 4)
    second = tf.constant([[0.0, 0.0], [2.0, 0.0]])  # mean (1, 0)
    np.testing.assert_allclose(layer(first, training=True), [[-1, -2], [1, 2]])
    # Bias-corrected after one step: exactly the first batch's mean.
    np.testing.assert_allclose(layer(tf.zeros((1, 2)), training=False), [[-2, -4]])
    layer(second, training=True)
    # moving = 0.5 (0.5 (2, 4)) + 0.5 (1, 0) = (1, 1); correction 1 - 0.25 = 0.75.
    np.testing.assert_allclose(layer.mean().numpy(), [4 / 3, 4 / 3], rtol=1e-6)
    np.testing.assert_allclose(layer(tf.constant([[1.0, 1.0]])), [[-1 / 3, -1 / 3]], rtol=1e-5)
    assert MeanCentering.from_config(layer.get_config()).momentum == 0.5


def test_a_centred_tower_trains_its_mean_through_fit_and_is_off_by_default():
    plain = IdTower(ITEMS, 4)
    assert plain.centering is None and "center" not in plain.get_config()
    tf.keras.utils.set_random_seed(0)
    model = TwoTowerModel(IdTower(USERS, 4, center=True), IdTower(ITEMS, 4, center=True),
                          make_head("cosine", 0.2))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    model.fit(tf.data.Dataset.from_tensors(BATCH).repeat(3), epochs=1, verbose=0)
    tower = model.item_tower
    assert float(tower.centering.steps.numpy()) == 3.0
    # Served outputs: the raw embedding minus the (non-zero) moving mean of training.
    ids = tf.constant(ITEMS)
    raw = tower.embedding(tower.lookup(ids)).numpy()
    mean = tower.centering.mean().numpy()
    assert np.abs(mean).max() > 0
    np.testing.assert_allclose(tower(ids).numpy(), raw - mean, rtol=1e-5, atol=1e-6)
    assert tower.get_config()["center"] is True


def test_rescaling_a_centred_tower_scales_its_output():
    from training.study import rescaled

    tf.keras.utils.set_random_seed(1)
    model = TwoTowerModel(IdTower(USERS, 3, layer_norm=True, center=True),
                          IdTower(ITEMS, 3, layer_norm=True, center=True), make_head("dot"))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    model.fit(tf.data.Dataset.from_tensors(BATCH).repeat(2), epochs=1, verbose=0)
    ids = tf.constant(ITEMS)
    before = model.item_tower(ids).numpy()
    d = np.array([0.5, 2.0, 4.0], np.float32)
    with rescaled(model, d):
        np.testing.assert_allclose(model.item_tower(ids).numpy(), before / d, rtol=1e-5,
                                   atol=1e-6)


def test_uniformity_term_adds_weight_times_batch_size_times_the_mean_uniformity():
    def build(weight):
        return TwoTowerModel(IdTower(USERS, 4), IdTower(ITEMS, 4), make_head("cosine", 0.2),
                             uniformity_weight=weight)

    plain, spread = build(0.0), build(0.5)
    plain(BATCH)
    users, items = spread(BATCH)
    spread.set_weights(plain.get_weights())
    users, items = spread(BATCH)
    # weight x batch size (4) x the mean of the two towers' uniformity
    expected = 0.5 * 4 * 0.5 * (float(uniformity(users)) + float(uniformity(items)))
    got = float(spread.compute_loss(BATCH)) - float(plain.compute_loss(BATCH))
    assert got == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="uniformity_weight"):
        build(-1.0)


def test_temperature_floor_clamps_a_learned_temperature():
    head = make_head("cosine", 0.3, learn_temperature=True, min_temperature=0.2)
    head.build()
    head.log_temperature.assign(np.log(0.05))
    assert float(head.temperature) == pytest.approx(0.2)
    head.log_temperature.assign(np.log(0.25))
    assert float(head.temperature) == pytest.approx(0.25)
    assert head.get_config()["min_temperature"] == 0.2
    assert "min_temperature" not in make_head("cosine", 0.3).get_config()
    with pytest.raises(ValueError, match="min_temperature"):
        make_head("cosine", 0.1, min_temperature=0.2)


def test_config_keys_reach_the_model_and_are_validated():
    from training.modeling import build_model

    config = config_from_dict({"model": {"head": "cosine", "temperature": 0.3,
                                         "learn_temperature": True, "min_temperature": 0.2,
                                         "center": True, "uniformity_weight": 0.1,
                                         "embedding_dim": 4}})
    model = build_model(config, USERS, ITEMS)
    assert model.head.min_temperature == 0.2 and model.uniformity_weight == 0.1
    assert model.user_tower.center and model.item_tower.center
    default = build_model(config_from_dict({}), USERS, ITEMS)
    assert default.head.min_temperature is None and default.uniformity_weight == 0.0
    assert default.item_tower.centering is None
    for bad, message in ((("min_temperature", 0.5), "model.min_temperature"),
                         (("uniformity_weight", -1.0), "model.uniformity_weight"),
                         (("center", "yes"), "model.center")):
        with pytest.raises(InputError, match=message):
            config_from_dict({"model": {"temperature": 0.3, bad[0]: bad[1]}})
