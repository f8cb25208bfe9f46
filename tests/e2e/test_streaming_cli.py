"""Shards through the CLI: ``data write-shards``, training on TFRecord shards, and a
mismatched shard refused on one line that names it."""

import json

import pyarrow.parquet as pq
from conftest import run_cli


def test_write_shards_then_train_on_tfrecord_shards(tmp_path):
    out = tmp_path / "shards"
    process = run_cli("data", "write-shards", str(out), "--rows", "6000", "--users", "300",
                      "--items", "80", "--shards", "3", "--format", "tfrecord", check=True)
    assert "wrote 3 tfrecord shard(s), 6,000 rows" in process.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"part-{k}.tfrecord" for k in range(3)]
    sets = ["data.source=file", f"data.path={out}", "data.split=hash-interaction",
            "training.epochs=1", "training.batch_size=256", "evaluation.ks=[1, 10]"]
    run_dir = tmp_path / "run"
    run_cli("train", "--run-dir", str(run_dir), *[a for s in sets for a in ("--set", s)],
            check=True)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete"


def test_a_mismatched_shard_exits_2_naming_the_file(tmp_path):
    out = tmp_path / "shards"
    run_cli("data", "write-shards", str(out), "--rows", "3000", "--users", "100", "--items",
            "50", "--shards", "3", check=True)
    bad = out / "part-1.parquet"
    pq.write_table(pq.read_table(bad).drop_columns(["timestamp"]), bad)
    process = run_cli("train", "--run-dir", str(tmp_path / "run"), "--set", "data.source=file",
                      "--set", f"data.path={out}")
    assert process.returncode == 2
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfrs-cosine: error: data shard ")
    assert str(bad) in lines[0] and "Traceback" not in process.stderr
    assert not (tmp_path / "run").exists()
