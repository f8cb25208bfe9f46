"""TF_CONFIG without TensorFlow: parsing, roles, the start-up rendezvous on real sockets."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from training import cluster as cluster_module
from training.cluster import (
    MULTI_WORKER,
    PARAMETER_SERVER,
    parse_tf_config,
    serve_until_chief_leaves,
    tf_config,
    wait_for_peers,
)
from training.cluster_local import free_ports
from training.errors import ClusterError, InputError

TWO_WORKERS = {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}
PS_CLUSTER = {"chief": ["127.0.0.1:3000"], "worker": ["127.0.0.1:3001", "127.0.0.1:3002"],
              "ps": ["127.0.0.1:3003"]}


def test_roles_of_a_multi_worker_cluster():
    first, second = (parse_tf_config(tf_config(TWO_WORKERS, "worker", k)) for k in (0, 1))
    assert first.kind == second.kind == MULTI_WORKER
    assert first.is_chief and not second.is_chief and first.trains and second.trains
    assert (first.num_workers, first.worker_id, second.worker_id) == (2, 0, 1)
    assert second.peers_to_wait_for() == [("worker 0", "127.0.0.1:2001")]
    with_chief = {"chief": ["h:1"], "worker": ["h:2", "h:3"]}
    worker = parse_tf_config(tf_config(with_chief, "worker", 1))
    assert (worker.num_workers, worker.worker_id, worker.is_chief) == (3, 2, False)
    assert parse_tf_config(tf_config(with_chief, "chief", 0)).is_chief


def test_roles_of_a_parameter_server_cluster():
    chief = parse_tf_config(tf_config(PS_CLUSTER, "chief", 0))
    ps = parse_tf_config(tf_config(PS_CLUSTER, "ps", 0))
    worker = parse_tf_config(tf_config(PS_CLUSTER, "worker", 1))
    assert chief.kind == PARAMETER_SERVER and chief.is_chief and chief.trains
    assert not ps.trains and not worker.trains and chief.num_workers == 2
    assert [name for name, _ in chief.peers_to_wait_for()] == ["worker 0", "worker 1", "ps 0"]
    assert ps.peers_to_wait_for() == [] and worker.peers_to_wait_for() == []
    assert chief.record() == {"kind": PARAMETER_SERVER, "chief": 1, "worker": 2, "ps": 1}


@pytest.mark.parametrize("text, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', 'has no "cluster"'),
    ('{"cluster": {"evaluator": ["h:1"]}, "task": {"type": "evaluator"}}',
     "job 'evaluator' is not supported"),
    ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker"}}', "cluster.worker must be"),
    ('{"cluster": {"worker": ["h:1", "nohostport"]}, "task": {"type": "worker"}}',
     "cluster.worker[1] = 'nohostport' is not HOST:PORT"),
    ('{"cluster": {"worker": ["h:99999"]}, "task": {"type": "worker"}}', "is not HOST:PORT"),
    ('{"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker"}}',
     "repeats address h:1 of cluster.worker[0]"),
    ('{"cluster": {"chief": ["h:1", "h:2"]}, "task": {"type": "chief"}}', "2 chief tasks"),
    ('{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "worker"}}',
     "needs a chief (the coordinator) and at least one worker"),
    ('{"cluster": {"worker": ["h:1"]}}', 'has no "task"'),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}',
     "task.type 'chief' is not a job of its cluster"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}',
     "task.index 1 is not a task of job 'worker' (0 to 0)"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": "0"}}',
     "task.index '0'"),
])
def test_a_malformed_tf_config_is_one_line_naming_the_problem(text, message):
    with pytest.raises(InputError) as error:
        parse_tf_config(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_no_tf_config_is_one_process():
    assert cluster_module.cluster_from_environment({}) is None
    assert cluster_module.cluster_from_environment({"TF_CONFIG": "  "}) is None
    found = cluster_module.cluster_from_environment({"TF_CONFIG": json.dumps(
        {"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 1}})})
    assert found.address == "127.0.0.1:2002"


def test_two_trainers_find_each_other_before_either_starts_tensorflow():
    for _ in range(3):  # free_ports' ports may be taken by another process meanwhile
        jobs = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
        results = _rendezvous(jobs)
        if not any("cannot listen" in str(v) for v in results.values()):
            break
    assert all(isinstance(v, float) for v in results.values()), results
    for address in jobs["worker"]:  # both listeners closed again: TensorFlow's ports
        with socket.socket() as s:
            s.bind(tuple([address.split(":")[0], int(address.split(":")[1])]))


def _rendezvous(jobs: dict) -> dict[int, object]:
    """``wait_for_peers`` of both workers of ``jobs``, in two threads at once."""
    results: dict[int, object] = {}

    def task(index):
        try:
            results[index] = wait_for_peers(parse_tf_config(tf_config(jobs, "worker", index)),
                                            timeout=30, log=lambda line: None)
        except Exception as e:  # noqa: BLE001 (reported by the assertion below)
            results[index] = e

    threads = [threading.Thread(target=task, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_connection_that_names_no_peer_does_not_complete_the_rendezvous():
    """A port scan of worker 0's rendezvous port (a plain connect, nothing sent) while
    worker 1's port answers: worker 0 must not take the scan for worker 1 and close its
    port, or worker 1 would never find it."""
    port0, port1 = free_ports(2)
    jobs = {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]}
    result: dict[str, object] = {}

    def worker_0():
        try:
            result["v"] = wait_for_peers(parse_tf_config(tf_config(jobs, "worker", 0)),
                                         timeout=1.0, log=lambda line: None)
        except ClusterError as error:
            result["v"] = error

    with socket.create_server(("127.0.0.1", port1)):  # worker 1's port answers
        thread = threading.Thread(target=worker_0)
        thread.start()
        scanned = False
        while thread.is_alive() and not scanned:  # until worker 0 listens
            scanned = cluster_module.reachable(f"127.0.0.1:{port0}", 0.2)
        thread.join()
    assert scanned
    assert isinstance(result["v"], ClusterError), result
    assert "worker 1 never connected to 127.0.0.1:" in str(result["v"])


def test_a_missing_peer_fails_at_the_deadline_naming_it():
    port, missing = free_ports(2)
    jobs = {"worker": [f"127.0.0.1:{port}", f"127.0.0.1:{missing}"]}
    lines = []
    with pytest.raises(ClusterError) as error:
        wait_for_peers(parse_tf_config(tf_config(jobs, "worker", 0)), timeout=0, log=lines.append)
    assert str(error.value).startswith(f"cluster: worker 1 at 127.0.0.1:{missing} not reachable "
                                       "within 0 s")
    assert error.value.exit_code == 1


def test_a_server_task_stops_once_the_chief_has_come_and_gone(monkeypatch):
    answers = iter([False, False, True, True, False, False, False])
    monkeypatch.setattr(cluster_module, "reachable", lambda address, timeout: next(answers))
    lines = []
    serve_until_chief_leaves(parse_tf_config(tf_config(PS_CLUSTER, "ps", 0)), timeout=60,
                             log=lines.append, poll=0)
    assert lines == ["cluster: the chief at 127.0.0.1:3000 has gone; ps 0 stops"]
    assert next(answers, None) is None  # it stopped after 3 misses in a row


def test_a_server_task_gives_up_on_a_chief_that_never_comes(monkeypatch):
    monkeypatch.setattr(cluster_module, "reachable", lambda address, timeout: False)
    ticks = iter(range(100))
    with pytest.raises(ClusterError, match="chief at 127.0.0.1:3000 not reachable within 5 s"):
        serve_until_chief_leaves(parse_tf_config(tf_config(PS_CLUSTER, "worker", 0)),
                                 timeout=5, log=print, clock=lambda: next(ticks), poll=0)
