import numpy as np
import pandas as pd
import pytest

from training.config import load_config
from training.data import generate_synthetic, load_data, read_interactions_file
from training.errors import InputError
from training.pipeline import item_probabilities, make_training_dataset, probability_column
from training.schema import Interactions
from training.splits import leave_last_out, random_split, split_data


def test_synthetic_is_deterministic_in_its_seed():
    a, b = generate_synthetic(300, 80, 4, seed=7), generate_synthetic(300, 80, 4, seed=7)
    np.testing.assert_array_equal(a.interactions.user_id, b.interactions.user_id)
    np.testing.assert_array_equal(a.interactions.item_id, b.interactions.item_id)
    np.testing.assert_array_equal(a.item_cluster, b.item_cluster)
    c = generate_synthetic(300, 80, 4, seed=8)
    assert not np.array_equal(a.item_cluster, c.item_cluster)


def test_synthetic_structure_follows_the_paper():
    data = generate_synthetic(2000, 300, 5, seed=0, min_items_per_user=5, max_items_per_user=100)
    inter = data.interactions
    # every cluster is present and the ground truth is aligned with the catalog
    assert data.item_cluster.shape == (300,) and set(data.item_cluster) == set(range(5))
    assert data.items.shape == (300,) and np.isclose(data.item_popularity.sum(), 1.0)
    # sampling without replacement: no user sees an item twice
    pairs = pd.DataFrame({"u": inter.user_id, "i": inter.item_id})
    assert not pairs.duplicated().any()
    per_user = pairs.groupby("u").size()
    assert per_user.min() >= 5 and per_user.max() <= 100
    # popularity skew: the most popular decile of items gets far more than 10% of events
    counts = np.sort(pairs.groupby("i").size().to_numpy())[::-1]
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.25
    # cluster structure: a user's items concentrate in few clusters (vs. the catalog)
    cluster_of = dict(zip(data.items, data.item_cluster, strict=True))
    pairs["c"] = pairs["i"].map(cluster_of)
    top_share = pairs.groupby("u")["c"].agg(lambda c: c.value_counts(normalize=True).iloc[0])
    catalog_share = np.bincount(data.item_cluster).max() / 300
    assert top_share.mean() > catalog_share + 0.15
    # timestamps order each user's interactions for leave-last-out
    assert inter.timestamp is not None


def test_random_split_partitions_and_is_seeded():
    inter = generate_synthetic(200, 50, 3, seed=1).interactions
    rest, held = random_split(inter, 0.2, seed=3)
    assert len(rest) + len(held) == len(inter)
    assert abs(len(held) - 0.2 * len(inter)) <= 1
    again, _ = random_split(inter, 0.2, seed=3)
    np.testing.assert_array_equal(rest.item_id, again.item_id)


def test_leave_last_out_holds_out_each_users_latest():
    inter = generate_synthetic(100, 40, 3, seed=2).interactions
    rest, last = leave_last_out(inter)
    assert len(last) == len(np.unique(inter.user_id))  # every user has >= 5 interactions
    frame = pd.DataFrame({"u": rest.user_id, "t": rest.timestamp})
    latest_rest = frame.groupby("u")["t"].max()
    for u, t in zip(last.user_id, last.timestamp, strict=True):
        assert t > latest_rest[u]


def test_leave_last_out_needs_timestamps(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("user_id,item_id\na,x\na,y\n")
    data = read_interactions_file(path)
    with pytest.raises(InputError, match="needs timestamps"):
        leave_last_out(data.interactions)


def test_split_data_keeps_test_out_of_validation():
    config = load_config(None, ["data.num_users=300", "data.num_items=60"])
    data = load_data(config.data)
    split = split_data(data.interactions, config.data)
    key = lambda x: set(zip(x.user_id.tolist(), x.item_id.tolist(), strict=True))  # noqa: E731
    assert not key(split.test) & key(split.validation)
    assert not key(split.test) & key(split.train)
    assert len(split.train) + len(split.validation) + len(split.test) == len(data.interactions)
    with pytest.raises(InputError, match="unknown split 'dev'"):
        split.get("dev")


@pytest.mark.parametrize("suffix", ["csv", "tsv", "parquet"])
def test_file_source_reads_every_format_with_a_column_mapping(tmp_path, suffix):
    frame = pd.DataFrame({"uid": ["1", "2", "2"], "movie": ["a", "b", "c"],
                          "ts": [3, 1, 2], "rating": [4.0, 5.0, 1.0]})
    path = tmp_path / f"ratings.{suffix}"
    if suffix == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if suffix == "tsv" else ",", index=False)
    data = read_interactions_file(
        path, columns={"user_id": "uid", "item_id": "movie", "timestamp": "ts", "weight": "rating"}
    )
    assert data.interactions.item_id.tolist() == ["a", "b", "c"]
    assert data.interactions.timestamp.tolist() == [3, 1, 2]
    assert data.interactions.weight.dtype == np.float32
    assert data.users.tolist() == ["1", "2"]


def test_file_source_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="is empty"):
        read_interactions_file(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("user_id,item_id\n")
    with pytest.raises(InputError, match="has no rows"):
        read_interactions_file(header_only)
    missing = tmp_path / "missing.csv"
    missing.write_text("user,item_id\n1,a\n")
    with pytest.raises(InputError, match="no column 'user_id' for user_id"):
        read_interactions_file(missing)
    invalid = tmp_path / "invalid.csv"
    invalid.write_text("user_id,item_id\n,a\n2,\n")
    with pytest.raises(InputError, match="no row with both"):
        read_interactions_file(invalid)
    nan = tmp_path / "nan.csv"
    nan.write_text("user_id,item_id,weight\n1,a,1.0\n2,b,nan\n")
    with pytest.raises(InputError, match="weight column 'weight' has 1 missing, NaN"):
        read_interactions_file(nan, columns={"weight": "weight"})
    with pytest.raises(InputError, match="not found"):
        read_interactions_file(tmp_path / "nope.csv")


def test_pipeline_batches_and_item_probabilities():
    data = generate_synthetic(100, 30, 3, seed=0)
    probabilities = item_probabilities(data.interactions, data.items)
    assert probabilities.shape == (30,) and np.isclose(probabilities.sum(), 1.0)
    counts = pd.Series(data.interactions.item_id).value_counts()
    top = counts.index[0]
    assert probabilities[list(data.items).index(top)] == pytest.approx(counts.iloc[0] / counts.sum())
    table = dict(zip(data.items.tolist(), probabilities.tolist(), strict=True))
    batch = next(iter(make_training_dataset(data.interactions, 64, table, seed=0)))
    assert set(batch) == {"user_id", "item_id", "item_probability"}
    assert batch["user_id"].shape == (64,)
    ids = [i.decode() for i in batch["item_id"].numpy()]
    np.testing.assert_allclose(batch["item_probability"].numpy(), [table[i] for i in ids])



def test_fast_sampler_matches_the_per_user_sampler_in_distribution():
    # Same seed: the same clusters, popularities, counts and preferences; only how the
    # items are sampled differs. Up to 40 of 60 items per user, so some users need
    # items holding little of their mass (the fast sampler's per-user fallback).
    args = dict(num_users=10_000, num_items=60, num_clusters=4, seed=11,
                min_items_per_user=5, max_items_per_user=40)
    fast = generate_synthetic(**args)
    slow = generate_synthetic(**args, method="per-user")
    np.testing.assert_array_equal(fast.interactions.user_id, slow.interactions.user_id)
    np.testing.assert_array_equal(fast.interactions.timestamp, slow.interactions.timestamp)
    assert not np.array_equal(fast.interactions.item_id, slow.interactions.item_id)
    np.testing.assert_array_equal(fast.item_cluster, slow.item_cluster)

    def counts(data, rows=slice(None)) -> np.ndarray:
        columns = np.searchsorted(data.items, data.interactions.item_id[rows])
        return np.bincount(columns, minlength=60).astype(np.float64)

    def worst_z(a, b) -> float:
        # Two counts with equal means; each is a sum of independent per-user counts whose
        # variance is at most their mean (sampling without replacement), so
        # |a - b| / sqrt(a + b) is a conservative z-score.
        return float((np.abs(a - b) / np.sqrt(np.maximum(a + b, 1.0))).max())

    item_fast, item_slow = counts(fast), counts(slow)
    assert worst_z(item_fast, item_slow) < 4.5
    cluster_fast, cluster_slow = (np.bincount(fast.item_cluster, weights=x, minlength=4)
                                  for x in (item_fast, item_slow))
    assert worst_z(cluster_fast, cluster_slow) < 4.5
    # The order within a user is the sampling order: the first item (drawn from p_ui)
    # and the last (leave-last-out's test item) have the same distribution too.
    user = fast.interactions.user_id
    first = fast.interactions.timestamp == 0
    last = np.r_[user[1:] != user[:-1], True]
    assert worst_z(counts(fast, first), counts(slow, first)) < 4.5
    assert worst_z(counts(fast, last), counts(slow, last)) < 4.5
    # Sensitivity: a sampler ignoring the within-cluster popularity would be far off.
    assert worst_z(item_fast, np.full(60, item_fast.sum() / 60)) > 10


def test_fast_sampler_takes_the_whole_catalog_when_asked():
    # k_u = catalog size: every user gets a permutation of all items, including items
    # with almost none of its mass (finished by the exact per-user fallback).
    data = generate_synthetic(300, 12, 3, seed=4, min_items_per_user=12, max_items_per_user=12)
    frame = pd.DataFrame({"u": data.interactions.user_id, "i": data.interactions.item_id})
    assert (frame.groupby("u")["i"].nunique() == 12).all() and len(frame) == 300 * 12


def test_synthetic_generator_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="unknown sampling method"):
        generate_synthetic(10, 5, 2, method="magic")


def test_frequency_arrays_equal_the_dict_versions():
    rng = np.random.default_rng(9)
    items = rng.permutation(np.array([f"m{k}" for k in range(50)]))  # catalog, unsorted
    train = Interactions(np.array(["u"] * 2000),
                         np.array([f"m{k}" for k in rng.integers(0, 60, 2000)]))  # 10 unknown
    index = {item: k for k, item in enumerate(items.tolist())}
    counts = np.bincount([index[i] for i in train.item_id.tolist() if i in index],
                         minlength=50).astype(np.float64)
    counts = np.where(counts > 0, counts, 0.5)
    shares = item_probabilities(train, items)
    np.testing.assert_array_equal(shares, (counts / counts.sum()).astype(np.float32))
    table = dict(zip(items.tolist(), shares.tolist(), strict=True))
    smallest = min(table.values())
    want = np.array([table.get(i, smallest) for i in train.item_id.tolist()], dtype=np.float32)
    np.testing.assert_array_equal(probability_column(table, train.item_id), want)
