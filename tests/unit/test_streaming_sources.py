"""Shard sources: every layout reads the rows the in-memory reader reads; bad shards are
named on one line."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.config import load_config
from training.data import generate_synthetic, load_data, read_interactions_file
from training.errors import InputError
from training.schema import Interactions
from training.shard_files import is_sharded, list_files
from training.shards import synthetic_chunks, write_interactions, write_synthetic_shards
from training.sources import open_shards, read_interactions


@pytest.fixture(scope="module")
def interactions() -> Interactions:
    """Synthetic rows with distinct timestamps and weights."""
    base = generate_synthetic(120, 40, 3, seed=5).interactions
    n = len(base)
    return Interactions(
        user_id=base.user_id,
        item_id=base.item_id,
        timestamp=np.arange(n, dtype=np.int64) * 7 + 1_000,
        weight=np.round(np.linspace(0.25, 2.0, n), 3).astype(np.float32),
    )


@pytest.fixture(scope="module")
def reference(interactions, tmp_path_factory) -> Interactions:
    """What ``read_interactions_file`` (pandas) reads from one CSV of the rows."""
    path = tmp_path_factory.mktemp("reference") / "all.csv"
    write_interactions(interactions, path.parent, 1, "csv")[0].rename(path)
    return read_interactions_file(path).interactions


LAYOUTS = {
    # name: (format, shards, path to read relative to the shard directory)
    "csv file": ("csv", 1, "part-0.csv"),
    "tsv file": ("tsv", 1, "part-0.tsv"),
    "parquet file": ("parquet", 1, "part-0.parquet"),
    "parquet directory": ("parquet", 4, ""),
    "csv glob": ("csv", 3, "part-*.csv"),
    "tsv directory": ("tsv", 2, ""),
    "tfrecord file": ("tfrecord", 1, "part-0.tfrecord"),
    "tfrecord directory": ("tfrecord", 3, ""),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_the_rows_of_the_in_memory_reader(
    layout, interactions, reference, tmp_path
):
    format, num_shards, relative = LAYOUTS[layout]
    write_interactions(interactions, tmp_path, num_shards, format)
    path = str(tmp_path / relative) if relative else str(tmp_path)
    shards = open_shards(path)
    assert shards.format == format and len(shards.files) == num_shards
    got, dropped = read_interactions(shards)
    assert dropped == 0
    np.testing.assert_array_equal(got.user_id, reference.user_id)
    np.testing.assert_array_equal(got.item_id, reference.item_id)
    np.testing.assert_array_equal(got.timestamp, reference.timestamp)
    np.testing.assert_array_equal(got.weight, reference.weight)


def test_load_data_reads_shards_and_keeps_one_file_on_pandas(interactions, tmp_path):
    write_interactions(interactions, tmp_path / "shards", 3, "parquet")
    config = load_config(None, ["data.source='file'", f"data.path='{tmp_path / 'shards'}'"])
    data = load_data(config.data)
    assert "3 parquet file(s)" in data.description
    np.testing.assert_array_equal(data.users, np.unique(interactions.user_id))
    assert is_sharded(str(tmp_path / "shards")) and not is_sharded(str(tmp_path / "x.csv"))


def test_ids_are_stripped_and_rows_without_ids_dropped_like_pandas(tmp_path):
    text = "user_id,item_id,timestamp\n u1 ,i1,5\n,i2,6\nu3,,7\n\"u4\",\" i4\",8\n"
    (tmp_path / "a.csv").write_text(text)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_text(text)
    expected = read_interactions_file(tmp_path / "a.csv").interactions
    got, dropped = read_interactions(open_shards(str(tmp_path / "d")))
    assert dropped == 2
    np.testing.assert_array_equal(got.user_id, expected.user_id)
    np.testing.assert_array_equal(got.item_id, expected.item_id)
    np.testing.assert_array_equal(got.timestamp, expected.timestamp)


def test_non_ascii_ids_round_trip(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.tsv").write_text("user_id\titem_id\nJürgen\tcafé\nu2\t東京\n",
                                          encoding="utf-8")
    got, _ = read_interactions(open_shards(str(tmp_path / "d")))
    np.testing.assert_array_equal(got.user_id, ["Jürgen", "u2"])
    np.testing.assert_array_equal(got.item_id, ["café", "東京"])


def test_column_mapping_and_integer_ids_in_parquet(tmp_path):
    frame = pd.DataFrame({"uid": [7, 8, 7], "movie": ["a", "b", "c"], "ts": [3.0, 1.0, 2.0]})
    frame.to_parquet(tmp_path / "a.parquet")
    columns = {"user_id": "uid", "item_id": "movie", "timestamp": "ts"}
    expected = read_interactions_file(tmp_path / "a.parquet", columns=columns).interactions
    got, _ = read_interactions(open_shards(str(tmp_path / "*.parquet"), columns=columns))
    np.testing.assert_array_equal(got.user_id, expected.user_id)
    np.testing.assert_array_equal(got.timestamp, expected.timestamp)


def test_directories_skip_hidden_and_underscore_files(interactions, tmp_path):
    write_interactions(interactions, tmp_path, 2, "parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".part-0.parquet.crc").write_text("x")
    files, format = list_files(str(tmp_path))
    assert format == "parquet" and [f.rsplit("/", 1)[1] for f in files] == [
        "part-0.parquet", "part-1.parquet"
    ]


# ----------------------------------------------------------------------------------------
# bad shards: one line naming the file


def _message(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_mismatched_columns_name_the_shard(interactions, tmp_path):
    write_interactions(interactions, tmp_path, 3, "parquet")
    table = pq.read_table(tmp_path / "part-1.parquet").append_column(
        "extra", pa.array(np.zeros(pq.read_metadata(tmp_path / "part-1.parquet").num_rows))
    )
    pq.write_table(table, tmp_path / "part-1.parquet")
    with pytest.raises(InputError) as excinfo:
        open_shards(str(tmp_path))
    assert "part-1.parquet has columns" in _message(excinfo)


def test_csv_shards_with_another_header_name_the_shard(interactions, tmp_path):
    write_interactions(interactions, tmp_path, 2, "csv")
    frame = pd.read_csv(tmp_path / "part-1.csv").rename(columns={"item_id": "movie"})
    frame.to_csv(tmp_path / "part-1.csv", index=False)
    with pytest.raises(InputError) as excinfo:
        open_shards(str(tmp_path))
    assert "part-1.csv has columns [user_id, movie, timestamp, weight]" in _message(excinfo)


def test_a_missing_column_names_the_file(interactions, tmp_path):
    write_interactions(interactions, tmp_path, 2, "tfrecord")
    with pytest.raises(InputError) as excinfo:
        open_shards(str(tmp_path), columns={"item_id": "movie"})
    assert "part-0.tfrecord has no column 'movie' for item_id" in _message(excinfo)


@pytest.mark.parametrize("format", ["parquet", "tfrecord"])
def test_an_unreadable_shard_is_named(format, interactions, tmp_path):
    write_interactions(interactions, tmp_path, 3, format)
    (tmp_path / f"part-2.{format}").write_bytes(b"this is not a data file at all")
    with pytest.raises(InputError) as excinfo:
        open_shards(str(tmp_path))
    assert f"cannot read data file {tmp_path / f'part-2.{format}'}" in _message(excinfo)


def test_a_truncated_tfrecord_shard_is_named_when_read(interactions, tmp_path):
    write_interactions(interactions, tmp_path, 2, "tfrecord")
    path = tmp_path / "part-1.tfrecord"
    path.write_bytes(path.read_bytes()[:-7])  # the first record still opens
    shards = open_shards(str(tmp_path))
    with pytest.raises(InputError) as excinfo:
        read_interactions(shards)
    assert f"cannot read data file {path}" in _message(excinfo)


def test_a_bad_number_names_the_file_and_row(tmp_path):
    (tmp_path / "a.csv").write_text("user_id,item_id,weight\nu1,i1,1.5\n")
    (tmp_path / "b.csv").write_text("user_id,item_id,weight\nu1,i1,1.5\nu2,i2,heavy\n")
    with pytest.raises(InputError) as excinfo:
        read_interactions(open_shards(str(tmp_path)))
    message = _message(excinfo)
    assert f"data file {tmp_path / 'b.csv'}" in message and "first at data row 2" in message


def test_wrong_feature_kind_and_mixed_formats_are_named(interactions, tmp_path):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(tmp_path / "a.tfrecord")) as writer:
        feature = {"user_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
                   "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"i"]))}
        writer.write(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
    with pytest.raises(InputError, match="feature 'user_id' .* is a int64_list"):
        open_shards(str(tmp_path / "a.tfrecord"))
    write_interactions(interactions, tmp_path / "mixed", 1, "csv")
    write_interactions(interactions, tmp_path / "mixed" / "x", 1, "parquet")
    shutil.move(tmp_path / "mixed" / "x" / "part-0.parquet", tmp_path / "mixed" / "b.parquet")
    shutil.rmtree(tmp_path / "mixed" / "x")
    with pytest.raises(InputError, match="part-0.csv is csv but .*b.parquet is parquet"):
        open_shards(str(tmp_path / "mixed"))


def test_empty_sources_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="has no data files"):
        open_shards(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="matches no file"):
        open_shards(str(tmp_path / "*.parquet"))
    (tmp_path / "a.csv").write_text("")
    with pytest.raises(InputError, match="a.csv is empty"):
        open_shards(str(tmp_path / "a.csv"))


# ----------------------------------------------------------------------------------------
# the shard writer


def test_synthetic_rows_are_reproducible_by_range_and_shards_hold_them_all(tmp_path):
    whole = list(synthetic_chunks(200_000, 5_000, 800, seed=3))
    part = list(synthetic_chunks(200_000, 5_000, 800, seed=3, start=120_000, stop=150_000))
    users = np.concatenate([c["user_id"] for c in whole])
    np.testing.assert_array_equal(np.concatenate([c["user_id"] for c in part]),
                                  users[120_000:150_000])
    # popularity is skewed: the top 1% of items has far more than 1% of the rows
    counts = np.sort(np.unique(np.concatenate([c["item_id"] for c in whole]),
                               return_counts=True)[1])[::-1]
    assert counts[:8].sum() / counts.sum() > 0.1
    lines = []
    paths = write_synthetic_shards(tmp_path / "out", 5_000, 300, 50, 3, "parquet", 3,
                                   weights=True, log=lines.append)
    assert len(paths) == 3 and len(lines) == 3
    got, _ = read_interactions(open_shards(str(tmp_path / "out")))
    assert len(got) == 5_000 and got.weight is not None
    np.testing.assert_array_equal(got.timestamp, np.arange(5_000) + 1_600_000_000)
    with pytest.raises(InputError, match="not empty"):
        write_synthetic_shards(tmp_path / "out", 10, 3, 3, 1)
