"""Interaction data sources and their registry (the schema is ``training.schema``).

Sources: ``synthetic`` (the clustered simulation of
Steck, Ekanadham & Kallus 2024, Section 4), ``file`` (CSV, TSV or Parquet with a
column mapping; a directory, a glob or TFRecord through ``training.sources``) and
``movielens-100k`` (training.movielens). ``data.user_vocabulary``,
``item_vocabulary``, ``min_count``, ``max_users`` and ``max_items`` set the model's
vocabularies (``LoadedData.users``/``items``); by default they are all ids.
Streaming sources (no rows in memory) are ``training.streaming``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.errors import InputError
from training.schema import Interactions, LoadedData, from_interactions

# ----------------------------------------------------------------------------------------
# synthetic


def generate_synthetic(
    num_users: int = 2000,
    num_items: int = 300,
    num_clusters: int = 5,
    seed: int = 0,
    min_items_per_user: int = 5,
    max_items_per_user: int = 100,
    user_exponent: float = 0.5,
    popularity_exponents: tuple[float, float] = (0.25, 1.5),
    cluster_concentration: float = 10.0,
    method: str = "draws",
) -> LoadedData:
    """The clustered simulation of Steck, Ekanadham & Kallus (2024), Section 4.

    * items are assigned to ``num_clusters`` clusters with probabilities ``p_c``
      (drawn from a symmetric Dirichlet with ``cluster_concentration``, so no cluster
      is nearly empty);
    * each cluster draws a power-law exponent ``beta_c ~ U(0.25, 1.5)``; the item of
      rank r (random order) within the cluster gets baseline popularity ``p_i ~ r^-beta_c``;
    * each user draws cluster preferences ``p_uc`` (flat Dirichlet) and
      ``p_ui = p_u,c(i) p_i / sum_j p_u,c(j) p_j``;
    * the number of items per user ``k_u`` follows a power law ``P(k) ~ k^-0.5`` on
      ``[min_items_per_user, max_items_per_user]`` (capped at the catalog size);
    * ``k_u`` items are sampled without replacement from ``p_ui``, in order: each next
      item is drawn from ``p_ui`` renormalized over the items not yet taken (successive
      sampling, what ``numpy``'s ``choice(replace=False, p=...)`` does).

    Timestamps are each user's sampling order, so leave-last-out works. Deterministic
    in ``seed`` (and ``method``). Returns ground-truth ``item_cluster`` and
    ``item_popularity``.

    ``method`` only changes how the same distribution is sampled:

    * ``"draws"`` (default): O(interactions) time, O(users x clusters + items +
      interactions) memory. Successive sampling without replacement equals keeping the
      first occurrence of each item in a stream of independent draws from ``p_ui``;
      a draw is a cluster from ``p_u,c P_c / Z_u`` (``P_c`` the cluster's popularity
      mass), then an item from ``p_i / P_c`` within it, vectorized over all users of a
      block, in rounds until each user has ``k_u`` distinct items. A user whose
      remaining items hold so little of its mass that drawing would cost more than a
      pass over the catalog is finished exactly by the per-user method.
    * ``"per-user"``: the reference, O(users x items): one ``choice`` over the whole
      catalog per user (the generator's original implementation, same draws).
    """
    if method not in ("draws", "per-user"):
        raise ValueError(f"unknown sampling method {method!r}; valid: draws, per-user")
    rng = np.random.default_rng(seed)
    cluster_probs = rng.dirichlet(np.full(num_clusters, cluster_concentration))
    cluster = rng.choice(num_clusters, size=num_items, p=cluster_probs)
    # Every cluster gets at least one item, so C is the true number of clusters.
    for c in range(num_clusters):
        if not np.any(cluster == c):
            cluster[rng.integers(num_items)] = c
    exponents = rng.uniform(*popularity_exponents, size=num_clusters)
    popularity = np.empty(num_items)
    for c in range(num_clusters):
        members = np.flatnonzero(cluster == c)
        ranks = rng.permutation(len(members)) + 1
        popularity[members] = ranks.astype(float) ** -exponents[c]
    popularity /= popularity.sum()

    high = min(max_items_per_user, num_items)
    low = min(min_items_per_user, high)
    support = np.arange(low, high + 1)
    count_probs = support.astype(float) ** -user_exponent
    counts = rng.choice(support, size=num_users, p=count_probs / count_probs.sum())
    preferences = rng.dirichlet(np.ones(num_clusters), size=num_users)

    if method == "per-user":
        chosen = _sample_per_user(
            rng, preferences, cluster, popularity, np.arange(num_users), counts
        )
        user_index = np.repeat(np.arange(num_users), counts)
        item_index = np.concatenate(chosen)
    else:
        user_index, item_index = _sample_by_draws(rng, preferences, cluster, popularity, counts)
    # Rows are grouped by user in sampling order: the timestamp is the rank in the group.
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    timestamp = np.arange(len(user_index)) - np.repeat(starts, counts)
    item_ids = np.array([f"i{i:0{len(str(num_items - 1))}d}" for i in range(num_items)])
    user_ids = np.array([f"u{u:0{len(str(num_users - 1))}d}" for u in range(num_users)])
    interactions = Interactions(
        user_id=user_ids[user_index],
        item_id=item_ids[item_index],
        timestamp=timestamp.astype(np.int64),
    )
    return LoadedData(
        interactions=interactions,
        items=item_ids,
        users=user_ids[counts > 0],  # zero-padded ids sort like their numbers
        description=(
            f"synthetic (users={num_users}, items={num_items}, clusters={num_clusters}, seed={seed})"
        ),
        item_cluster=cluster,
        item_popularity=popularity,
    )


def _sample_per_user(
    rng: np.random.Generator,
    preferences: np.ndarray,
    cluster: np.ndarray,
    popularity: np.ndarray,
    users: np.ndarray,
    counts: np.ndarray,
    taken: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """For each of ``users``, ``counts[k]`` more items by successive sampling from
    ``p_ui`` over the catalog minus ``taken[k]``. O(items) per user."""
    chosen = []
    for k, u in enumerate(users):
        p = preferences[u, cluster] * popularity
        if taken is not None:
            p[taken[k]] = 0.0
        chosen.append(rng.choice(len(p), size=counts[k], replace=False, p=p / p.sum()))
    return chosen


# Both bound the draws held at once and are part of the seeded stream.
_USERS_PER_BLOCK = 32_768  # at most 2**16, so block rows sort as 16-bit keys
_MAX_DRAWS_PER_ROUND = 4_000_000
_MAX_ROUNDS = 64


def _sample_by_draws(
    rng: np.random.Generator,
    preferences: np.ndarray,
    cluster: np.ndarray,
    popularity: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(user_index, item_index)`` of ``counts[u]`` items per user, grouped by user in
    sampling order (see ``generate_synthetic``, method ``"draws"``)."""
    num_items, num_clusters = len(cluster), preferences.shape[1]
    cluster_mass = np.bincount(cluster, weights=popularity, minlength=num_clusters)
    # Items grouped by cluster, with one alias table per cluster: an item of a given
    # cluster is then two uniform draws, O(1).
    by_cluster = np.argsort(cluster, kind="stable")
    cluster_start = np.searchsorted(cluster[by_cluster], np.arange(num_clusters + 1))
    cluster_size = np.diff(cluster_start)
    accept = np.ones(num_items)
    alias = np.arange(num_items)
    for c in range(num_clusters):
        lo, hi = cluster_start[c], cluster_start[c + 1]
        accept[lo:hi], alias[lo:hi] = _alias_table(popularity[by_cluster[lo:hi]])
        alias[lo:hi] += lo

    def draw_items(clusters: np.ndarray) -> np.ndarray:
        slot = cluster_start[clusters] + np.minimum(
            (rng.random(len(clusters)) * cluster_size[clusters]).astype(np.int64),
            cluster_size[clusters] - 1,
        )
        slot = np.where(rng.random(len(clusters)) < accept[slot], slot, alias[slot])
        return by_cluster[slot]

    users_out, items_out = [], []
    for first in range(0, len(counts), _USERS_PER_BLOCK):
        block = np.arange(first, min(first + _USERS_PER_BLOCK, len(counts)))
        weights = preferences[block] * cluster_mass  # (b, C): p_u,c P_c
        normalizer = weights.sum(axis=1)
        # Row r's cluster cdf shifted by r, flattened: one searchsorted draws clusters.
        cluster_key = (np.arange(len(block))[:, None]
                       + np.cumsum(weights, axis=1) / normalizer[:, None]).ravel()
        need = counts[block].astype(np.int64)
        mass = np.zeros(len(block))  # p_ui summed over the items each user has taken
        taken_keys = np.zeros(0, dtype=np.int64)  # sorted row * num_items + item
        pieces: list[tuple[np.ndarray, np.ndarray]] = []
        for _ in range(_MAX_ROUNDS):
            remaining = np.maximum(1.0 - mass, 0.0)
            # Expected draws per new item are 1 / remaining mass: stop drawing for a user
            # once that costs more than the per-user pass over the catalog.
            expected = need / np.maximum(remaining, 1e-300)
            active = np.flatnonzero((need > 0) & (expected <= num_items))
            if len(active) == 0:
                break
            draws = np.ceil(1.5 * expected[active]).astype(np.int64) + 4
            fits = np.cumsum(draws) <= _MAX_DRAWS_PER_ROUND
            fits[0] = True  # the others wait for the next round
            rows = np.repeat(active[fits], draws[fits])
            position = np.searchsorted(cluster_key, rows + rng.random(len(rows)), side="right")
            clusters = np.clip(position - rows * num_clusters, 0, num_clusters - 1)
            items = draw_items(clusters)
            # First occurrence of each (user, item) in draw order, not taken before, and
            # only as many per user as it still needs.
            keys = rows * num_items + items
            first_draw, distinct = _first_draws(keys)
            new = ~_contains(taken_keys, distinct)
            first_draw, distinct = first_draw[new], distinct[new]
            chosen = np.zeros(len(keys), dtype=bool)
            chosen[first_draw] = True
            draw = np.flatnonzero(chosen)  # in draw order, so grouped by user
            keep = _rank_in_group(rows[draw]) < need[rows[draw]]
            chosen[draw[~keep]] = False
            rows, items = rows[draw[keep]], items[draw[keep]]
            pieces.append((rows, items))
            need -= np.bincount(rows, minlength=len(block))
            p = preferences[block[rows], cluster[items]] * popularity[items] / normalizer[rows]
            mass += np.bincount(rows, weights=p, minlength=len(block))
            # Two sorted disjoint runs: the stable sort (timsort) merges them in linear time.
            taken_keys = np.sort(
                np.concatenate([taken_keys, distinct[chosen[first_draw]]]), kind="stable"
            )
        late = np.flatnonzero(need > 0)
        if len(late):
            taken_rows, taken_items = taken_keys // num_items, taken_keys % num_items
            bounds = np.searchsorted(taken_rows, np.stack([late, late + 1]))
            taken = [taken_items[lo:hi] for lo, hi in bounds.T]
            chosen = _sample_per_user(
                rng, preferences, cluster, popularity, block[late], need[late], taken
            )
            pieces.append((np.repeat(late, need[late]), np.concatenate(chosen)))
        rows = np.concatenate([r for r, _ in pieces])
        items = np.concatenate([i for _, i in pieces])
        # Group by user; a stable sort keeps each user's items in sampling order.
        order = np.argsort(rows.astype(np.uint16), kind="stable")  # radix: 16-bit keys
        users_out.append(block[rows[order]])
        items_out.append(items[order])
    return np.concatenate(users_out), np.concatenate(items_out)


def _alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table (Vose's construction) for drawing ``k`` with probability
    ``weights[k] / sum(weights)``: draw a slot ``j`` uniformly, keep it with probability
    ``accept[j]``, else take ``alias[j]``. O(len(weights)) to build."""
    n = len(weights)
    scaled = (weights * (n / weights.sum())).tolist()
    accept, alias = np.ones(n), np.arange(n)
    small = [k for k in range(n) if scaled[k] < 1.0]
    large = [k for k in range(n) if scaled[k] >= 1.0]
    while small and large:
        s, g = small.pop(), large[-1]
        accept[s], alias[s] = scaled[s], g
        scaled[g] += scaled[s] - 1.0
        if scaled[g] < 1.0:
            small.append(large.pop())
    return accept, alias


def _rank_in_group(groups: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (``groups`` sorted)."""
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], groups[1:] != groups[:-1]]))
    sizes = np.diff(np.concatenate([starts, [len(groups)]]))
    return np.arange(len(groups)) - np.repeat(starts, sizes)


def _first_draws(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, distinct)``: the sorted distinct non-negative ``keys`` and the index of
    each one's first occurrence. One sort of ``key << b | index`` values (no argsort)."""
    shift = max(len(keys) - 1, 1).bit_length()
    if len(keys) == 0 or int(keys.max()).bit_length() + shift > 62:
        distinct, first = np.unique(keys, return_index=True)
        return first, distinct
    packed = np.sort((keys << shift) | np.arange(len(keys)))
    sorted_keys = packed >> shift
    run_start = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]])
    return packed[run_start] & ((1 << shift) - 1), sorted_keys[run_start]


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` is in ``sorted_keys`` (sorted, unique)."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[position] == keys


# ----------------------------------------------------------------------------------------
# files

_COLUMNS = ("user_id", "item_id", "timestamp", "weight")


def read_interactions_file(
    path: str | Path, format: str = "", columns: dict[str, str] | None = None
) -> LoadedData:
    """Reads CSV, TSV or Parquet. ``columns`` maps schema names to the file's columns.

    Rows with an empty user or item id are dropped; an empty file, a file without a
    valid row, a missing column or a NaN/infinite weight is an ``InputError``.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    columns = dict(columns or {})
    unknown = set(columns) - set(_COLUMNS)
    if unknown:
        raise InputError(f"unknown data.columns key(s) {sorted(unknown)}; valid: {', '.join(_COLUMNS)}")
    format = format or {".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}.get(
        path.suffix.lower(), "csv"
    )
    try:
        if format == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if format == "tsv" else ",", dtype=str,
                                keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"data file {path} is empty") from None
    except Exception as e:  # parser errors name the line; keep them on one line
        raise InputError(f"cannot read data file {path}: {str(e).splitlines()[0]}") from None
    if len(frame) == 0:
        raise InputError(f"data file {path} has no rows")
    mapping = {name: columns.get(name, name) for name in _COLUMNS}
    for name in ("user_id", "item_id"):
        if mapping[name] not in frame.columns:
            raise InputError(
                f"data file {path} has no column {mapping[name]!r} for {name}; "
                f"columns: {', '.join(map(str, frame.columns))}"
            )
    for name in ("timestamp", "weight"):
        if name in columns and mapping[name] not in frame.columns:
            raise InputError(f"data file {path} has no column {mapping[name]!r} for {name}")

    def ids(name: str) -> np.ndarray:
        values = frame[mapping[name]]
        return values.fillna("").astype(str).str.strip().to_numpy(dtype=str)

    user_id, item_id = ids("user_id"), ids("item_id")
    valid = (user_id != "") & (item_id != "")
    if not valid.any():
        raise InputError(f"data file {path} has no row with both a user id and an item id")

    def numeric(name: str, dtype) -> np.ndarray | None:
        if mapping[name] not in frame.columns:
            return None
        values = pd.to_numeric(frame[mapping[name]].replace("", np.nan), errors="coerce")
        array = values.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(array) & valid
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"data file {path}: {name} column {mapping[name]!r} has {int(bad.sum())} "
                f"missing, NaN or non-numeric value(s), first at data row {row + 1}"
            )
        return array.astype(dtype)

    timestamp = numeric("timestamp", np.int64)
    weight = numeric("weight", np.float32)
    interactions = Interactions(user_id, item_id, timestamp, weight).subset(valid)
    dropped = int((~valid).sum())
    note = f", {dropped} rows without ids dropped" if dropped else ""
    return from_interactions(interactions, f"file {path} ({len(interactions)} interactions{note})")


# ----------------------------------------------------------------------------------------
# registry

def load_data(config) -> LoadedData:
    """Loads the data a ``DataConfig`` names."""
    if config.source == "synthetic":
        data = generate_synthetic(
            num_users=config.num_users,
            num_items=config.num_items,
            num_clusters=config.num_clusters,
            seed=config.seed,
            min_items_per_user=config.min_items_per_user,
            max_items_per_user=config.max_items_per_user,
        )
        return _with_vocabulary(data, config)
    if config.source == "file":
        return _with_vocabulary(_read_file_source(config), config)
    if config.source == "movielens-100k":
        from training.movielens import load_movielens_100k

        return _with_vocabulary(load_movielens_100k(path=config.path or None), config)
    raise InputError(
        f"unknown data.source {config.source!r}; valid: synthetic, file, movielens-100k"
    )


def _read_file_source(config) -> LoadedData:
    """One CSV/TSV/Parquet file through pandas; shards (a directory, a glob, TFRecord)
    through the streaming reader (``training.sources``), gathered in memory."""
    from training.shard_files import is_sharded

    if not is_sharded(config.path, config.format):
        return read_interactions_file(config.path, config.format, config.columns)
    from training.sources import open_shards, read_interactions

    shards = open_shards(config.path, config.format, config.columns)
    interactions, dropped = read_interactions(shards)
    note = f", {dropped} rows without ids dropped" if dropped else ""
    return from_interactions(
        interactions, f"files {shards.describe()} ({len(interactions)} interactions{note})"
    )


def _with_vocabulary(data: LoadedData, config) -> LoadedData:
    """Vocabulary files, ``min_count`` and maximum sizes (no change by default)."""
    if not (config.user_vocabulary or config.item_vocabulary or config.min_count > 1
            or config.max_users or config.max_items):
        return data
    from training.vocabulary import apply_vocabulary

    return apply_vocabulary(data, config)
