"""Feature towers inside TwoTowerModel and build_model: training, the shared item table,
id-only equivalence with IdTower, and restoring a run written before feature towers."""

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfrs_cosine import FeatureTower, IdEncoder, IdTower, TwoTowerModel, make_head
from training.config import config_from_dict
from training.errors import InputError
from training.feature_spec import tower_features
from training.feature_statistics import StatisticsAccumulator
from training.modeling import build_model, load_run, save_weights

OLD_RUN = Path(__file__).parent / "fixtures" / "idtower_run_ceacf22"
USERS = [f"u{k}" for k in range(6)]
ITEMS = [f"i{k}" for k in range(8)]
FEATURE_TABLES = {
    "user_features": {
        "user_id": {"type": "id"},
        "gender": {"type": "categorical"},
        "age": {"type": "numeric", "buckets": [25, 40]},
        "history": {"type": "history", "length": 3},
    },
    "item_features": {
        "item_id": {"type": "id"},
        "genres": {"type": "multi_categorical", "separator": "|"},
        "title": {"type": "text", "embedding_dim": 8},
    },
    "query_context": {"timestamp": {"type": "timestamp", "num_buckets": 4}},
}
USER_TABLE = {"gender": ["F", "M", "F", "M", "F", "M"], "age": [18, 22, 35, 41, 50, 63]}
ITEM_TABLE = {
    "genres": ["a|b", "b", "c", "a|c", "b|c", "a", "c", "b"],
    "title": ["The Red", "Blue Sky", "Red Sky", "The Green", "Blue", "Green Red", "Sky", "The"],
}


def _config(**model):
    return config_from_dict({"model": {"embedding_dim": 8, "tower_layers": [8], **model}})


def _statistics(config):
    columns = {**USER_TABLE, **ITEM_TABLE, "timestamp": [880_000_000, 890_000_000]}
    features = {**tower_features(config.model, "user"), **tower_features(config.model, "item")}
    return {
        name: StatisticsAccumulator(name, feature).update(columns.get(name, [])).result()
        for name, feature in features.items()
    }


def _batch(rows):
    """In-memory training rows: (user index, item index, history item indices, timestamp)."""
    def pad(history):
        return [ITEMS[h] for h in history] + [""] * (3 - len(history))

    def padded_genres(i):
        genres = ITEM_TABLE["genres"][i].split("|")
        return genres + [""] * (2 - len(genres))

    return {
        "user_id": tf.constant([USERS[u] for u, _, _, _ in rows]),
        "item_id": tf.constant([ITEMS[i] for _, i, _, _ in rows]),
        "gender": tf.constant([USER_TABLE["gender"][u] for u, _, _, _ in rows]),
        "age": tf.constant([float(USER_TABLE["age"][u]) for u, _, _, _ in rows]),
        "history": tf.constant([pad(h) for _, _, h, _ in rows]),
        "genres": tf.constant([padded_genres(i) for _, i, _, _ in rows]),
        "title": tf.constant([ITEM_TABLE["title"][i] for _, i, _, _ in rows]),
        "timestamp": tf.constant([t for _, _, _, t in rows], tf.int64),
    }


def _train_eagerly(model, batches, optimizer) -> list[float]:
    """TFRS's train_step without tf.function tracing (seconds saved per model)."""
    losses = []
    for batch in batches:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        losses.append(float(loss))
    return losses


ROWS = [(u, (u + k) % 8, [(u + k + 1) % 8] if k else [], 880_000_000 + 3600 * (u + k))
        for u in range(6) for k in range(4)]


def test_a_feature_model_trains_with_decreasing_loss():
    config = _config(**FEATURE_TABLES)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, USERS, ITEMS, statistics=_statistics(config))
    assert isinstance(model.user_tower, FeatureTower) and isinstance(model.item_tower, FeatureTower)
    assert model.user_tower.input_names == ["user_id", "gender", "age", "history", "timestamp"]
    assert model.item_tower.input_names == ["item_id", "genres", "title"]
    batches = list(tf.data.Dataset.from_tensor_slices(_batch(ROWS)).batch(8))
    losses = _train_eagerly(model, batches * 4, tf.keras.optimizers.Adagrad(0.5))
    epochs = np.array(losses).reshape(4, -1).sum(axis=1)
    assert np.isfinite(epochs).all() and epochs[-1] < 0.8 * epochs[0], epochs


def test_the_history_shares_the_item_table_and_a_step_updates_its_rows():
    config = _config(**FEATURE_TABLES)
    model = build_model(config, USERS, ITEMS, statistics=_statistics(config))
    item_ids = model.item_tower.encoders["item_id"]
    assert model.user_tower.encoders["history"].item_ids is item_ids
    table = item_ids.embedding.embeddings
    assert sum(v is table for v in model.trainable_variables) == 1
    # i7 is only ever in a history, never a candidate: only the history can move its row.
    rows = [(0, 1, [7], 880_000_000), (1, 2, [7, 3], 880_000_100), (2, 3, [], 880_000_200)]
    before = table.numpy().copy()
    _train_eagerly(model, [_batch(rows)], tf.keras.optimizers.SGD(1.0))
    moved = np.abs(table.numpy() - before).max(axis=1)
    assert moved[ITEMS.index("i7") + 1] > 0
    assert moved[ITEMS.index("i5") + 1] == 0  # in no history and no candidate


def _id_model(feature_towers: bool):
    tf.keras.utils.set_random_seed(3)
    if feature_towers:
        user = FeatureTower({"user_id": IdEncoder(USERS, 8)}, [16, 8], layer_norm=True)
        item = FeatureTower({"item_id": IdEncoder(ITEMS, 8)}, [16, 8], layer_norm=True)
    else:
        user = IdTower(USERS, 8, [16, 8], layer_norm=True)
        item = IdTower(ITEMS, 8, [16, 8], layer_norm=True)
    model = TwoTowerModel(user, item, make_head("cosine", 0.2), remove_accidental_hits=True)
    model({"user_id": tf.constant(["u0"]), "item_id": tf.constant(["i0"])})  # draw weights now
    return model


def test_an_id_only_feature_model_is_numerically_today_s_id_model():
    ids = {k: v for k, v in _batch(ROWS).items() if k in ("user_id", "item_id")}
    batches = list(tf.data.Dataset.from_tensor_slices(ids).batch(8)) * 2
    old, new = _id_model(False), _id_model(True)
    old_losses = _train_eagerly(old, batches, tf.keras.optimizers.Adagrad(0.3))
    new_losses = _train_eagerly(new, batches, tf.keras.optimizers.Adagrad(0.3))
    assert old_losses[-1] < old_losses[0]
    np.testing.assert_allclose(new_losses, old_losses, rtol=1e-6)
    ids = tf.constant(["u1", "u4"])
    np.testing.assert_allclose(new.user_tower({"user_id": ids}), old.user_tower(ids), rtol=1e-5)


def test_an_id_only_config_builds_id_towers_and_an_old_run_still_restores():
    run = load_run(OLD_RUN)
    assert isinstance(run.model.user_tower, IdTower) and isinstance(run.model.item_tower, IdTower)
    # The config of a run written before feature towers reads back with every value it
    # had (keys added since then take their defaults).
    old = tomllib.loads((OLD_RUN / "config.toml").read_text())
    new = tomllib.loads(run.config.to_toml())
    assert {s: {k: new[s][k] for k in keys} for s, keys in old.items()} == old
    expected = json.loads((OLD_RUN / "expected.json").read_text())
    users, items = tf.constant(expected["user_ids"]), tf.constant(expected["item_ids"])
    np.testing.assert_allclose(run.model.user_tower(users), expected["user_vectors"], rtol=1e-6)
    np.testing.assert_allclose(run.model.item_tower(items), expected["item_vectors"], rtol=1e-6)
    np.testing.assert_allclose(run.model.score(users, items), expected["scores"], rtol=1e-5)


def test_a_feature_model_restores_from_its_checkpoint(tmp_path):
    config = _config(**FEATURE_TABLES)
    statistics = _statistics(config)
    model = build_model(config, USERS, ITEMS, statistics=statistics)
    _train_eagerly(model, [_batch(ROWS[:8])], tf.keras.optimizers.Adagrad(0.5))
    (tmp_path / "model").mkdir()
    save_weights(model, tmp_path)
    restored = build_model(config, USERS, ITEMS, statistics=statistics)
    status = tf.train.Checkpoint(model=restored).read(str(tmp_path / "model" / "weights"))
    status.assert_existing_objects_matched().expect_partial()
    batch = _batch(ROWS[8:16])
    for a, b in zip(model(batch), restored(batch), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_an_id_free_item_tower_and_missing_statistics():
    config = _config(item_features={"genres": {"type": "multi_categorical", "separator": "|"}})
    statistics = _statistics(config)
    model = build_model(config, USERS, ITEMS, statistics=statistics)
    assert model.item_tower.id_feature is None
    assert not model.item_tower.known({"genres": tf.constant([["a"]])}).numpy().any()
    with pytest.raises(InputError, match=r"feature 'genres' \(multi_categorical\) needs "
                                         r"training statistics: vocabulary"):
        build_model(config, USERS, ITEMS, statistics={})
    # Callers that predate feature towers (train, load_run) stop on one line.
    with pytest.raises(InputError, match="does not support feature towers yet"):
        build_model(config, USERS, ITEMS)
