"""Train / validation / test splits of interactions.

* ``random``: a seeded random fraction of all interactions is held out.
* ``leave-last-out``: each user's last interaction (by timestamp; ties broken by
  row order) is held out; users with a single interaction keep it for training.

The validation split is carved out of the training part with the same method, so
test interactions are never seen while tuning or early stopping. The per-row splits
``time``, ``hash-user`` and ``hash-interaction`` are ``training.streaming_splits``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.errors import InputError
from training.schema import Interactions


@dataclass(frozen=True)
class Split:
    train: Interactions
    validation: Interactions
    test: Interactions

    def get(self, name: str) -> Interactions:
        if name not in ("train", "validation", "test"):
            raise InputError(f"unknown split {name!r}; valid: train, validation, test")
        return getattr(self, name)


def random_split(
    interactions: Interactions, fraction: float, seed: int
) -> tuple[Interactions, Interactions]:
    """Holds out ``round(fraction * N)`` random interactions: returns ``(rest, held_out)``."""
    n = len(interactions)
    order = np.random.default_rng(seed).permutation(n)
    held = int(round(fraction * n))
    return interactions.subset(np.sort(order[held:])), interactions.subset(np.sort(order[:held]))


def leave_last_out(interactions: Interactions) -> tuple[Interactions, Interactions]:
    """Holds out each user's last interaction by timestamp: returns ``(rest, last)``."""
    if interactions.timestamp is None:
        raise InputError("leave-last-out split needs timestamps; the data has none")
    n = len(interactions)
    # Sort by (user, timestamp, row) so the last row of each user block is the latest.
    order = np.lexsort((np.arange(n), interactions.timestamp, interactions.user_id))
    users = interactions.user_id[order]
    is_last = np.ones(n, dtype=bool)
    is_last[:-1] = users[:-1] != users[1:]
    first = np.r_[True, users[1:] != users[:-1]]
    single = is_last & first  # users with one interaction keep it for training
    held = np.zeros(n, dtype=bool)
    held[order[is_last & ~single]] = True
    return interactions.subset(~held), interactions.subset(held)


def split_data(interactions: Interactions, config) -> Split:
    """Splits per a ``DataConfig`` (``split``, ``test_fraction``, ``validation_fraction``,
    ``split_seed``)."""
    if config.split == "random":
        rest, test = random_split(interactions, config.test_fraction, config.split_seed)
        if config.validation_fraction > 0:
            # validation_fraction is a share of all data, carved from the training part.
            share = config.validation_fraction / (1 - config.test_fraction)
            train, validation = random_split(rest, min(share, 0.5), config.split_seed + 1)
        else:
            train, validation = rest, rest.subset(np.zeros(len(rest), dtype=bool))
    elif config.split == "leave-last-out":
        rest, test = leave_last_out(interactions)
        if config.validation_fraction > 0:
            train, validation = leave_last_out(rest)
        else:
            train, validation = rest, rest.subset(np.zeros(len(rest), dtype=bool))
    elif config.split in ("time", "hash-user", "hash-interaction"):
        from training.streaming_splits import split_in_memory  # TensorFlow loads here

        train, validation, test = split_in_memory(interactions, config)
    else:
        raise InputError(
            f"unknown data.split {config.split!r}; valid: random, leave-last-out, time, "
            "hash-user, hash-interaction"
        )
    if len(train) == 0 or len(test) == 0:
        raise InputError(
            f"split {config.split!r} left {len(train)} training and {len(test)} test interactions"
        )
    return Split(train=train, validation=validation, test=test)
