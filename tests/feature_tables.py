"""Tiny synthetic data for feature models, shared by both tiers.

``write_feature_data(folder)`` writes interactions with timestamps (``inter.csv``), a user
table (``users.csv``: age, gender) and an item table (``items.csv``: genres, title) with
items nobody interacted with (``i40`` .. ``i44``): 60 users, 45 items, about 600
interactions in which each user mostly picks items of one genre. ``feature_config``
is a config with every kind of feature on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GENRES = ("a", "b", "c", "d")
NUM_USERS, NUM_ITEMS, UNSEEN_ITEMS = 60, 40, 5


def item_genre(item: int) -> str:
    return GENRES[(item * 7) % len(GENRES)]


def write_feature_data(folder: Path, seed: int = 0) -> dict[str, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(NUM_USERS):
        liked = [i for i in range(NUM_ITEMS) if item_genre(i) == GENRES[u % len(GENRES)]]
        for k in range(int(rng.integers(6, 14))):
            pool = liked if rng.random() < 0.8 else list(range(NUM_ITEMS))
            rows.append((f"u{u}", f"i{int(rng.choice(pool))}", 1000 + 10 * k + u % 3))
    paths = {name: folder / f"{name}.csv" for name in ("inter", "users", "items")}
    paths["inter"].write_text("user_id,item_id,timestamp\n"
                              + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    paths["users"].write_text("user_id,age,gender\n" + "".join(
        f"u{u},{18 + (u * 5) % 50},{'MF'[u % 2]}\n" for u in range(NUM_USERS)))
    paths["items"].write_text("item_id,genres,title\n" + "".join(
        f"i{i},{item_genre(i)}|all,film {item_genre(i)} number {i}\n"
        for i in range(NUM_ITEMS + UNSEEN_ITEMS)))
    return paths


def feature_config(paths: dict[str, Path], **model) -> dict:
    """A config (as a dict for ``config_from_dict``) with id, numeric, categorical,
    history, multi_categorical, text and timestamp features."""
    return {
        "data": {
            "source": "file", "path": str(paths["inter"]),
            "user_features": str(paths["users"]), "item_features": str(paths["items"]),
            "split": "leave-last-out", "validation_fraction": 0.1,
        },
        "model": {
            "head": "cosine", "embedding_dim": 8, "tower_layers": [8],
            "user_features": {
                "user_id": {"type": "id"},
                "age": {"type": "numeric", "buckets": [30.0, 50.0]},
                "gender": {"type": "categorical"},
                "history": {"type": "history", "length": 4},
            },
            "item_features": {
                "item_id": {"type": "id"},
                "genres": {"type": "multi_categorical", "separator": "|"},
                "title": {"type": "text"},
            },
            "query_context": {"timestamp": {"type": "timestamp", "num_buckets": 5}},
            **model,
        },
        "training": {"epochs": 2, "batch_size": 64, "learning_rate": 0.2},
        "evaluation": {"ks": [1, 5, 10]},
    }


def write_config(path: Path, paths: dict[str, Path], **model) -> Path:
    """``feature_config`` as a TOML file for ``tfrs-cosine train --config``."""
    from training.config import config_from_dict

    Path(path).write_text(config_from_dict(feature_config(paths, **model)).to_toml())
    return Path(path)
