"""The version manager: which versions of a model are on disk, loaded and served.

``VersionManager`` follows TF Serving's file-system source and availability-preserving
policy for one model:

- ``poll()`` lists the numeric version folders under the base path, picks the aspired
  ones (policy ``latest`` N, ``all`` or ``specific``), and loads each aspired version
  whose folder has stopped changing since the previous poll (an exporter that writes in
  place is never read half-written; ``poll(initial=True)`` loads without waiting);
- a load runs the injected ``loader`` (load + warm-up); only when it returns is the
  version swapped in, with one reference assignment, so a request keeps the servable it
  started on;
- a failed load is reported (state END with the error) and the previous version keeps
  serving; it is retried only when its folder changes;
- a version no longer aspired is unloaded once an aspired one serves (or when none is
  aspired any more).

Nothing here imports TensorFlow or runs a thread: the server's poller thread calls
``poll``; tests call it directly with a stub loader. ``on_change(model, version, state)``
is told every state transition (metrics, the health service).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.status import invalid, not_found
from serving.wire import ERROR_CODES, VERSION_STATES

log = logging.getLogger("tfrs_cosine.serving")

START = VERSION_STATES["START"]
LOADING = VERSION_STATES["LOADING"]
AVAILABLE = VERSION_STATES["AVAILABLE"]
UNLOADING = VERSION_STATES["UNLOADING"]
END = VERSION_STATES["END"]
STATE_NAMES = {number: name for name, number in VERSION_STATES.items()}


@dataclass(frozen=True)
class VersionState:
    """What GetModelStatus reports for one version."""

    state: int
    error_code: int = ERROR_CODES["OK"]
    error_message: str = ""


@dataclass
class ModelConfig:
    """One model of a ModelServerConfig (the fields this server uses)."""

    name: str
    base_path: Path
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    specific_versions: frozenset[int] = frozenset()
    version_labels: dict[str, int] = field(default_factory=dict)


# loader(model name, version, folder) -> a loaded, warmed-up servable; raises on failure.
Loader = Callable[[str, int, Path], Any]
OnChange = Callable[[str, int, VersionState], None]


def fingerprint(path: Path) -> tuple:
    """Sizes and mtimes of every file under a folder (to see when it has settled)."""
    entries = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


def error_text(error: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(getattr(error, "message", None) or error).split())


class VersionManager:
    """The versions of one model: polling, loads, atomic swaps, unloads and status.

    Request threads only read ``self._loaded``, a dict that is replaced whole and never
    mutated, so lookups take no lock.
    """

    def __init__(self, config: ModelConfig, loader: Loader, on_change: OnChange | None = None):
        self.config = config
        self.name = config.name
        self._loader = loader
        self._on_change = on_change
        self._loaded: dict[int, Any] = {}
        self._states: dict[int, VersionState] = {}
        self._lock = threading.Lock()
        self._seen: dict[int, tuple] = {}  # version -> fingerprint at the last poll
        self._failed: dict[int, tuple] = {}  # version -> fingerprint of the failed attempt

    # ------------------------------------------------------------------ lookup
    def servable(self, version: int | None = None, label: str | None = None) -> Any:
        """The servable a request names: latest, a version or a label.

        NOT_FOUND (worded as TF Serving's ServerCore) when it is not loaded;
        INVALID_ARGUMENT for an unknown label.
        """
        loaded = self._loaded
        if label:
            version = self.resolve_label(label)
        if version is None:
            if not loaded:
                raise not_found(f"Servable not found for request: Latest({self.name})")
            return loaded[max(loaded)]
        servable = loaded.get(version)
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({self.name}, {version})")
        return servable

    def resolve_label(self, label: str) -> int:
        if label not in self.config.version_labels:
            raise invalid(f"Unrecognized servable version label: {label}")
        return self.config.version_labels[label]

    def states(self) -> dict[int, VersionState]:
        with self._lock:
            return dict(self._states)

    def loaded_versions(self) -> list[int]:
        return sorted(self._loaded)

    @property
    def available(self) -> bool:
        """Whether some version serves."""
        return bool(self._loaded)

    # ------------------------------------------------------------------ polling
    def versions_on_disk(self) -> dict[int, Path]:
        base = self.config.base_path
        if not base.is_dir():
            return {}
        return {int(p.name): p for p in base.iterdir() if p.is_dir() and p.name.isdigit()}

    def aspired(self, on_disk: Mapping[int, Path]) -> list[int]:
        """The versions the policy wants served, of those on disk."""
        if self.config.policy == "all":
            return sorted(on_disk)
        if self.config.policy == "specific":
            return sorted(v for v in on_disk if v in self.config.specific_versions)
        return sorted(on_disk)[-self.config.num_versions :]

    def poll(self, initial: bool = False) -> None:
        """One pass: load aspired versions that settled, unload those no longer aspired."""
        on_disk = self.versions_on_disk()
        aspired = self.aspired(on_disk)
        for version in sorted(aspired, reverse=True):
            if version in self._loaded:
                continue
            print_ = fingerprint(on_disk[version])
            if self._failed.get(version) == print_:
                continue  # failed before and unchanged since: do not retry
            settled = initial or self._seen.get(version) == print_
            self._seen[version] = print_
            if settled:
                self._load(version, on_disk[version], print_)
        self._unload_unaspired(aspired)
        for version in list(self._seen):
            if version not in on_disk:
                self._seen.pop(version, None)
                self._failed.pop(version, None)

    def _set_state(self, version: int, state: VersionState) -> None:
        with self._lock:
            self._states[version] = state
        if self._on_change is not None:
            self._on_change(self.name, version, state)

    def _load(self, version: int, path: Path, print_: tuple) -> None:
        self._set_state(version, VersionState(LOADING))
        started = time.perf_counter()
        try:
            servable = self._loader(self.name, version, path)
        except Exception as error:  # any failure: report it, keep serving what we have
            message = error_text(error)
            code = getattr(error, "error_code", None)
            code = code if isinstance(code, int) and code else ERROR_CODES["UNKNOWN"]
            self._failed[version] = print_
            self._set_state(version, VersionState(END, code, message))
            serving = max(self._loaded) if self._loaded else None
            log.error(
                "failed to load %s version %d from %s: %s; %s",
                self.name, version, path, message[:500],
                f"still serving version {serving}" if serving else "no version is being served",
            )
            return
        previous = max(self._loaded) if self._loaded else None
        with self._lock:
            self._loaded = {**self._loaded, version: servable}
        self._set_state(version, VersionState(AVAILABLE))
        self._failed.pop(version, None)
        log.info(
            "loaded %s version %d from %s in %.2f s", self.name, version, path,
            time.perf_counter() - started,
        )
        if previous is not None and version > previous:
            log.info("swapped %s: serving version %d (was %d)", self.name, version, previous)

    def _unload_unaspired(self, aspired: Sequence[int]) -> None:
        loaded = self._loaded
        stale = [v for v in loaded if v not in aspired]
        if not stale:
            return
        # Availability preserving: drop an old version only once an aspired one serves,
        # or when no version is aspired any more (its folder was removed).
        if aspired and not any(v in loaded for v in aspired):
            return
        for version in stale:
            self._set_state(version, VersionState(UNLOADING))
            with self._lock:
                self._loaded = {v: s for v, s in self._loaded.items() if v != version}
            self._set_state(version, VersionState(END))
            log.info("unloaded %s version %d", self.name, version)

    def unload_all(self) -> None:
        """Drops every loaded version (shutdown)."""
        with self._lock:
            versions = list(self._loaded)
            self._loaded = {}
        for version in versions:
            self._set_state(version, VersionState(END))
