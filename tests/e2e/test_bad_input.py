"""The bad-input corpus: every case exits 2 with one line, no traceback, nothing finished.

Each case runs ``tfrs-cosine ARGS`` in a fresh process, as a user would. ``{tmp}`` is a
per-case folder holding the files ``FILES`` writes; ``{run}`` a complete tiny run (the
session's ``cosine_run_dir``); ``{failed}`` a copy of it whose ``run.json`` says
``failed``; ``{broken}/WHAT`` copies of it with one file broken. After the call, nothing may look finished: no run directory marked
complete, no new export version, no staging folder left, the complete run unchanged.
The README's "Bad input" section lists this corpus.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cli

# Files a case may name as {tmp}/NAME.
FILES: dict[str, bytes] = {
    "binary.toml": b"\x00\xff\xfe\x00binary",
    "latin1.toml": "[model]\nhead = \"cosiné\"\n".encode("latin-1"),
    "broken.toml": b"[model\nhead = 'dot'\n",
    "section.toml": b"[modell]\nhead = 'dot'\n",
    "empty.csv": b"",
    "header_only.csv": b"user_id,item_id\n",
    "no_item_column.csv": b"user_id,movie\nu1,m1\n",
    "nan_weight.csv": b"user_id,item_id,weight\nu1,i1,1\nu2,i2,nan\n",
    "no_time.csv": b"user_id,item_id\nu1,i1\nu1,i2\nu2,i1\n",
    "no_ids.csv": b"user_id,item_id\n,\n,\n",
    "bad_timestamp.csv": b"user_id,item_id,timestamp\nu1,i1,yesterday\n",
    "binary.csv": b"\x00\x01\x02\xff\xfe",
    "not_parquet.parquet": b"PAR1 this is not parquet",
    "not_a_zip.zip": b"this is not a zip file",
    "models.config": b"\x00\xff binary model config",
    "a_file": b"a file, not a folder",
    "timed.csv": b"user_id,item_id,timestamp\nu1,i1,1\nu1,i2,2\nu2,i1,3\nu2,i3,4\n",
    "users.csv": b"user_id,gender\nu1,M\nu2,F\n",
}


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    message: str  # a part of the one error line


def _train(*sets: str, config: str | None = None) -> tuple[str, ...]:
    args = ["train", "--run-dir", "{tmp}/new-run"]
    if config:
        args += ["--config", config]
    for value in sets:
        args += ["--set", value]
    return tuple(args)


def _file(name: str, *sets: str) -> tuple[str, ...]:
    return _train("data.source=file", f'data.path="{{tmp}}/{name}"', *sets)


def _features(user_feature: str) -> tuple[str, ...]:
    """A feature model on ``timed.csv`` with ``users.csv`` and one more user feature
    (a TOML inline-table entry)."""
    return _file("timed.csv", 'data.user_features="{tmp}/users.csv"', "model.tower_layers=[8]",
                 "evaluation.ks=[1]", "evaluation.monitor_k=1",
                 f"model.user_features={{{{user_id = {{{{type = \"id\"}}}}, {user_feature}}}}}")


CASES = [
    # train: the config
    Case("head", _train("model.head=euclid"), "valid heads: cosine, dot"),
    Case("dim", _train("model.embedding_dim=0"), "model.embedding_dim must be >= 1"),
    Case("temperature", _train("model.temperature=-1"), "model.temperature must be a positive"),
    Case("unknown-key", _train("model.nope=1"), "unknown config key model.nope"),
    Case("unknown-section", _train("nope.key=1"), "unknown config section"),
    Case("set-syntax", _train("model.head"), "--set expects section.key=value"),
    Case("wrong-type", _train('model.layer_norm="yes"'), "model.layer_norm must be bool"),
    Case("layers", _train("model.tower_layers=[64, 0]"), "layer widths must be >= 1"),
    Case("tower-widths", _train("model.user_tower_layers=[16]"), "must end at the same width"),
    Case("optimizer", _train("training.optimizer=adamax"), "unknown training.optimizer"),
    Case("epochs", _train("training.epochs=0"), "training.epochs must be >= 1"),
    Case("batch", _train("training.batch_size=1"), "training.batch_size must be >= 2"),
    Case("learning-rate", _train("training.learning_rate=nan"), "learning_rate must be a positive"),
    Case("ks", _train("evaluation.ks=[0, 10]"), "evaluation.ks must be >= 1"),
    Case("split", _train("data.split=sideways"), "unknown data.split"),
    Case("test-fraction", _train("data.test_fraction=1.5"), "data.test_fraction must be in (0, 1)"),
    Case("source", _train("data.source=kafka"), "unknown data.source 'kafka'"),
    Case("file-without-path", _train("data.source=file"), "needs data.path"),
    Case("config-missing", _train(config="{tmp}/missing.toml"), "config file not found"),
    Case("config-binary", _train(config="{tmp}/binary.toml"), "is not UTF-8 text"),
    Case("config-latin1", _train(config="{tmp}/latin1.toml"), "is not UTF-8 text"),
    Case("config-broken", _train(config="{tmp}/broken.toml"), "is not valid TOML"),
    Case("config-section", _train(config="{tmp}/section.toml"), "unknown config section"),
    Case("config-is-a-folder", _train(config="{tmp}"), "config file not found"),
    # train: the data
    Case("file-missing", _file("missing.csv"), "data file not found"),
    Case("file-empty", _file("empty.csv"), "is empty"),
    Case("file-header-only", _file("header_only.csv"), "has no rows"),
    Case("file-no-column", _file("no_item_column.csv"), "has no column 'item_id'"),
    Case("file-nan-weight", _file("nan_weight.csv", 'data.columns={{weight = "weight"}}'),
         "missing, NaN or non-numeric"),
    Case("file-no-ids", _file("no_ids.csv"), "no row with both a user id and an item id"),
    # train: feature towers
    Case("feature-missing-column", _features('height = {{type = "numeric"}}'),
         "has no column 'height' for feature 'height'"),
    Case("feature-wrong-type", _features('gender = {{type = "numeric"}}'),
         "feature 'gender' is numeric but user table"),
    Case("feature-unknown-type", _features('gender = {{type = "ordinal"}}'),
         "unknown feature type model.user_features.gender.type = 'ordinal'"),
    Case("feature-history-column",
         _features('recent = {{type = "history", column = "movie"}}'),
         "a history is the user's earlier item ids"),
    Case("file-bad-timestamp", _file("bad_timestamp.csv", 'data.columns={{timestamp = "timestamp"}}'),
         "non-numeric"),
    Case("file-binary", _file("binary.csv"), "data file"),
    Case("file-not-parquet", _file("not_parquet.parquet"), "cannot read data file"),
    Case("file-column-key", _file("empty.csv", 'data.columns={{rating = "r"}}'),
         "unknown data.columns key"),
    Case("leave-last-out-without-time",
         _file("no_time.csv", "data.split=leave-last-out", "evaluation.ks=[1]",
               "evaluation.monitor_k=1"), "needs timestamps"),
    # train: the run directory
    Case("run-exists", ("train", "--run-dir", "{run}"), "already exists"),
    Case("resume-missing", ("train", "--run-dir", "{tmp}/none", "--resume"), "not found"),
    Case("resume-complete", ("train", "--run-dir", "{run}", "--resume"), "already complete"),
    Case("run-dir-is-a-file", ("train", "--run-dir", "{tmp}/a_file"), "already exists"),
    # evaluate
    Case("evaluate-missing", ("evaluate", "{tmp}/none"), "run directory not found"),
    Case("evaluate-not-a-run", ("evaluate", "{tmp}"), "is not a run directory"),
    Case("evaluate-split", ("evaluate", "{run}", "--split", "holdout"), "unknown split 'holdout'"),
    Case("evaluate-failed-run", ("evaluate", "{failed}"), "is not complete"),
    # export
    Case("export-missing", ("export", "{tmp}/none", "--model-base-path", "{tmp}/m"), "not found"),
    Case("export-failed-run", ("export", "{failed}", "--model-base-path", "{tmp}/m"),
         "is not complete"),
    Case("export-k-zero", ("export", "{run}", "--model-base-path", "{tmp}/m", "--k", "0"),
         "--k must be an integer >= 1"),
    Case("export-k-catalog", ("export", "{run}", "--model-base-path", "{tmp}/m", "--k", "100000"),
         "larger than the catalog"),
    Case("export-recall", ("export", "{run}", "--model-base-path", "{tmp}/m", "--min-recall", "2"),
         "--min-recall must be in [0, 1]"),
    Case("export-index", ("export", "{run}", "--model-base-path", "{tmp}/m", "--index", "faiss"),
         "invalid choice: 'faiss'"),
    Case("export-version", ("export", "{run}", "--model-base-path", "{tmp}/m", "--version", "0"),
         "--version must be an integer >= 1"),
    Case("export-base-is-a-file", ("export", "{run}", "--model-base-path", "{tmp}/a_file"),
         "is a file"),
    Case("export-top-dimensions", ("export", "{run}", "--model-base-path", "{tmp}/m",
                                   "--top-dimensions", "0"), "--top-dimensions"),
    Case("export-recall-nan", ("export", "{run}", "--model-base-path", "{tmp}/m",
                               "--min-recall", "nan"), "--min-recall"),
    Case("export-base-below-a-file", ("export", "{run}", "--model-base-path", "{tmp}/a_file/m"),
         "a_file"),
    Case("export-run-json", ("export", "{broken}/run-json", "--model-base-path", "{tmp}/m"),
         "run.json"),
    Case("export-config-latin1", ("export", "{broken}/config-latin1", "--model-base-path",
                                  "{tmp}/m"), "not UTF-8"),
    Case("export-vocabulary-repeats", ("export", "{broken}/vocab-repeats", "--model-base-path",
                                       "{tmp}/m"), "users.txt"),
    Case("export-vocabulary-longer", ("export", "{broken}/vocab-longer", "--model-base-path",
                                      "{tmp}/m"), "incompatible tensor"),
    Case("export-weights-corrupt", ("export", "{broken}/weights-corrupt", "--model-base-path",
                                    "{tmp}/m"), "weights"),
    Case("export-k-text", ("export", "{run}", "--model-base-path", "{tmp}/m", "--k", "ten"),
         "invalid int value: 'ten'"),
    # serve
    Case("serve-no-model", ("serve",), "--model_base_path"),
    Case("serve-missing-base", ("serve", "--model_base_path", "{tmp}/none"), "--model_base_path"),
    Case("serve-config-missing", ("serve", "--model_config_file", "{tmp}/none.config"), "none.config"),
    Case("serve-config-binary", ("serve", "--model_config_file", "{tmp}/models.config"),
         "models.config"),
    Case("serve-port", ("serve", "--model_base_path", "{tmp}", "--port", "70000"), "port"),
    Case("serve-threads", ("serve", "--model_base_path", "{tmp}",
                           "--tensorflow_intra_op_parallelism", "-1"),
         "--tensorflow_intra_op_parallelism must be >= 0"),
    # query
    Case("query-unreachable", ("query", "--target", "127.0.0.1:9", "--model", "m", "--retries", "0",
                               "--timeout", "2", "status"), "UNAVAILABLE"),
    Case("query-command", ("query", "--target", "127.0.0.1:9", "--model", "m", "dance"),
         "invalid choice: 'dance'"),
    # data fetch
    Case("fetch-missing", ("data", "fetch", "movielens-100k", "--path", "{tmp}/none"), "not found"),
    Case("fetch-not-a-zip", ("data", "fetch", "movielens-100k", "--path", "{tmp}/not_a_zip.zip",
                             "--cache-dir", "{tmp}/cache"), "not_a_zip.zip"),
    Case("fetch-dataset", ("data", "fetch", "movielens-20m"), "invalid choice: 'movielens-20m'"),
    # study
    Case("study-out-is-a-file", ("study", "cosine-faithfulness", "--quick", "--out", "{tmp}/a_file"),
         "is not a directory"),
    Case("study-only-without-a-study", ("study", "cosine-faithfulness", "--quick", "--only",
                                        "genres", "--out", "{tmp}/none"),
         "needs a finished study"),
]


def _snapshot(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def failed_run(cosine_run_dir, tmp_path_factory) -> Path:
    """A copy of the complete run whose run.json says ``failed``."""
    path = tmp_path_factory.mktemp("failed") / "run"
    shutil.copytree(cosine_run_dir, path)
    info = json.loads((path / "run.json").read_text())
    info["status"] = "failed"
    (path / "run.json").write_text(json.dumps(info))
    return path


@pytest.fixture(scope="module")
def broken_runs(cosine_run_dir, tmp_path_factory) -> Path:
    """Copies of the complete run, each broken in one file (folder name = what is broken)."""
    root = tmp_path_factory.mktemp("broken")

    def copy(name: str) -> Path:
        path = root / name
        shutil.copytree(cosine_run_dir, path)
        return path

    (copy("run-json") / "run.json").write_text("{not json")
    (copy("config-latin1") / "config.toml").write_bytes("[model]\nhead = 'cosiné'\n".encode("latin-1"))
    users = copy("vocab-repeats") / "vocab" / "users.txt"
    first = users.read_text().splitlines()[0]
    users.write_text(users.read_text() + first + "\n")
    longer = copy("vocab-longer") / "vocab" / "users.txt"
    longer.write_text(longer.read_text() + "a-new-user\n")
    weights = copy("weights-corrupt") / "model"
    for data in weights.glob("weights.data-*"):
        data.write_bytes(b"\x00" * 64)
    return root


README = Path(__file__).resolve().parents[2] / "README.md"


def markdown_table() -> str:
    """The corpus as the README's table (regenerate: ``python tests/e2e/test_bad_input.py``)."""
    rows = ["| case | `tfrs-cosine ...` | the one error line contains |", "|---|---|---|"]
    for case in CASES:
        args = " ".join(a if " " not in a else repr(a) for a in case.args)
        args = args.replace("|", "\\|")
        rows.append(f"| {case.id} | `{args}` | `{case.message}` |")
    return "\n".join(rows)


def test_readme_lists_the_corpus():
    assert markdown_table() in README.read_text(), (
        "README's Bad input section: regenerate with python tests/e2e/test_bad_input.py")


def test_the_corpus_is_large_and_covers_every_command():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    commands = {c.args[0] for c in CASES}
    assert {"train", "evaluate", "export", "serve", "query", "data"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line(
    case: Case, tmp_path, cosine_run_dir, failed_run, broken_runs
):
    for name, content in FILES.items():
        (tmp_path / name).write_bytes(content)
    run_before = _snapshot(cosine_run_dir)
    names = {"tmp": str(tmp_path), "run": str(cosine_run_dir), "failed": str(failed_run),
             "broken": str(broken_runs)}
    args = [a.format(**names) for a in case.args]

    done = run_cli(*args, timeout=120)

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tfrs-cosine: error: "), lines[0]
    assert case.message in lines[0], lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    # Nothing that looks finished.
    new_run = tmp_path / "new-run"
    assert not (new_run / "run.json").exists() or (
        json.loads((new_run / "run.json").read_text())["status"] != "complete"
    )
    for base in (tmp_path / "m", tmp_path / "cache"):
        assert not base.exists() or not any(base.iterdir()), sorted(base.iterdir())
    assert _snapshot(cosine_run_dir) == run_before


if __name__ == "__main__":
    print(markdown_table())
