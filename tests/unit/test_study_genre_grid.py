"""The MovieLens grid's selection (``training.study.genre_grid.pick``) on hand-made records."""

from __future__ import annotations

from training.study.genre_grid import GRID, pick


def _record(head: str, recall: float, auc: float) -> dict:
    return {"head": head, "at_best_epoch": {"validation_recall@10": recall, "genre_auc": auc}}


def test_pick_takes_the_best_recall_and_the_best_auc_within_five_percent():
    records = [_record("dot", 0.19, 0.57), _record("cosine", 0.200, 0.55),
               _record("cosine", 0.191, 0.58),  # 95.5% of the best recall: near
               _record("cosine", 0.189, 0.60),  # 94.5%: not near, whatever its AUC
               _record("cosine", 0.195, 0.56)]
    picks = pick([r for r in records if r["head"] == "cosine"], records)
    assert picks == {"chosen": 1, "balanced": 2}
    assert pick([records[0]], records) == {"chosen": 0, "balanced": 0}


def test_ties_go_to_the_earlier_setting():
    records = [_record("cosine", 0.2, 0.6), _record("cosine", 0.2, 0.6)]
    assert pick(records, records) == {"chosen": 0, "balanced": 0}


def test_the_grid_names_the_benchmark_rows_and_every_setting_once():
    labels = [s.label for s in GRID]
    assert len(set(labels)) == len(labels) and len({(s.model_keys, s.batch_size) for s in GRID}) == len(GRID)
    assert any("row 3g" in label for label in labels) and any("row 3e" in label for label in labels)
    row_3e = next(s for s in GRID if "row 3e" in s.label).keys()
    assert row_3e == {"head": "cosine", "layer_norm": True, "tower_layers": [64, 32],
                      "temperature": 0.2}


def test_the_quick_grid_has_both_heads():
    from training.study.genre_grid import QUICK_GRID

    assert {s.head for s in QUICK_GRID} == {"dot", "cosine"} and set(QUICK_GRID) <= set(GRID)
