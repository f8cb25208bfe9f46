"""LazyAdam under tf.distribute.MirroredStrategy on 2 logical CPU devices.

Logical devices must be configured before any TensorFlow op, so this runs in a fresh
process (the unit tier's process has already run ops).
"""

import subprocess
import sys
import textwrap

from conftest import ROOT

MIRRORED = textwrap.dedent(
    """
    import os
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from training.config import load_config
    from training.modeling import build_model, make_optimizer
    from training.optimizers import LazyAdam

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2

    # 1. One explicit step: each replica sends its own sparse gradient, the indices
    # overlap across replicas (row 2) and within one (row 5); the aggregated update is
    # the stated one on the summed gradient.
    initial = np.arange(40, dtype=np.float32).reshape(10, 4) / 10
    with strategy.scope():
        variable = tf.Variable(initial)
        optimizer = LazyAdam(0.1)
    per_replica = {0: ([2, 5, 5], 1.0), 1: ([2, 7], -3.0)}

    def step():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        def gradient(k):
            indices, value = per_replica[k]
            return tf.IndexedSlices(tf.fill([len(indices), 4], value),
                                    tf.constant(indices, tf.int64), tf.constant([10, 4], tf.int64))
        g = tf.cond(tf.equal(replica, 0), lambda: gradient(0), lambda: gradient(1))
        optimizer.apply_gradients([(g, variable)])

    strategy.run(tf.function(step))
    summed = np.zeros((10, 4))
    summed[2], summed[5], summed[7] = 1.0 - 3.0, 2.0, -3.0
    rows = np.array([2, 5, 7])
    m, v = 0.1 * summed[rows], 0.001 * summed[rows] ** 2
    alpha = 0.1 * np.sqrt(1 - 0.999) / (1 - 0.9)
    want = initial.astype(np.float64).copy()
    want[rows] -= alpha * m / (np.sqrt(v) + 1e-7)
    for copy in variable.values:
        np.testing.assert_allclose(copy.numpy(), want, rtol=1e-6, atol=1e-6)
        untouched = np.setdiff1d(np.arange(10), rows)
        np.testing.assert_array_equal(copy.numpy()[untouched], initial[untouched])

    # 2. model.fit of a two-tower model under the strategy.
    config = load_config(None, ["training.optimizer=lazy_adam", "training.learning_rate=0.05"])
    users, items = [f"u{k}" for k in range(40)], [f"i{k}" for k in range(15)]
    with strategy.scope():
        model = build_model(config, users, items)
        model.compile(optimizer=make_optimizer(config))
    table = model.user_tower.embedding.embeddings
    before = table.values[0].numpy().copy()
    rng = np.random.default_rng(0)
    batch = {"user_id": np.array(users)[rng.integers(0, 20, size=512)],
             "item_id": np.array(items)[rng.integers(0, 15, size=512)]}
    history = model.fit(tf.data.Dataset.from_tensor_slices(batch).batch(64), epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    a, b = (copy.numpy() for copy in table.values)
    np.testing.assert_array_equal(a, b)
    unseen = 1 + np.arange(20, 40)
    np.testing.assert_array_equal(a[unseen], before[unseen])
    print("ok", losses)
    """
)


def test_lazy_adam_under_mirrored_strategy_on_two_logical_cpus():
    done = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")
