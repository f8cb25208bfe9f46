"""The cost of resumable epochs: one ``model.fit`` per epoch on a freshly seeded dataset
(``training.train.fit``) against one ``model.fit`` over a cached dataset reshuffled
every epoch (the job before runs became resumable), in the same process.

Prints the median wall and CPU seconds (all threads of the process: less sensitive to
other jobs on a shared machine) per epoch of each, the first epoch (tracing) left out,
alternating the two several times, and their ratios. No validation, no checkpoints:
only the training loop and the input pipeline differ. Then the fixed cost the
per-epoch loop adds, measured alone: building an epoch's dataset, and one
``model.fit`` call on a single unshuffled batch.

    .venv/bin/python -m benchmarks.epoch_loop [--users 20000 --items 1000 --epochs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from training.config import load_config  # noqa: E402
from training.data import generate_synthetic  # noqa: E402
from training.modeling import build_model, make_optimizer  # noqa: E402
from training.pipeline import epoch_seed, make_training_dataset  # noqa: E402
from training.splits import random_split  # noqa: E402


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


class _EpochTimes(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[tuple[float, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = _clock()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(_since(self._start))


def _model(config, data):
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, data.users.tolist(), data.items.tolist(), logq=False)
    model.compile(optimizer=make_optimizer(config))
    return model


def one_fit(config, data, train, epochs: int) -> list[tuple[float, float]]:
    """The former loop: a cached dataset, reshuffled by tf.data on every iteration."""
    features = {"user_id": train.user_id, "item_id": train.item_id}
    dataset = (tf.data.Dataset.from_tensor_slices(features).cache()
               .shuffle(len(train), seed=0, reshuffle_each_iteration=True)
               .batch(config.training.batch_size).prefetch(tf.data.AUTOTUNE))
    timer = _EpochTimes()
    _model(config, data).fit(dataset, epochs=epochs, verbose=0, callbacks=[timer])
    return timer.seconds


def per_epoch_fits(config, data, train, epochs: int) -> list[tuple[float, float]]:
    """The resumable loop: epoch e trains on a dataset seeded with epoch_seed(seed, e)."""
    model, seconds = _model(config, data), []
    for epoch in range(epochs):
        start = _clock()
        dataset = make_training_dataset(train, config.training.batch_size,
                                        seed=epoch_seed(0, epoch))
        model.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, verbose=0)
        seconds.append(_since(start))  # dataset build + fit call + epoch
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    config = load_config(None, [f"training.batch_size={args.batch}", "model.layer_norm=true"])
    data = generate_synthetic(args.users, args.items, 5, seed=0)
    train, _ = random_split(data.interactions, 0.2, seed=42)
    print(f"data: {len(train)} training rows, {len(data.users)} users, {len(data.items)} items, "
          f"batch {args.batch}, {args.epochs} epochs x {args.rounds} rounds", flush=True)
    times: dict[str, list[tuple[float, float]]] = {
        "one fit, cached + reshuffled": [], "one fit per epoch, seeded per epoch": []}
    for round_ in range(args.rounds):
        for (name, run) in zip(times, (one_fit, per_epoch_fits), strict=True):
            seconds = run(config, data, train, args.epochs)
            times[name] += seconds[1:]
            print(f"round {round_ + 1}: {name}: wall/cpu s per epoch "
                  + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in seconds), flush=True)
    medians = {name: [statistics.median(v[k] for v in values) for k in (0, 1)]
               for name, values in times.items()}
    for name, (wall, cpu) in medians.items():
        print(f"{name}: median {wall:.3f} s wall, {cpu:.3f} s cpu per epoch (epochs 2..)")
    (old_wall, old_cpu), (new_wall, new_cpu) = medians.values()
    print(f"ratio per-epoch / one fit: wall {new_wall / old_wall:.3f}, cpu {new_cpu / old_cpu:.3f}")

    build, call = [], []
    model = _model(config, data)
    features = {"user_id": train.user_id, "item_id": train.item_id}
    one_batch = tf.data.Dataset.from_tensor_slices(features).batch(config.training.batch_size)
    one_batch = one_batch.take(1)
    for epoch in range(7):
        start = _clock()
        make_training_dataset(train, config.training.batch_size, seed=epoch_seed(0, epoch))
        build.append(_since(start)[0])
        start = _clock()
        model.fit(one_batch, initial_epoch=epoch, epochs=epoch + 1, verbose=0)
        call.append(_since(start)[0])
    print(f"fixed cost per epoch (wall): dataset build median {statistics.median(build[1:]):.3f}"
          f" s; model.fit call on one unshuffled batch median {statistics.median(call[1:]):.3f} s")


if __name__ == "__main__":
    main()
