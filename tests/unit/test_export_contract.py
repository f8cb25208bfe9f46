"""The graph builder follows ``export.contract``, the one definition of the signatures.

The module is built in memory (no SavedModel, no subprocess): its concrete functions'
inputs and outputs are compared with the contract, and ``explain`` is called with
mismatched batch sizes. A static scan keeps a second copy of the contract out of export/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from export import EmbeddingTables, ExportOptions, contract
from export.index import prepare_indexes
from export.signatures import build_module, conform

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ExportOptions(index="brute-force", k=4, top_dimensions=3, verify=False)


def _quiet(message: str) -> None:
    pass


def small_tables(head: str = "dot", num_users: int = 7, num_items: int = 9, dim: int = 5):
    rng = np.random.default_rng(0)
    return EmbeddingTables(
        head=head, temperature=0.5,
        users=[f"u{i}" for i in range(num_users)], items=[f"i{i}" for i in range(num_items)],
        user_vectors=rng.normal(size=(num_users + 1, dim)).astype(np.float32),
        item_vectors=rng.normal(size=(num_items + 1, dim)).astype(np.float32),
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tables = small_tables()
    indexes = prepare_indexes(tables, OPTIONS, np.random.default_rng(0), _quiet)
    module, functions = build_module(tables, indexes, OPTIONS, tmp_path_factory.mktemp("vocab"))
    return tables, module, functions


def _metadata(functions) -> dict:
    """``export.verify.signature_metadata``'s format, from in-memory concrete functions."""

    def describe(shape: tf.TensorShape, dtype: tf.DType):
        return dtype.name, [-1 if d is None else d for d in shape.as_list()]

    out = {}
    for name, function in functions.items():
        args, kwargs = function.structured_input_signature
        assert not kwargs
        out[name] = {
            "inputs": {spec.name: describe(spec.shape, spec.dtype) for spec in args},
            "outputs": {
                key: describe(tensor.shape, tensor.dtype)
                for key, tensor in function.structured_outputs.items()
            },
        }
    return out


def test_signatures_are_the_contract(built):
    tables, _, functions = built
    sizes = OPTIONS.sizes(tables.dim)
    metadata = _metadata(functions)
    assert list(metadata) == list(contract.SIGNATURE_NAMES)
    assert contract.contract_problems(metadata, sizes) == []
    for signature in contract.SIGNATURES.values():
        assert tuple(metadata[signature.name]["inputs"]) == signature.input_names
        assert set(metadata[signature.name]["outputs"]) == set(signature.output_names)
    # The check can fail: other fixed sizes, or a renamed output, are problems.
    assert contract.contract_problems(metadata, {**sizes, "K": sizes["K"] + 1})
    renamed = {**metadata, contract.EMBED_USERS.name: {
        "inputs": metadata[contract.EMBED_USERS.name]["inputs"], "outputs": {"vectors": ("float32", [-1, 5])},
    }}
    assert contract.contract_problems(renamed, sizes)


def test_outputs_that_differ_from_the_contract_are_refused():
    sizes = {"K": 2, "m": 1, "d": 3}
    signature = contract.EMBED_ITEMS
    good = {"embeddings": tf.zeros([4, 3])}
    assert conform(signature, good, sizes)["embeddings"].shape == (4, 3)
    with pytest.raises(ValueError, match="returns \\['vectors'\\], the contract says"):
        conform(signature, {"vectors": tf.zeros([4, 3])}, sizes)
    with pytest.raises(ValueError, match="embed_items.embeddings is float64, the contract says float32"):
        conform(signature, {"embeddings": tf.zeros([4, 3], tf.float64)}, sizes)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        conform(signature, {"embeddings": tf.zeros([4, 2])}, sizes)  # d is 3


def test_explain_refuses_mismatched_batch_sizes(built):
    tables, _, functions = built
    explain = functions[contract.EXPLAIN.name]
    users, items = contract.EXPLAIN.input_names
    answer = explain(**{users: tf.constant(["u0", "u1"]), items: tf.constant([["i0"], ["i1"]])})
    assert answer["cosine"].shape == (2, 1)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        explain(**{users: tf.constant(["u0", "u1"]), items: tf.constant([["i0", "i1"]])})
    message = " ".join(error.value.message.split())
    assert f"explain: {users} has] [2] [rows but {items} has] [1] [rows" in message
    assert "batch sizes must be equal" in message


def test_scores_follow_the_tables(built):
    tables, _, functions = built
    out = functions[contract.SERVING_DEFAULT.name](user_id=tf.constant(["u2", "nobody"]))
    scores = tables.user_vectors[[3, 0]] @ tables.item_vectors[1:].T
    expected = np.array(tables.items)[np.argsort(-scores, axis=1, kind="stable")[:, : OPTIONS.k]]
    np.testing.assert_array_equal(out["item_ids"].numpy().astype(str), expected)
    assert out["known_user"].numpy().tolist() == [True, False]


# ----------------------------------------------------------------------------------------
# one definition


def _string_constants(path: Path) -> list[tuple[str, int]]:
    return [
        (node.value, node.lineno)
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_export_has_no_second_copy_of_the_contract():
    """Outside contract.py no module of export/ spells a signature name or builds a TensorSpec."""
    names = set(contract.SIGNATURE_NAMES)
    found = []
    for path in sorted((ROOT / "export").glob("*.py")):
        if path.name == "contract.py":
            continue
        found += [f"{path.name}:{line} {value!r}" for value, line in _string_constants(path) if value in names]
        found += [
            f"{path.name}:{number} {line.strip()}"
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if "TensorSpec(" in line and "spec.dims(" not in line
        ]
    assert not found, found
