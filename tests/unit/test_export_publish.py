"""export_tables in process (``verify=False``: no subprocess): what it writes and leaves.

The fresh-process verification, ScaNN exports and the CLI are in tests/e2e/test_export.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_export_contract import small_tables

from export import ExportError, ExportOptions, contract, export_tables, read_model_card
from export.verify import graph_ops, signature_metadata
from export.versions import Staging, StagingName, this_host

OPTIONS = ExportOptions(index="brute-force", k=3, verify=False)


def _quiet(message: str) -> None:
    pass


def _snapshot(base):
    return sorted((str(p.relative_to(base)), p.stat().st_mtime_ns) for p in base.rglob("*"))


@pytest.fixture(scope="module")
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def published(tmp_path_factory, dead_pid):
    """One export into a base path where a killed and a live export left staging folders."""
    base = tmp_path_factory.mktemp("models") / "m"
    killed = base / StagingName(1, dead_pid, this_host(), "deadbeef").folder
    (killed / "scratch").mkdir(parents=True)
    live = base / StagingName(2, os.getpid(), this_host(), "0a0a0a0a").folder
    live.mkdir()
    messages = []
    path = export_tables(small_tables(), base, OPTIONS, log=messages.append)
    return path, killed, live, messages


def test_export_publishes_one_version_and_cleans_what_dead_exports_left(published, dead_pid):
    path, killed, live, messages = published
    base = path.parent
    # The live export is writing version 2, so this one takes 3.
    assert path == base / "3"
    assert sorted(p.name for p in base.iterdir()) == sorted(["3", live.name])
    assert f"export: removed {killed.name}, left by export process {dead_pid} that is gone" in messages
    assert any(m.startswith("export: writing the SavedModel to ") for m in messages)
    card = read_model_card(path)
    assert card["k"] == 3 and card["index"]["type"] == "brute-force"
    assert "verification" not in card and card["size_bytes"] > 0
    assert contract.contract_problems(signature_metadata(path), contract.sizes_from_card(card)) == []
    assert {"Assert", "MatMul", "TopKV2"} <= graph_ops(path)  # the batch-size check is stock TF
    assert (path / contract.ITEM_VOCABULARY).read_text().splitlines() == small_tables().items


def test_bad_input_is_a_one_line_error_and_writes_nothing(published, tmp_path):
    tables, base = small_tables(), published[0].parent
    before = _snapshot(base)
    for options, message in [
        (ExportOptions(index="brute-force", k=len(tables.items) + 1), "larger than the catalog"),
        (ExportOptions(index="brute-force", k=3, version=3), "version 3 already exists"),
        (ExportOptions(index="brute-force", k=3, version=2), "version 2 is being exported"),
    ]:
        with pytest.raises(ExportError, match=message) as error:
            export_tables(tables, base, options, log=_quiet)
        assert "\n" not in str(error.value)
    assert _snapshot(base) == before

    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    with pytest.raises(ExportError, match="is a file"):
        export_tables(tables, a_file, OPTIONS, log=_quiet)
    assert a_file.read_text() == "not a folder"


def test_an_interrupted_export_leaves_nothing(published, tmp_path, monkeypatch):
    tables, base = small_tables(), published[0].parent
    before = _snapshot(base)
    written = []

    def interrupted(staging: Staging):
        written.append((staging.saved_model / "saved_model.pb").is_file())
        raise KeyboardInterrupt  # after the SavedModel is written, before the rename

    monkeypatch.setattr(Staging, "publish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_tables(tables, base, OPTIONS, log=_quiet)
    assert written == [True]
    assert _snapshot(base) == before  # no new version, no staging folder

    # A fresh base path that only the failed export created is removed as well.
    fresh = tmp_path / "models" / "fresh"
    with pytest.raises(KeyboardInterrupt):
        export_tables(tables, fresh, OPTIONS, log=_quiet)
    assert written == [True, True] and not fresh.exists()
