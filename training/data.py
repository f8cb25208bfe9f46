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
from training.side_tables import read_frame

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
    * ``k_u`` items are sampled without replacement from ``p_ui``.

    Timestamps are each user's sampling order, so leave-last-out works. Deterministic
    in ``seed``. Returns ground-truth ``item_cluster`` and ``item_popularity``.
    """
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

    users, items, order = [], [], []
    for u in range(num_users):
        p = preferences[u, cluster] * popularity
        chosen = rng.choice(num_items, size=counts[u], replace=False, p=p / p.sum())
        users.append(np.full(len(chosen), u))
        items.append(chosen)
        order.append(np.arange(len(chosen)))
    user_index = np.concatenate(users)
    item_index = np.concatenate(items)
    item_ids = np.array([f"i{i:0{len(str(num_items - 1))}d}" for i in range(num_items)])
    user_ids = np.array([f"u{u:0{len(str(num_users - 1))}d}" for u in range(num_users)])
    interactions = Interactions(
        user_id=user_ids[user_index],
        item_id=item_ids[item_index],
        timestamp=np.concatenate(order).astype(np.int64),
    )
    return LoadedData(
        interactions=interactions,
        items=item_ids,
        users=np.unique(interactions.user_id),
        description=(
            f"synthetic (users={num_users}, items={num_items}, clusters={num_clusters}, seed={seed})"
        ),
        item_cluster=cluster,
        item_popularity=popularity,
    )


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
    frame = read_frame(path, format, "data file")
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
        return _with_vocabulary(_with_side_tables(data, config), config)
    if config.source == "file":
        return _with_vocabulary(_with_side_tables(_read_file_source(config), config), config)
    if config.source == "movielens-100k":
        from training.movielens import load_movielens_100k

        data = load_movielens_100k(path=config.path or None)
        return _with_vocabulary(_with_side_tables(data, config), config)
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


def _with_side_tables(data: LoadedData, config) -> LoadedData:
    """The side tables ``data.user_features`` / ``data.item_features`` name (they replace
    a source's own); the items of an item table join the catalog."""
    if not (config.user_features or config.item_features):
        return data
    import dataclasses

    from training.side_tables import read_optional

    columns = config.columns
    users = read_optional(config.user_features, columns.get("user_id", "user_id"), "user table")
    items = read_optional(config.item_features, columns.get("item_id", "item_id"), "item table")
    item_table = items or data.item_table
    catalog = data.items if items is None else np.union1d(data.items, items.ids)
    extra = len(catalog) - len(data.items)
    truth = {"item_cluster": None, "item_popularity": None} if extra else {}
    return dataclasses.replace(
        data,
        **truth,
        user_table=users or data.user_table,
        item_table=item_table,
        items=catalog,
        description=data.description
        + (f"; {extra} items of the item table without interactions" if extra else ""),
    )


def _with_vocabulary(data: LoadedData, config) -> LoadedData:
    """Vocabulary files, ``min_count`` and maximum sizes (no change by default)."""
    if not (config.user_vocabulary or config.item_vocabulary or config.min_count > 1
            or config.max_users or config.max_items):
        return data
    from training.vocabulary import apply_vocabulary

    return apply_vocabulary(data, config)
