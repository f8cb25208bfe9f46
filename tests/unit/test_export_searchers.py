"""The exported top-K: exact plans answer straight from their search, approximate ones rescore.

Each module is built in memory (``export.signatures.build_module``, no SavedModel, no
subprocess). Answers are compared with numpy's exact top-K on the same vectors, and the
traced graphs are searched for the rescoring op (``Einsum``) and for each ``TopKV2``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from export import EmbeddingTables, ExportOptions, contract
from export.index import prepare_indexes
from export.plan import IndexPlan
from export.recall import exact_top_k
from export.searchers import PADDING_SCORE
from export.signatures import build_module

NUM_USERS, NUM_ITEMS, DIM = 40, 300, 8


def _quiet(message: str) -> None:
    pass


def random_tables(head: str, num_items: int = NUM_ITEMS) -> EmbeddingTables:
    rng = np.random.default_rng(1)
    user_vectors = rng.normal(size=(NUM_USERS + 1, DIM)).astype(np.float32)
    item_vectors = rng.normal(size=(num_items + 1, DIM)).astype(np.float32)
    user_vectors[0] = item_vectors[0] = 0.0  # the padding rows unknown ids look up
    return EmbeddingTables(
        head=head, temperature=1.0,
        users=[f"u{i}" for i in range(NUM_USERS)], items=[f"i{i}" for i in range(num_items)],
        user_vectors=user_vectors, item_vectors=item_vectors,
    )


def built(tmp_path, tables: EmbeddingTables, options: ExportOptions):
    indexes = prepare_indexes(tables, options, np.random.default_rng(0), _quiet)
    _, functions = build_module(tables, indexes, options, tmp_path)
    return indexes, functions


def op_counts(function, *types: str) -> list[int]:
    """How many ops of each of ``types`` the traced graph of ``function`` holds."""
    found = [op.type for op in function.graph.get_operations()]
    return [found.count(t) for t in types]


def expected_similar(tables: EmbeddingTables, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every item's top-``k`` unit-cosine neighbours less itself: ``(ids, cosine)`` (n, k)."""
    unit = tables.unit(tables.item_vectors[1:])
    scores, rows = exact_top_k(unit, unit, min(k + 1, len(unit)))
    ids, cosines = [], []
    for item, (row_ids, row_scores) in enumerate(zip(rows, scores, strict=True)):
        keep = row_ids != item
        row_ids, row_scores = row_ids[keep][:k], row_scores[keep][:k]
        pad = k - len(row_ids)
        ids.append(np.array(tables.items + [""])[np.pad(row_ids, (0, pad), constant_values=-1)])
        cosines.append(np.pad(row_scores, (0, pad), constant_values=PADDING_SCORE))
    return np.array(ids), np.array(cosines)


EXACT = [
    pytest.param("brute-force", None, id="brute-force"),
    pytest.param("scann", IndexPlan(), id="scann-brute-force"),
]
SEARCH_TOP_KS = {"brute-force": 1, "scann": 0}  # TopKV2 ops of the search itself


@pytest.mark.parametrize(
    "index,plan,head",
    [  # the dot head has a second index for similar_items, the cosine head shares one
        pytest.param("brute-force", None, "dot", id="brute-force-dot"),
        pytest.param("scann", IndexPlan(), "cosine", id="scann-brute-force-cosine"),
    ],
)
def test_exact_plans_answer_numpys_top_k_without_rescoring(tmp_path, index, plan, head):
    tables = random_tables(head)
    k = 10
    options = ExportOptions(index=index, plan=plan, k=k, verify=False)
    indexes, functions = built(tmp_path, tables, options)
    assert indexes.user.plan is None or indexes.user.plan.exact
    for name in (contract.SERVING_DEFAULT.name, contract.SIMILAR_ITEMS.name):
        # The search's own order: no rescoring Einsum, no second TopKV2.
        assert op_counts(functions[name], "Einsum", "TopKV2") == [0, SEARCH_TOP_KS[index]], name

    users = tf.constant(tables.users + ["nobody"])
    out = functions[contract.SERVING_DEFAULT.name](user_id=users)
    queries = tables.compared(tables.user_vectors[1:])
    scores, rows = exact_top_k(queries, tables.compared(tables.item_vectors[1:]), k)
    if head == "cosine":
        scores = np.clip(scores, -1.0, 1.0)
    got_ids = out["item_ids"].numpy().astype(str)
    np.testing.assert_array_equal(got_ids[:-1], np.array(tables.items)[rows])
    np.testing.assert_allclose(out["scores"].numpy()[:-1], scores, rtol=1e-5, atol=1e-5)
    # The unknown user's query is the zero vector: every item scores 0.
    np.testing.assert_array_equal(out["scores"].numpy()[-1], np.zeros(k))
    assert out["known_user"].numpy().tolist() == [True] * NUM_USERS + [False]

    items = tf.constant(tables.items)
    out = functions[contract.SIMILAR_ITEMS.name](item_id=items)
    ids, cosine = expected_similar(tables, k)
    np.testing.assert_array_equal(out["item_ids"].numpy().astype(str), ids)
    np.testing.assert_allclose(out["cosine"].numpy(), np.clip(cosine, -1, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index,plan", EXACT)
def test_similar_items_of_a_whole_catalog_end_in_padding(tmp_path, index, plan):
    """K == catalog size: the item itself is dropped, so the last place is empty."""
    tables = random_tables("dot", num_items=9)
    options = ExportOptions(index=index, plan=plan, k=9, verify=False)
    _, functions = built(tmp_path, tables, options)
    out = functions[contract.SIMILAR_ITEMS.name](item_id=tf.constant(tables.items + ["nothing"]))
    ids, cosine = expected_similar(tables, 9)
    got_ids, got_cosine = out["item_ids"].numpy().astype(str), out["cosine"].numpy()
    np.testing.assert_array_equal(got_ids[:-1], ids)
    np.testing.assert_allclose(got_cosine[:-1], cosine, rtol=1e-5, atol=1e-5)
    assert (got_ids[:-1, -1] == "").all() and (got_cosine[:-1, -1] == PADDING_SCORE).all()
    # An unknown item excludes nothing: a full row of (tied, zero-cosine) items.
    assert (got_ids[-1] != "").all() and (got_cosine[-1] == 0).all()
    assert out["known_item"].numpy().tolist() == [True] * 9 + [False]


def test_approximate_plans_rescore(tmp_path):
    """An asymmetric-hashing plan's candidates are rescored (Einsum) and ordered (TopKV2)."""
    tables = random_tables("dot")
    plan = IndexPlan(scoring="asymmetric_hashing", reorder=40)
    options = ExportOptions(plan=plan, k=10, min_recall=0.0, verify=False)
    indexes, functions = built(tmp_path, tables, options)
    assert not indexes.user.plan.exact
    for name in (contract.SERVING_DEFAULT.name, contract.SIMILAR_ITEMS.name):
        assert op_counts(functions[name], "Einsum", "TopKV2") == [1, 1], name


def test_cut_top_k_drops_exclusion_sets_and_keeps_the_order():
    """Several excluded rows per query (-1 pads, repeats, rows not among the candidates),
    invalid trailing candidates, and fewer candidates than K: numpy's filter-then-cut."""
    from export.searchers import cut_top_k

    rng = np.random.default_rng(3)
    b, m, k = 6, 12, 8
    indices = np.stack([rng.permutation(50)[:m] for _ in range(b)]).astype(np.int64)
    scores = -np.sort(-rng.normal(size=(b, m)), axis=1).astype(np.float32)
    valid = np.ones((b, m), bool)
    valid[2, -3:] = False  # a ScaNN shortfall
    exclude = np.full((b, 4), -1, np.int64)
    for row in range(b):
        picked = rng.choice(indices[row], size=row % 4, replace=False)
        exclude[row, :len(picked)] = picked
    exclude[4, 3] = 49 if 49 not in indices[4] else 48  # not a candidate at all
    exclude[5, 1] = exclude[5, 0]  # a repeat
    for width in (k, m + 2):  # enough candidates, and fewer than K
        got = [x.numpy() for x in cut_top_k(
            tf.constant(indices), tf.constant(scores), tf.constant(valid), width,
            tf.constant(exclude))]
        for row in range(b):
            keep = valid[row] & ~np.isin(indices[row], exclude[row])
            want_ids = np.pad(indices[row][keep][:width], (0, max(0, width - keep.sum())),
                              constant_values=-1)[:width]
            want_scores = np.pad(scores[row][keep][:width], (0, max(0, width - keep.sum())),
                                 constant_values=PADDING_SCORE)[:width]
            np.testing.assert_array_equal(got[0][row], want_ids)
            np.testing.assert_array_equal(got[1][row], want_scores)
            np.testing.assert_array_equal(got[2][row], want_ids >= 0)
