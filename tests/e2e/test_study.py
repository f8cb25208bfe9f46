"""Tests of the cosine-faithfulness study: mathematical facts, not tuned numbers.

* Eq. 1: every diagonal re-scaling D gives the same scores X A B^T and objective, yet
  different item-item cosines; the closed form equals ridge regression at full rank.
* Eq. 2: the solution is invariant to the signs an SVD routine picks, it is a minimum
  of its objective (random perturbations and re-scalings D only increase it), and its
  scores have the singular values (sigma - lambda)_+.
* Trained two-tower models (a ``--quick`` run): a cosine head's explanation ranking is
  its served ranking; a dot model re-scaled by D keeps its scores.
* A ``--quick`` run writes every output with finite numbers (the grid, the picks over
  seeds, the remedies, the genre part on its synthetic stand-in); the CLI rejects bad sizes.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.data import generate_synthetic
from training.study import linear, metrics


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    data = generate_synthetic(num_users=400, num_items=60, num_clusters=4, seed=3)
    return linear.interaction_matrix(data.interactions, data.users, data.items)


def _lambda1(svd: linear.SVD) -> float:
    return float(svd.s[2] ** 2)  # strong enough that the shrinkage g differs across dims


def test_eq1_rescalings_keep_scores_and_objective_but_change_cosines(x):
    svd = linear.truncated_svd(x, 10)
    lam = _lambda1(svd)
    base = linear.eq1_model(svd, lam)
    gram = x.T @ x
    diagonals = list(linear.eq1_rescalings(svd, lam).values())
    diagonals += list(metrics.random_diagonals(10, 3, seed=0))
    models = [base.rescale(d) for d in diagonals]
    reference = x @ (svd.v * linear.eq1_shrinkage(svd.s, lam)) @ svd.v.T  # X V_k g V_k^T
    cosines = [metrics.cosine_matrix(m.b) for m in models]
    for m, c in zip(models, cosines, strict=True):
        np.testing.assert_allclose(m.scores(x), reference, rtol=0, atol=1e-10)
        assert linear.eq1_objective(gram, m, lam) == pytest.approx(
            linear.eq1_objective(gram, base, lam), rel=1e-10)
        # Each D gives item-item cosines different from every other D's.
        for other in cosines:
            if other is not c:
                assert np.max(np.abs(c - other)) > 0.05


def test_eq1_at_full_rank_is_ridge_regression(x):
    """The sigma convention of Eq. 5: A B^T = (X^T X + lambda I)^-1 X^T X."""
    svd = linear.truncated_svd(x, x.shape[1])
    lam = 30.0
    m = linear.eq1_model(svd, lam)
    gram = x.T @ x
    ridge = np.linalg.solve(gram + lam * np.eye(len(gram)), gram)
    np.testing.assert_allclose(m.a @ m.b.T, ridge, atol=1e-9)


def test_eq2_is_invariant_to_svd_signs(x):
    svd = linear.truncated_svd(x, 10)
    lam = float(svd.s[6])  # some dimensions are shrunk to zero, some are kept
    reference = linear.eq2_model(svd, lam)
    rng = np.random.default_rng(0)
    for _ in range(5):
        signs = rng.choice([-1.0, 1.0], size=len(svd.s))
        signs[rng.integers(5)] = -1.0  # flip at least one of the kept dimensions
        flipped = linear.eq2_model(svd.flip_signs(signs), lam)
        assert not np.allclose(flipped.b, reference.b)  # the factors differ ...
        # ... but nothing a user of the embeddings sees does.
        np.testing.assert_allclose(flipped.scores(x), reference.scores(x), atol=1e-10)
        np.testing.assert_allclose(flipped.b @ flipped.b.T, reference.b @ reference.b.T,
                                   atol=1e-10)
        np.testing.assert_allclose(metrics.cosine_matrix(flipped.b),
                                   metrics.cosine_matrix(reference.b), atol=1e-10)


def test_eq2_is_the_unique_minimum_and_uses_singular_values(x):
    svd = linear.truncated_svd(x, 10)
    lam = float(svd.s[6])
    gram = x.T @ x
    m = linear.eq2_model(svd, lam)
    best = linear.eq2_objective(gram, m, lam)
    # The scores X A B^T = U dMat((sigma - lambda)_+) V^T: sigma are singular values.
    kept = np.linalg.svd(m.scores(x), compute_uv=False)[: len(svd.s)]
    np.testing.assert_allclose(kept, np.maximum(svd.s - lam, 0.0), atol=1e-8)
    rng = np.random.default_rng(1)
    for _ in range(5):
        step = 1e-3 * np.abs(m.b).max()
        perturbed = linear.LinearModel(m.a + step * rng.normal(size=m.a.shape) / svd.s[0],
                                       m.b + step * rng.normal(size=m.b.shape))
        assert linear.eq2_objective(gram, perturbed, lam) > best
    # Unlike Eq. 1, a re-scaling D is not free: it raises the objective.
    for d in metrics.random_diagonals(len(svd.s), 3, seed=2):
        assert linear.eq2_objective(gram, m.rescale(d), lam) > best * (1 + 1e-6)


def test_ranking_agreement_detects_norm_driven_rankings():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(50, 8))
    users = rng.normal(size=(20, 8))
    cosine = metrics.normalize_rows(users) @ metrics.normalize_rows(items).T
    same = metrics.ranking_agreement(cosine / 0.1, cosine)
    assert same["kendall_tau"] == 1.0 and same["identical_top_10"] == 1.0
    assert same["max_inversion"] == 0.0
    stretched = items * rng.uniform(0.1, 10.0, size=(50, 1))  # same directions, other norms
    dot = users @ stretched.T
    apart = metrics.ranking_agreement(dot, cosine)
    assert apart["kendall_tau"] < 0.9 and apart["max_inversion"] > 0.1


# -- trained models: one --quick run for the module ---------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from training.study import make_settings, run_study

    out = tmp_path_factory.mktemp("cosine_faithfulness")
    result = run_study(make_settings(quick=True), out, log=lambda message: None)
    result["out"] = out
    return result


def _model(quick, key):
    return next(m for m in quick["models"] if m.key == key)


@pytest.mark.parametrize("key", ["cosine", "cosine_ln"])
def test_cosine_head_explanation_ranking_is_the_served_ranking(quick, key):
    from training.study import explanation_cosines, served_scores

    model = _model(quick, key).model
    users = np.array(model.user_tower.vocabulary[:200])
    served = served_scores(model, users)
    explained = explanation_cosines(model, users)
    for s, e in zip(served, explained, strict=True):
        # No pair is ordered differently, up to float32 resolution of the cosine.
        assert metrics.max_inversion(s, e) <= 1e-6
    agreement = metrics.ranking_agreement(served, explained)
    assert agreement["top_10_overlap"] == 1.0


@pytest.mark.parametrize("key", ["dot", "dot_ln", "eq1_I"])
def test_dot_model_rescaled_by_d_keeps_scores(quick, key):
    import tensorflow as tf

    from training.study import item_embeddings, rescaled

    model = _model(quick, key).model
    users = tf.constant(model.user_tower.vocabulary[:100])
    items = tf.constant(model.item_tower.vocabulary)
    before = model.score(users, items).numpy()
    item_vectors = item_embeddings(model)
    d = metrics.random_diagonals(item_vectors.shape[1], 1, seed=5)[0]
    with rescaled(model, d):
        after = model.score(users, items).numpy()
        moved = item_embeddings(model)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5 * np.abs(before).max())
    # The re-scaling was real: the item embeddings and their cosines changed ...
    np.testing.assert_allclose(moved, item_vectors / d, rtol=1e-4, atol=1e-6)
    assert np.max(np.abs(metrics.cosine_matrix(moved) - metrics.cosine_matrix(item_vectors))) > 1e-2
    # ... and the weights are restored afterwards.
    np.testing.assert_array_equal(model.score(users, items).numpy(), before)


def test_rescaling_moves_a_cosine_heads_scores(quick):
    import tensorflow as tf

    from training.study import rescaled

    model = _model(quick, "cosine").model
    users = tf.constant(model.user_tower.vocabulary[:100])
    items = tf.constant(model.item_tower.vocabulary)
    before = model.score(users, items).numpy()
    with rescaled(model, metrics.random_diagonals(model.user_tower.output_dim, 1, seed=5)[0]):
        after = model.score(users, items).numpy()
    assert np.max(np.abs(after - before)) > 1e-2 * np.abs(before).max()


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def test_quick_run_writes_every_output_with_finite_numbers(quick):
    from training.study.report import OUTPUTS

    out = quick["out"]
    assert {"report.md", "figures.json", "item_cosine_heatmaps.png", "random_rescalings.png",
            "training_curves.png", "auc_recall_front.png", "movielens_genres.png"} <= set(OUTPUTS)
    assert set(OUTPUTS) <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    for png in (name for name in OUTPUTS if name.endswith(".png")):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def reject(constant):
        raise AssertionError(f"figures.json contains {constant}")

    figures = json.loads((out / "figures.json").read_text(), parse_constant=reject)
    numbers = list(_numbers(figures))
    assert len(numbers) > 100 and all(math.isfinite(v) for v in numbers)
    keys = {m.key for m in quick["models"]}
    assert {"eq1_I", "eq1_g^1/2", "eq1_g^-1/2", "eq1_sigma^-1/2", "eq2_paper",
            "dot", "dot_ln", "cosine", "cosine_ln"} <= keys == set(figures["models"])
    # Every variant was explored, picked and re-run with every seed; the real-data part
    # measured the dot and cosine models and the references.
    two_tower = figures["two_tower"]
    assert set(two_tower["variants"]) == {"dot", "dot_ln", "cosine", "cosine_ln"}
    for v in two_tower["variants"].values():
        assert [r["seed"] for r in v["seed_runs"]["chosen"]] == two_tower["seeds"]
        assert all(r["per_epoch"] for r in v["grid"])
    assert two_tower["remedies"] and "met" in two_tower["targets"]
    genres = figures["genres"]
    # The benchmark's rows and each head's picks from the grid (the balanced pick only
    # when it differs from the validation pick).
    assert {"dot", "cosine", "dot_chosen", "cosine_chosen"} <= set(genres["models"]) <= {
        "dot", "cosine", "dot_chosen", "cosine_chosen", "dot_balanced", "cosine_balanced"}
    assert "ease" in genres["references"]
    grid = genres["grid"]
    assert {r["head"] for r in grid["settings"]} == {"dot", "cosine"}
    for head, picks in grid["picks"].items():
        for index in picks.values():
            assert grid["settings"][index]["head"] == head
    assert all(r["per_epoch"] and r["best_epoch"] <= r["epochs_run"] for r in grid["settings"])
    for m in genres["models"].values():
        for run in m["runs"]:
            assert 0.0 <= run["rescaling"]["mean_jaccard@10"] <= 1.0
    dot_runs = genres["models"]["dot"]["runs"]
    assert max(r["rescaling"]["max_score_change"] for r in dot_runs) < 1e-4
    report = (out / "report.md").read_text()
    assert figures["command"] in report
    for heading in ("## What each head gives", "## The cone", "## MovieLens 100K"):
        assert heading in report
    for row in figures["models"].values():
        assert f"| {row['label']} |" in report
        # The re-scaling test is a property of the head, whatever the training did.
        if row["head"] == "dot":
            assert row["arbitrariness"]["max_score_change"] <= row["arbitrariness"]["score_tolerance"]


def test_cli_registers_the_study_and_rejects_bad_sizes(tmp_path, capsys):
    from training.cli import build_parser, main

    args = build_parser().parse_args(
        ["study", "cosine-faithfulness", "--quick", "--out", str(tmp_path / "r")])
    assert args.quick and callable(args.func)
    assert main(["study", "cosine-faithfulness", "--users", "3", "--out", str(tmp_path)]) == 2
    assert "--users must be >= 20" in capsys.readouterr().err


def test_only_genres_reruns_the_movielens_part_and_keeps_the_rest(quick, tmp_path):
    import shutil

    from training.study.faithfulness import make_settings, rerun_genres
    from training.study.probes import jsonable

    copy = tmp_path / "copy"
    shutil.copytree(quick["out"], copy)
    before = json.loads((copy / "figures.json").read_text())
    heatmaps = (copy / "item_cosine_heatmaps.png").read_bytes()
    figures = rerun_genres(make_settings(quick=True), copy, log=lambda message: None)
    after = json.loads((copy / "figures.json").read_text())
    assert after["genres_rerun"]["command"].endswith("--only genres")
    assert after["models"] == before["models"] and after["two_tower"] == before["two_tower"]
    assert after["genres"] == json.loads(json.dumps(jsonable(figures["genres"])))
    assert (copy / "item_cosine_heatmaps.png").read_bytes() == heatmaps
    report = (copy / "report.md").read_text()
    assert after["genres_rerun"]["command"] in report and before["command"] in report


def test_report_is_rendered_from_figures_json_alone(quick, tmp_path):
    import shutil

    from training.study.report import rerender

    copy = tmp_path / "copy"
    shutil.copytree(quick["out"], copy)
    (copy / "report.md").unlink()
    rerender(copy)
    assert (copy / "report.md").read_text() == (quick["out"] / "report.md").read_text()
