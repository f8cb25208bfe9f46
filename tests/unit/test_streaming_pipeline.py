"""The streaming pass and the training pipeline against the in-memory path."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from training.config import load_config
from training.data import generate_synthetic, load_data
from training.errors import InputError
from training.pipeline import item_probabilities, make_training_dataset
from training.progress import RateLog
from training.schema import Interactions
from training.shards import write_interactions
from training.splits import split_data
from training.streaming import (
    EpochRate,
    StreamingData,
    WorkerShard,
    balance_files,
    make_training_input,
    prepare_streaming,
)
from training.vocabulary import (
    IdCounter,
    choose_vocabulary,
    count_by_id,
    item_sampling_probabilities,
    read_vocabulary_file,
)

SETTINGS = ["data.source='file'", "data.split='hash-interaction'", "model.logq_correction=true",
            "training.batch_size=64", "training.shuffle_buffer=300", "training.seed=5"]


@pytest.fixture(scope="module")
def interactions() -> Interactions:
    base = generate_synthetic(150, 50, 3, seed=11).interactions
    weight = np.round(np.linspace(0.5, 1.5, len(base)), 2).astype(np.float32)
    return Interactions(base.user_id, base.item_id, base.timestamp, weight)


@pytest.fixture(scope="module")
def shard_dir(interactions, tmp_path_factory):
    path = tmp_path_factory.mktemp("shards")
    write_interactions(interactions, path, 5, "parquet")
    return path


def config_for(path, *overrides):
    return load_config(None, [*SETTINGS, f"data.path='{path}'", *overrides])


@pytest.fixture(scope="module")
def streaming(shard_dir) -> StreamingData:
    return prepare_streaming(config_for(shard_dir), log=lambda line: None)


def rows_of(dataset: tf.data.Dataset, keys=("user_id", "item_id", "weight", "item_probability")):
    """All batches' rows as a list of tuples, in order."""
    batches = list(dataset.as_numpy_iterator())
    return list(zip(*(np.concatenate([b[k] for b in batches]).tolist() for k in keys), strict=True))


def test_the_pass_and_pipeline_equal_the_in_memory_path(streaming, shard_dir):
    config = config_for(shard_dir)
    data = load_data(config.data)
    split = split_data(data.interactions, config.data)
    np.testing.assert_array_equal(streaming.users, data.users)
    np.testing.assert_array_equal(streaming.items, data.items)
    shares = item_probabilities(split.train, data.items)
    np.testing.assert_array_equal(streaming.item_probability, shares)
    assert streaming.split_rows == {"train": len(split.train), "validation": len(split.validation),
                                    "test": len(split.test)}
    training = make_training_input(streaming, config)
    assert training.steps_per_epoch == -(-len(split.train) // 64)
    in_memory = make_training_dataset(
        split.train, 64, dict(zip(data.items.tolist(), shares.tolist(), strict=True))
    )
    streamed = training.epoch(0)
    assert streamed.element_spec == in_memory.element_spec  # same keys, dtypes, shapes
    assert Counter(rows_of(streamed)) == Counter(rows_of(in_memory))


def test_epoch_order_is_a_function_of_seed_and_epoch(streaming, shard_dir):
    config = config_for(shard_dir)
    epoch_1 = rows_of(make_training_input(streaming, config).epoch(1))
    # a fresh pipeline (as after a resume) gives epoch 1 again; epochs() runs them back to back
    both = rows_of(make_training_input(streaming, config).epochs(1, 3))
    assert both[: len(epoch_1)] == epoch_1
    epoch_2 = both[len(epoch_1):]
    assert epoch_2 != epoch_1 and Counter(epoch_2) == Counter(epoch_1)
    other_seed = make_training_input(streaming, config_for(shard_dir, "training.seed=6"))
    assert rows_of(other_seed.epoch(1)) != epoch_1


@pytest.fixture(scope="module")
def epoch_0(streaming, shard_dir) -> Counter:
    return Counter(rows_of(make_training_input(streaming, config_for(shard_dir)).epoch(0)))


@pytest.mark.parametrize("policy", ["rows", "files"])
def test_worker_shards_partition_the_training_rows(streaming, shard_dir, epoch_0, policy):
    config = config_for(shard_dir)
    parts = [
        make_training_input(streaming, config, WorkerShard(2, k), policy=policy) for k in range(2)
    ]
    assert {p.sharding for p in parts} == {policy}
    assert parts[0].steps_per_epoch == parts[1].steps_per_epoch
    got = [Counter(rows_of(p.epoch(0))) for p in parts]
    assert not (got[0] & got[1])  # disjoint
    union = got[0] + got[1]
    assert union <= epoch_0
    if policy == "rows":  # row sharding drops nothing but a remainder row
        assert sum(epoch_0.values()) - sum(union.values()) <= 1
    with pytest.raises(InputError, match="worker shard 2 of 2 does not exist"):
        WorkerShard(2, 2)


def test_several_replicas_get_whole_steps_of_full_batches(streaming, shard_dir):
    config = config_for(shard_dir)
    training = make_training_input(streaming, config, batch_size=48, replicas=3)
    train_rows = streaming.split_rows["train"]
    assert training.steps_per_epoch == train_rows // (48 * 3)
    sizes = [len(b["user_id"]) for b in training.epoch(0).as_numpy_iterator()]
    assert sizes == [48] * (training.steps_per_epoch * 3)
    with pytest.raises(InputError, match="not one step of 4096 x 2 replica"):
        make_training_input(streaming, config, batch_size=4096, replicas=2)


def test_files_balance_across_workers():
    assert balance_files(np.array([10, 70, 30, 40]), 2) == [[0, 1], [2, 3]]
    assert balance_files(np.array([5, 5, 5]), 3) == [[0], [1], [2]]


# ----------------------------------------------------------------------------------------
# vocabularies and frequencies


def test_id_counter_merges_to_exact_counts():
    rng = np.random.default_rng(1)
    ids = np.char.add("id", rng.integers(0, 700, 20_000).astype(str))
    codes = rng.integers(0, 3, 20_000)
    counter = IdCounter(min_buffer=50)  # merge often
    for start in range(0, 20_000, 1_000):
        counter.add(count_by_id(tf.constant(ids[start:start + 1_000]),
                                tf.constant(codes[start:start + 1_000], tf.int32)))
    result = counter.result()
    order = np.argsort(result.ids)
    expected_ids, inverse = np.unique(ids, return_inverse=True)
    expected = np.zeros((len(expected_ids), 3), np.int64)
    np.add.at(expected, (inverse, codes), 1)
    np.testing.assert_array_equal(result.ids[order], expected_ids)
    np.testing.assert_array_equal(result.counts[order], expected)


def test_min_count_and_maximum_sizes_map_the_rest_to_oov(shard_dir, interactions):
    config = config_for(shard_dir, "data.min_count=40", "data.max_items=12")
    data = prepare_streaming(config, log=lambda line: None)
    users, user_counts = np.unique(interactions.user_id, return_counts=True)
    np.testing.assert_array_equal(data.users, users[user_counts >= 40])
    items, item_counts = np.unique(interactions.item_id, return_counts=True)
    top = np.lexsort((items, -item_counts))[:12]
    np.testing.assert_array_equal(data.items, np.sort(items[top]))
    # the in-memory path keeps the same vocabularies
    in_memory = load_data(config.data)
    np.testing.assert_array_equal(in_memory.users, data.users)
    np.testing.assert_array_equal(in_memory.items, data.items)
    # rows of other items carry the OOV share: the mean share of their training rows
    training = make_training_input(data, config)
    rows = rows_of(training.epoch(0), ("item_id", "item_probability"))
    oov = {p for i, p in rows if i.decode() not in set(data.items)}
    assert oov == {data.oov_item_probability}
    train_items = Counter(i for i, _ in rows)
    oov_rows = sum(c for i, c in train_items.items() if i.decode() not in set(data.items))
    oov_ids = sum(1 for i in train_items if i.decode() not in set(data.items))
    total = sum(train_items.values())
    assert data.oov_item_probability == pytest.approx(oov_rows / oov_ids / total, rel=1e-6)


def test_a_fingerprint_collision_is_an_error_not_a_merge(monkeypatch):
    import training.vocabulary as vocabulary

    monkeypatch.setattr(vocabulary, "_FINGERPRINTS", 1)  # every id collides
    codes = tf.constant([0], tf.int32)
    counter = IdCounter(min_buffer=1)
    counter.add(count_by_id(tf.constant(["a"]), codes))
    with pytest.raises(InputError, match="ids 'a' and 'b' share a 64-bit fingerprint"):
        counter.add(count_by_id(tf.constant(["b"]), codes))  # across chunks, when merging
    with pytest.raises(InputError, match="share a 64-bit fingerprint"):
        IdCounter().add(count_by_id(tf.constant(["c", "d"]), tf.constant([0, 1], tf.int32)))
    counter = IdCounter(min_buffer=1)  # a table id against a later chunk's
    counter.add(count_by_id(tf.constant(["e"]), codes))
    counter.add(count_by_id(tf.constant(["e"]), codes))
    with pytest.raises(InputError, match="ids 'e' and 'f' share a 64-bit fingerprint"):
        counter.add(count_by_id(tf.constant(["f"]), codes))


def test_choose_vocabulary_breaks_ties_by_id():
    ids = np.array(["d", "a", "c", "b"])
    counts = np.array([5, 3, 3, 1])
    np.testing.assert_array_equal(choose_vocabulary(ids, counts, 1, 2), ["a", "d"])
    np.testing.assert_array_equal(choose_vocabulary(ids, counts, 3, 0), ["a", "c", "d"])


def test_vocabulary_files(shard_dir, tmp_path):
    (tmp_path / "items.txt").write_text("i01\n\ni00\nunknown-item\n")
    config = config_for(shard_dir, f"data.item_vocabulary='{tmp_path / 'items.txt'}'")
    data = prepare_streaming(config, log=lambda line: None)
    np.testing.assert_array_equal(data.items, ["i01", "i00", "unknown-item"])
    # an item never trained on counts 0.5, as in memory
    trained = dict(zip(data.scan.items.ids, data.scan.items.counts[:, 0], strict=True))["i01"]
    shares = data.item_probability
    assert shares[0] / shares[2] == pytest.approx(2 * trained, rel=1e-5)
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(InputError, match="id 'a' on line 3 repeats line 1"):
        read_vocabulary_file(tmp_path / "dup.txt", "data.item_vocabulary")
    with pytest.raises(InputError, match="data.user_vocabulary file not found"):
        prepare_streaming(config_for(shard_dir, "data.user_vocabulary='/no/such/file'"),
                          log=lambda line: None)


def test_item_probabilities_follow_the_in_memory_definition():
    items = np.array(["a", "b", "c"])
    shares, oov = item_sampling_probabilities(items, np.array(["c", "a", "z"]), np.array([3, 1, 4]))
    # a: 1, b: never (0.5), c: 3, OOV: 4 rows of one id
    total = 1 + 0.5 + 3 + 4
    np.testing.assert_allclose(shares, np.array([1, 0.5, 3]) / total, rtol=1e-6)
    assert oov == pytest.approx(4 / total)
    train = Interactions(np.array(["u"] * 4), np.array(["a", "c", "c", "c"]))
    np.testing.assert_array_equal(
        item_sampling_probabilities(items, np.array(["a", "c"]), np.array([1, 3]))[0],
        item_probabilities(train, items),
    )


def test_time_split_by_quantiles_matches_the_in_memory_split(shard_dir):
    config = config_for(shard_dir, "data.split='time'")
    lines = []
    data = prepare_streaming(config, log=lines.append)
    assert any(line.startswith("timestamp pass:") for line in lines)
    assert any(line.startswith("vocabulary pass:") and "rows/s" in line for line in lines)
    in_memory = load_data(config.data)
    split = split_data(in_memory.interactions, config.data)
    assert data.split_rows == {"train": len(split.train), "validation": len(split.validation),
                               "test": len(split.test)}


def test_rate_log_reports_rows_per_second_with_an_injected_clock():
    now = [0.0]
    lines = []
    progress = RateLog("vocabulary pass", lines.append, every=10, clock=lambda: now[0])
    for _ in range(5):
        now[0] += 4
        progress.add(1_000, "file 1 of 2")
    progress.done("3 users")
    assert lines == [  # one line at 12 s (every 10 s), then the summary
        "vocabulary pass: 3,000 rows so far, file 1 of 2 (250 rows/s)",
        "vocabulary pass: 5,000 rows in 20.0 s (250 rows/s); 3 users",
    ]


def test_epoch_rate_logs_rows_per_second_per_epoch():
    now = [100.0]
    lines = []
    rate = EpochRate(50_000, lines.append, clock=lambda: now[0])
    rate.on_epoch_begin(2)
    now[0] += 12.5
    rate.on_epoch_end(2)
    assert lines == ["epoch 3: 50,000 rows in 12.5 s (4,000 rows/s)"]


def test_streaming_needs_a_file_source():
    with pytest.raises(InputError, match="needs data.source = 'file', got 'synthetic'"):
        prepare_streaming(load_config(None, ["data.split='hash-user'"]))


def test_nondeterministic_order_keeps_the_rows_and_refuses_row_sharding(shard_dir, epoch_0):
    config = config_for(shard_dir, "data.deterministic_order=false")
    data = prepare_streaming(config, log=lambda line: None)
    assert Counter(rows_of(make_training_input(data, config).epoch(0))) == epoch_0
    with pytest.raises(InputError, match="sharding by rows needs data.deterministic_order"):
        make_training_input(data, config, WorkerShard(2, 0), policy="rows")
