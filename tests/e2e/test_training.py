"""The training job and the CLI end to end, in fresh processes, on tiny synthetic data."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, TINY, run_cli, train_tiny


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


def test_interrupted_run_is_marked_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    sets = [a for o in (*TINY, "training.epochs=40", "training.early_stopping_patience=0")
            for a in ("--set", o)]
    process = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "train", "--run-dir", str(run_dir), *sets],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while not list((run_dir / "checkpoints").glob("ckpt-2.index")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted"
    # an unfinished run cannot be evaluated or exported as if it were complete
    _assert_usage_error(run_cli("evaluate", str(run_dir)), "is not complete")
    last = max(int(p.name.split("-")[1].split(".")[0])
               for p in (run_dir / "checkpoints").glob("ckpt-*.index"))
    assert last >= 2
    resumed = run_cli("train", "--run-dir", str(run_dir), "--resume",
                      "--set", f"training.epochs={last + 2}", check=True)
    assert "complete" in resumed.stdout
    history = json.loads((run_dir / "history.json").read_text())
    # continued from the last checkpoint, not restarted
    assert [row["epoch"] for row in history] == [last + 1, last + 2]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


def test_mixed_precision_and_deep_towers_train_on_cpu(tmp_path):
    run_dir = train_tiny(tmp_path / "mp", "training.mixed_precision=true", "training.epochs=1",
                         "model.tower_layers=[32, 16]")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["test"]["recall@10"]) and metrics["test"]["recall@10"] > 0


def test_dot_run_trains_too(dot_run_dir):
    metrics = json.loads((dot_run_dir / "metrics.json").read_text())
    assert metrics["test"]["recall@10"] > 0
