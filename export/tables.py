"""Embedding tables: the tower outputs of every known id, which an id-tower export serves.

Row 0 of each table is the tower's output for an id outside its vocabulary (the
out-of-vocabulary row, as in ``IdTower``); row i + 1 is vocabulary[i]. Running the towers
once over every id costs O((users + items) * tower cost); the tables take
4 * (users + items + 2) * d bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from export.errors import ExportError
from export.source import check_vocabulary
from tfrs_cosine import TwoTowerModel, make_head
from tfrs_cosine.heads import ScoringHead, l2_normalize

_CHUNK = 65_536  # ids per tower call: bounds the temporary memory of large vocabularies


@dataclass
class EmbeddingTables:
    """Tower outputs for every id, and the head that compares them.

    Attributes:
      head: ``"cosine"`` or ``"dot"``.
      temperature: the head's temperature (the learned value when it was learned).
      users, items: the vocabularies, in table order.
      user_vectors: ``(len(users) + 1, d)`` float32; row 0 is the OOV row, row i+1 users[i].
      item_vectors: ``(len(items) + 1, d)`` float32; row 0 is the OOV row.

    Raises:
      ExportError: shapes that do not match the vocabularies, duplicate ids, or ids that
        cannot be written one per line (empty or multi-line).
    """

    head: str
    temperature: float
    users: list[str]
    items: list[str]
    user_vectors: np.ndarray
    item_vectors: np.ndarray

    def __post_init__(self):
        for name, ids, vectors in (
            ("user", self.users, self.user_vectors),
            ("item", self.items, self.item_vectors),
        ):
            if vectors.ndim != 2 or len(vectors) != len(ids) + 1:
                raise ExportError(
                    f"{name}_vectors must be (len({name}s) + 1, d), got {vectors.shape}"
                )
            check_vocabulary(ids, f"the {name} vocabulary")
        if self.user_vectors.shape[1] != self.item_vectors.shape[1]:
            raise ExportError("user and item vectors differ in width")

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    @classmethod
    def from_model(
        cls, model: TwoTowerModel, users: Sequence[str], items: Sequence[str]
    ) -> EmbeddingTables:
        """Runs both towers of ``model`` over their vocabularies (and the OOV row)."""
        if len(users) == 0 or len(items) == 0:
            raise ExportError("cannot export a model with an empty vocabulary")
        return cls(
            head=model.head.kind,
            temperature=float(model.head.temperature.numpy()),
            users=[str(u) for u in users],
            items=[str(i) for i in items],
            user_vectors=_tower_table(model.user_tower, users),
            item_vectors=_tower_table(model.item_tower, items),
        )

    def head_layer(self) -> ScoringHead:
        """A head of this kind and temperature (built), for the graph and the references."""
        head = make_head(self.head, temperature=self.temperature)
        head.build()
        return head

    def compared(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors (..., d)`` as the head compares them (``normalize``: unit for cosine)."""
        return self.head_layer().normalize(tf.constant(vectors, tf.float32)).numpy()

    @staticmethod
    def unit(vectors: np.ndarray) -> np.ndarray:
        """``vectors (..., d)`` L2-normalized by the cosine head's function (``l2_normalize``)."""
        return l2_normalize(tf.constant(vectors, tf.float32)).numpy()


def oov_id(vocabulary: Sequence[str]) -> str:
    """An id that is not in ``vocabulary``: it looks up the out-of-vocabulary row."""
    known = set(vocabulary)
    candidate = "<out-of-vocabulary>"
    while candidate in known:
        candidate += "_"
    return candidate


def _tower_table(tower, vocabulary: Sequence[str]) -> np.ndarray:
    """``(len(vocabulary) + 1, d)``: the tower's output for an unknown id, then each id."""
    ids = [oov_id(vocabulary)] + [str(v) for v in vocabulary]
    if bool(tower.known(tf.constant(ids[:1]))[0]):
        raise ExportError("could not find an id outside the tower's vocabulary")
    parts = [
        tower(tf.constant(ids[start : start + _CHUNK])).numpy()
        for start in range(0, len(ids), _CHUNK)
    ]
    return np.concatenate(parts).astype(np.float32)
