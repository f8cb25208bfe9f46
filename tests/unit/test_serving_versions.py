"""The version manager in process: a stub loader, polls called directly, no sleeps."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from serving.status import RequestError
from serving.versions import (
    AVAILABLE,
    END,
    LOADING,
    UNLOADING,
    ModelConfig,
    VersionManager,
    VersionState,
)


class StubServable:
    def __init__(self, name: str, version: int, path: Path):
        self.name, self.version, self.path = name, version, path


class StubLoader:
    """Loads a version folder unless it holds a file named BROKEN (then fails like TF)."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, name: str, version: int, path: Path) -> StubServable:
        self.calls.append(version)
        if (path / "BROKEN").exists():
            error = RuntimeError("Op type not registered 'Nope'\n  in binary")
            error.error_code = 5  # as tf.errors.OpError carries one
            raise error
        return StubServable(name, version, path)


def publish(base: Path, version: int, broken: bool = False) -> Path:
    folder = base / str(version)
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"v%d" % version)
    if broken:
        (folder / "BROKEN").write_text("x")
    return folder


@pytest.fixture
def setup(tmp_path):
    base = tmp_path / "recsys"
    base.mkdir()
    loader = StubLoader()
    events: list[tuple[int, int]] = []
    manager = VersionManager(
        ModelConfig("recsys", base, version_labels={"stable": 1}),
        loader,
        on_change=lambda model, version, state: events.append((version, state.state)),
    )
    return base, loader, manager, events


def test_initial_load_then_swap_then_unload(setup):
    base, loader, manager, events = setup
    publish(base, 1)
    manager.poll(initial=True)
    assert manager.servable().version == 1 and manager.available
    assert manager.states() == {1: VersionState(AVAILABLE)}

    publish(base, 2)
    manager.poll()  # first sight of 2: not settled yet
    assert loader.calls == [1] and manager.servable().version == 1
    manager.poll()  # unchanged since: load, swap, unload 1
    assert loader.calls == [1, 2]
    assert manager.servable().version == 2
    assert manager.servable(version=2).version == 2
    assert manager.loaded_versions() == [2]
    assert manager.states()[1] == VersionState(END) and manager.states()[2].state == AVAILABLE
    assert events == [(1, LOADING), (1, AVAILABLE), (2, LOADING), (2, AVAILABLE), (1, UNLOADING), (1, END)]


def test_a_folder_still_changing_is_not_loaded(setup):
    base, loader, manager, _ = setup
    publish(base, 1)
    manager.poll(initial=True)
    folder = publish(base, 2)
    manager.poll()
    (folder / "variables.data").write_bytes(b"more")  # the exporter is still writing
    manager.poll()
    assert loader.calls == [1]
    manager.poll()
    assert loader.calls == [1, 2]


def test_a_broken_version_is_reported_once_and_the_old_one_keeps_serving(setup):
    base, loader, manager, _ = setup
    publish(base, 1)
    manager.poll(initial=True)
    publish(base, 2, broken=True)
    for _ in range(5):
        manager.poll()
    assert loader.calls == [1, 2], "an unchanged failed version is not retried"
    state = manager.states()[2]
    assert state.state == END and state.error_code == 5
    assert state.error_message == "Op type not registered 'Nope' in binary"
    assert manager.servable().version == 1 and manager.states()[1].state == AVAILABLE

    (base / "2" / "BROKEN").unlink()  # fixed in place: its folder changed, so it is retried
    manager.poll()
    manager.poll()
    assert loader.calls == [1, 2, 2] and manager.servable().version == 2


def test_lookups_answer_as_tf_serving(setup):
    base, _, manager, _ = setup
    with pytest.raises(RequestError, match=r"Servable not found for request: Latest\(recsys\)") as caught:
        manager.servable()
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    publish(base, 1)
    manager.poll(initial=True)
    assert manager.servable(label="stable").version == 1
    with pytest.raises(RequestError, match=r"Specific\(recsys, 9\)"):
        manager.servable(version=9)
    with pytest.raises(RequestError, match="Unrecognized servable version label: beta") as caught:
        manager.servable(label="beta")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_policies_and_removal(tmp_path):
    base = tmp_path / "m"
    for version in (1, 2, 3):
        publish(base, version)
    loader = StubLoader()
    every = VersionManager(ModelConfig("m", base, policy="all"), loader)
    every.poll(initial=True)
    assert every.loaded_versions() == [1, 2, 3]
    specific = VersionManager(ModelConfig("m", base, policy="specific", specific_versions=frozenset({2})), loader)
    specific.poll(initial=True)
    assert specific.loaded_versions() == [2]
    latest_two = VersionManager(ModelConfig("m", base, num_versions=2), loader)
    latest_two.poll(initial=True)
    assert latest_two.loaded_versions() == [2, 3]

    for version in (1, 2, 3):  # every folder removed: nothing is served any more
        (base / str(version) / "saved_model.pb").unlink()
        (base / str(version)).rmdir()
    latest_two.poll()
    assert not latest_two.available and latest_two.states()[3].state == END
    latest_two.unload_all()
    assert latest_two.loaded_versions() == []
