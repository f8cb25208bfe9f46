"""Per-row splits: disjoint, deterministic, with the configured fractions."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import load_config
from training.errors import InputError
from training.schema import Interactions
from training.splits import split_data
from training.streaming_splits import (
    TEST,
    TRAIN,
    VALIDATION,
    SplitRule,
    assign_in_memory,
    time_cutoffs,
)


@pytest.fixture(scope="module")
def rows() -> Interactions:
    """20k rows: 2,000 users x random items, with repeated pairs and distinct timestamps."""
    rng = np.random.default_rng(0)
    n = 20_000
    users = rng.integers(0, 2_000, n)
    items = rng.integers(0, 500, n)
    return Interactions(
        user_id=np.char.add("u", users.astype(str)),
        item_id=np.char.add("i", items.astype(str)),
        timestamp=rng.permutation(n).astype(np.int64) * 3,
    )


def within_sampling_error(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4 * np.sqrt(n * p * (1 - p))


def test_hash_interaction_split_is_deterministic_with_the_right_fractions(rows):
    rule = SplitRule("hash-interaction", 0.2, 0.1, seed=42)
    codes = assign_in_memory(rows, rule)
    np.testing.assert_array_equal(codes, assign_in_memory(rows, SplitRule("hash-interaction", 0.2, 0.1, 42)))
    assert set(np.unique(codes)) == {TRAIN, VALIDATION, TEST}
    # fractions of distinct pairs (a repeated pair is one unit), within 4 sigma
    pairs, first = np.unique(np.char.add(np.char.add(rows.user_id, "|"), rows.item_id),
                             return_index=True)
    unit_codes = codes[first]
    assert within_sampling_error(int((unit_codes == TEST).sum()), len(pairs), 0.2)
    assert within_sampling_error(int((unit_codes == VALIDATION).sum()), len(pairs), 0.1)
    # a repeated (user, item) pair never straddles two splits
    _, inverse = np.unique(np.char.add(np.char.add(rows.user_id, "|"), rows.item_id),
                           return_inverse=True)
    assert (codes == unit_codes[inverse]).all()
    other = assign_in_memory(rows, SplitRule("hash-interaction", 0.2, 0.1, seed=43))
    assert (other != codes).mean() > 0.2


def test_hash_user_split_keeps_each_user_in_one_split(rows):
    codes = assign_in_memory(rows, SplitRule("hash-user", 0.25, 0.15, seed=1))
    users, inverse = np.unique(rows.user_id, return_inverse=True)
    per_user = np.zeros((len(users), 3), int)
    np.add.at(per_user, (inverse, codes), 1)
    assert ((per_user > 0).sum(axis=1) == 1).all()
    user_codes = per_user.argmax(axis=1)
    assert within_sampling_error(int((user_codes == TEST).sum()), len(users), 0.25)
    assert within_sampling_error(int((user_codes == VALIDATION).sum()), len(users), 0.15)


def test_time_split_orders_train_before_validation_before_test(rows):
    validation_start, test_start = time_cutoffs(rows.timestamp, 0.2, 0.1)
    rule = SplitRule("time", 0.2, 0.1, 0, test_start, validation_start)
    codes = assign_in_memory(rows, rule)
    t = rows.timestamp
    assert t[codes == TRAIN].max() < t[codes == VALIDATION].min()
    assert t[codes == VALIDATION].max() < t[codes == TEST].min() == test_start
    # distinct timestamps: the quantiles give the fractions up to one row
    assert abs((codes == TEST).sum() - 0.2 * len(t)) <= 1
    assert abs((codes == VALIDATION).sum() - 0.1 * len(t)) <= 1
    with pytest.raises(ValueError, match="without cutoffs"):
        assign_in_memory(rows, SplitRule("time", 0.2, 0.1, 0))


def test_split_data_accepts_the_streaming_splits_and_matches_the_rule(rows):
    config = load_config(None, ["data.split='hash-interaction'", "data.split_seed=9"])
    split = split_data(rows, config.data)
    codes = assign_in_memory(rows, SplitRule("hash-interaction", 0.2, 0.1, 9))
    assert len(split.train) == (codes == TRAIN).sum() and len(split.test) == (codes == TEST).sum()
    np.testing.assert_array_equal(split.validation.item_id, rows.item_id[codes == VALIDATION])
    config = load_config(None, ["data.split='time'", "data.test_start=30000",
                                "data.validation_start=27000"])
    split = split_data(rows, config.data)
    assert split.test.timestamp.min() >= 30000 and split.train.timestamp.max() < 27000
    no_time = Interactions(rows.user_id, rows.item_id)
    with pytest.raises(InputError, match="needs timestamps"):
        split_data(no_time, load_config(None, ["data.split='time'"]).data)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.split='time'", "data.validation_start=5"], "data.validation_start needs data.test_start"),
        (["data.split='hash-user'", "data.test_start=5"], "need data.split = 'time'"),
        (["data.split='time'", "data.test_start=5", "data.validation_start=9"],
         "data.validation_start (9) must be <= data.test_start (5)"),
        (["data.split='hash-user'", "data.test_fraction=0.6", "data.validation_fraction=0.4"],
         "must be < 1 for split 'hash-user'"),
        (["data.min_count=0"], "data.min_count must be >= 1"),
        (["data.max_items=-1"], "data.max_items must be >= 0"),
        (["data.interleave_files=0"], "data.interleave_files must be >= 1"),
        (["training.shuffle_buffer=0"], "training.shuffle_buffer must be >= 1"),
        (["data.format='avro'"], "unknown data.format 'avro'; valid: csv, tsv, parquet, tfrecord"),
        (["data.split='by-day'"], "unknown data.split 'by-day'"),
    ],
)
def test_streaming_config_keys_are_validated(overrides, message):
    with pytest.raises(InputError) as excinfo:
        load_config(None, overrides)
    assert message in str(excinfo.value)


def test_streaming_config_keys_round_trip_through_toml():
    import tomllib

    from training.config import config_from_dict

    config = load_config(None, ["data.split='time'", "data.test_start=100",
                                "data.max_items=50", "training.shuffle_buffer=4096"])
    assert config_from_dict(tomllib.loads(config.to_toml())) == config
