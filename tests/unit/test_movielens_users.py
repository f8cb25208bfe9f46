"""MovieLens 100K's user and item files as side tables (training.movielens): the user file
is read from every format, checksummed like the ratings, cached, and both files load as
``LoadedData.user_table`` / ``item_table``."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile

import numpy as np
import pytest
from test_movielens import FIXTURE, RATINGS, make_fixture, quiet

from training.errors import InputError
from training.movielens import (
    MOVIELENS_100K,
    NAME,
    WHEEL_USER,
    fetch_movielens_100k,
    load_movielens_100k,
    read_users,
)

# (user, age, gender, occupation, zip code) of the fixture's five users.
USERS = [(1, 24, "M", "technician", "85711"), (2, 53, "F", "other", "94043"),
         (3, 23, "M", "writer", "32067"), (4, 24, "M", "technician", "43537"),
         (5, 33, "F", "other", "15213")]


def users_tsv(rows) -> bytes:
    """The normalized user file, written independently of the module under test."""
    lines = ["user_id\tage\tgender\toccupation\tzip_code"] + ["\t".join(map(str, r)) for r in rows]
    return ("\n".join(lines) + "\n").encode()


EXPECTED = dataclasses.replace(FIXTURE, users_sha256=hashlib.sha256(users_tsv(USERS)).hexdigest())


def with_users(source, kind: str, rows=USERS):
    """Adds the user file to a fixture in its format's layout."""
    if kind == "u.data":
        source.with_name("u.user").write_text("".join("|".join(map(str, r)) + "\n" for r in rows))
    elif kind == "zip":
        with zipfile.ZipFile(source, "a") as z:
            z.writestr("ml-100k/u.user", "".join("|".join(map(str, r)) + "\n" for r in rows))
    else:
        header = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        with zipfile.ZipFile(source, "a") as z:
            z.writestr(WHEEL_USER, header + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return source


@pytest.mark.parametrize("kind", ["u.data", "zip", "wheel"])
def test_the_user_file_is_cached_verified_and_loaded(tmp_path, kind):
    source = with_users(make_fixture(tmp_path / "src", kind), kind)
    cache = tmp_path / "cache"
    result = fetch_movielens_100k(path=source, cache_dir=cache, log=quiet, url=None,
                                  recbole=None, expected=EXPECTED)
    assert result.num_user_rows == 5
    assert (cache / NAME / "users.tsv").read_bytes() == users_tsv(USERS)
    assert read_users(cache, EXPECTED)[2].occupation == "other"
    data = load_movielens_100k(cache_dir=cache, expected=EXPECTED, log=quiet)
    table = data.user_table
    assert table.ids.tolist() == ["1", "2", "3", "4", "5"]
    np.testing.assert_array_equal(table.columns["age"], [24, 53, 23, 24, 33])
    assert table.columns["zip_code"].tolist() == ["85711", "94043", "32067", "43537", "15213"]
    items = data.item_table
    assert items.ids.tolist() == ["1", "2", "3", "4"]
    assert set(items.columns) == {"title", "release_year", "genres"}
    years = items.columns["release_year"]
    assert years.dtype == np.float64  # a number; NaN where unknown (RecBole's "unknown" item)
    assert np.isnan(years[3]) == (kind == "wheel")
    # The same from the source directly (the cache not involved).
    direct = load_movielens_100k(path=source, expected=EXPECTED)
    np.testing.assert_array_equal(direct.user_table.columns["age"], table.columns["age"])


def test_a_tampered_user_row_fails_the_checksum_and_writes_nothing(tmp_path):
    rows = list(USERS)
    rows[3] = (4, 25, "M", "technician", "43537")
    source = with_users(make_fixture(tmp_path / "src", "zip"), "zip", rows)
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="SHA-256 of the user file is [0-9a-f]{64}"):
        fetch_movielens_100k(path=source, cache_dir=cache, log=quiet, url=None, recbole=None,
                             expected=EXPECTED)
    assert not (cache / NAME).exists()


def test_a_cache_without_the_user_file_loads_for_id_models_and_is_fetched_again(tmp_path):
    cache = tmp_path / "cache"
    fetch_movielens_100k(path=make_fixture(tmp_path / "src", "zip"), cache_dir=cache,
                         log=quiet, url=None, recbole=None, expected=EXPECTED)
    data = load_movielens_100k(cache_dir=cache, expected=EXPECTED, log=quiet)
    assert data.user_table is None and len(data.interactions) == len(RATINGS)
    with pytest.raises(InputError, match="has no user file: run `tfrs-cosine data fetch"):
        read_users(cache, EXPECTED)
    lines = []
    with pytest.raises(InputError, match="cannot fetch"):  # the cache is not complete
        fetch_movielens_100k(cache_dir=cache, log=lines.append, url=None, recbole=None,
                             expected=EXPECTED)
    assert any("no user file" in line for line in lines)


def test_the_shipped_checksum_is_the_real_user_file():
    assert MOVIELENS_100K.users_sha256 is not None and len(MOVIELENS_100K.users_sha256) == 64
