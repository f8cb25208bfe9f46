"""ExportOptions: defaults defined once (the CLI's come from it), bad values refused."""

from __future__ import annotations

import dataclasses

import pytest

from export import ExportError, ExportOptions
from export.cli import FLAGS, options_from
from training.cli import build_parser


def test_the_cli_defaults_are_the_options_defaults():
    args = build_parser().parse_args(["export", "runs/x", "--model-base-path", "models/x"])
    assert options_from(args) == ExportOptions()
    fields = {f.name for f in dataclasses.fields(ExportOptions)}
    assert set(FLAGS) <= fields
    for name in FLAGS:
        assert getattr(args, name) == getattr(ExportOptions(), name), name


def test_flags_reach_the_options():
    args = build_parser().parse_args([
        "export", "runs/x", "--model-base-path", "models/x", "--version", "7",
        "--index", "brute-force", "--k", "3", "--min-recall", "0.5", "--top-dimensions", "2",
    ])
    assert options_from(args) == ExportOptions(
        version=7, index="brute-force", k=3, min_recall=0.5, top_dimensions=2
    )


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = ExportOptions()
    assert f"(default {defaults.k})" in text and f"(default {defaults.min_recall})" in text
    assert "serving_default, explain, similar_items, embed_users, embed_items" in text


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"k": 0}, "--k must be an integer >= 1, got 0"),
        ({"k": 2.5}, "--k must be an integer >= 1"),
        ({"k": True}, "--k must be an integer >= 1"),
        ({"version": 0}, "--version must be an integer >= 1, got 0"),
        ({"version": "3"}, "--version must be an integer >= 1, got '3'"),
        ({"version": 1.0}, "--version must be an integer >= 1"),
        ({"index": "faiss"}, "unknown index 'faiss'; valid: scann, brute-force"),
        ({"min_recall": 1.5}, "--min-recall must be in [0, 1], got 1.5"),
        ({"min_recall": float("nan")}, "--min-recall must be in [0, 1]"),
        ({"top_dimensions": 0}, "--top-dimensions must be an integer >= 1"),
        ({"recall_sample": 0}, "recall_sample must be an integer >= 1"),
    ],
)
def test_bad_options_are_one_line_errors(fields, message):
    with pytest.raises(ExportError) as error:
        ExportOptions(**fields)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_plan_needs_the_scann_index():
    from export.plan import IndexPlan

    ExportOptions(index="scann", plan=IndexPlan())
    with pytest.raises(ExportError, match="ScaNN plan was given for a brute-force index"):
        ExportOptions(index="brute-force", plan=IndexPlan())


def test_catalog_checks_and_sizes():
    options = ExportOptions(k=10, top_dimensions=5)
    options.check_catalog(10)
    with pytest.raises(ExportError, match="--k 10 is larger than the catalog"):
        options.check_catalog(9)
    with pytest.raises(ExportError, match="empty item vocabulary"):
        options.check_catalog(0)
    assert options.sizes(dim=3) == {"K": 10, "m": 3, "d": 3}  # m capped at d
    assert options.sizes(dim=64) == {"K": 10, "m": 5, "d": 64}
    assert options.similar_search_k(num_items=100) == 11  # K and the item itself
    assert options.similar_search_k(num_items=10) == 10
