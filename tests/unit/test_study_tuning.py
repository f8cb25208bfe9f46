"""Selection rules of the study's two-tower exploration (training.study.tuning): the
validation pick, the highest-AUC setting near the best recall, the front, the target."""

from __future__ import annotations

import pytest

from training.study import tuning
from training.study.report import describe_grid


def _trial(recall: float, auc: float, t: float = 0.1) -> tuning.Trial:
    row = {"epoch": 1, "validation_recall@10": recall, "auc": auc, "within": 0.5,
           "cross": 0.0, "mean": 0.1, "uniformity": -2.0, "temperature": t, "loss": 1.0}
    return tuning.Trial(tuning.Setting("cosine_ln", 0.01, t), 0, [row], 1, 1.0)


def test_pick_is_on_validation_and_balanced_is_highest_auc_within_five_percent():
    trials = [_trial(0.060, 0.99, 0.5), _trial(0.065, 0.85, 0.1), _trial(0.0620, 0.97, 0.2),
              _trial(0.0617, 0.995, 0.3)]  # 0.0617 < 0.95 x 0.065 = 0.06175: excluded
    chosen, balanced = tuning.pick(trials)
    assert chosen is trials[1]
    assert balanced is trials[2]
    alone = [_trial(0.05, 0.9)]
    assert tuning.pick(alone) == (alone[0], alone[0])


def test_front_keeps_the_points_nothing_beats():
    points = [(0.06, 0.99), (0.065, 0.85), (0.062, 0.97), (0.05, 0.95), (0.064, 0.97)]
    assert tuning.front(points) == [0, 4, 1]


def test_summarize_uses_the_sample_standard_deviation():
    s = tuning.summarize([1.0, 2.0, 3.0])
    assert (s["mean"], s["sd"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 1.0, 3.0, 3)
    assert tuning.summarize([4.0])["sd"] == 0.0


def _variant(auc: float, recall: float, label: str) -> dict:
    summary = {"setting": label, "auc": tuning.summarize([auc, auc]),
               "test_recall@10": tuning.summarize([recall, recall])}
    grid = [{"label": label, "at_best_epoch": {"validation_recall@10": recall}}]
    return {"chosen": label, "grid": grid, "seeds": {"chosen": summary, "balanced": summary}}


def test_target_uses_the_cosine_variant_with_the_best_validation_recall():
    variants = {"dot": _variant(0.98, 0.0634, "lr 0.003, T 1"),
                "cosine": _variant(0.99, 0.050, "lr 0.01, T 0.3"),
                "cosine_ln": _variant(0.985, 0.064, "lr 0.01, T 0.3")}
    t = tuning.targets(variants)
    assert t["validation_choice"] == "cosine_ln" and t["met"] is True
    variants["cosine_ln"] = _variant(0.97, 0.064, "lr 0.01, T 0.1")
    t = tuning.targets(variants)
    assert t["validation_choice"] == "cosine_ln" and t["met"] is False
    assert t["cosine"]["cosine/chosen"]["auc_met"] and not t["cosine"]["cosine/chosen"]["recall_met"]


def test_full_grid_covers_the_issue_and_describes_itself():
    grid = tuning.full_grid()
    cosine = [s for s in grid if s.variant == "cosine" and not s.remedy]
    assert {(s.learning_rate, s.temperature, s.learn_temperature) for s in cosine} == {
        (lr, t, False) for lr in (0.003, 0.01) for t in (0.05, 0.1, 0.2, 0.3, 0.5)
    } | {(lr, t, True) for lr in (0.003, 0.01) for t in (0.1, 0.3)}
    assert {s.remedy for s in grid if s.remedy} == {"centering", "uniformity x0.1",
                                                    "T floor 0.2"}
    assert all(s.base() in grid for s in grid if s.remedy)  # each has its comparison
    from dataclasses import asdict

    text = describe_grid([asdict(s) for s in grid])
    assert text.startswith("dot: lr 0.003, 0.01 x T 1; dot_ln:")
    assert "cosine_ln: lr 0.003, 0.01 x T 0.05, 0.1, 0.2, 0.3, 0.5 and learned T from 0.1, " \
           "0.3, plus 3 remedies" in text


@pytest.mark.parametrize("setting,label", [
    (tuning.Setting("dot", 0.003), "lr 0.003, T 1"),
    (tuning.Setting("cosine", 0.01, 0.1, learn_temperature=True), "lr 0.01, learned T from 0.1"),
    (tuning.Setting("cosine_ln", 0.01, 0.1, center=True), "lr 0.01, T 0.1, centering"),
])
def test_labels(setting, label):
    assert setting.label == label


def test_reduced_grid_drops_only_the_cosine_heads_slow_rate_and_says_so():
    from training.study.faithfulness import make_settings
    from training.study.report import _reduced_note

    full, reduced = tuning.full_grid(), tuning.reduced_grid()
    assert set(reduced) == {s for s in full if s.head == "dot" or s.learning_rate == 0.01}
    assert len(reduced) == 21 and all(s.base() in reduced for s in reduced if s.remedy)
    settings = make_settings(grid="reduced")
    assert settings.grid == tuple(reduced) and "--grid reduced" in settings.command("out")
    assert "--grid" not in make_settings().command("out")
    assert "lr 0.003 were not run" in _reduced_note({"grid_name": "reduced"})
    assert _reduced_note({}) == ""  # a figures.json from before --grid: the full grid


def test_small_grid_is_part_of_the_full_one_keeps_each_remedys_comparison_and_says_so():
    from dataclasses import asdict

    from training.study.report import _reduced_note

    small, full = tuning.small_grid(), tuning.full_grid()
    assert len(small) == 11 and set(small) <= set(full)
    assert {s.variant for s in small} == set(tuning.VARIANTS)
    assert all(s.base() in small for s in small if s.remedy)
    assert "only these 11 were run" in _reduced_note({"grid_name": "small"})
    assert describe_grid([asdict(s) for s in small]).startswith(
        "dot: lr 0.003, 0.01 x T 1; dot_ln: lr 0.01 x T 1; cosine: lr 0.01 x T 0.2, 0.5 and "
        "learned T from 0.3; cosine_ln: lr 0.01 x T 0.1, 0.3 and learned T from 0.3, plus 2 "
        "remedies")
