"""Run directories without TensorFlow: resume rules, the lock, liveness, signals, ``runs``.

Run directories are written here as ``tfrs-cosine train`` writes them (``rundir``
functions, and the checkpoint state file in TensorFlow's text format); processes are
real (this one, and finished children for dead pids).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from training import rundir
from training.cli import main
from training.config import load_config, validate_catalog
from training.errors import InputError
from training.interrupts import Interrupted, signals_raise
from training.locking import LOCK, STALE_SECONDS, Heartbeat, Process, RunLock, this_host
from training.resume import RESUMABLE_KEYS, check_resume, config_changes
from training.runs import describe, describe_runs, format_runs

TINY = ["data.num_users=50", "data.num_items=20", "training.epochs=5"]


class _Data:
    """The parts of LoadedData and Split that ``write_start`` records."""

    class _Sized(list):
        def tolist(self):
            return list(self)

    def __init__(self):
        self.description = "test"
        self.interactions, self.users, self.items = [0] * 10, self._Sized(["u0"]), self._Sized(["i0"])
        self.train, self.validation, self.test = [0] * 6, [0] * 2, [0] * 2


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def make_run(path, status="running", process=None, checkpoint_epoch=2, **fields):
    config = load_config(None, TINY)
    rundir.write_start(path, config, _Data(), _Data(), {}, process or Process.current())
    if checkpoint_epoch is not None:
        (path / rundir.CHECKPOINTS).mkdir()
        (path / rundir.CHECKPOINTS / "checkpoint").write_text(
            f'model_checkpoint_path: "ckpt-{checkpoint_epoch}"\n'
            f'all_model_checkpoint_paths: "ckpt-{checkpoint_epoch}"\n'
        )
    rundir.update_info(path, status=status, **fields)
    return path


# ---------------------------------------------------------------------------------------
# resume rules


def test_config_changes_name_every_key_old_and_new():
    old = load_config(None, TINY)
    new = load_config(None, [*TINY, "model.embedding_dim=16", "data.seed=3", "training.epochs=9"])
    assert config_changes(old, new) == {
        "data.seed": (0, 3), "model.embedding_dim": (32, 16), "training.epochs": (5, 9),
    }
    assert config_changes(old, old) == {}


@pytest.mark.parametrize("change, named", [
    ("model.embedding_dim=16", "model.embedding_dim (32 -> 16)"),
    ("model.head=dot", "model.head ('cosine' -> 'dot')"),
    ("data.num_items=30", "data.num_items (20 -> 30)"),
    ("training.learning_rate=0.5", "training.learning_rate (0.1 -> 0.5)"),
    ("evaluation.monitor_k=5", "evaluation.monitor_k (10 -> 5)"),
])
def test_resume_refuses_a_changed_run_naming_the_keys(tmp_path, change, named):
    run = make_run(tmp_path / "run", status="interrupted")
    with pytest.raises(InputError, match="cannot resume") as refused:
        check_resume(run, load_config(None, [*TINY, change]))
    assert named in str(refused.value)
    assert ", ".join(RESUMABLE_KEYS) in str(refused.value)


def test_resume_allows_the_listed_keys_and_returns_the_changes(tmp_path):
    run = make_run(tmp_path / "run", status="interrupted", checkpoint_epoch=3)
    changes, completed = check_resume(run, load_config(None, [
        *TINY, "training.epochs=8", "training.early_stopping_patience=5",
        "evaluation.chunk_size=64",
    ]))
    assert completed == 3
    assert changes == {"evaluation.chunk_size": (1024, 64), "training.early_stopping_patience":
                       (3, 5), "training.epochs": (5, 8)}


def test_resume_refuses_complete_runs_missing_checkpoints_and_fewer_epochs(tmp_path):
    config = load_config(None, TINY)
    with pytest.raises(InputError, match="already complete"):
        check_resume(make_run(tmp_path / "a", status="complete"), config)
    with pytest.raises(InputError, match="it has no checkpoint"):
        check_resume(make_run(tmp_path / "b", checkpoint_epoch=None), config)
    with pytest.raises(InputError, match="training.epochs=2: its checkpoint already holds 4"):
        check_resume(make_run(tmp_path / "c", checkpoint_epoch=4),
                     load_config(None, [*TINY, "training.epochs=2"]))


def test_resume_refusal_through_the_cli_is_one_line_and_changes_nothing(tmp_path, capsys):
    run = make_run(tmp_path / "run", status="interrupted", process=Process(dead_pid(), this_host()))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code = main(["train", "--run-dir", str(run), "--resume", "--set", "model.embedding_dim=16"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("tfrs-cosine: error: cannot resume") and "model.embedding_dim (32 -> 16)" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_catalog_bounds_on_monitor_k_and_ks():
    config = load_config(None, ["evaluation.monitor_k=5000"])
    with pytest.raises(InputError, match=r"evaluation.monitor_k=5000 is not below the catalog "
                                         r"size \(300 items\)"):
        validate_catalog(config, 300)
    with pytest.raises(InputError, match=r"evaluation.ks \[100\] not below the catalog size"):
        validate_catalog(load_config(None), 100)
    validate_catalog(load_config(None), 101)
    with pytest.raises(InputError, match="repeated"):
        load_config(None, ["evaluation.ks=[5, 10, 5]"])


def test_checkpoint_state_file_is_read_without_tensorflow(tmp_path):
    (tmp_path / rundir.CHECKPOINTS).mkdir()
    assert rundir.latest_checkpoint_epoch(tmp_path) is None
    (tmp_path / rundir.CHECKPOINTS / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-12"\nall_model_checkpoint_paths: "ckpt-11"\n')
    assert rundir.latest_checkpoint_epoch(tmp_path) == 12


# ---------------------------------------------------------------------------------------
# the lock and liveness


def test_a_held_lock_refuses_a_second_holder_naming_pid_and_host(tmp_path):
    with RunLock(tmp_path) as first:
        first.acquire(log=lambda _: None)
        with pytest.raises(InputError) as refused:
            RunLock(tmp_path).acquire()
        assert str(refused.value) == (
            f"run directory in use by pid {os.getpid()} on {this_host()}: {tmp_path}")
        record = json.loads((tmp_path / LOCK).read_text())
        assert (record["pid"], record["host"]) == (os.getpid(), this_host())
    assert (tmp_path / LOCK).read_text() == ""  # a clean release leaves nothing to take over
    messages = []
    RunLock(tmp_path).acquire(log=messages.append)
    assert messages == []


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    pid = dead_pid()
    (tmp_path / LOCK).write_text(json.dumps({"pid": pid, "host": this_host()}))
    messages = []
    lock = RunLock(tmp_path)
    lock.acquire(log=messages.append)
    assert messages == [f"lock: took over {tmp_path} from pid {pid} on {this_host()} (process gone)"]
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()


def _beat(seconds_ago: float) -> str:
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    return moment.isoformat(timespec="seconds")


def test_a_holder_on_another_host_counts_while_its_heartbeat_is_fresh(tmp_path):
    holder = {"pid": 4242, "host": "elsewhere", "heartbeat": _beat(STALE_SECONDS * 10)}
    (tmp_path / LOCK).write_text(json.dumps(holder))
    run_json = holder | {"status": "running", "heartbeat": _beat(5)}
    with pytest.raises(InputError, match=r"in use by pid 4242 on elsewhere: .*heartbeat \d+ s ago"):
        RunLock(tmp_path).acquire(last_seen=lambda: run_json)
    messages = []
    stale = holder | {"heartbeat": _beat(STALE_SECONDS + 30)}
    lock = RunLock(tmp_path)
    lock.acquire(log=messages.append, last_seen=lambda: stale)
    assert "from pid 4242 on elsewhere (process gone)" in messages[0]
    lock.release()


def test_liveness_of_this_host_checks_pid_and_start_time():
    me = Process.current()
    assert me.alive()
    assert not Process(dead_pid(), this_host()).alive()
    if me.start is not None:  # Linux: a reused pid that started at another time is not the job
        assert not Process(me.pid, me.host, start=str(int(me.start) + 1)).alive()


def test_the_heartbeat_thread_beats_until_the_block_ends():
    beats = threading.Semaphore(0)
    with Heartbeat(beats.release, seconds=0.01) as heartbeat:
        assert beats.acquire(timeout=10) and beats.acquire(timeout=10)  # it beats, repeatedly
    assert not heartbeat._thread.is_alive()


def test_sigterm_and_sigint_raise_interrupted_with_the_shell_exit_code():
    before = signal.getsignal(signal.SIGTERM)
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        with pytest.raises(Interrupted) as caught, signals_raise():
            os.kill(os.getpid(), signum)
            threading.Event().wait(5)  # not reached: the handler raises first
        assert caught.value.exit_code == code
        assert isinstance(caught.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------------------------
# tfrs-cosine runs


def test_runs_lists_complete_interrupted_live_and_gone_runs(tmp_path, capsys):
    make_run(tmp_path / "a-complete", status="complete", epochs_completed=5, best_epoch=3,
             best_value=0.25, monitor="val_recall_at_10")
    make_run(tmp_path / "b-interrupted", status="interrupted", epochs_completed=2)
    make_run(tmp_path / "c-live", epochs_completed=1)
    make_run(tmp_path / "d-gone", process=Process(dead_pid(), this_host()))
    make_run(tmp_path / "e-other-host-live",
             process=Process(1, "elsewhere", heartbeat=_beat(5)))
    make_run(tmp_path / "f-other-host-stale",
             process=Process(1, "elsewhere", heartbeat=_beat(STALE_SECONDS + 1)))
    states = {run.path.rsplit("/", 1)[1]: run for run in describe_runs([tmp_path])}
    assert [s.status for s in states.values()] == [
        "complete", "interrupted", "running", "interrupted (process gone)", "running",
        "interrupted (process gone)",
    ]
    assert [s.live for s in states.values()] == [None, None, True, False, True, False]
    assert states["a-complete"].best_value == 0.25 and states["a-complete"].head == "cosine"
    assert main(["runs", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["run", "status", "process", "epochs", "best", "head"]
    assert "5/5" in table[1] and "val recall@10 0.2500 (epoch 3)" in table[1]
    assert f"live: pid {os.getpid()} on {this_host()}" in table[3]
    assert "interrupted (process gone)" in table[4] and "dead: pid" in table[4]
    assert main(["runs", "--json", str(tmp_path / "c-live")]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["live"] is True and listed["epochs_completed"] == 1


def test_runs_names_bad_paths_and_unreadable_runs(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["runs", str(tmp_path)]) == 2
    assert "neither a run directory nor a directory of runs" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / rundir.RUN_INFO).write_bytes(b"\xff\xfe binary")
    assert describe(tmp_path / "broken").status.startswith("unreadable (")
    assert "unreadable" in format_runs(describe_runs([tmp_path]))
