"""MovieLens 100K loader (training.movielens).

The loader runs against small fixtures generated here in all three formats (GroupLens
``u.data`` + ``u.item``, the ``ml-100k.zip`` layout, and RecBole's ``.inter``/``.item``
inside a wheel-shaped zip), each verified against its own expected counts and checksum;
downloads go through a real local HTTP server. The real recbole wheel is fetched only
when ``pip download`` reaches a package registry.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from training.config import DataConfig
from training.data import load_data
from training.errors import InputError
from training.movielens import (
    MOVIELENS_100K,
    NAME,
    WHEEL_INTER,
    WHEEL_ITEM,
    Expected,
    fetch_movielens_100k,
    load_movielens_100k,
    read_ratings,
)

# (user, item, rating, timestamp) in file order (deliberately unsorted).
RATINGS = [
    (3, 2, 4, 880000300), (1, 1, 5, 880000100), (2, 3, 1, 880000250), (1, 3, 3, 880000200),
    (4, 1, 2, 880000500), (2, 1, 4, 880000150), (3, 4, 5, 880000400), (1, 2, 4, 880000120),
    (4, 4, 3, 880000510), (5, 2, 2, 880000600), (5, 1, 1, 880000610), (2, 4, 5, 880000260),
]
TITLES = {1: ("Toy Story", "1995"), 2: ("Café au lait", "1993"), 3: ("GoldenEye", "1995"),
          4: ("unknown", "")}
GROUPLENS_TITLES = {i: f"{t} ({y})" if y else t for i, (t, y) in TITLES.items()}


def normalized(rows) -> bytes:
    """The normalized content, written independently of the module under test."""
    lines = ["user_id\titem_id\trating\ttimestamp"]
    lines += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in sorted(rows)]
    return ("\n".join(lines) + "\n").encode()


FIXTURE = Expected(
    num_ratings=12, num_users=5, num_items=4, sha256=hashlib.sha256(normalized(RATINGS)).hexdigest()
)


def u_data(rows) -> bytes:
    return "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows).encode()


def u_item() -> bytes:
    return "".join(
        f"{i}|{title}|01-Jan-1995||http://example/|0|0|1\n" for i, title in GROUPLENS_TITLES.items()
    ).encode("latin-1")


def make_fixture(folder: Path, kind: str, rows=RATINGS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "u.data":
        (folder / "u.item").write_bytes(u_item())
        path = folder / "u.data"
        path.write_bytes(u_data(rows))
        return path
    if kind == "zip":
        path = folder / "ml-100k.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("ml-100k/u.data", u_data(rows))
            z.writestr("ml-100k/u.item", u_item())
            z.writestr("ml-100k/README", "fixture")
        return path
    if kind == "wheel":
        path = folder / "recbole-1.2.1-py3-none-any.whl"
        inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        inter += "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
        item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        item += "".join(f"{i}\t{t}\t{y or 'unknown'}\tDrama\n" for i, (t, y) in TITLES.items())
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("recbole/__init__.py", "")
            z.writestr(WHEEL_INTER, inter)
            z.writestr(WHEEL_ITEM, item)
        return path
    raise ValueError(kind)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def quiet(_message: str) -> None:
    pass


# ----------------------------------------------------------------------------------------
# formats, normalization, verification


@pytest.mark.parametrize("kind", ["u.data", "zip", "wheel"])
def test_every_format_gives_the_same_verified_cache(tmp_path, kind):
    source = make_fixture(tmp_path / "src", kind)
    cache = tmp_path / "cache"
    result = fetch_movielens_100k(
        path=source, cache_dir=cache, log=quiet, url=None, recbole=None, expected=FIXTURE
    )
    assert (result.num_ratings, result.num_users, result.num_items) == (12, 5, 4)
    assert result.sha256 == FIXTURE.sha256
    assert result.source == f"path {source}"
    folder = cache / NAME
    assert (folder / "ratings.tsv").read_bytes() == normalized(RATINGS)
    assert files_in(folder) == ["items.tsv", "ratings.tsv", "source.json"]
    assert json.loads((folder / "source.json").read_text())["source"] == f"path {source}"

    ratings, titles = read_ratings(cache, FIXTURE)
    assert titles == {str(i): t for i, t in GROUPLENS_TITLES.items()}  # same from every format
    order = sorted(RATINGS)
    np.testing.assert_array_equal(ratings.rating, [r for _, _, r, _ in order])
    np.testing.assert_array_equal(ratings.timestamp, [t for *_, t in order])


def test_load_gives_implicit_interactions_with_timestamps_and_titles(tmp_path):
    cache = tmp_path / "cache"
    fetch_movielens_100k(path=make_fixture(tmp_path / "src", "zip"), cache_dir=cache, log=quiet,
                         url=None, recbole=None, expected=FIXTURE)
    data = load_movielens_100k(cache_dir=cache, expected=FIXTURE, log=quiet)
    assert len(data.interactions) == 12
    assert data.interactions.weight is None  # implicit feedback, as in the tutorial
    assert data.items.tolist() == ["1", "2", "3", "4"]
    assert data.users.tolist() == ["1", "2", "3", "4", "5"]
    pairs = set(zip(data.interactions.user_id.tolist(), data.interactions.item_id.tolist(),
                    data.interactions.timestamp.tolist(), strict=True))
    assert pairs == {(str(u), str(i), t) for u, i, _, t in RATINGS}
    assert data.item_titles["2"] == "Café au lait (1993)"

    direct = load_movielens_100k(path=make_fixture(tmp_path / "w", "wheel"), expected=FIXTURE)
    np.testing.assert_array_equal(direct.interactions.user_id, data.interactions.user_id)
    np.testing.assert_array_equal(direct.interactions.timestamp, data.interactions.timestamp)


def test_a_tampered_rating_fails_the_checksum_and_writes_nothing(tmp_path):
    rows = list(RATINGS)
    rows[4] = (4, 1, 3, 880000500)  # one rating changed: counts still match
    source = make_fixture(tmp_path / "src", "zip", rows)
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="SHA-256 of the normalized ratings is [0-9a-f]{64}"):
        fetch_movielens_100k(path=source, cache_dir=cache, log=quiet, url=None, recbole=None,
                             expected=FIXTURE)
    assert files_in(cache) == []


def test_a_missing_rating_fails_the_counts(tmp_path):
    source = make_fixture(tmp_path / "src", "u.data", RATINGS[:-1])
    with pytest.raises(InputError, match="11 ratings, expected 12"):
        load_movielens_100k(path=source, expected=FIXTURE)


def test_the_real_checksum_rejects_a_fixture_through_the_data_source_registry(tmp_path):
    source = make_fixture(tmp_path / "src", "u.data")
    assert MOVIELENS_100K.num_ratings == 100_000
    with pytest.raises(InputError, match="12 ratings, expected 100000"):
        load_data(DataConfig(source="movielens-100k", path=str(source)))


def test_a_tampered_cache_is_detected_and_replaced(tmp_path):
    cache = tmp_path / "cache"
    fetch_movielens_100k(path=make_fixture(tmp_path / "a", "u.data"), cache_dir=cache, log=quiet,
                         url=None, recbole=None, expected=FIXTURE)
    ratings_file = cache / NAME / "ratings.tsv"
    ratings_file.write_bytes(ratings_file.read_bytes().replace(b"\t5\t", b"\t4\t", 1))
    with pytest.raises(InputError, match="SHA-256.*data fetch movielens-100k"):
        load_movielens_100k(cache_dir=cache, expected=FIXTURE)
    with pytest.raises(InputError, match="cannot fetch MovieLens 100K"):  # no source enabled
        fetch_movielens_100k(cache_dir=cache, log=quiet, url=None, recbole=None, expected=FIXTURE)
    fetch_movielens_100k(path=make_fixture(tmp_path / "b", "wheel"), cache_dir=cache, log=quiet,
                         url=None, recbole=None, expected=FIXTURE)
    assert ratings_file.read_bytes() == normalized(RATINGS)
    again = fetch_movielens_100k(cache_dir=cache, log=quiet, url=None, recbole=None,
                                 expected=FIXTURE)
    assert again.source == "cache"


def test_unreadable_sources_are_one_line_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_movielens_100k(path=tmp_path / "nothing", expected=FIXTURE)
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t5\n")
    with pytest.raises(InputError, match="line 1 has 3 fields"):
        load_movielens_100k(path=bad, expected=FIXTURE)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("something.txt", "x")
    with pytest.raises(InputError, match="neither ml-100k/u.data"):
        load_movielens_100k(path=other, expected=FIXTURE)


# ----------------------------------------------------------------------------------------
# downloads through a real local HTTP server


class _Server:
    """Serves ``body`` at any path; with ``truncate`` it promises the whole body in
    Content-Length, sends half and closes the connection (a download failing halfway)."""

    def __init__(self, body: bytes, truncate: bool = False):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if truncate else body)
                self.wfile.flush()
                self.close_connection = True
                outer.requests += 1

            def log_message(self, *args):
                pass

        self.requests = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ml-100k.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def test_download_from_a_url(tmp_path):
    body = make_fixture(tmp_path / "src", "zip").read_bytes()
    cache = tmp_path / "cache"
    messages: list[str] = []
    with _Server(body) as server:
        result = fetch_movielens_100k(cache_dir=cache, log=messages.append, url=server.url,
                                      recbole=None, expected=FIXTURE)
    assert server.requests == 1
    assert result.source == f"grouplens {server.url}"
    assert any(m.startswith(f"downloading {server.url}") for m in messages)
    assert files_in(cache) == ["items.tsv", "ratings.tsv", "source.json"]  # no .part left


def test_a_download_failing_halfway_leaves_no_file(tmp_path):
    body = make_fixture(tmp_path / "src", "zip").read_bytes()
    cache = tmp_path / "cache"
    with _Server(body, truncate=True) as server:
        with pytest.raises(InputError, match="cannot fetch MovieLens 100K .*download http.*"
                                             "download incomplete: [0-9]+ of [0-9]+ bytes"):
            fetch_movielens_100k(cache_dir=cache, log=quiet, url=server.url, recbole=None,
                                 expected=FIXTURE)
    assert server.requests == 1
    assert files_in(cache) == []


def test_a_download_with_the_wrong_content_leaves_no_file(tmp_path):
    rows = [(u, i, r, t + 1) for u, i, r, t in RATINGS]  # every timestamp off by one
    body = make_fixture(tmp_path / "src", "zip", rows).read_bytes()
    cache = tmp_path / "cache"
    with _Server(body) as server, pytest.raises(InputError, match="SHA-256"):
        fetch_movielens_100k(cache_dir=cache, log=quiet, url=server.url, recbole=None,
                             expected=FIXTURE)
    assert files_in(cache) == []


# ----------------------------------------------------------------------------------------
# the real recbole wheel (only where pip reaches a registry) and the CLI


def test_the_real_recbole_wheel(tmp_path):
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "--quiet", "--dest", str(tmp_path / "probe"),
         "recbole==1.2.1"],
        capture_output=True, text=True, timeout=300,
    )
    if probe.returncode != 0:
        last = [x for x in probe.stderr.splitlines() if x.strip()][-1:] or ["?"]
        pytest.skip(f"pip download cannot reach a package registry here: {last[0]}")
    cache = tmp_path / "cache"
    result = fetch_movielens_100k(cache_dir=cache, log=quiet, url=None)  # the real checksum
    assert result.source.startswith("recbole-1.2.1 wheel")
    assert (result.num_ratings, result.num_users, result.num_items) == (100_000, 943, 1_682)
    assert result.sha256 == MOVIELENS_100K.sha256
    data = load_movielens_100k(cache_dir=cache)
    assert len(data.items) == 1_682 and data.item_titles["1"] == "Toy Story (1995)"


def test_cli_fetch_reports_a_bad_copy_on_one_line(tmp_path, capsys):
    from training.cli import main

    source = make_fixture(tmp_path / "src", "zip")
    code = main(["data", "fetch", "movielens-100k", "--path", str(source),
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tfrs-cosine: error: ") and err.count("\n") == 1
    assert "12 ratings, expected 100000" in err
    assert files_in(tmp_path / "cache") == []
