"""Export end to end: verified SavedModels, fresh processes, the CLI, killed exports.

Small models are built directly (IdTower + make_head) and exported from memory; a tiny
trained run (the session's ``cosine_run_dir``) is exported through
``export_savedmodel`` and the CLI. Every export with verification on was loaded and
checked in a fresh Python process (``export.verify``) before it was published. Signature
and input names come from ``export.contract``. What needs no subprocess is in
tests/unit/test_export_*.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from export import (
    EmbeddingTables,
    ExportError,
    ExportOptions,
    contract,
    export_model,
    export_savedmodel,
    export_tables,
    read_model_card,
)
from export.contract import EMBED_ITEMS, EMBED_USERS, EXPLAIN, SERVING_DEFAULT, SIMILAR_ITEMS
from export.plan import IndexPlan
from export.reference import reference
from export.scann_ops import register_scann_ops
from export.verify import graph_ops, signature_metadata
from export.versions import existing_versions
from tfrs_cosine import IdTower, TwoTowerModel, make_head

ROOT = Path(__file__).resolve().parents[2]
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


def call(model, signature: contract.Signature, *inputs) -> dict[str, np.ndarray]:
    """A signature of a loaded export, inputs given in the contract's order."""
    arguments = {spec.name: tf.constant(x) for spec, x in zip(signature.inputs, inputs, strict=True)}
    return {key: value.numpy() for key, value in model.signatures[signature.name](**arguments).items()}


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
                model, users, items, root / f"{head}-{index}", ExportOptions(index=index, k=K),
                log=_quiet,
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


def _fresh_python(*args: str) -> subprocess.CompletedProcess:
    """Runs Python in a new process without TF_USE_LEGACY_KERAS (as a server would)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env)


# ----------------------------------------------------------------------------------------
# round trip, metadata, values


def test_round_trip_verified_in_a_fresh_process(exports):
    for (head, index), path in exports.items():
        assert path.name == "1" and (path / "saved_model.pb").is_file()
        assert [p.name for p in path.parent.iterdir()] == ["1"]  # no staging folder left
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


def test_saved_signatures_are_the_contract(exports):
    sizes = {"K": K, "m": 5, "d": DIM}
    for (head, index), path in exports.items():
        metadata = signature_metadata(path)
        assert contract.contract_problems(metadata, sizes) == [], (head, index)
        assert contract.sizes_from_card(read_model_card(path)) == sizes
        for signature in contract.SIGNATURES.values():
            for side, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)):
                for spec in specs:
                    dims = [-1 if d is None else d for d in spec.dims(sizes)]
                    assert metadata[signature.name][side][spec.name] == (spec.dtype, dims)
    # The contract check itself notices a wrong shape.
    assert contract.contract_problems(signature_metadata(exports["dot", "scann"]), {**sizes, "K": K + 1})


@pytest.mark.parametrize("head", ["cosine", "dot"])
def test_explanation_matches_a_numpy_reference(models, loaded, head):
    tables = _tables(models, head)
    rng = np.random.default_rng(0)
    user_rows = rng.choice(NUM_USERS, size=5, replace=False) + 1
    item_rows = np.stack([rng.choice(NUM_ITEMS, size=4, replace=False) + 1 for _ in user_rows])
    user_ids = [tables.users[r - 1] for r in user_rows]
    item_ids = [[tables.items[r - 1] for r in row] for row in item_rows]
    out = call(loaded[head, "scann"], EXPLAIN, user_ids, item_ids)

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
    out = call(loaded["cosine", index], SERVING_DEFAULT, tables.users)
    ids, scores = out["item_ids"].astype(str), out["scores"]
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
    out = call(loaded["dot", "brute-force"], SERVING_DEFAULT, tables.users[:8])
    position = {item: i for i, item in enumerate(tables.items)}
    rows = np.vectorize(position.get)(out["item_ids"].astype(str))
    all_scores = tables.user_vectors[1:9] @ tables.item_vectors[1:].T
    np.testing.assert_array_equal(rows, np.argsort(-all_scores, axis=1, kind="stable")[:, :K])
    np.testing.assert_allclose(
        out["scores"], np.take_along_axis(all_scores, rows, 1), rtol=1e-5, atol=1e-5
    )


def test_faithfulness_flag_follows_the_head(loaded):
    for (head, index), model in loaded.items():
        out = call(model, EXPLAIN, ["user-0", "user-1", "nobody"], [["item 0"], ["item 1"], ["item 2"]])
        assert out["cosine_is_training_objective"].tolist() == [head == "cosine"] * 3, (head, index)


def test_unknown_ids_are_answered_and_flagged(loaded):
    model = loaded["dot", "scann"]
    out = call(model, SERVING_DEFAULT, ["user-3", "stranger"])
    assert out["known_user"].tolist() == [True, False]
    assert (out["item_ids"] != b"").all()  # the unknown user still gets K items
    out = call(model, EXPLAIN, ["stranger"], [["item 1", "no such item"]])
    assert out["known_user"].tolist() == [False]
    assert out["known_items"].tolist() == [[True, False]]
    out = call(model, SIMILAR_ITEMS, ["item 1", "no such item"])
    assert out["known_item"].tolist() == [True, False]
    assert out["item_ids"].shape == (2, K)


@pytest.mark.parametrize("head", ["cosine", "dot"])
def test_similar_items_are_cosine_neighbours_without_the_item(models, loaded, head):
    tables = _tables(models, head)
    queries = tables.items[:20]
    out = call(loaded[head, "scann"], SIMILAR_ITEMS, queries)
    ids = out["item_ids"].astype(str)
    assert all(query not in row for query, row in zip(queries, ids, strict=True))
    unit = _unit(tables.item_vectors[1:])
    similarity = unit[:20] @ unit.T
    np.fill_diagonal(similarity[:, :20], -np.inf)
    expected = np.array(tables.items)[np.argsort(-similarity, axis=1, kind="stable")[:, :K]]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(out["cosine"], -np.sort(-similarity, axis=1)[:, :K], atol=1e-5)


def test_embeddings_are_what_the_head_compares(models, loaded):
    for head in ("cosine", "dot"):
        tables = _tables(models, head)
        model = loaded[head, "brute-force"]
        users = call(model, EMBED_USERS, tables.users[:4])["embeddings"]
        items = call(model, EMBED_ITEMS, tables.items[:4])["embeddings"]
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
        out = call(loaded[head, "scann"], SERVING_DEFAULT, tables.users[:10])
        prepare = _unit if head == "cosine" else (lambda x: x)
        scores = prepare(tables.user_vectors[1:11]) @ prepare(tables.item_vectors[1:]).T
        expected = np.array(tables.items)[np.argsort(-scores, axis=1, kind="stable")[:, :K]]
        np.testing.assert_array_equal(out["item_ids"].astype(str), expected)


# ----------------------------------------------------------------------------------------
# the portable variant, in a process without custom ops


def test_portable_graph_has_only_stock_tensorflow_ops(exports):
    # A process with no custom ops loaded (scann never imported) judges each op set, loads
    # the brute-force exports with stock TensorFlow and sends explain mismatched batches.
    code = (
        "import json, sys\n"
        "import tensorflow as tf\n"
        "from export.verify import graph_ops, unregistered_ops\n"
        "unknown = [unregistered_ops(graph_ops(path)) for path in sys.argv[1:]]\n"
        "refused = []\n"
        "for path in sys.argv[1:3]:\n"
        "    explain = tf.saved_model.load(path).signatures['explain']\n"
        "    try:\n"
        "        explain(user_id=tf.constant(['user-0', 'user-1']), item_ids=tf.constant([['item 0']]))\n"
        "        refused.append(None)\n"
        "    except tf.errors.InvalidArgumentError as error:\n"
        "        refused.append(' '.join(error.message.split()))\n"
        "assert 'scann' not in sys.modules\n"
        "print(json.dumps([unknown, refused]))\n"
    )
    keys = [("cosine", "brute-force"), ("dot", "brute-force"), ("dot", "scann")]
    result = _fresh_python("-c", code, *(str(exports[key]) for key in keys))
    assert result.returncode == 0, result.stderr
    unknown, refused = json.loads(result.stdout.strip().splitlines()[-1])
    unknown = dict(zip(keys, unknown, strict=True))
    assert unknown["cosine", "brute-force"] == [] and unknown["dot", "brute-force"] == []
    for head in ("cosine", "dot"):
        ops = graph_ops(exports[head, "brute-force"])
        assert {"MatMul", "TopKV2", "LookupTableFindV2", "Assert"} <= ops
        assert not [op for op in ops if op.startswith("Scann")]
    # The check can fail: the ScaNN variant's custom ops are unknown to stock TensorFlow.
    assert "Scann>ScannSearchBatched" in unknown["dot", "scann"]
    # 2 users, 1 row of items: INVALID_ARGUMENT naming both sizes, not a broadcast answer.
    user_id, item_ids = EXPLAIN.input_names
    for message in refused:
        assert message is not None, "explain answered mismatched batch sizes"
        assert f"explain: {user_id} has] [2] [rows but {item_ids} has] [1] [rows" in message


# ----------------------------------------------------------------------------------------
# a partitioned ScaNN index, measured and verified


def test_partitioned_scann_index_is_measured_and_verified(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16)).astype(np.float32)
    items = centres[rng.integers(20, size=3001)] + 0.3 * rng.normal(size=(3001, 16))
    users = centres[rng.integers(20, size=301)] + 0.3 * rng.normal(size=(301, 16))
    tables = EmbeddingTables(
        head="cosine", temperature=1.0,
        users=[f"u{i}" for i in range(300)], items=[f"i{i}" for i in range(3000)],
        user_vectors=users.astype(np.float32), item_vectors=items.astype(np.float32),
    )
    plan = IndexPlan(
        num_leaves=20, leaves_to_search=10, scoring="asymmetric_hashing",
        anisotropic_quantization_threshold=0.2, reorder=100,
    )
    path = export_tables(
        tables, tmp_path / "m", ExportOptions(k=K, plan=plan, min_recall=0.9), log=_quiet
    )
    card = read_model_card(path)
    assert card["index"]["parameters"]["num_leaves"] == 20
    assert 0.9 <= card["index"]["recall_at_k"] <= 1.0
    assert card["verification"]["serving_recall_at_k"] >= 0.9
    assert "Scann>ScannSearchBatched" in graph_ops(path)


def test_verification_notices_a_wrong_model(models, exports, tmp_path):
    """The verifier is not a rubber stamp: another model's expected outputs fail it."""
    from export.verify import verify

    other = _tables(models, "dot")  # same ids, other embeddings
    other.head = "cosine"
    expected = reference(
        other, make_head("cosine", TEMPERATURE), ExportOptions(k=K), np.random.default_rng(0)
    )
    path = tmp_path / "reference.npz"
    np.savez(path, **expected)
    report = verify(exports["cosine", "brute-force"], path)
    assert report["ok"] is False
    problems = " ".join(report["problems"])
    assert "explain cosine equal to tfrs_cosine.explain" in problems
    assert "serving_default top-K identical to the in-memory model" in problems
    assert "loaded without the training stack" in problems  # this test process has TFRS
    assert "explain refuses mismatched batch sizes" not in problems


# ----------------------------------------------------------------------------------------
# a real run directory: export_savedmodel, the CLI, killed exports, bad runs


@pytest.fixture(scope="module")
def run_dir(cosine_run_dir) -> Path:
    return Path(cosine_run_dir)


def test_export_a_run_directory(run_dir, tmp_path):
    base = tmp_path / "models" / "synthetic"
    options = ExportOptions(index="scann", k=5, top_dimensions=3)
    path = export_savedmodel(run_dir, base, options, log=_quiet)
    assert path == base / "1" and existing_versions(base) == [1]
    card = read_model_card(path)
    assert card["index"]["type"] == "scann" and card["verification"]["checks"] >= 30
    assert card["dataset"]["num_items"] == card["num_items"]
    assert card["metrics"]["test"] and card["config"]["model"]["head"] == "cosine"
    assert card["top_dimensions"] == 3 and card["model"]["layer_norm"] is True
    assert card["run_dir"] == str(run_dir.resolve())


def _start_export(run_dir: Path, base: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "training.cli", "export", str(run_dir), "--model-base-path",
         str(base), "--index", "brute-force", "--k", "5", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def _staging_folder(process: subprocess.Popen) -> tuple[Path, str]:
    """Reads the export's log until it names its staging folder (the folder exists then)."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("export: writing the SavedModel to "):
            return Path(line.partition(" to ")[2].strip()), "".join(seen)
    raise AssertionError(f"the export ended (exit {process.wait()}) before staging:\n{''.join(seen)}")


def test_a_killed_export_is_cleaned_up_and_a_live_one_left_alone(run_dir, tmp_path):
    base = tmp_path / "models" / "m"
    temp = tmp_path / "tmp"  # TMPDIR of the exports: nothing may be left there
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp), TF_CPP_MIN_LOG_LEVEL="3")

    killed = _start_export(run_dir, base, env)
    killed_folder, _ = _staging_folder(killed)
    os.killpg(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    killed.stdout.close()
    assert killed_folder.is_dir() and killed_folder.parent == base
    assert existing_versions(base) == []

    # The next export removes what the killed one left, before it stages its own.
    paused = _start_export(run_dir, base, env)
    paused_folder, log = _staging_folder(paused)
    os.killpg(paused.pid, signal.SIGSTOP)  # a live export, stopped while it stages version 1
    assert f"export: removed {killed_folder.name}, left by export process {killed.pid}" in log
    assert not killed_folder.exists()
    try:
        third = subprocess.run(
            [sys.executable, "-m", "training.cli", "export", str(run_dir), "--model-base-path",
             str(base), "--index", "brute-force", "--k", "5"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert third.returncode == 0, third.stdout + third.stderr
        assert "export: removed" not in third.stdout
        assert paused_folder.is_dir()  # the live export's folder is left alone
        # Version 1 is being staged by the live export: the next free one is 2.
        assert f"exported {base / '2'}" in third.stdout
        assert "index recall@5: 1.0000" in third.stdout
        assert "cosine is the training objective: yes" in third.stdout
    finally:
        os.killpg(paused.pid, signal.SIGCONT)
    output, _ = paused.communicate(timeout=600)
    assert paused.returncode == 0, output
    assert f"exported {base / '1'}" in output
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]
    assert list(temp.iterdir()) == []  # no scratch folder in TMPDIR, not even the killed one's


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_export_removes_its_staging_folder(run_dir, tmp_path, signum):
    """A scheduler's SIGTERM, or Ctrl-C, while the export stages: exit 128 + signal, one
    line, no staging folder, no version, no base path it created."""
    base = tmp_path / "models" / "m"
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp), TF_CPP_MIN_LOG_LEVEL="3")
    stopped = _start_export(run_dir, base, env)
    folder, _ = _staging_folder(stopped)
    os.kill(stopped.pid, signum)
    rest = stopped.stdout.read()
    assert stopped.wait(timeout=120) == 128 + signum, rest
    stopped.stdout.close()
    assert f"tfrs-cosine: interrupted by {signal.Signals(signum).name}" in rest
    assert "Traceback" not in rest
    assert not folder.exists() and not base.exists()
    assert list(temp.iterdir()) == []


def _bad_run(run_dir: Path, tmp_path: Path, name: str, change) -> Path:
    """A copy of the complete run with one thing broken by ``change(copy)``."""
    copy = tmp_path / name
    shutil.copytree(run_dir, copy)
    change(copy)
    return copy


BAD_RUNS = [
    ("run-json-binary", lambda r: (r / "run.json").write_bytes(b"\xff\xfe{"), "run.json is not UTF-8 text"),
    ("run-json-list", lambda r: (r / "run.json").write_text("[1]"), "run.json is not a JSON object"),
    ("run-json-broken", lambda r: (r / "run.json").write_text("{bad"), "run.json is not valid JSON"),
    ("config-binary", lambda r: (r / "config.toml").write_bytes(b"x = \xff\n"), "is not UTF-8 text"),
    ("config-broken", lambda r: (r / "config.toml").write_text("[model"), "is not valid TOML"),
    ("config-missing", lambda r: (r / "config.toml").unlink(), "has no config.toml"),
    ("vocab-binary", lambda r: (r / "vocab" / "items.txt").write_bytes(b"a\n\xff\n"),
     "items.txt is not UTF-8 text"),
    ("vocab-empty", lambda r: (r / "vocab" / "items.txt").write_text(""), "items.txt is empty"),
    ("vocab-missing", lambda r: (r / "vocab" / "users.txt").unlink(), "has no vocabulary users.txt"),
    ("vocab-repeated", lambda r: (r / "vocab" / "items.txt").write_text("a\nb\na\n"),
     "repeats id 'a' at line 3"),
    ("weights-corrupt", lambda r: (r / "model" / "weights.data-00000-of-00001").write_bytes(b"junk"),
     "cannot restore weights"),
    ("weights-missing", lambda r: [p.unlink() for p in (r / "model").iterdir()], "cannot restore weights"),
]


def test_bad_runs_and_targets_are_one_line_errors(run_dir, tmp_path, capsys):
    from training.cli import main

    a_file = tmp_path / "a_file"
    a_file.write_text("a file, not a folder")
    cases = [
        ([str(_bad_run(run_dir, tmp_path, name, change))], message)
        for name, change, message in BAD_RUNS
    ] + [
        ([str(a_file)], "is a file, not a directory"),
        ([str(run_dir), "--model-base-path", str(a_file / "m")], "cannot be created: "),
        ([str(run_dir), "--version", "0"], "--version must be an integer >= 1"),
        ([str(run_dir), "--top-dimensions", "0"], "--top-dimensions must be an integer >= 1"),
        ([str(run_dir), "--min-recall", "nan"], "--min-recall must be in [0, 1]"),
    ]
    base = tmp_path / "models" / "m"
    for argv, message in cases:
        if "--model-base-path" not in argv:
            argv = [*argv, "--model-base-path", str(base)]
        assert main(["export", *argv, "--index", "brute-force", "--k", "5"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("tfrs-cosine: error:") and message in err, (argv, err)
        assert "\n" not in err, err
        assert not base.exists() and not (a_file / "m").exists()  # nothing written
    with pytest.raises(ExportError, match="is not complete"):
        export_savedmodel(
            _bad_run(run_dir, tmp_path, "running", lambda r: (r / "run.json").write_text(
                json.dumps({**json.loads((run_dir / "run.json").read_text()), "status": "running"})
            )),
            base, log=_quiet,
        )
    assert not base.exists()
