"""The MovieLens benchmark's code path (benchmarks.movielens --quick), on synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_benchmark_quick_run(tmp_path):
    out, plot, raw = tmp_path / "m.md", tmp_path / "m.png", tmp_path / "m.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.movielens", "--quick", "--out", str(out),
         "--plot", str(plot), "--json", str(raw)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "protocol A: row 1" in done.stdout and "protocol B: done" in done.stdout
    text = out.read_text()
    assert "not in this repository" in text and "### Protocol A" in text
    assert "### Protocol B" in text
    results = json.loads(raw.read_text())["results"]
    assert [r["name"] for r in results] == ["A", "B"]
    for result in results:
        rows = {row["key"]: row for row in result["rows"]}
        assert list(rows) == ["1", "2", "3a", "3b", "3c", "3d", "3e", "3f", "3g"]
        assert rows["3e"]["settings"]["model.logq_correction"] is True
        assert rows["3f"]["settings"]["model.num_hard_negatives"] == 4
        assert rows["3g"]["settings"]["model.logq_correction"] is True
        assert "model.head" not in rows["3g"]["settings"]  # the dot head
        assert all(row["settings"].get("training.seed") is None for row in rows.values())
        for row in rows.values():
            assert [s["seed"] for s in row["seeds"]] == [0, 1]
            for run in row["seeds"]:
                values = [run["metrics"][k] for k in ("recall@10", "ndcg@10", "hit_rate@50")]
                assert all(0.0 <= v <= 1.0 for v in values)
                accuracy = [run["metrics"][f"top_{k}_categorical_accuracy"]
                            for k in (1, 5, 10, 50, 100)]
                assert accuracy == sorted(accuracy)  # top-K accuracy grows with K
        for run in rows["1"]["seeds"]:  # TFRS's own metric agrees with the project's
            for k in (1, 5, 10, 50, 100):
                assert abs(run["metrics"][f"tfrs_top_{k}_categorical_accuracy"]
                           - run["metrics"][f"top_{k}_categorical_accuracy"]) <= 0.02
        for line in ("| 1 | TFRS tutorial", "| 3f |", "most popular items"):
            assert line in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
