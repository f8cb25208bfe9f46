"""Verifies an export the way a server will load it: in a fresh process, without the trainer.

    python -m export.verify models/NAME/3 [more export dirs] [--reference reference.npz]
        [--min-recall 0.95] [--json]

This module imports TensorFlow, numpy, ``export.contract`` and ``export.scann_ops`` only:
never TensorFlow Recommenders, ``tfrs_cosine`` or ``training``, and it does not need
``TF_USE_LEGACY_KERAS``. It checks

* the signatures' names, dtypes and shapes in ``saved_model.pb`` against
  ``export.contract`` (``contract_problems``), before loading anything;
* the op set of the graph: a brute-force export must contain only ops registered in a
  TensorFlow process with no custom ops loaded (what stock TF Serving can run);
* after loading (ScaNN ops registered first when the index is ScaNN), every signature
  on the vocabulary's first ids and an unknown id: shapes, flags, ordering, ranges,
  and that ``explain`` refuses inputs whose batch sizes differ;
* with ``--reference`` (written by ``export.reference`` from the in-memory model):
  every signature against the expected values: top-K ids identical for the brute-force
  index (up to ties), recall@K at least ``--min-recall`` for ScaNN, explanations and
  embeddings equal within tolerance.

Prints a report (``--json``: one JSON line) and exits 0 when every check passed, 1 when
one failed, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from export import contract
from export.contract import EMBED_ITEMS, EMBED_USERS, EXPLAIN, SERVING_DEFAULT, SIMILAR_ITEMS
from export.errors import ExportError

# Packages of the training stack; a serving process may load only the light error module.
_TRAINING_STACK = ("tensorflow_recommenders", "tf_keras", "training", "tfrs_cosine")
_SHARED_MODULES = ("tfrs_cosine", "tfrs_cosine.errors")
TOLERANCE = 1e-5


def training_stack_modules() -> list[str]:
    """Modules of the training stack (TFRS, Keras 2, training, the model library) loaded here."""
    return sorted(
        name
        for name in sys.modules
        if (name.split(".")[0] in _TRAINING_STACK and name not in _SHARED_MODULES)
        or name == "export.savedmodel"
    )


def read_card(export_dir: str | Path) -> dict[str, Any]:
    """The model card of an export (``export.card``); ``ExportError`` when it is unreadable."""
    path = Path(export_dir) / contract.MODEL_CARD
    if not path.is_file():
        raise ExportError(f"{export_dir} is not an export of this project (no {contract.MODEL_CARD})")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"model card {path} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(card, dict):
        raise ExportError(f"model card {path} is not a JSON object")
    return card


def _saved_model_proto(export_dir: str | Path):
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(export_dir) / "saved_model.pb"
    if not path.is_file():
        raise ExportError(f"{export_dir} is not a SavedModel (no saved_model.pb)")
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(path.read_bytes())
    return proto


def signature_metadata(export_dir: str | Path) -> dict[str, dict[str, dict[str, tuple[str, list | None]]]]:
    """``{signature: {"inputs"|"outputs": {name: (dtype, shape)}}}`` from saved_model.pb.

    Shapes use -1 for unknown dimensions and None for an unknown rank.
    """
    import tensorflow as tf

    def describe(tensors) -> dict[str, tuple[str, list | None]]:
        out = {}
        for name, info in tensors.items():
            shape = info.tensor_shape
            dims = None if shape.unknown_rank else [int(dim.size) for dim in shape.dim]
            out[name] = (tf.dtypes.as_dtype(info.dtype).name, dims)
        return out

    signatures = _saved_model_proto(export_dir).meta_graphs[0].signature_def
    return {
        name: {"inputs": describe(sig.inputs), "outputs": describe(sig.outputs)}
        for name, sig in signatures.items()
        if not name.startswith("__")  # TF's internal __saved_model_init_op
    }


def graph_ops(export_dir: str | Path) -> set[str]:
    """Every op type in the SavedModel's graph and its function library (calls excluded)."""
    meta_graph = _saved_model_proto(export_dir).meta_graphs[0]
    library = meta_graph.graph_def.library
    functions = {f.signature.name for f in library.function}
    ops = {node.op for node in meta_graph.graph_def.node}
    for function in library.function:
        ops.update(node.op for node in function.node_def)
    return ops - functions


def unregistered_ops(ops: set[str]) -> list[str]:
    """The ops this process's TensorFlow does not know (custom ops not loaded here)."""
    from tensorflow.python.framework import op_def_registry

    return sorted(op for op in ops if op_def_registry.get(op) is None)


# ----------------------------------------------------------------------------------------
# comparisons


class _Checks:
    def __init__(self):
        self.passed: list[str] = []
        self.problems: list[str] = []

    def require(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed.append(what)
        else:
            self.problems.append(f"{what}: {detail}" if detail else what)
        return bool(ok)

    def close(self, got: np.ndarray, expected: np.ndarray, what: str, tolerance: float = TOLERANCE):
        got, expected = np.asarray(got), np.asarray(expected)
        if got.shape != expected.shape:
            return self.require(False, what, f"shape {got.shape} != {expected.shape}")
        if got.dtype == bool or expected.dtype == bool or got.dtype.kind in "iuSUO":
            bad = got != expected
            return self.require(not bad.any(), what, f"{int(bad.sum())} values differ")
        error = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        allowed = tolerance * (1 + np.abs(expected.astype(np.float64)))
        return self.require(bool(np.all(error <= allowed)), what, f"max error {error.max():.3g}")


def _decode(values: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else b, otypes=[str])(
        values
    ) if values.size else values.astype(str)


def _ranking_matches(got_ids, got_scores, ref_ids, ref_scores) -> tuple[bool, str]:
    """Identical ids wherever the reference is not tied, and the same scores."""
    if got_ids.shape != ref_ids.shape:
        return False, f"shape {got_ids.shape} != {ref_ids.shape}"
    error = np.abs(got_scores - ref_scores) / (1 + np.abs(ref_scores))
    if error.max(initial=0) > TOLERANCE:
        return False, f"scores differ by up to {error.max():.3g}"
    last = ref_ids.shape[1] - 1
    for row in range(len(ref_ids)):
        for j in np.flatnonzero(got_ids[row] != ref_ids[row]):
            others = np.delete(ref_scores[row], j)
            tied = np.abs(others - ref_scores[row, j]) <= TOLERANCE * (1 + abs(ref_scores[row, j]))
            if not (tied.any() or j == last):
                return False, f"row {row}: {got_ids[row, j]!r} at {j}, expected {ref_ids[row, j]!r}"
    return True, ""


def _recall(got_ids, got_scores, ref_ids, ref_scores) -> float:
    """Recall@K of returned items: a hit is a real, unrepeated item scoring >= the K-th best."""
    kth = ref_scores[:, -1:]
    hits = (got_ids != "") & (got_scores >= kth - TOLERANCE * (1 + np.abs(kth)))
    for row in range(len(got_ids)):
        seen: set[str] = set()
        for j, item in enumerate(got_ids[row]):
            if item in seen:
                hits[row, j] = False
            seen.add(item)
    return float(hits.mean())


def _recall_floor(reference: dict, key: str, min_recall: float) -> float:
    """The least acceptable recall on the reference sample.

    The exporter enforced ``min_recall`` on a large sample with the in-memory index and
    recorded the recall that index reaches on this small sample: the loaded index must
    do as well (less one miss in a thousand for float rounding at the K-th score).
    """
    if key in reference:
        return float(reference[key]) - 1e-3
    return min_recall


def _call(loaded, signature: contract.Signature, *inputs) -> dict[str, np.ndarray]:
    """``signature`` of a loaded export on ``inputs`` (in the contract's order), as numpy."""
    import tensorflow as tf

    arguments = {
        spec.name: tf.constant(value) for spec, value in zip(signature.inputs, inputs, strict=True)
    }
    outputs = loaded.signatures[signature.name](**arguments)
    return {key: value.numpy() for key, value in outputs.items()}


def _smoke(checks: _Checks, loaded, export_dir: Path, card: dict, sizes: dict[str, int]):
    """Every signature on the vocabulary's first ids and one unknown id."""
    import tensorflow as tf

    k, m, d = sizes["K"], sizes["m"], sizes["d"]

    def first_ids(asset: str, count: int) -> list[str]:
        with open(Path(export_dir) / asset, encoding="utf-8") as f:
            return [next(f).rstrip("\n") for _ in range(min(4, count))]

    unknown = "\x00not-an-id"
    users = first_ids(contract.USER_VOCABULARY, card["num_users"]) + [unknown]
    items = first_ids(contract.ITEM_VOCABULARY, card["num_items"]) + [unknown]
    out = _call(loaded, SERVING_DEFAULT, users)
    checks.require(out["item_ids"].shape == (len(users), k), "serving_default shape")
    checks.close(out["known_user"], np.array([True] * (len(users) - 1) + [False]), "known_user flags")
    scores = out["scores"]
    checks.require(bool(np.all(np.diff(scores, axis=1) <= 1e-6)), "scores in descending order")
    if card["model"]["head"] == "cosine":
        checks.require(bool(np.all(np.abs(scores) <= 1.0)), "cosine scores within [-1, 1]")

    out = _call(loaded, SIMILAR_ITEMS, items)
    similar = _decode(out["item_ids"])
    checks.require(similar.shape == (len(items), k), "similar_items shape")
    checks.require(
        all(items[i] not in similar[i] for i in range(len(items) - 1)), "similar_items exclude the item"
    )
    checks.close(out["known_item"], np.array([True] * (len(items) - 1) + [False]), "known_item flags")
    checks.require(bool(np.all(np.abs(out["cosine"][similar != ""]) <= 1.0)), "similar cosine within [-1, 1]")

    out = _call(loaded, EXPLAIN, users, [items] * len(users))
    checks.require(out["top_dimensions"].shape == (len(users), len(items), m), "explain top_dimensions shape")
    checks.close(
        out["cosine_is_training_objective"],
        np.full(len(users), card["model"]["head"] == "cosine"),
        "cosine_is_training_objective matches the head",
    )
    denominator = np.maximum(out["user_norm"][:, None] * out["item_norms"], 1e-12)
    checks.close(out["cosine"], out["dot"] / denominator, "explain cosine = dot / norms", 1e-4)
    try:  # one row of items for two users: refused, not broadcast
        _call(loaded, EXPLAIN, users[:2], [items])
        refused = ""
    except tf.errors.InvalidArgumentError as error:
        refused = error.message
    checks.require(
        "batch sizes must be equal" in refused, "explain refuses mismatched batch sizes",
        "2 users with 1 row of items was answered",
    )
    for signature, ids in ((EMBED_USERS, users), (EMBED_ITEMS, items)):
        vectors = _call(loaded, signature, ids)["embeddings"]
        checks.require(vectors.shape == (len(ids), d), f"{signature.name} shape")


def _against_reference(checks: _Checks, loaded, reference: dict, card: dict, min_recall: float):
    report: dict[str, Any] = {}
    exact = card["index"]["type"] == "brute-force"
    cosine_head = card["model"]["head"] == "cosine"

    out = _call(loaded, SERVING_DEFAULT, reference["user_ids"])
    got_ids, got_scores = _decode(out["item_ids"]), out["scores"]
    checks.close(out["known_user"], reference["known_user"], "serving_default known_user")
    ref_ids, ref_scores = reference["top_item_ids"], reference["top_scores"]
    if exact:
        ok, detail = _ranking_matches(got_ids, got_scores, ref_ids, ref_scores)
        checks.require(ok, "serving_default top-K identical to the in-memory model", detail)
        report["serving_recall_at_k"] = 1.0 if ok else _recall(got_ids, got_scores, ref_ids, ref_scores)
    else:
        recall = _recall(got_ids, got_scores, ref_ids, ref_scores)
        report["serving_recall_at_k"] = round(recall, 5)
        floor = _recall_floor(reference, "expected_serving_recall", min_recall)
        checks.require(recall >= floor, "serving_default recall@K", f"{recall:.4f} < {floor:.4f}")
        same = got_ids[..., None] == ref_ids[:, None, :]  # (b, K, K)
        found = same.any(-1)
        expected = np.where(found, (ref_scores[:, None, :] * same).sum(-1), got_scores)
        checks.close(got_scores, expected, "serving_default scores are the exact similarity")
    if cosine_head:
        checks.require(bool(np.all(np.abs(got_scores) <= 1.0)), "cosine scores within [-1, 1]")

    out = _call(loaded, SIMILAR_ITEMS, reference["item_ids"])
    got_ids, got_scores = _decode(out["item_ids"]), out["cosine"]
    checks.close(out["known_item"], reference["known_item"], "similar_items known_item")
    known = reference["known_item"]
    checks.require(
        not any(reference["item_ids"][i] in got_ids[i] for i in np.flatnonzero(known)),
        "similar_items exclude the item itself",
    )
    ref_ids, ref_scores = reference["similar_item_ids"], reference["similar_cosine"]
    if exact:
        ok, detail = _ranking_matches(got_ids, got_scores, ref_ids, ref_scores)
        checks.require(ok, "similar_items identical to the in-memory model", detail)
        report["similar_items_recall_at_k"] = 1.0 if ok else _recall(got_ids, got_scores, ref_ids, ref_scores)
    else:
        recall = _recall(got_ids, got_scores, ref_ids, ref_scores)
        report["similar_items_recall_at_k"] = round(recall, 5)
        floor = _recall_floor(reference, "expected_similar_recall", min_recall)
        checks.require(recall >= floor, "similar_items recall@K", f"{recall:.4f} < {floor:.4f}")

    for signature, ids, expected in (
        (EMBED_USERS, reference["user_ids"], reference["user_embeddings"]),
        (EMBED_ITEMS, reference["item_ids"], reference["item_embeddings"]),
    ):
        vectors = _call(loaded, signature, ids)["embeddings"]
        checks.close(vectors, expected, f"{signature.name} equal to the in-memory model")

    out = _call(loaded, EXPLAIN, reference["user_ids"], reference["explain_item_ids"])
    checks.close(out["known_items"], reference["explain_known_items"], "explain known_items")
    checks.close(out["known_user"], reference["known_user"], "explain known_user")
    for name in ("cosine", "dot", "score", "user_norm", "item_norms", "contributions"):
        checks.close(out[name], reference[f"explain_{name}"], f"explain {name} equal to tfrs_cosine.explain")
    checks.close(
        out["cosine_is_training_objective"],
        reference["explain_cosine_is_training_objective"],
        "explain cosine_is_training_objective",
    )
    # Dimensions may swap only where their contributions tie.
    swapped = out["top_dimensions"] != reference["explain_top_dimensions"]
    ties = np.isclose(
        np.abs(out["contributions"]), np.abs(reference["explain_contributions"]), atol=TOLERANCE
    )
    checks.require(
        bool(np.all(~swapped | ties)), "explain top_dimensions equal to tfrs_cosine.explain"
    )
    return report


def verify(
    export_dir: str | Path, reference: str | Path | None = None, min_recall: float = 0.95
) -> dict[str, Any]:
    """Loads ``export_dir`` and checks it; returns the report (``report["ok"]``)."""
    started = time.perf_counter()
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ExportError(f"export not found: {export_dir}")
    card = read_card(export_dir)
    sizes = contract.sizes_from_card(card)
    checks = _Checks()
    report: dict[str, Any] = {"export": str(export_dir), "index": card["index"]["type"]}

    metadata = signature_metadata(export_dir)
    problems = contract.contract_problems(metadata, sizes)
    checks.require(not problems, "signature names, dtypes and shapes", "; ".join(problems))

    # Before any custom op is loaded here: what a TF process without ScaNN cannot run.
    custom = unregistered_ops(graph_ops(export_dir))
    report["custom_ops"] = custom
    if card["index"]["type"] == "brute-force":
        checks.require(not custom, "only stock TensorFlow ops", f"custom ops {custom}")

    import tensorflow as tf

    if card["index"]["type"] == "scann":
        from export.scann_ops import register_scann_ops

        register_scann_ops()
    load_started = time.perf_counter()
    loaded = tf.saved_model.load(str(export_dir))
    report["load_seconds"] = round(time.perf_counter() - load_started, 3)
    checks.require(set(loaded.signatures) == set(contract.SIGNATURES), "signatures load")

    _smoke(checks, loaded, export_dir, card, sizes)
    if reference is not None:
        with np.load(reference, allow_pickle=False) as data:
            expected = {key: data[key] for key in data.files}
        report.update(_against_reference(checks, loaded, expected, card, min_recall))

    imported = training_stack_modules()
    checks.require(not imported, "loaded without the training stack", f"imported {imported}")
    report.update(
        ok=not checks.problems,
        checks=len(checks.passed),
        problems=checks.problems,
        seconds=round(time.perf_counter() - started, 2),
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.verify", description="Verify exports in this fresh process."
    )
    parser.add_argument(
        "export_dirs", type=Path, nargs="+", metavar="EXPORT_DIR",
        help="models/NAME/<version> (or a staging folder); several are checked in turn",
    )
    parser.add_argument("--reference", type=Path, help="expected outputs (.npz) from the exporter")
    parser.add_argument("--min-recall", type=float, default=0.95, help="least ScaNN recall@K")
    parser.add_argument("--json", action="store_true", help="print each report as one JSON line")
    args = parser.parse_args(argv)
    if args.reference is not None and len(args.export_dirs) > 1:
        parser.error("--reference belongs to one export: give a single EXPORT_DIR")
    ok = True
    for export_dir in args.export_dirs:
        try:
            report = verify(export_dir, args.reference, args.min_recall)
        except ExportError as error:
            print(f"export.verify: error: {error}", file=sys.stderr)
            return 2
        ok &= report["ok"]
        if args.json:
            print(json.dumps(report), flush=True)
        else:
            status = "ok" if report["ok"] else "FAILED"
            print(f"{report['export']}: {status}, {report['checks']} checks passed ({report['seconds']}s)")
            for problem in report["problems"]:
                print(f"  problem: {problem}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
