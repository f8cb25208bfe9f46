import numpy as np
import pytest
import tensorflow as tf

from training.config import load_config
from training.modeling import build_model, make_optimizer
from training.optimizers import LazyAdam

LR, B1, B2, EPS = 0.05, 0.9, 0.999, 1e-7


def _steps(rows: int, dim: int, count: int, seed: int = 0):
    """``count`` sparse gradients over a ``rows``-row table, each with duplicate indices
    and a few rows that appear in no step at all."""
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(count):
        indices = rng.integers(0, rows - 5, size=9)  # rows - 5 ... rows - 1 never touched
        indices[1] = indices[0]  # at least one duplicate per step
        steps.append((indices.astype(np.int64), rng.normal(size=(9, dim)).astype(np.float32)))
    return steps


def _apply(optimizer, variable, steps):
    snapshots = []
    for indices, values in steps:
        gradient = tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                                    tf.constant(variable.shape, tf.int64))
        optimizer.apply_gradients([(gradient, variable)])
        snapshots.append(variable.numpy().copy())
    return snapshots


def _numpy_lazy_adam(initial, steps):
    """The update ``LazyAdam``'s docstring states, in float64."""
    w, m, v = initial.astype(np.float64), np.zeros(initial.shape), np.zeros(initial.shape)
    out = []
    for t, (indices, values) in enumerate(steps, start=1):
        rows, inverse = np.unique(indices, return_inverse=True)
        g = np.zeros((len(rows), initial.shape[1]))
        np.add.at(g, inverse, values.astype(np.float64))
        alpha = LR * np.sqrt(1 - B2**t) / (1 - B1**t)
        m[rows] = B1 * m[rows] + (1 - B1) * g
        v[rows] = B2 * v[rows] + (1 - B2) * g**2
        w[rows] -= alpha * m[rows] / (np.sqrt(v[rows]) + EPS)
        out.append(w.copy())
    return out


def test_rows_absent_from_a_batch_are_bit_for_bit_unchanged():
    initial = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)
    variable = tf.Variable(initial)
    optimizer = LazyAdam(LR)
    steps = _steps(40, 6, 6)
    snapshots = _apply(optimizer, variable, steps)
    previous = initial
    for (indices, _), after in zip(steps, snapshots, strict=True):
        untouched = np.setdiff1d(np.arange(40), indices)
        np.testing.assert_array_equal(after[untouched], previous[untouched])
        assert not np.array_equal(after[indices], previous[indices])
        previous = after
    never = np.setdiff1d(np.arange(40), np.concatenate([i for i, _ in steps]))
    assert len(never) >= 5
    m, v = (slot.numpy() for slot in optimizer.variables[1:3])
    assert not m[never].any() and not v[never].any()
    # tf-keras Adam, by contrast, moves every row that ever had a gradient.
    dense = tf.Variable(initial)
    adam_snapshots = _apply(tf.keras.optimizers.Adam(LR), dense, steps)
    last_untouched = np.setdiff1d(np.arange(40), steps[-1][0])
    assert not np.array_equal(adam_snapshots[-1][last_untouched], adam_snapshots[-2][last_untouched])


def test_touched_rows_follow_the_stated_update_with_duplicate_indices():
    initial = np.random.default_rng(2).normal(size=(30, 5)).astype(np.float32)
    variable = tf.Variable(initial)
    steps = _steps(30, 5, 8, seed=3)
    ours = _apply(LazyAdam(LR, beta_1=B1, beta_2=B2, epsilon=EPS), variable, steps)
    reference = _numpy_lazy_adam(initial, steps)
    for got, want in zip(ours, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


def test_dense_variables_get_exactly_tf_keras_adams_update():
    rng = np.random.default_rng(4)
    initial = rng.normal(size=(7, 3)).astype(np.float32)
    gradients = [rng.normal(size=(7, 3)).astype(np.float32) for _ in range(5)]
    results = []
    for optimizer in (tf.keras.optimizers.Adam(LR), LazyAdam(LR)):
        variable = tf.Variable(initial)
        for g in gradients:
            optimizer.apply_gradients([(tf.constant(g), variable)])
        results.append(variable.numpy())
    np.testing.assert_array_equal(results[0], results[1])


def test_checkpoints_restore_across_adam_and_lazy_adam(tmp_path):
    initial = np.random.default_rng(5).normal(size=(20, 4)).astype(np.float32)
    variable, adam = tf.Variable(initial), tf.keras.optimizers.Adam(LR)
    _apply(adam, variable, _steps(20, 4, 3))
    path = tf.train.Checkpoint(variable=variable, optimizer=adam).write(str(tmp_path / "ckpt"))

    restored, lazy = tf.Variable(tf.zeros_like(initial)), LazyAdam(LR)
    status = tf.train.Checkpoint(variable=restored, optimizer=lazy).read(path)
    lazy.build([restored])  # slots are created on build and restored then (deferred)
    status.assert_consumed()
    assert int(lazy.iterations.numpy()) == 3
    for a, b in zip(adam.variables, lazy.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_lazy_adam_is_selectable_and_rejects_amsgrad():
    config = load_config(None, ["training.optimizer=lazy_adam", "training.learning_rate=0.01"])
    optimizer = make_optimizer(config)
    assert isinstance(optimizer, LazyAdam)
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)


def test_two_tower_model_trains_with_lazy_adam_on_untouched_rows_unchanged():
    config = load_config(None, ["training.optimizer=lazy_adam", "training.learning_rate=0.05",
                                "model.layer_norm=true", "model.tower_layers=[8]"])
    users = [f"u{k}" for k in range(50)]
    items = [f"i{k}" for k in range(20)]
    model = build_model(config, users, items)
    model.compile(optimizer=make_optimizer(config))
    table = model.user_tower.embedding.embeddings
    before = table.numpy().copy()
    rng = np.random.default_rng(0)
    batch_users = np.array(users)[rng.integers(0, 25, size=256)]  # users 25.. never seen
    batch = {"user_id": batch_users, "item_id": np.array(items)[rng.integers(0, 20, size=256)]}
    history = model.fit(tf.data.Dataset.from_tensor_slices(batch).batch(32), epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    unseen = 1 + np.arange(25, 50)  # row 0 is the OOV row; vocabulary rows start at 1
    np.testing.assert_array_equal(table.numpy()[unseen], before[unseen])
    assert not np.array_equal(table.numpy()[1:26], before[1:26])
