"""MovieLens 100K: explore each head over a grid, as the synthetic part does.

The benchmark's two rows (``genres.BENCHMARK_MODELS``) are one setting per head. Here
each head gets a small grid (temperature, layer norm, deeper towers, the logQ
correction, the batch size), trained on protocol A's tuning part (a random 90% of the training part,
seed 43, as the benchmark tunes) with early stopping on the other 10%'s Recall@10.
After every epoch a probe records validation Recall@10 and the genre AUC of the item
embeddings. Per head:

* ``chosen``: the best validation Recall@10 (the benchmark's way of choosing);
* ``balanced``: the highest genre AUC among the settings within 5% of the head's best
  validation Recall@10. It uses the genres, so it is reported beside the validation
  choice, never instead of it.

``genres.run_genres`` retrains both picks on the whole training part for their best
epoch count with every seed, as it does the benchmark's rows.

Cost: one ``fit`` per setting (at most ``MAX_EPOCHS`` epochs of 72,000 rows, seconds
each) and a ``(p, p)`` cosine matrix per epoch for the probe (``p`` = 1,682 items).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.splits import Split, random_split
from training.study import metrics
from training.study.tuning import NEAR_BEST

MAX_EPOCHS = 12
PATIENCE = 2
LEARNING_RATE = 0.01


@dataclass(frozen=True)
class GenreSetting:
    """One grid point: the ``[model]`` keys it sets on top of ``genres.model_config``."""

    head: str  # "dot" or "cosine"
    label: str
    model_keys: tuple[tuple[str, Any], ...]
    batch_size: int = 1024

    def keys(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_keys}


def _setting(head: str, label: str, batch_size: int = 1024, **keys: Any) -> GenreSetting:
    return GenreSetting(head, label, tuple(sorted({"head": head, **keys}.items())), batch_size)


TOWERS = (64, 32)
GRID = (
    _setting("dot", "dot, T 4 (row 3g)", temperature=4.0),
    _setting("dot", "dot, T 1", temperature=1.0),
    _setting("dot", "dot + layer norm, T 4", temperature=4.0, layer_norm=True),
    _setting("dot", "dot, T 4, no logQ", temperature=4.0, logq_correction=False),
    _setting("dot", "dot, T 4, batch 256", batch_size=256, temperature=4.0),
    _setting("cosine", "cosine, T 0.1", temperature=0.1),
    _setting("cosine", "cosine, T 0.2", temperature=0.2),
    _setting("cosine", "cosine, T 0.2, no logQ", temperature=0.2, logq_correction=False),
    _setting("cosine", "cosine + layer norm, T 0.1", temperature=0.1, layer_norm=True),
    _setting("cosine", "cosine + layer norm, T 0.2", temperature=0.2, layer_norm=True),
    _setting("cosine", "cosine + layer norm, T 0.1, batch 256", batch_size=256,
             temperature=0.1, layer_norm=True),
    _setting("cosine", "cosine + layer norm + towers [64, 32], T 0.05", temperature=0.05,
             layer_norm=True, tower_layers=TOWERS),
    _setting("cosine", "cosine + layer norm + towers [64, 32], T 0.1", temperature=0.1,
             layer_norm=True, tower_layers=TOWERS),
    _setting("cosine", "cosine + layer norm + towers [64, 32], T 0.2 (row 3e)",
             temperature=0.2, layer_norm=True, tower_layers=TOWERS),
    _setting("cosine", "cosine + layer norm + towers [64, 32], learned T from 0.2",
             temperature=0.2, learn_temperature=True, layer_norm=True, tower_layers=TOWERS),
)
QUICK_GRID = tuple(s for s in GRID if s.label in (
    "dot, T 4 (row 3g)", "cosine, T 0.1", "cosine + layer norm, T 0.1"))


def tuning_split(train) -> Split:
    """Protocol A's tuning split of the training part: 90% / 10% at random (seed 43)."""
    tune, validation = random_split(train, 0.1, 43)
    return Split(tune, validation, validation)


def explore(grid, data, train, measure: Callable[[np.ndarray], dict[str, float]],
            make_config: Callable[..., Any], seed: int,
            phase: Callable[[str], None], max_epochs: int = MAX_EPOCHS) -> dict[str, Any]:
    """Trains every setting of ``grid`` on the tuning split; returns the per-setting
    records (grid order) and, per head, the ``chosen`` and ``balanced`` indices.

    ``make_config(model_keys, training_keys)`` -> a Config (``genres.model_config``);
    ``measure(cosines)`` -> ``{"genre_auc": ...}`` of a ``(p, p)`` item-item matrix."""
    from training.study.probes import epoch_probe
    from training.train import fit

    split = tuning_split(train)
    records = []
    for setting in grid:
        config = make_config(setting.keys(), {
            "learning_rate": LEARNING_RATE, "epochs": max_epochs, "batch_size": setting.batch_size,
            "early_stopping_patience": PATIENCE, "seed": seed})
        probe = epoch_probe(f"val_recall_at_{config.evaluation.monitor_k}", lambda vectors: {
            "genre_auc": measure(metrics.cosine_matrix(vectors))["genre_auc"]})
        result = fit(config, data, split, verbose=0, callbacks=[probe])
        curve = [row["validation_recall@10"] for row in probe.rows]
        best = result.best_epoch or int(np.nanargmax(curve)) + 1
        record = {"head": setting.head, "label": setting.label, "model": setting.keys(),
                  "batch_size": setting.batch_size,
                  "best_epoch": best, "epochs_run": len(probe.rows),
                  "seconds": round(result.seconds, 1), "per_epoch": probe.rows,
                  "at_best_epoch": probe.rows[best - 1]}
        records.append(record)
        b = record["at_best_epoch"]
        phase(f"genre grid: {setting.label}: best epoch {best} of {len(probe.rows)}, "
              f"validation recall@10 {b['validation_recall@10']:.4f}, genre AUC "
              f"{b['genre_auc']:.3f}, T {b['temperature']:.3f} ({result.seconds:.0f} s)")
    picks = {head: pick([r for r in records if r["head"] == head], records)
             for head in ("dot", "cosine") if any(r["head"] == head for r in records)}
    return {"settings": records, "picks": picks, "near_best": NEAR_BEST,
            "learning_rate": LEARNING_RATE, "max_epochs": max_epochs, "patience": PATIENCE,
            "seed": seed, "tuning_rows": len(split.train), "validation_rows": len(split.validation)}


def pick(candidates: list[dict], records: list[dict]) -> dict[str, int]:
    """``{"chosen": i, "balanced": j}``: indices into ``records`` (ties: grid order)."""
    recall = [r["at_best_epoch"]["validation_recall@10"] for r in candidates]
    chosen = candidates[int(np.argmax(recall))]
    near = [r for r, v in zip(candidates, recall, strict=True) if v >= NEAR_BEST * max(recall)]
    balanced = near[int(np.argmax([r["at_best_epoch"]["genre_auc"] for r in near]))]
    return {"chosen": records.index(chosen), "balanced": records.index(balanced)}
