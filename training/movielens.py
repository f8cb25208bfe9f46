"""MovieLens 100K, offline: fetch once into a local cache, verify, load as ``LoadedData``.

Sources, tried in order by ``fetch_movielens_100k``:

1. ``path``: a local ``u.data`` (or a folder holding it), the GroupLens ``ml-100k.zip``,
   or a wheel holding RecBole's copy (``recbole-1.2.1-py3-none-any.whl``);
2. the GroupLens download ``https://files.grouplens.org/datasets/movielens/ml-100k.zip``;
3. the copy of the same 100,000 ratings inside the MIT-licensed ``recbole==1.2.1`` wheel
   (about 2 MB), fetched with ``pip download --no-deps`` into a temporary folder and read
   straight from the wheel (``recbole/dataset_example/ml-100k/ml-100k.inter`` and
   ``.item``); neither RecBole nor torch is installed.

What was read is normalized (one row per rating, sorted by user then item, so every
source gives the same bytes) and verified before anything is cached: 100,000 ratings,
943 users, 1,682 items and the SHA-256 of the normalized ratings; a mismatch is an
``InputError``. The cache (``$XDG_CACHE_HOME/tfrs_cosine/movielens-100k``, default
``~/.cache/tfrs_cosine``) holds

* ``ratings.tsv``: ``user_id  item_id  rating  timestamp`` (tab-separated, a header line);
* ``items.tsv``: ``item_id  title  release_year  genres`` (UTF-8; ``genres`` are GroupLens
  genre names joined by ``|``, in ``GENRES`` order, and are checksummed like the ratings
  (``Expected.genres_sha256``); titles and years are informational and not checksummed:
  the GroupLens file and RecBole's copy format them slightly differently);
* ``source.json``: where the data came from and its checksum.

Every file is written to a temporary name and renamed into place, and downloads go to a
temporary file that is removed on any failure, so an interrupted fetch leaves no partial
file. The data is never committed to the repository (GroupLens terms: research use only,
no redistribution).

Training uses the ratings as implicit feedback, like the TFRS retrieval tutorials:
``LoadedData.interactions`` has user and item ids and timestamps, and no weights; the
ratings stay in the cache (``read_ratings``).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data_cli import data_commands
from training.errors import InputError
from training.schema import Interactions, LoadedData

NAME = "movielens-100k"
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
WHEEL_INTER = "recbole/dataset_example/ml-100k/ml-100k.inter"
WHEEL_ITEM = "recbole/dataset_example/ml-100k/ml-100k.item"
DOWNLOAD_TIMEOUT = 15.0  # seconds without data before the GroupLens download gives up
PIP_TIMEOUT = 300.0  # seconds for `pip download`
RATINGS_HEADER = "user_id\titem_id\trating\ttimestamp\n"
ITEMS_HEADER = "item_id\ttitle\trelease_year\tgenres\n"
# GroupLens u.genre order: the 19 flags of u.item, and the tokens of RecBole's `class`.
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class Expected:
    """What a correct copy contains; the checksum is the SHA-256 of ``ratings.tsv``."""

    num_ratings: int
    num_users: int
    num_items: int
    sha256: str
    # SHA-256 of ``genre_table`` (every item's genres); None: genres are not checked.
    genres_sha256: str | None = None


@dataclass(frozen=True)
class Item:
    """What the item file says about a movie (``year`` None when unknown)."""

    title: str = ""
    year: int | None = None
    genres: tuple[str, ...] = ()


# Computed once from the ratings in the recbole 1.2.1 wheel (identical to GroupLens's
# u.data: same 100,000 rows in the same order) after normalization.
MOVIELENS_100K = Expected(
    num_ratings=100_000,
    num_users=943,
    num_items=1_682,
    sha256="d3bdffbd7201de56f88e824ba53d798e196735c7f93d310fe22c6aff305ec103",
    # genre_table of the wheel's `class` column. GroupLens's u.item flags should give
    # the same bytes (same 19 genres, same per-genre counts: Drama 725, Comedy 505, ...);
    # not checked against GroupLens itself, which is unreachable from this machine.
    genres_sha256="807d2aceae088faf64bf09d71721b473db8cc2a5ca17e4db0cea4675c44303a9",
)


@dataclass(frozen=True)
class Ratings:
    """The normalized ratings: parallel ``(N,)`` arrays, sorted by user then item."""

    user_id: np.ndarray  # int64
    item_id: np.ndarray  # int64
    rating: np.ndarray  # int64, 1..5
    timestamp: np.ndarray  # int64, Unix seconds

    def __len__(self) -> int:
        return len(self.user_id)


@dataclass(frozen=True)
class FetchResult:
    """Where the cached copy is and what it holds."""

    source: str  # "cache", "path <p>", "grouplens <url>" or "recbole-1.2.1 wheel (pip download)"
    directory: Path
    num_ratings: int
    num_users: int
    num_items: int
    sha256: str
    num_titles: int


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tfrs_cosine`` (default ``~/.cache/tfrs_cosine``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tfrs_cosine"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# parsing: every format -> (Ratings, items)


def _parse_ratings(text: str, origin: str, header: bool) -> Ratings:
    """Tab-separated ``user item rating timestamp`` lines (u.data, or RecBole's .inter)."""
    lines = text.splitlines()
    first = 1 if header else 0
    if header and (not lines or not lines[0].startswith("user_id")):
        raise InputError(f"{origin}: expected a header line starting with 'user_id'")
    columns: list[list[int]] = [[], [], [], []]
    for number, line in enumerate(lines[first:], start=first + 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise InputError(f"{origin}: line {number} has {len(fields)} fields, expected 4")
        try:
            values = [int(fields[0]), int(fields[1]), int(float(fields[2])), int(float(fields[3]))]
        except ValueError:
            raise InputError(f"{origin}: line {number} is not four numbers: {line[:60]!r}") from None
        if not 1 <= values[2] <= 5:
            raise InputError(f"{origin}: line {number} has rating {values[2]}, expected 1..5")
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    if not columns[0]:
        raise InputError(f"{origin}: no ratings")
    user, item, rating, timestamp = (np.array(c, dtype=np.int64) for c in columns)
    order = np.lexsort((timestamp, item, user))
    return Ratings(user[order], item[order], rating[order], timestamp[order])


def _genres(tokens: list[str], origin: str) -> tuple[str, ...]:
    unknown = sorted(set(tokens) - set(GENRES))
    if unknown:
        raise InputError(f"{origin}: unknown genre(s) {unknown}")
    return tuple(g for g in GENRES if g in tokens)


def _parse_u_item(data: bytes) -> dict[int, Item]:
    """GroupLens ``u.item``: Latin-1, ``id|title|release date|video date|url|`` then 19
    genre flags (``GENRES`` order); a line without all 19 flags has no genres."""
    items = {}
    for line in data.decode("latin-1").splitlines():
        fields = line.split("|")
        if len(fields) >= 2 and fields[0].strip().isdigit():
            date = fields[2].strip() if len(fields) > 2 else ""
            year = date[-4:] if date[-4:].isdigit() else ""
            flags = fields[5:24] if len(fields) >= 24 else []
            genres = tuple(g for g, flag in zip(GENRES, flags, strict=False) if flag.strip() == "1")
            items[int(fields[0])] = Item(fields[1].strip(), int(year) if year else None, genres)
    return items


def _parse_recbole_item(data: bytes) -> dict[int, Item]:
    """RecBole ``.item``: ``item_id  movie_title  release_year  class``; the title is
    written as GroupLens does, ``Title (year)``; ``class`` holds the genre names."""
    items = {}
    for number, line in enumerate(data.decode("utf-8").splitlines()[1:], start=2):
        fields = line.split("\t")
        if len(fields) >= 3 and fields[0].strip().isdigit():
            title, year = fields[1].strip(), fields[2].strip()
            tokens = fields[3].split() if len(fields) > 3 else []
            items[int(fields[0])] = Item(
                f"{title} ({year})" if year.isdigit() else title,
                int(year) if year.isdigit() else None,
                _genres(tokens, f"{WHEEL_ITEM} line {number}"),
            )
    return items


def read_source(path: str | Path) -> tuple[Ratings, dict[int, str]]:
    """Reads ratings and titles from a local ``u.data`` (titles from a ``u.item`` beside
    it, if any), a folder holding ``u.data``, the GroupLens ``ml-100k.zip``, or a wheel
    holding RecBole's ``ml-100k.inter`` / ``ml-100k.item``. Not verified."""
    ratings, items = read_source_items(path)
    return ratings, {k: v.title for k, v in items.items()}


def read_source_items(path: str | Path) -> tuple[Ratings, dict[int, Item]]:
    """``read_source`` with everything the item file holds (title, year, genres)."""
    path = Path(path)
    if path.is_dir():
        path = path / "u.data"
    if not path.is_file():
        raise InputError(f"MovieLens file not found: {path}")
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    text = path.read_bytes().decode("latin-1")
    ratings = _parse_ratings(text, str(path), header=text.startswith("user_id"))
    u_item = path.with_name("u.item")
    items = _parse_u_item(u_item.read_bytes()) if u_item.is_file() else {}
    return ratings, items


def _read_zip(path: Path) -> tuple[Ratings, dict[int, Item]]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise InputError(f"{path} is not a readable zip file: {e}") from None
    with archive:
        names = archive.namelist()
        if WHEEL_INTER in names:  # the RecBole wheel
            ratings = _parse_ratings(
                archive.read(WHEEL_INTER).decode("utf-8"), f"{path}!{WHEEL_INTER}", header=True
            )
            items = _parse_recbole_item(archive.read(WHEEL_ITEM)) if WHEEL_ITEM in names else {}
            return ratings, items
        data = [n for n in names if n.rsplit("/", 1)[-1] == "u.data"]
        if not data:
            raise InputError(
                f"{path} holds neither ml-100k/u.data nor {WHEEL_INTER}; is it ml-100k.zip?"
            )
        ratings = _parse_ratings(
            archive.read(data[0]).decode("latin-1"), f"{path}!{data[0]}", header=False
        )
        item = data[0][: -len("u.data")] + "u.item"
        items = _parse_u_item(archive.read(item)) if item in names else {}
        return ratings, items


# ----------------------------------------------------------------------------------------
# normalized form, verification, cache


def normalized_ratings(ratings: Ratings) -> bytes:
    """The cache's ``ratings.tsv`` bytes (the checksummed content)."""
    out = io.StringIO()
    out.write(RATINGS_HEADER)
    for row in zip(
        ratings.user_id.tolist(), ratings.item_id.tolist(),
        ratings.rating.tolist(), ratings.timestamp.tolist(), strict=True,
    ):
        out.write("\t".join(map(str, row)) + "\n")
    return out.getvalue().encode("ascii")


def genre_table(items: dict[int, Item], catalog: np.ndarray) -> bytes:
    """The checksummed genre content: ``item_id<TAB>genres`` (``|``-joined) per catalog
    item, in id order."""
    return "".join(
        f"{item}\t{'|'.join(items.get(item, Item()).genres)}\n" for item in catalog.tolist()
    ).encode("ascii")


def verify_genres(items: dict[int, Item], catalog: np.ndarray, expected: Expected,
                  origin: str) -> None:
    """Checks the genres against ``expected.genres_sha256`` (skipped when that is None or
    the source has no genres); ``InputError`` on a mismatch."""
    if expected.genres_sha256 is None or not any(v.genres for v in items.values()):
        return
    digest = hashlib.sha256(genre_table(items, catalog)).hexdigest()
    if digest != expected.genres_sha256:
        raise InputError(
            f"{origin}: SHA-256 of the item genres is {digest}, expected {expected.genres_sha256}"
        )


def verify(ratings: Ratings, content: bytes, expected: Expected, origin: str) -> str:
    """Checks counts and checksum; returns the SHA-256. Raises ``InputError`` on a mismatch."""
    counts = {
        "ratings": (len(ratings), expected.num_ratings),
        "users": (len(np.unique(ratings.user_id)), expected.num_users),
        "items": (len(np.unique(ratings.item_id)), expected.num_items),
    }
    for what, (got, want) in counts.items():
        if got != want:
            raise InputError(f"{origin}: {got} {what}, expected {want}; not MovieLens 100K?")
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected.sha256:
        raise InputError(
            f"{origin}: SHA-256 of the normalized ratings is {digest}, expected {expected.sha256}"
        )
    return digest


def _write_atomic(path: Path, content: bytes) -> None:
    """Writes ``content`` to a temporary file beside ``path`` and renames it into place."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp creates 0600; cache files are ordinary
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _store(
    directory: Path, ratings: Ratings, items: dict[int, Item], source: str, expected: Expected,
    origin: str,
) -> FetchResult:
    content = normalized_ratings(ratings)
    digest = verify(ratings, content, expected, origin)  # nothing is written unless verified
    catalog = np.unique(ratings.item_id)
    verify_genres(items, catalog, expected, origin)
    directory.mkdir(parents=True, exist_ok=True)
    lines = ITEMS_HEADER + "".join(
        f"{item}\t{info.title}\t{'' if info.year is None else info.year}\t"
        f"{'|'.join(info.genres)}\n"
        for item, info in ((k, items.get(k, Item())) for k in catalog.tolist())
    )
    _write_atomic(directory / "items.tsv", lines.encode("utf-8"))
    titles = {k: v.title for k, v in items.items() if v.title}
    info = {"dataset": NAME, "source": source, "sha256": digest, "num_ratings": len(ratings)}
    _write_atomic(directory / "source.json", (json.dumps(info, indent=2) + "\n").encode())
    _write_atomic(directory / "ratings.tsv", content)  # last: its presence marks completeness
    return _result(directory, ratings, digest, source, len(titles))


def _result(directory: Path, ratings: Ratings, digest: str, source: str, num_titles: int):
    return FetchResult(
        source=source,
        directory=directory,
        num_ratings=len(ratings),
        num_users=len(np.unique(ratings.user_id)),
        num_items=len(np.unique(ratings.item_id)),
        sha256=digest,
        num_titles=num_titles,
    )


def read_ratings(
    cache_dir: str | Path | None = None, expected: Expected = MOVIELENS_100K
) -> tuple[Ratings, dict[str, str]]:
    """The cached ratings (verified again) and titles; ``InputError`` if missing or bad."""
    directory = Path(cache_dir or default_cache_dir()) / NAME
    path = directory / "ratings.tsv"
    if not path.is_file():
        raise InputError(
            f"MovieLens 100K is not in the cache ({directory}): "
            f"run `tfrs-cosine data fetch {NAME}`"
        )
    content = path.read_bytes()
    ratings = _parse_ratings(content.decode("ascii", errors="replace"), str(path), header=True)
    try:
        verify(ratings, content, expected, str(path))
    except InputError as e:
        raise InputError(f"{e}; run `tfrs-cosine data fetch {NAME}` to replace it") from None
    titles = {k: v.title for k, v in _read_items_file(directory).items() if v.title}
    return ratings, titles


def _read_items_file(directory: Path) -> dict[str, Item]:
    """``items.tsv`` of the cache (also the older ``item_id  title`` form, without genres)."""
    items: dict[str, Item] = {}
    path = directory / "items.tsv"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            fields = line.split("\t")
            year = fields[2] if len(fields) > 2 else ""
            genres = tuple(fields[3].split("|")) if len(fields) > 3 and fields[3] else ()
            items[fields[0]] = Item(fields[1] if len(fields) > 1 else "",
                                    int(year) if year.isdigit() else None, genres)
    return items


def _has_genres(directory: Path) -> bool:
    path = directory / "items.tsv"
    with path.open(encoding="utf-8") as f:
        return f.readline() == ITEMS_HEADER


def read_items(
    cache_dir: str | Path | None = None, expected: Expected = MOVIELENS_100K
) -> dict[str, Item]:
    """The cached items (title, release year, genres) by item id, genres verified again.

    Raises ``InputError`` when the cache is missing, holds no genres (a copy fetched
    before genres were cached, or from a source without ``u.item``) or fails the check.
    """
    ratings, _ = read_ratings(cache_dir, expected)
    directory = Path(cache_dir or default_cache_dir()) / NAME
    items = _read_items_file(directory)
    if not any(v.genres for v in items.values()):
        raise InputError(
            f"the cached MovieLens 100K in {directory} has no genres: run "
            f"`tfrs-cosine data fetch {NAME}` (with --path, a source that has u.item)"
        )
    by_number = {int(k): v for k, v in items.items()}
    verify_genres(by_number, np.unique(ratings.item_id), expected, str(directory / "items.tsv"))
    return items


# ----------------------------------------------------------------------------------------
# remote sources


def _download(url: str, directory: Path, timeout: float) -> tuple[Ratings, dict[int, Item]]:
    """Downloads ``url`` to a temporary file in ``directory`` (removed afterwards, also on
    failure) and reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".download.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, f)
            received, promised = f.tell(), response.headers.get("Content-Length")
        # http.client returns a short body without an error when the connection drops.
        if promised is not None and promised.isdigit() and received != int(promised):
            raise InputError(f"download incomplete: {received} of {promised} bytes")
        if not zipfile.is_zipfile(temp):
            raise InputError(f"{url} did not return a zip file ({received} bytes)")
        return read_source_items(temp)
    finally:
        Path(temp).unlink(missing_ok=True)


def _recbole_wheel(requirement: str, timeout: float) -> tuple[Ratings, dict[int, Item]]:
    """``pip download --no-deps REQUIREMENT`` into a temporary folder; reads the wheel."""
    with tempfile.TemporaryDirectory(prefix="tfrs_cosine_recbole_") as folder:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", "--dest", folder, requirement,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise InputError(f"pip download {requirement} timed out after {timeout:.0f} s") from None
        except OSError as e:
            raise InputError(f"cannot run pip: {e}") from None
        if done.returncode != 0:
            lines = [x for x in (done.stderr or done.stdout).splitlines() if x.strip()]
            raise InputError(f"pip download {requirement} failed: {lines[-1] if lines else '?'}")
        wheels = sorted(Path(folder).glob("*.whl"))
        if not wheels:
            raise InputError(f"pip download {requirement} produced no wheel")
        return read_source_items(wheels[0])


def fetch_movielens_100k(
    path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    log: Log = print,
    *,
    url: str | None = GROUPLENS_URL,
    recbole: str | None = RECBOLE_REQUIREMENT,
    expected: Expected = MOVIELENS_100K,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> FetchResult:
    """Puts verified MovieLens 100K into the cache and says where it came from.

    With ``path`` that file is read (and replaces any cached copy). Without it a valid
    cached copy is kept; otherwise the GroupLens ``url`` is tried, then the ``recbole``
    wheel (either may be None to skip it). ``expected`` is what the copy must contain.

    Raises:
      InputError: the source is unreadable or fails verification, or no source worked.
    """
    directory = Path(cache_dir or default_cache_dir()) / NAME
    if path is not None:
        log(f"reading MovieLens 100K from {path}")
        ratings, items = read_source_items(path)
        return _store(directory, ratings, items, f"path {path}", expected, str(path))

    if (directory / "ratings.tsv").is_file():
        try:
            ratings, titles = read_ratings(cache_dir, expected)
            if expected.genres_sha256 is not None and not _has_genres(directory):
                raise InputError("it was cached without genres")
            info = _source_info(directory)
            log(f"MovieLens 100K already cached in {directory} (from {info})")
            return _result(directory, ratings, expected.sha256, "cache", len(titles))
        except (InputError, OSError) as e:
            log(f"cached copy is not valid ({e}); fetching it again")

    failures = []
    if url:
        log(f"downloading {url} (timeout {timeout:g} s)")
        try:
            ratings, items = _download(url, directory, timeout)
        except (OSError, http.client.HTTPException, ValueError, InputError) as e:
            reason = _one_line(e)
            log(f"  download failed: {reason}")
            failures.append(f"download {url}: {reason}")
        else:
            return _store(directory, ratings, items, f"grouplens {url}", expected, url)
    if recbole:
        log(f"fetching RecBole's copy: pip download --no-deps {recbole} (not installed)")
        try:
            ratings, items = _recbole_wheel(recbole, PIP_TIMEOUT)
        except InputError as e:
            log(f"  failed: {e}")
            failures.append(str(e))
        else:
            source = f"{recbole.replace('==', '-')} wheel (pip download), {WHEEL_INTER}"
            return _store(directory, ratings, items, source, expected, source)
    raise InputError(
        "cannot fetch MovieLens 100K ("
        + ("; ".join(failures) or "no source enabled")
        + "); pass --path to a local u.data or ml-100k.zip"
    )


def _source_info(directory: Path) -> str:
    try:
        return json.loads((directory / "source.json").read_text())["source"]
    except (OSError, ValueError, KeyError):
        return "unknown source"


def _one_line(error: BaseException) -> str:
    text = str(getattr(error, "reason", None) or error) or type(error).__name__
    return text.splitlines()[0] if text else type(error).__name__


# ----------------------------------------------------------------------------------------
# the data source


def load_movielens_100k(
    path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    expected: Expected = MOVIELENS_100K,
    log: Log = _stderr,
) -> LoadedData:
    """MovieLens 100K as implicit feedback: every rating is an interaction.

    With ``path`` the file is read and verified directly (the cache is not touched);
    otherwise the cached copy is used, fetched first if absent. Ids are the MovieLens
    integer ids as strings; ``timestamp`` is set, ``weight`` is None (the ratings are in
    the cache: ``read_ratings``); ``items`` is the 1,682-item catalog; ``item_titles``
    maps ids to titles.
    """
    if path is not None:
        ratings, raw_titles = read_source(path)
        verify(ratings, normalized_ratings(ratings), expected, str(path))
        titles = {str(k): v for k, v in raw_titles.items() if v}
        origin = str(path)
    else:
        directory = Path(cache_dir or default_cache_dir()) / NAME
        if not (directory / "ratings.tsv").is_file():
            fetch_movielens_100k(cache_dir=cache_dir, log=log, expected=expected)
        ratings, titles = read_ratings(cache_dir, expected)
        origin = f"{directory} (from {_source_info(directory)})"
    interactions = Interactions(
        user_id=ratings.user_id.astype(str),
        item_id=ratings.item_id.astype(str),
        timestamp=ratings.timestamp.astype(np.int64),
    )
    return LoadedData(
        interactions=interactions,
        items=np.unique(interactions.item_id),
        users=np.unique(interactions.user_id),
        description=(
            f"{NAME} ({len(ratings)} ratings as implicit interactions, "
            f"{expected.num_users} users, {expected.num_items} items; {origin})"
        ),
        item_titles=titles or None,
    )


# ----------------------------------------------------------------------------------------
# CLI: tfrs-cosine data fetch movielens-100k [--path P]


def register(subparsers) -> None:
    """Adds ``data fetch movielens-100k [--path P] [--cache-dir D]`` to the CLI."""
    commands = data_commands(subparsers)
    fetch = commands.add_parser(
        "fetch",
        help="download a dataset into the local cache and verify it",
        description=(
            "Puts MovieLens 100K (ratings, titles, years and genres) into $XDG_CACHE_HOME/tfrs_cosine "
            "(default ~/.cache/tfrs_cosine), trying --path, then the GroupLens download, then "
            "the copy inside the recbole==1.2.1 wheel (pip download, not installed). The data "
            "is for research use and is never committed (GroupLens terms)."
        ),
    )
    fetch.add_argument("dataset", choices=[NAME])
    fetch.add_argument("--path", help="a local u.data, ml-100k.zip or recbole wheel")
    fetch.add_argument("--cache-dir", help="cache folder (default $XDG_CACHE_HOME/tfrs_cosine)")
    fetch.set_defaults(func=_fetch_command)


def _fetch_command(args) -> int:
    result = fetch_movielens_100k(path=args.path, cache_dir=args.cache_dir, log=print)
    print(
        f"{NAME}: {result.num_ratings} ratings, {result.num_users} users, {result.num_items} "
        f"items, {result.num_titles} titles, sha256 {result.sha256}"
    )
    print(f"source: {result.source}")
    print(f"cached in {result.directory}")
    return 0
