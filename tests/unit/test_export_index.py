"""The export's index: ScaNN plans from the catalog size, recall measured against exact search."""

from __future__ import annotations

import numpy as np
import pytest

from export import EmbeddingTables, ExportError, ExportOptions, export_tables
from export.index import prepare_indexes
from export.plan import IndexPlan, plan_index
from export.recall import exact_top_k, recall_at_k


def _quiet(message: str) -> None:
    pass


def test_plan_follows_scann_guidance():
    small = plan_index(5_000, 100, normalized=True)
    assert small.exact and small.num_leaves == 0
    medium = plan_index(50_000, 100, normalized=True)
    assert medium.scoring == "asymmetric_hashing" and medium.num_leaves == 0
    assert medium.reorder > 100 and medium.anisotropic_quantization_threshold == 0.2
    large = plan_index(1_000_000, 10, normalized=False)
    assert large.num_leaves == 1000 and 1 <= large.leaves_to_search < 1000
    assert large.reorder >= 10 and large.anisotropic_quantization_threshold is None
    assert large.sentence(1_000_000).startswith("Partition 1,000,000 items into 1000 leaves")
    wider = large.widened()
    assert wider.leaves_to_search == 2 * large.leaves_to_search and wider.reorder == 2 * large.reorder


def test_recall_measurement_counts_misses():
    rng = np.random.default_rng(0)
    queries, catalog = rng.normal(size=(5, 4)), rng.normal(size=(50, 4))
    scores, exact = exact_top_k(queries, catalog, 5)
    assert recall_at_k(queries, catalog, exact, scores) == 1.0
    worst = np.argsort(queries @ catalog.T, axis=1)[:, :5]
    assert recall_at_k(queries, catalog, worst, scores) == 0.0
    padded = exact.copy()
    padded[:, -1] = -1
    assert recall_at_k(queries, catalog, padded, scores) == pytest.approx(0.8)
    repeated = exact.copy()
    repeated[:, 1] = repeated[:, 0]  # a duplicate is not a second hit
    assert recall_at_k(queries, catalog, repeated, scores) == pytest.approx(0.8)


def clustered_tables(num_items: int, seed: int = 0, head: str = "cosine") -> EmbeddingTables:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 16)).astype(np.float32)
    items = centres[rng.integers(20, size=num_items + 1)] + 0.3 * rng.normal(size=(num_items + 1, 16))
    users = centres[rng.integers(20, size=301)] + 0.3 * rng.normal(size=(301, 16))
    return EmbeddingTables(
        head=head, temperature=1.0,
        users=[f"u{i}" for i in range(300)], items=[f"i{i}" for i in range(num_items)],
        user_vectors=users.astype(np.float32), item_vectors=items.astype(np.float32),
    )


@pytest.mark.parametrize("head", ["cosine", "dot"])
def test_brute_force_and_exact_scann_indexes(head):
    tables = clustered_tables(500, head=head)
    brute = prepare_indexes(tables, ExportOptions(index="brute-force", k=10), np.random.default_rng(0), _quiet)
    assert brute.user.kind == "brute-force" and brute.card["recall_at_k"] == 1.0
    # similar_items compares unit vectors: one index for the cosine head, two for dot.
    assert (brute.similar is brute.user) == (head == "cosine")
    np.testing.assert_allclose(np.linalg.norm(brute.similar.vectors, axis=1), 1.0, atol=1e-5)

    scann = prepare_indexes(tables, ExportOptions(k=10), np.random.default_rng(0), _quiet)
    assert scann.user.kind == "scann" and scann.user.plan.exact  # 500 items: exact scoring
    assert scann.card["recall_at_k"] == pytest.approx(1.0, abs=1e-3)
    assert scann.card["similar_items_recall_at_k"] == pytest.approx(1.0, abs=1e-3)


def test_recall_below_threshold_fails_and_writes_nothing(tmp_path):
    tables = clustered_tables(3000, seed=1)
    poor = IndexPlan(num_leaves=40, leaves_to_search=1, scoring="asymmetric_hashing")
    base = tmp_path / "models" / "poor"
    with pytest.raises(ExportError, match=r"recall@10 is 0\.\d+, below --min-recall 0.99"):
        export_tables(tables, base, ExportOptions(k=10, plan=poor, min_recall=0.99), log=_quiet)
    assert not base.exists()
