"""Version folders: numbering, staging names, which leftovers an export removes, publishing.

Dead processes are real: a child that ran and was reaped (its pid is gone) and one that
exited but was not reaped yet (a zombie). No TensorFlow is needed here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from export import ExportError
from export.versions import (
    Staging,
    StagingName,
    existing_versions,
    process_alive,
    remove_leftovers,
    resolve_version,
    staging_folders,
    this_host,
)


def _quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that ran, exited and was reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid)
    return child.pid


def _staging(base, version: int, pid: int, host: str | None = None, nonce: str = "0badc0de"):
    name = StagingName(version, pid, host or this_host(), nonce)
    path = base / name.folder
    (path / "scratch").mkdir(parents=True)
    (path / "scratch" / "users.txt").write_text("u1\n")
    return path


def test_staging_names_round_trip_and_reject_other_names():
    name = StagingName.for_this_process(12)
    assert name.pid == os.getpid() and name.host == this_host() and name.version == 12
    assert name.folder.startswith(".tmp-export-v12-pid")
    assert StagingName.parse(name.folder) == name
    odd_host = StagingName(3, 99, "node-7.example.org", "a1b2c3d4")
    assert StagingName.parse(odd_host.folder) == odd_host
    for other in ("12", ".tmp-3-a1b2c3d4", ".tmp-export-v3-pidx-a1b2c3d4-host",
                  ".tmp-export-v3-pid9-short-host", "tmp-export-v3-pid9-a1b2c3d4-host",
                  ".tmp-export-v3-pid9-a1b2c3d4-"):
        assert StagingName.parse(other) is None, other


def test_process_alive_tells_live_dead_and_zombie(dead_pid):
    assert process_alive(os.getpid())
    assert not process_alive(dead_pid)
    assert not process_alive(0) and not process_alive(-5)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert not process_alive(child.pid)  # a zombie is dead
    finally:
        child.wait()


def test_only_dead_exports_of_this_host_are_removed(tmp_path, dead_pid):
    base = tmp_path / "models" / "m"
    dead = _staging(base, 2, dead_pid)
    live = _staging(base, 3, os.getpid(), nonce="11111111")
    elsewhere = _staging(base, 4, dead_pid, host="another-host", nonce="22222222")
    (base / "1").mkdir()
    (base / ".tmp-1-abcdef12").mkdir()  # an old-style name: not ours to judge
    (base / "notes").mkdir()
    fake = base / StagingName(5, dead_pid, this_host(), "33333333").folder
    fake.write_text("a file named like a staging folder")
    messages = []

    assert remove_leftovers(base, messages.append) == [dead]
    assert not dead.exists()
    assert live.is_dir() and elsewhere.is_dir() and fake.is_file()
    assert sorted(p.name for p in base.iterdir()) == sorted(
        ["1", ".tmp-1-abcdef12", "notes", live.name, elsewhere.name, fake.name]
    )
    assert messages == [f"export: removed {dead.name}, left by export process {dead_pid} that is gone"]
    assert remove_leftovers(base, messages.append) == []  # nothing more to do
    assert remove_leftovers(tmp_path / "missing", _quiet) == []


def test_versions_skip_what_live_exports_are_staging(tmp_path, dead_pid):
    base = tmp_path / "m"
    assert resolve_version(base, None) == 1  # missing base: the first version
    for version in (1, 5):
        (base / str(version)).mkdir(parents=True)
    (base / "notes").mkdir()
    (base / "7.old").mkdir()
    assert existing_versions(base) == [1, 5]
    assert resolve_version(base, None) == 6
    _staging(base, 6, os.getpid())  # a live export is writing 6
    _staging(base, 9, dead_pid, nonce="44444444")  # a dead one left 9 behind
    assert resolve_version(base, None) == 7
    with pytest.raises(ExportError, match=f"version 6 is being exported to .* by pid {os.getpid()}"):
        resolve_version(base, 6)
    assert resolve_version(base, 9) == 9  # the dead export's version is free
    with pytest.raises(ExportError, match="version 5 already exists"):
        resolve_version(base, 5)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is a file, not a directory"):
        resolve_version(tmp_path / "file", None)


def test_staging_cleans_up_after_success_and_failure(tmp_path, dead_pid):
    base = tmp_path / "fresh" / "m"
    with pytest.raises(RuntimeError), Staging(base, 1, _quiet) as staging:
        assert staging.scratch.is_dir()
        assert [p for p, _ in staging_folders(base)] == [staging.path]
        raise RuntimeError("failed while writing")
    assert not base.exists()  # it created the base path, and removes it again

    leftover = _staging(base, 1, dead_pid)
    with Staging(base, 1, _quiet) as staging:
        assert not leftover.exists()  # the killed export's folder is gone on entry
        staging.saved_model.mkdir()
        (staging.saved_model / "saved_model.pb").write_bytes(b"graph")
        target = staging.publish()
    assert target == base / "1" and (target / "saved_model.pb").read_bytes() == b"graph"
    assert sorted(p.name for p in base.iterdir()) == ["1"]  # staging and scratch removed

    with pytest.raises(ExportError, match="version 1 already exists"), Staging(base, 1, _quiet) as staging:
        staging.saved_model.mkdir()
        staging.publish()
    assert sorted(p.name for p in base.iterdir()) == ["1"]  # an existing base stays
