"""The feature benchmark's protocol C split (``benchmarks.movielens_features.cold_start``):
held-out users never trained on, held-out items never trained on, and each held-out
user's history strictly earlier than what they are scored on."""

from __future__ import annotations

import numpy as np

from benchmarks.movielens_features import cold_start
from training.schema import Interactions


def _interactions(seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(40):
        chosen = rng.choice(30, size=int(rng.integers(4, 12)), replace=False)
        users += [f"u{u}"] * len(chosen)
        items += [f"i{i}" for i in chosen]
        times += rng.permutation(1000)[: len(chosen)].tolist()  # distinct, out of order
    order = rng.permutation(len(users))
    return Interactions(np.array(users)[order], np.array(items)[order],
                        np.array(times, np.int64)[order])


def test_held_out_users_and_items_never_reach_training_and_histories_come_first():
    inter = _interactions()
    cold = cold_start(inter, seed=3)
    assert len(cold.cold_users) == 4 and len(cold.cold_items) == 3
    assert not np.isin(cold.train.user_id, cold.cold_users).any()
    assert not np.isin(cold.train.item_id, cold.cold_items).any()
    # Every other interaction is training data.
    kept = ~np.isin(inter.user_id, cold.cold_users) & ~np.isin(inter.item_id, cold.cold_items)
    assert len(cold.train) == int(kept.sum())
    for user, history, when in zip(cold.cold_users, cold.history, cold.history_time,
                                   strict=True):
        rows = inter.user_id == user
        times = dict(zip(inter.item_id[rows], inter.timestamp[rows], strict=True))
        later = cold.test.item_id[cold.test.user_id == user]
        # First half (rounded down) as history, second half scored, nothing lost.
        assert len(history) == int(rows.sum()) // 2
        assert sorted([*history, *later]) == sorted(inter.item_id[rows])
        history_times = [times[i] for i in history]
        assert history_times == sorted(history_times)  # chronological
        assert max(history_times) < min(times[i] for i in later)
        assert when == max(history_times) + 1


def test_the_split_is_a_function_of_the_seed():
    inter = _interactions()
    a, b, c = cold_start(inter, seed=1), cold_start(inter, seed=1), cold_start(inter, seed=2)
    np.testing.assert_array_equal(a.cold_users, b.cold_users)
    np.testing.assert_array_equal(a.cold_items, b.cold_items)
    assert not (np.array_equal(a.cold_users, c.cold_users)
                and np.array_equal(a.cold_items, c.cold_items))
