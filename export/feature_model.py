"""What a feature model's export serves: the stored query side, the catalog, the tables.

``FeatureExport.from_run(run, options)`` gathers, from a feature run's ``features/``
(``training.feature_store``):

* the **stored users**: every user the run knows, with their side features, their
  history (the ``N`` most recent training items) and their training items, the most
  recent ``options.max_seen`` of them (``exclude_seen``); ``serving_default(user_id)``
  looks these up inside the graph and runs the user tower on them, with the timestamp
  context at ``serving_timestamp`` (after the last training interaction);
* the **catalog**: the run's items, plus every item of ``options.items`` (an item table
  in ``data.item_features``' format) never seen in training; an item in that file takes
  its features from it. Items are embedded by the item tower from their features (an
  item never trained on has no id row: its id embeds as zeros);
* ``inputs``: the raw inputs of ``recommend`` and ``embed_items`` (``contract.FeatureInputs``).

``tables()`` runs both towers over stored users and catalog items (row 0: an unknown
id with default features and no history), the ``EmbeddingTables`` the index and the
verification use. Cost: O((users + items) x tower) time once; the stored side holds
O(users x (features + N + max_seen)) values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from export import contract
from export.errors import ExportError
from export.options import ExportOptions
from export.tables import EmbeddingTables, oov_id
from training.errors import InputError
from training.feature_spec import tower_features
from training.feature_store import FeatureTable, StoredFeatures
from training.feature_values import feature_values, fill_missing, pad_lists

_CHUNK = 8192  # rows per tower call


@dataclass
class FeatureExport:
    """A feature model and the data its export stores (see the module doc).

    ``users``: stored user ids; ``user_values``: feature -> ``(u, ...)`` raw values;
    ``history``: ``(u, N)`` item ids (``""`` padding) or None; ``seen_indptr (u + 1,)``,
    ``seen_rows (s,)``: each user's excluded training items as catalog rows;
    ``because_rows (u, B)``: catalog rows explanations draw on (-1 padding);
    ``items``: the catalog; ``item_values``: feature -> ``(n, ...)``; ``context``:
    timestamp feature -> serving timestamp.
    """

    model: Any
    head: str
    inputs: contract.FeatureInputs
    users: list[str]
    user_values: dict[str, np.ndarray]
    user_defaults: dict[str, Any]
    history_feature: str | None
    history: np.ndarray | None
    seen_indptr: np.ndarray
    seen_rows: np.ndarray
    because_rows: np.ndarray
    items: list[str]
    item_values: dict[str, np.ndarray]
    item_defaults: dict[str, Any]
    context: dict[str, int]
    exclude_seen: bool
    max_seen: int
    new_items: int = 0
    truncated_users: int = 0

    @classmethod
    def from_run(cls, run, options: ExportOptions) -> FeatureExport:
        stored: StoredFeatures = run.features
        m = run.config.model
        items, item_table = _catalog(stored.items, run, options)
        user_features = {n: f for n, f in tower_features(m, "user").items()
                         if n not in m.query_context}
        inputs = contract.FeatureInputs(
            user=tuple(contract.feature_input(n, f.type) for n, f in user_features.items()
                       if f.type not in ("id", "history")),
            context=tuple(contract.feature_input(n, f.type) for n, f in m.query_context.items()),
            item=tuple(contract.feature_input(n, f.type)
                       for n, f in tower_features(m, "item").items() if f.type != "id"),
            history_length=stored.history_length,
        )
        catalog = np.array(items + [""], dtype=object)
        history = None
        if stored.history is not None:
            history = catalog[np.where(stored.history >= 0, stored.history, len(items))].astype(str)
        lengths = np.diff(stored.seen_indptr)
        keep = np.minimum(lengths, options.max_seen)
        starts = stored.seen_indptr[:-1]
        seen_rows = np.concatenate(
            [stored.seen_items[a : a + k] for a, k in zip(starts, keep, strict=True)] or [[]]
        ).astype(np.int64)
        seen_indptr = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
        if stored.history is not None:  # each item once (a history may repeat one)
            because = np.full(stored.history.shape, -1, np.int64)
            for row, items_of in enumerate(stored.history):
                distinct = list(dict.fromkeys(int(r) for r in items_of if r >= 0))
                because[row, : len(distinct)] = distinct
        else:  # no history feature: the most recent training items
            width = max(1, min(int(keep.max(initial=0)), 20))
            because = np.full((len(keep), width), -1, np.int64)
            for row, (a, k) in enumerate(zip(seen_indptr[:-1], keep, strict=True)):
                recent = seen_rows[a : a + min(int(k), width)][::-1]  # oldest first
                because[row, : len(recent)] = recent
        exclude_seen = True if options.exclude_seen is None else bool(options.exclude_seen)
        context = {name: int(stored.serving_timestamp or 0) for name in stored.timestamp_features}
        return cls(
            model=run.model,
            head=run.model.head.kind,
            inputs=inputs,
            users=[str(u) for u in stored.users.ids],
            user_values=dict(stored.users.values),
            user_defaults=dict(stored.users.defaults),
            history_feature=stored.history_feature,
            history=history,
            seen_indptr=seen_indptr,
            seen_rows=seen_rows,
            because_rows=because,
            items=items,
            item_values=item_table.values,
            item_defaults=item_table.defaults,
            context=context,
            exclude_seen=exclude_seen,
            max_seen=options.max_seen,
            new_items=len(items) - len(stored.items.ids),
            truncated_users=int((lengths > options.max_seen).sum()),
        )

    # ------------------------------------------------------------------ query inputs
    def user_inputs(self, rows: np.ndarray, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The user tower's raw inputs of stored user rows ``rows`` (-1: an unknown user,
        default features and no history); ``ids`` overrides the ``user_id`` input."""
        rows = np.asarray(rows, dtype=np.int64)
        out = _row_inputs(rows, ids, "user_id", self.users, self.user_values, self.user_defaults)
        if self.history_feature is not None:
            out[self.history_feature] = np.where((rows >= 0)[:, None],
                                                 self.history[np.maximum(rows, 0)], "")
        for name, when in self.context.items():
            out[name] = np.full(len(rows), when, np.int64)
        return out

    def item_inputs(self, rows: np.ndarray, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The item tower's raw inputs of catalog rows ``rows`` (-1: default features)."""
        return _row_inputs(np.asarray(rows, dtype=np.int64), ids, "item_id", self.items,
                           self.item_values, self.item_defaults)

    def tables(self) -> EmbeddingTables:
        """Tower outputs of every stored user and catalog item (row 0: unknown, defaults)."""
        user_rows = np.arange(-1, len(self.users))
        item_rows = np.arange(-1, len(self.items))
        user_ids = np.array([oov_id(self.users)] + self.users)
        item_ids = np.array([oov_id(self.items)] + self.items)
        return EmbeddingTables(
            head=self.head,
            temperature=float(self.model.head.temperature.numpy()),
            users=list(self.users),
            items=list(self.items),
            user_vectors=run_tower(self.model.user_tower, self.user_inputs(user_rows, user_ids)),
            item_vectors=run_tower(self.model.item_tower, self.item_inputs(item_rows, item_ids)),
        )

    def seen_of(self, row: int) -> np.ndarray:
        return self.seen_rows[self.seen_indptr[row] : self.seen_indptr[row + 1]]

    def card(self) -> dict[str, Any]:
        """The model card's ``features`` entry."""
        return {
            **self.inputs.to_card(),
            "history_feature": self.history_feature,
            "serving_context": self.context,
            "stored_users": len(self.users),
            "exclude_seen": self.exclude_seen,
            "max_seen": self.max_seen,
            "users_with_more_training_items_than_max_seen": self.truncated_users,
            "new_items": self.new_items,
        }


def run_tower(tower, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """``tower``'s outputs ``(r, d)`` float32 for raw inputs of ``r`` rows, in chunks."""
    size = len(next(iter(inputs.values())))
    parts = []
    for start in range(0, size, _CHUNK):
        chunk = {k: tf.constant(v[start : start + _CHUNK]) for k, v in inputs.items()}
        parts.append(tf.cast(tower(chunk), tf.float32).numpy())
    return np.concatenate(parts).astype(np.float32)


def _row_inputs(
    rows: np.ndarray, ids, id_name: str, known_ids: list[str], values: dict[str, np.ndarray],
    defaults: dict[str, Any],
) -> dict[str, np.ndarray]:
    """The id and side features of table rows ``rows`` (-1: no row, the defaults)."""
    known = rows >= 0
    safe = np.where(known, rows, 0)
    if ids is None:
        ids = np.where(known, np.array(known_ids + [""], dtype=object)[safe], "")
    out: dict[str, np.ndarray] = {id_name: np.asarray(ids, dtype=str)}
    for name, column in values.items():
        default = np.full(column.shape[1:], defaults[name], dtype=column.dtype)
        mask = known.reshape(known.shape + (1,) * (column.ndim - 1))
        out[name] = np.where(mask, column[safe], default)
    return out


def _catalog(stored: FeatureTable, run, options: ExportOptions) -> tuple[list[str], FeatureTable]:
    """The run's catalog and item features, with ``options.items`` merged in."""
    items = [str(i) for i in stored.ids]
    if options.items is None:
        return items, stored
    from training.side_tables import read_side_table

    m = run.config.model
    id_column = run.config.data.columns.get("item_id", "item_id")
    try:
        table = read_side_table(options.items, id_column, "item table")
    except InputError as e:
        raise ExportError(f"--items: {e}") from None
    known = set(items)
    new = [i for i in table.ids.tolist() if i not in known]
    catalog = items + new
    rows = table.rows(np.array(catalog))
    values = {}
    for name, feature in tower_features(m, "item").items():
        if name not in stored.values:
            continue
        try:
            raw = feature_values(name, feature, table.column(feature.column or name, name),
                                 table.source)
        except InputError as e:
            raise ExportError(f"--items: {e}") from None
        if feature.type == "numeric":
            raw = fill_missing(raw, float(stored.defaults[name]))
        old = stored.values[name]
        if raw.ndim == 2:  # list features: one width for both sources
            width = max(raw.shape[1], old.shape[1])
            raw, old = pad_lists(raw.tolist(), width), pad_lists(old.tolist(), width)
        fill = np.full((len(new), *old.shape[1:]), stored.defaults[name], dtype=object)
        merged = np.concatenate([old.astype(object), fill])
        found = rows >= 0
        merged[found] = raw.astype(object)[rows[found]]
        merged = merged.astype(np.float32 if feature.type == "numeric" else str)
        values[name] = merged
    return catalog, FeatureTable(np.array(catalog), values, dict(stored.defaults))
