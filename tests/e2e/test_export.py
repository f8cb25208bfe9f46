"""Export: SavedModel signatures, ScaNN and brute-force indexes, atomic versioned writes.

Small models are built directly (IdTower + make_head) and exported from memory; one
test trains a tiny run and exports it through ``export_savedmodel`` and the CLI. Every
export with ``verify=True`` has been loaded and checked in a fresh Python process
(``export.verify``) before it was published.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from export import index as index_lib
from export import savedmodel
from export.errors import ExportError
from export.savedmodel import EmbeddingTables, existing_versions, export_model, read_model_card
from export.scann_ops import register_scann_ops
from export.verify import contract_problems, graph_ops, signature_metadata
from tfrs_cosine import IdTower, TwoTowerModel, make_head

PROJECT = Path(__file__).resolve().parent.parent
K = 10
TEMPERATURE = 0.2
NUM_USERS, NUM_ITEMS, DIM = 60, 120, 8


def _model(head: str, seed: int, hidden=(), layer_norm=False) -> tuple[TwoTowerModel, list, list]:
    tf.keras.utils.set_random_seed(seed)
    users = [f"user-{i}" for i in range(NUM_USERS)]
    items = [f"item {i}" for i in range(NUM_ITEMS)]  # ids with a space survive the assets
    model = TwoTowerModel(
        IdTower(users, DIM, hidden_layers=list(hidden), layer_norm=layer_norm, name="user_tower"),
        IdTower(items, DIM, hidden_layers=list(hidden), layer_norm=layer_norm, name="item_tower"),
        make_head(head, temperature=TEMPERATURE),
    )
    model({"user_id": tf.constant(users[:1]), "item_id": tf.constant(items[:1])})
    return model, users, items


def _quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def models():
    return {
        "cosine": _model("cosine", seed=1, hidden=(16, DIM), layer_norm=True),
        "dot": _model("dot", seed=2),
    }


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
    """Four verified exports: {(head, index): path}."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for head in ("cosine", "dot"):
        model, users, items = models[head]
        for index in ("scann", "brute-force"):
            out[head, index] = export_model(
                model, users, items, root / f"{head}-{index}", index=index, k=K, log=_quiet
            )
    return out


@pytest.fixture(scope="module")
def loaded(exports):
    register_scann_ops()
    return {key: tf.saved_model.load(str(path)) for key, path in exports.items()}


def _tables(models, head) -> EmbeddingTables:
    return EmbeddingTables.from_model(*models[head])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


# ----------------------------------------------------------------------------------------
# round trip, metadata, values


def _fresh_python(*args: str) -> subprocess.CompletedProcess:
    """Runs Python in a new process without TF_USE_LEGACY_KERAS (as a server would)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=PROJECT, env=env
    )


def test_round_trip_verified_in_a_fresh_process(exports):
    for (head, index), path in exports.items():
        assert path.name == "1" and (path / "saved_model.pb").is_file()
        assert [p.name for p in path.parent.iterdir()] == ["1"]  # no temporary folder left
        card = read_model_card(path)
        # Checked against the in-memory model in a fresh process before publishing.
        assert card["verification"]["checks"] >= 30, (head, index)
        assert card["verification"]["serving_recall_at_k"] >= 0.95
        assert card["index"]["type"] == index and card["k"] == K
        assert card["model"]["head"] == head
        assert card["model"]["temperature"] == pytest.approx(TEMPERATURE)
        assert card["num_items"] == NUM_ITEMS and card["num_users"] == NUM_USERS
        assert card["versions"]["tensorflow"] == tf.__version__
    # And once more from the command line, as an operator would, all four in one process.
    result = _fresh_python("-m", "export.verify", *map(str, exports.values()), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["ok"] for r in reports] == [True] * 4
    assert {r["index"] for r in reports} == {"scann", "brute-force"}


def test_signature_metadata_names_dtypes_and_shapes(exports):
    for (head, index), path in exports.items():
        metadata = signature_metadata(path)
        assert contract_problems(metadata, K, 5, DIM) == [], (head, index)
        serving = metadata["serving_default"]
        assert serving["inputs"] == {"user_id": ("string", [-1])}
        assert serving["outputs"]["item_ids"] == ("string", [-1, K])
        assert serving["outputs"]["scores"] == ("float32", [-1, K])
        explain = metadata["explain"]
        assert explain["inputs"]["item_ids"] == ("string", [-1, -1])
        assert explain["outputs"]["top_dimensions"] == ("int32", [-1, -1, 5])
        assert explain["outputs"]["cosine_is_training_objective"] == ("bool", [-1])
        assert metadata["similar_items"]["outputs"]["known_item"] == ("bool", [-1])
        assert metadata["embed_items"]["outputs"]["embeddings"] == ("float32", [-1, DIM])
    # The contract check itself notices a wrong shape.
    assert contract_problems(signature_metadata(exports["dot", "scann"]), K + 1, 5, DIM)


@pytest.mark.parametrize("head", ["cosine", "dot"])
def test_explanation_matches_a_numpy_reference(models, loaded, head):
    tables = _tables(models, head)
    rng = np.random.default_rng(0)
    user_rows = rng.choice(NUM_USERS, size=5, replace=False) + 1
    item_rows = np.stack([rng.choice(NUM_ITEMS, size=4, replace=False) + 1 for _ in user_rows])
    user_ids = [tables.users[r - 1] for r in user_rows]
    item_ids = [[tables.items[r - 1] for r in row] for row in item_rows]
    out = loaded[head, "scann"].signatures["explain"](
        user_id=tf.constant(user_ids), item_ids=tf.constant(item_ids)
    )
    out = {key: value.numpy() for key, value in out.items()}

    u = tables.user_vectors[user_rows].astype(np.float64)
    items = tables.item_vectors[item_rows].astype(np.float64)
    user_norm, item_norms = np.linalg.norm(u, axis=-1), np.linalg.norm(items, axis=-1)
    dot = np.einsum("bd,bnd->bn", u, items)
    per_dimension = u[:, None, :] * items / (user_norm[:, None] * item_norms)[..., None]
    cosine = per_dimension.sum(-1)
    order = np.argsort(-np.abs(per_dimension), axis=-1, kind="stable")[..., :5]
    score = (cosine if head == "cosine" else dot) / TEMPERATURE

    np.testing.assert_allclose(out["cosine"], cosine, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["dot"], dot, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["score"], score, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["user_norm"], user_norm, rtol=1e-5)
    np.testing.assert_allclose(out["item_norms"], item_norms, rtol=1e-5)
    np.testing.assert_array_equal(out["top_dimensions"], order)
    np.testing.assert_allclose(
        out["contributions"], np.take_along_axis(per_dimension, order, -1), rtol=1e-4, atol=1e-6
    )
    assert out["known_user"].all() and out["known_items"].all()
    assert out["cosine_is_training_objective"].tolist() == [head == "cosine"] * 5


@pytest.mark.parametrize("index", ["scann", "brute-force"])
def test_cosine_scores_in_range_and_ordered_by_cosine(models, loaded, index):
    tables = _tables(models, "cosine")
    out = loaded["cosine", index].signatures["serving_default"](
        user_id=tf.constant(tables.users)
    )
    ids = out["item_ids"].numpy().astype(str)
    scores = out["scores"].numpy()
    assert np.all(scores >= -1.0) and np.all(scores <= 1.0)
    assert np.all(np.diff(scores, axis=1) <= 0)
    position = {item: i for i, item in enumerate(tables.items)}
    rows = np.vectorize(position.get)(ids)
    queries, catalog = _unit(tables.user_vectors[1:]), _unit(tables.item_vectors[1:])
    cosines = np.einsum("bd,bkd->bk", queries, catalog[rows])
    np.testing.assert_allclose(scores, cosines, atol=1e-5)
    # The ranking is the cosine ranking: the exact top-K by cosine (tiny catalog: exact plan).
    expected = np.argsort(-(queries @ catalog.T), axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(rows, expected)


def test_dot_scores_are_raw_dot_products(models, loaded):
    tables = _tables(models, "dot")
    out = loaded["dot", "brute-force"].signatures["serving_default"](
        user_id=tf.constant(tables.users[:8])
    )
    position = {item: i for i, item in enumerate(tables.items)}
    rows = np.vectorize(position.get)(out["item_ids"].numpy().astype(str))
    all_scores = tables.user_vectors[1:9] @ tables.item_vectors[1:].T
    np.testing.assert_array_equal(rows, np.argsort(-all_scores, axis=1, kind="stable")[:, :K])
    np.testing.assert_allclose(
        out["scores"].numpy(), np.take_along_axis(all_scores, rows, 1), rtol=1e-5, atol=1e-5
    )


def test_faithfulness_flag_follows_the_head(loaded):
    for (head, index), model in loaded.items():
        out = model.signatures["explain"](
            user_id=tf.constant(["user-0", "user-1", "nobody"]),
            item_ids=tf.constant([["item 0"], ["item 1"], ["item 2"]]),
        )
        expected = [head == "cosine"] * 3
        assert out["cosine_is_training_objective"].numpy().tolist() == expected, (head, index)


def test_unknown_ids_are_answered_and_flagged(loaded):
    model = loaded["dot", "scann"]
    out = model.signatures["serving_default"](user_id=tf.constant(["user-3", "stranger"]))
    assert out["known_user"].numpy().tolist() == [True, False]
    assert (out["item_ids"].numpy() != b"").all()  # the unknown user still gets K items
    out = model.signatures["explain"](
        user_id=tf.constant(["stranger"]), item_ids=tf.constant([["item 1", "no such item"]])
    )
    assert out["known_user"].numpy().tolist() == [False]
    assert out["known_items"].numpy().tolist() == [[True, False]]
    out = model.signatures["similar_items"](item_id=tf.constant(["item 1", "no such item"]))
    assert out["known_item"].numpy().tolist() == [True, False]
    assert out["item_ids"].shape == (2, K)


@pytest.mark.parametrize("head", ["cosine", "dot"])
def test_similar_items_are_cosine_neighbours_without_the_item(models, loaded, head):
    tables = _tables(models, head)
    queries = tables.items[:20]
    out = loaded[head, "scann"].signatures["similar_items"](item_id=tf.constant(queries))
    ids = out["item_ids"].numpy().astype(str)
    assert all(query not in row for query, row in zip(queries, ids, strict=True))
    unit = _unit(tables.item_vectors[1:])
    similarity = unit[:20] @ unit.T
    np.fill_diagonal(similarity[:, :20], -np.inf)
    expected = np.array(tables.items)[np.argsort(-similarity, axis=1, kind="stable")[:, :K]]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(
        out["cosine"].numpy(), -np.sort(-similarity, axis=1)[:, :K], atol=1e-5
    )


def test_embeddings_are_what_the_head_compares(models, loaded):
    for head in ("cosine", "dot"):
        tables = _tables(models, head)
        users = loaded[head, "brute-force"].signatures["embed_users"](
            user_id=tf.constant(tables.users[:4])
        )["embeddings"].numpy()
        items = loaded[head, "brute-force"].signatures["embed_items"](
            item_id=tf.constant(tables.items[:4])
        )["embeddings"].numpy()
        raw_users, raw_items = tables.user_vectors[1:5], tables.item_vectors[1:5]
        if head == "cosine":
            np.testing.assert_allclose(users, _unit(raw_users), atol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-6)
        else:
            np.testing.assert_allclose(users, raw_users, atol=1e-6)
            np.testing.assert_allclose(items, raw_items, atol=1e-6)


def test_two_scann_exports_in_one_process_answer_independently(models, loaded):
    """Each ScaNN index has its own resource: loading a second model must not alias it."""
    for head in ("dot", "cosine"):
        tables = _tables(models, head)
        out = loaded[head, "scann"].signatures["serving_default"](
            user_id=tf.constant(tables.users[:10])
        )
        prepare = _unit if head == "cosine" else (lambda x: x)
        scores = prepare(tables.user_vectors[1:11]) @ prepare(tables.item_vectors[1:]).T
        expected = np.array(tables.items)[np.argsort(-scores, axis=1, kind="stable")[:, :K]]
        np.testing.assert_array_equal(out["item_ids"].numpy().astype(str), expected)


# ----------------------------------------------------------------------------------------
# the portable variant


def test_portable_graph_has_only_stock_tensorflow_ops(exports):
    # A process with no custom ops loaded (scann never imported) judges each op set.
    code = (
        "import json, sys\n"
        "from export.verify import graph_ops, unregistered_ops\n"
        "unknown = [unregistered_ops(graph_ops(path)) for path in sys.argv[1:]]\n"
        "assert 'scann' not in sys.modules\n"
        "print(json.dumps(unknown))\n"
    )
    keys = [("cosine", "brute-force"), ("dot", "brute-force"), ("dot", "scann")]
    result = _fresh_python("-c", code, *(str(exports[key]) for key in keys))
    assert result.returncode == 0, result.stderr
    unknown = dict(zip(keys, json.loads(result.stdout.strip().splitlines()[-1]), strict=True))
    assert unknown["cosine", "brute-force"] == [] and unknown["dot", "brute-force"] == []
    for head in ("cosine", "dot"):
        ops = graph_ops(exports[head, "brute-force"])
        assert {"MatMul", "TopKV2", "LookupTableFindV2"} <= ops
        assert not [op for op in ops if op.startswith("Scann")]
    # The check can fail: the ScaNN variant's custom ops are unknown to stock TensorFlow.
    assert "Scann>ScannSearchBatched" in unknown["dot", "scann"]


# ----------------------------------------------------------------------------------------
# the ScaNN index: plans, measured recall


def test_plan_follows_scann_guidance():
    small = index_lib.plan_index(5_000, 100, normalized=True)
    assert small.exact and small.num_leaves == 0
    medium = index_lib.plan_index(50_000, 100, normalized=True)
    assert medium.scoring == "asymmetric_hashing" and medium.num_leaves == 0
    assert medium.reorder > 100 and medium.anisotropic_quantization_threshold == 0.2
    large = index_lib.plan_index(1_000_000, 10, normalized=False)
    assert large.num_leaves == 1000 and 1 <= large.leaves_to_search < 1000
    assert large.reorder >= 10 and large.anisotropic_quantization_threshold is None
    assert large.sentence(1_000_000).startswith("Partition 1,000,000 items into 1000 leaves")
    wider = large.widened()
    assert wider.leaves_to_search == 2 * large.leaves_to_search and wider.reorder == 2 * large.reorder


def _clustered_tables(num_items: int, seed: int = 0) -> EmbeddingTables:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 16)).astype(np.float32)
    items = centres[rng.integers(20, size=num_items + 1)] + 0.3 * rng.normal(size=(num_items + 1, 16))
    users = centres[rng.integers(20, size=301)] + 0.3 * rng.normal(size=(301, 16))
    return EmbeddingTables(
        head="cosine", temperature=1.0,
        users=[f"u{i}" for i in range(300)], items=[f"i{i}" for i in range(num_items)],
        user_vectors=users.astype(np.float32), item_vectors=items.astype(np.float32),
    )


def test_partitioned_scann_index_is_measured_and_verified(tmp_path):
    tables = _clustered_tables(3000)
    plan = index_lib.IndexPlan(
        num_leaves=20, leaves_to_search=10, scoring="asymmetric_hashing",
        anisotropic_quantization_threshold=0.2, reorder=100,
    )
    path = savedmodel.export_tables(
        tables, tmp_path / "m", index="scann", k=K, plan=plan, min_recall=0.9, log=_quiet
    )
    card = read_model_card(path)
    assert card["index"]["parameters"]["num_leaves"] == 20
    assert 0.9 <= card["index"]["recall_at_k"] <= 1.0
    assert card["verification"]["serving_recall_at_k"] >= 0.9
    assert "Scann>ScannSearchBatched" in graph_ops(path)


def test_recall_below_threshold_fails_and_writes_nothing(tmp_path):
    tables = _clustered_tables(3000, seed=1)
    poor = index_lib.IndexPlan(num_leaves=40, leaves_to_search=1, scoring="asymmetric_hashing")
    base = tmp_path / "models" / "poor"
    with pytest.raises(ExportError, match=r"recall@10 is 0\.\d+, below --min-recall 0.99"):
        savedmodel.export_tables(
            tables, base, index="scann", k=K, plan=poor, min_recall=0.99, log=_quiet
        )
    assert not base.exists()


def test_recall_measurement_counts_misses():
    rng = np.random.default_rng(0)
    queries, catalog = rng.normal(size=(5, 4)), rng.normal(size=(50, 4))
    scores, exact = index_lib.exact_top_k(queries, catalog, 5)
    assert index_lib.recall_at_k(queries, catalog, exact, scores) == 1.0
    worst = np.argsort(queries @ catalog.T, axis=1)[:, :5]
    assert index_lib.recall_at_k(queries, catalog, worst, scores) == 0.0
    padded = exact.copy()
    padded[:, -1] = -1
    assert index_lib.recall_at_k(queries, catalog, padded, scores) == pytest.approx(0.8)


# ----------------------------------------------------------------------------------------
# versions, bad input, interrupts


def test_version_numbering(models, tmp_path):
    model, users, items = models["dot"]
    base = tmp_path / "models" / "demo"

    def export(**kwargs):
        return export_model(
            model, users, items, base, index="brute-force", k=3, verify=False, log=_quiet, **kwargs
        )

    assert export().name == "1"
    assert export(version=5).name == "5"
    (base / "notes").mkdir()  # not a version: ignored, as TF Serving ignores it
    assert export().name == "6"
    assert existing_versions(base) == [1, 5, 6]
    assert export(version=3).name == "3"
    assert existing_versions(base) == [1, 3, 5, 6]


def test_bad_input_is_a_one_line_error_and_writes_nothing(models, tmp_path):
    model, users, items = models["cosine"]
    base = tmp_path / "models" / "m"
    existing = export_model(
        model, users, items, base, index="brute-force", k=3, verify=False, log=_quiet
    )
    before = sorted((p.relative_to(base), p.stat().st_mtime_ns) for p in base.rglob("*"))
    cases = [
        ({"k": NUM_ITEMS + 1}, "larger than the catalog"),
        ({"k": 0}, "--k must be an integer >= 1"),
        ({"version": 1}, "version 1 already exists"),
        ({"index": "faiss"}, "unknown index 'faiss'"),
        ({"min_recall": 1.5}, "--min-recall must be in"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ExportError, match=message) as error:
            export_model(model, users, items, base, verify=False, log=_quiet, **kwargs)
        assert "\n" not in str(error.value)
    after = sorted((p.relative_to(base), p.stat().st_mtime_ns) for p in base.rglob("*"))
    assert after == before and existing.is_dir()

    a_file = tmp_path / "models" / "file"
    a_file.write_text("not a folder")
    with pytest.raises(ExportError, match="is a file"):
        export_model(model, users, items, a_file, verify=False, log=_quiet)


def test_interrupted_export_leaves_no_version_folder(models, tmp_path, monkeypatch):
    model, users, items = models["dot"]
    base = tmp_path / "models" / "m"
    export_model(model, users, items, base, index="brute-force", k=3, verify=False, log=_quiet)
    card_before = (base / "1" / "assets.extra" / "model_card.json").read_text()
    written = []

    def interrupted(staging: Path, target: Path) -> None:
        written.append((staging / "saved_model.pb").is_file())
        raise KeyboardInterrupt  # after the SavedModel is written, before the rename

    monkeypatch.setattr(savedmodel, "_publish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(model, users, items, base, index="scann", k=3, verify=False, log=_quiet)
    assert written == [True]
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    assert (base / "1" / "assets.extra" / "model_card.json").read_text() == card_before

    # A fresh base path that only the failed export created is removed as well.
    fresh = tmp_path / "models" / "fresh"
    with pytest.raises(KeyboardInterrupt):
        export_model(model, users, items, fresh, index="brute-force", k=3, verify=False, log=_quiet)
    assert not fresh.exists()


# ----------------------------------------------------------------------------------------
# a real run directory, through export_savedmodel and the CLI


@pytest.fixture(scope="module")
def run_dir(request, tmp_path_factory):
    """The lead's session fixture when conftest.py has it, else a tiny run trained here."""
    try:
        return Path(request.getfixturevalue("cosine_run_dir"))
    except pytest.FixtureLookupError:
        pass
    from training.config import load_config
    from training.train import train

    config = load_config(
        PROJECT / "training" / "configs" / "synthetic.toml",
        ["training.epochs=2", "data.num_users=300", "data.num_items=80"],
    )
    return train(config, tmp_path_factory.mktemp("runs") / "cosine", log=_quiet, verbose=0)


def test_export_a_run_directory_from_the_command_line(run_dir, tmp_path, capsys):
    from training.cli import main

    base = tmp_path / "models" / "synthetic"
    code = main([
        "export", str(run_dir), "--model-base-path", str(base), "--index", "brute-force",
        "--k", "5", "--top-dimensions", "3",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"exported {base / '1'}" in out
    assert "index recall@5: 1.0000" in out and "cosine is the training objective: yes" in out
    card = read_model_card(base / "1")
    assert card["dataset"]["num_items"] == card["num_items"]
    assert card["metrics"]["test"] and card["config"]["model"]["head"] == "cosine"
    assert card["top_dimensions"] == 3 and card["model"]["layer_norm"] is True

    path = savedmodel.export_savedmodel(run_dir, base, index="scann", k=5, log=_quiet)
    assert path == base / "2"
    assert read_model_card(path)["index"]["type"] == "scann"

    # Bad input: one line on stderr, exit code 2, nothing new written.
    for argv, message in [
        ([str(run_dir), "--k", "0"], "--k must be an integer >= 1"),
        ([str(run_dir), "--version", "2"], "version 2 already exists"),
        ([str(tmp_path / "missing")], "run directory not found"),
    ]:
        assert main(["export", *argv, "--model-base-path", str(base)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tfrs-cosine: error:") and message in err and "\n" not in err
    assert existing_versions(base) == [1, 2]


def test_unfinished_run_is_refused(run_dir, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    info = json.loads((run_dir / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**info, "status": "running"}))
    with pytest.raises(ExportError, match="not complete"):
        savedmodel.export_savedmodel(unfinished, tmp_path / "models" / "x", log=_quiet)
    assert not (tmp_path / "models").exists()


def test_verification_notices_a_wrong_model(models, exports, tmp_path):
    """The verifier is not a rubber stamp: another model's expected outputs fail it."""
    from export.verify import verify

    other = _tables(models, "dot")  # same ids, other embeddings
    other.head = "cosine"
    reference = savedmodel._reference(  # noqa: SLF001
        other, make_head("cosine", TEMPERATURE), K, 5, np.random.default_rng(0)
    )
    path = tmp_path / "reference.npz"
    np.savez(path, **reference)
    report = verify(exports["cosine", "brute-force"], path)
    assert report["ok"] is False
    problems = " ".join(report["problems"])
    assert "explain cosine equal to tfrs_cosine.explain" in problems
    assert "serving_default top-K identical to the in-memory model" in problems
    assert "loaded without the training stack" in problems  # this test process has TFRS
