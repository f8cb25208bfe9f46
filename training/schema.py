"""The interaction schema shared by every data source, split and pipeline.

``Interactions``: parallel arrays ``user_id`` and ``item_id`` (strings), optional
``timestamp`` (int64) and ``weight`` (float32). ``LoadedData``: what a source returns,
the interactions with their catalog of users and items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.errors import InputError


@dataclass(frozen=True)
class Interactions:
    """Parallel arrays of length N; ids are numpy unicode arrays."""

    user_id: np.ndarray
    item_id: np.ndarray
    timestamp: np.ndarray | None = None  # int64
    weight: np.ndarray | None = None  # float32

    def __len__(self) -> int:
        return len(self.user_id)

    def subset(self, index: np.ndarray) -> Interactions:
        """The rows at ``index`` (an integer index or a boolean mask)."""
        return Interactions(
            user_id=self.user_id[index],
            item_id=self.item_id[index],
            timestamp=None if self.timestamp is None else self.timestamp[index],
            weight=None if self.weight is None else self.weight[index],
        )


@dataclass(frozen=True)
class LoadedData:
    """What a source returns.

    ``items`` is the catalog (sorted unique item ids, including items nobody
    interacted with when the source knows them); ``users`` the sorted unique user ids.
    ``item_cluster`` and ``item_popularity`` are the synthetic ground truth, aligned
    with ``items`` (None for real data). ``item_titles`` maps ids to titles when known.
    """

    interactions: Interactions
    items: np.ndarray
    users: np.ndarray
    description: str
    item_cluster: np.ndarray | None = None
    item_popularity: np.ndarray | None = None
    item_titles: dict[str, str] | None = None


def from_interactions(interactions: Interactions, description: str, **extra) -> LoadedData:
    """Wraps interactions with their catalog of users and items."""
    if len(interactions) == 0:
        raise InputError(f"{description}: no interactions")
    items = extra.pop("items", None)
    return LoadedData(
        interactions=interactions,
        items=np.unique(interactions.item_id) if items is None else items,
        users=np.unique(interactions.user_id),
        description=description,
        **extra,
    )
