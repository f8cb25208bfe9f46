"""The training job and the CLI end to end, in fresh processes, on tiny synthetic data."""

import json
from collections import defaultdict

import numpy as np
import pytest
from conftest import run_cli, train_tiny

from training import rundir
from training.data import load_data
from training.splits import split_data


def test_trained_run_is_complete_and_beats_random(cosine_run_dir):
    info = json.loads((cosine_run_dir / "run.json").read_text())
    assert info["status"] == "complete"
    for name in ("config.toml", "vocab/users.txt", "vocab/items.txt", "metrics.json",
                 "history.json", "model/weights.index"):
        assert (cosine_run_dir / name).exists(), name
    assert any((cosine_run_dir / "logs").rglob("events.out.tfevents.*"))
    metrics = json.loads((cosine_run_dir / "metrics.json").read_text())
    test = metrics["test"]
    for key in ("recall@10", "ndcg@10", "hit_rate@10", "mrr", "top_50_categorical_accuracy"):
        assert 0.0 <= test[key] <= 1.0, key
    # Random ranking over the unseen part of the catalog finds about 10 / unseen of a
    # user's test items in the top 10. Require at least twice that.
    items = len((cosine_run_dir / "vocab/items.txt").read_text().split())
    seen_per_user = info["data"]["train"] / info["data"]["num_users"]
    random_recall = 10 / (items - seen_per_user)
    assert test["recall@10"] > 2 * random_recall, (test["recall@10"], random_recall)


def test_evaluate_command_rewrites_the_split_metrics(cosine_run_dir):
    before = json.loads((cosine_run_dir / "metrics.json").read_text())["test"]
    process = run_cli("evaluate", str(cosine_run_dir), "--split", "test", check=True)
    assert "recall" in process.stdout and "@10" in process.stdout
    after = json.loads((cosine_run_dir / "metrics.json").read_text())["test"]
    assert after["recall@10"] == pytest.approx(before["recall@10"], abs=1e-6)


def _assert_usage_error(process, message):
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert lines[-1].startswith("tfrs-cosine: error:"), process.stderr
    assert message in lines[-1]
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.head=euclid"], "valid heads: cosine, dot"),
        (["model.embedding_dim=-1"], "model.embedding_dim must be >= 1"),
        (["model.temperature=0"], "model.temperature must be a positive number"),
        (["model.nope=1"], "unknown config key model.nope"),
        (["data.source=file", "data.path=/nonexistent.csv"], "data file not found"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    sets = [a for o in overrides for a in ("--set", o)]
    _assert_usage_error(run_cli("train", "--run-dir", str(run_dir), *sets), message)
    assert not run_dir.exists()


def test_bad_data_files_exit_2(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _assert_usage_error(
        run_cli("train", "--run-dir", str(tmp_path / "r"), "--set", "data.source=file",
                "--set", f"data.path={json.dumps(str(empty))}"),
        "is empty",
    )
    nan = tmp_path / "nan.csv"
    nan.write_text("u,i,w\n1,a,1\n2,b,nan\n")
    _assert_usage_error(
        run_cli("train", "--run-dir", str(tmp_path / "r"), "--set", "data.source=file",
                "--set", f"data.path={json.dumps(str(nan))}",
                "--set", 'data.columns={user_id = "u", item_id = "i", weight = "w"}'),
        "NaN",
    )
    assert not (tmp_path / "r").exists()


def test_existing_run_unknown_split_and_resume_errors(cosine_run_dir, tmp_path):
    _assert_usage_error(run_cli("train", "--run-dir", str(cosine_run_dir)), "already exists")
    _assert_usage_error(run_cli("evaluate", str(cosine_run_dir), "--split", "dev"),
                        "unknown split 'dev'")
    _assert_usage_error(run_cli("train", "--run-dir", str(cosine_run_dir), "--resume"),
                        "already complete")
    _assert_usage_error(run_cli("train", "--run-dir", str(tmp_path / "none"), "--resume"),
                        "run directory not found")
    _assert_usage_error(run_cli("evaluate", str(tmp_path)), "is not a run directory")


def test_monitor_k_or_ks_beyond_the_catalog_exit_2_and_write_nothing(tmp_path):
    run_dir = tmp_path / "run"
    _assert_usage_error(
        run_cli("train", "--run-dir", str(run_dir), "--set", "evaluation.monitor_k=5000"),
        "evaluation.monitor_k=5000 is not below the catalog size (300 items)",
    )
    _assert_usage_error(
        run_cli("train", "--run-dir", str(run_dir), "--set", "data.num_items=80"),
        "evaluation.ks [100] not below the catalog size (80 items)",
    )
    assert not run_dir.exists()


def _popularity_recall(run_dir, k: int) -> float:
    """Test recall@k of ranking by training popularity, training items excluded (numpy)."""
    config = rundir.read_config(run_dir)
    data = load_data(config.data)
    split = split_data(data.interactions, config.data)
    index = {item: n for n, item in enumerate(data.items.tolist())}
    counts = np.bincount([index[i] for i in split.train.item_id.tolist()],
                         minlength=len(index)).astype(float)
    seen, relevant = defaultdict(set), defaultdict(set)
    for user, item in zip(split.train.user_id.tolist(), split.train.item_id.tolist(), strict=True):
        seen[user].add(index[item])
    for user, item in zip(split.test.user_id.tolist(), split.test.item_id.tolist(), strict=True):
        relevant[user].add(index[item])
    recalls = []
    for user, items in relevant.items():
        scores = counts.copy()
        scores[list(seen[user])] = -np.inf
        top = set(np.argsort(-scores, kind="stable")[:k].tolist())
        recalls.append(len(items & top) / len(items))
    return float(np.mean(recalls))


def _assert_consistent_metrics(run_dir) -> dict:
    """Metrics that must hold together for any ranking, and the final weights' validation
    recall equal to the history's at the epoch they come from."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ks = rundir.read_config(run_dir).evaluation.ks
    for split in ("validation", "test"):
        m = metrics[split]
        for family in ("recall@{}", "ndcg@{}", "hit_rate@{}", "top_{}_categorical_accuracy"):
            values = [m[family.format(k)] for k in ks]
            assert all(0 <= v <= 1 for v in values), (family, values)
            if family != "ndcg@{}":
                assert values == sorted(values), (family, values)  # grows with K
        for k in ks:
            assert m[f"hit_rate@{k}"] >= m[f"recall@{k}"]
        assert m[f"hit_rate@{ks[0]}"] <= m["mrr"] <= m[f"hit_rate@{ks[-1]}"]
    training = metrics["training"]
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == training["epochs"]
    row = history[training["weights_epoch"] - 1]
    assert metrics["validation"]["recall@10"] == pytest.approx(row["val_recall_at_10"], abs=1e-12)
    return metrics


def test_mixed_precision_and_deep_towers_train_on_cpu(tmp_path):
    run_dir = train_tiny(tmp_path / "mp", "training.mixed_precision=true", "training.epochs=1",
                         "model.tower_layers=[32, 16]")
    metrics = _assert_consistent_metrics(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    random_recall = 10 / (info["data"]["num_items"] - info["data"]["train"] / info["data"]["num_users"])
    assert metrics["test"]["recall@10"] > 2 * random_recall


def test_dot_run_beats_the_popularity_ranking(dot_run_dir):
    metrics = _assert_consistent_metrics(dot_run_dir)
    popularity = _popularity_recall(dot_run_dir, 10)
    # Measured on this data: popularity 0.307, the dot run 0.333 (random: 0.112).
    assert metrics["test"]["recall@10"] > popularity + 0.01, (metrics["test"]["recall@10"], popularity)


def test_cosine_run_metrics_are_consistent(cosine_run_dir):
    # (Its 3 epochs with logQ give test recall@10 0.299, below popularity's 0.307, so
    # unlike the dot run it is held to beating random only, above.)
    _assert_consistent_metrics(cosine_run_dir)
