"""MovieLens item genres and release years (training.movielens), on small fixtures in
GroupLens's ``u.item`` form (19 genre flags) and RecBole's ``.item`` form (a ``class``
column of genre names): the same verified cache from both, checksummed like the ratings."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from training.errors import InputError
from training.movielens import (
    GENRES,
    NAME,
    WHEEL_INTER,
    WHEEL_ITEM,
    Expected,
    fetch_movielens_100k,
    read_items,
    read_ratings,
)

RATINGS = [(1, 1, 5, 100), (1, 2, 3, 101), (2, 2, 4, 102), (2, 3, 1, 103), (3, 1, 2, 104)]
# item: (title, year, genres)
ITEMS = {1: ("Toy Story", 1995, ("Animation", "Children's", "Comedy")),
         2: ("GoldenEye", 1995, ("Action", "Adventure", "Thriller")),
         3: ("Mystery Film", None, ("unknown",))}
GENRE_TABLE = "1\tAnimation|Children's|Comedy\n2\tAction|Adventure|Thriller\n3\tunknown\n"


def _expected(genre_table: str = GENRE_TABLE) -> Expected:
    lines = ["user_id\titem_id\trating\ttimestamp"] + [
        "\t".join(map(str, r)) for r in sorted(RATINGS)]
    return Expected(num_ratings=5, num_users=3, num_items=3,
                    sha256=hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest(),
                    genres_sha256=hashlib.sha256(genre_table.encode()).hexdigest())


def _u_item(items=ITEMS) -> bytes:
    lines = []
    for item, (title, year, genres) in items.items():
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        date = f"01-Jan-{year}" if year else ""
        lines.append(f"{item}|{title}{f' ({year})' if year else ''}|{date}||http://x/|{flags}")
    return ("\n".join(lines) + "\n").encode("latin-1")


def _grouplens_zip(folder: Path, items=ITEMS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ml-100k.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
        z.writestr("ml-100k/u.item", _u_item(items))
    return path


def _recbole_wheel(folder: Path, tokens: dict[int, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recbole-1.2.1-py3-none-any.whl"
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS)
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    for i, (title, year, genres) in ITEMS.items():
        classes = (tokens or {}).get(i, " ".join(genres))
        item += f"{i}\t{title}\t{year or 'unkonwn'}\t{classes}\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(WHEEL_INTER, inter)
        z.writestr(WHEEL_ITEM, item)
    return path


def _quiet(_message: str) -> None:
    pass


@pytest.mark.parametrize("kind", ["grouplens", "recbole"])
def test_both_item_formats_give_the_same_verified_genres_and_years(tmp_path, kind):
    source = (_grouplens_zip if kind == "grouplens" else _recbole_wheel)(tmp_path / "src")
    cache = tmp_path / "cache"
    fetch_movielens_100k(path=source, cache_dir=cache, log=_quiet, url=None, recbole=None,
                         expected=_expected())
    items = read_items(cache, _expected())
    assert {k: (v.year, v.genres) for k, v in items.items()} == {
        str(i): (year, genres) for i, (_, year, genres) in ITEMS.items()}
    assert items["1"].title == "Toy Story (1995)"
    _, titles = read_ratings(cache, _expected())  # the older API still gives titles
    assert titles["2"] == "GoldenEye (1995)"
    header = (cache / NAME / "items.tsv").read_text().splitlines()[0]
    assert header == "item_id\ttitle\trelease_year\tgenres"


def test_a_changed_genre_fails_the_check_and_writes_nothing(tmp_path):
    changed = dict(ITEMS)
    changed[3] = ("Mystery Film", None, ("Mystery",))
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="SHA-256 of the item genres is [0-9a-f]{64}"):
        fetch_movielens_100k(path=_grouplens_zip(tmp_path / "src", changed), cache_dir=cache,
                             log=_quiet, url=None, recbole=None, expected=_expected())
    assert not (cache / NAME).exists() or not any((cache / NAME).iterdir())


def test_an_unknown_genre_name_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"unknown genre\(s\) \['Space-Opera'\]"):
        fetch_movielens_100k(path=_recbole_wheel(tmp_path / "src", {2: "Action Space-Opera"}),
                             cache_dir=tmp_path / "cache", log=_quiet, url=None, recbole=None,
                             expected=_expected())


def test_a_cache_without_genres_is_refetched_and_read_items_says_so(tmp_path):
    cache = tmp_path / "cache"
    fetch_movielens_100k(path=_grouplens_zip(tmp_path / "src"), cache_dir=cache, log=_quiet,
                         url=None, recbole=None, expected=_expected())
    items_file = cache / NAME / "items.tsv"
    # The cache as the previous version wrote it: item_id and title only.
    items_file.write_text("item_id\ttitle\n1\tToy Story (1995)\n2\tGoldenEye (1995)\n")
    with pytest.raises(InputError, match="has no genres"):
        read_items(cache, _expected())
    _, titles = read_ratings(cache, _expected())
    assert titles == {"1": "Toy Story (1995)", "2": "GoldenEye (1995)"}
    messages: list[str] = []
    with pytest.raises(InputError, match="cannot fetch"):  # no source enabled
        fetch_movielens_100k(cache_dir=cache, log=messages.append, url=None, recbole=None,
                             expected=_expected())
    assert any("cached without genres" in m for m in messages)
    fetch_movielens_100k(path=_recbole_wheel(tmp_path / "wheel"), cache_dir=cache, log=_quiet,
                         url=None, recbole=None, expected=_expected())
    assert read_items(cache, _expected())["2"].genres == ("Action", "Adventure", "Thriller")
    again = fetch_movielens_100k(cache_dir=cache, log=_quiet, url=None, recbole=None,
                                 expected=_expected())
    assert again.source == "cache"


def test_study_genre_matrix_from_the_cache(tmp_path):
    """``training.study.genres`` turns the cache into a multi-hot matrix without 'unknown'."""
    from training.study import genres

    cache = tmp_path / "cache"
    fetch_movielens_100k(path=_recbole_wheel(tmp_path / "src"), cache_dir=cache, log=_quiet,
                         url=None, recbole=None, expected=_expected())
    gd = genres.movielens_genres(cache, _expected())
    names = list(gd.genre_names)
    assert "unknown" not in names and len(names) == 18
    rows = {item: set(np.array(names)[gd.genres[k]]) for k, item in enumerate(gd.data.items)}
    assert rows == {"1": {"Animation", "Children's", "Comedy"},
                    "2": {"Action", "Adventure", "Thriller"}, "3": set()}
    assert len(gd.split.train) == 4 and len(gd.split.test) == 1
