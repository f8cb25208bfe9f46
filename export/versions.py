"""Version folders of a model base path: numbering, staging, cleanup, atomic publishing.

TF Serving loads ``MODEL_BASE_PATH/<integer>/`` and ignores every other name. An export
is built in a hidden staging folder inside the base path (so the final rename stays on
one filesystem and is atomic), named after the process that owns it::

    MODEL_BASE_PATH/.tmp-export-v<version>-pid<pid>-<nonce>-<host>/
        saved_model/   the SavedModel; renamed to MODEL_BASE_PATH/<version> when verified
        scratch/       vocabulary sources and the verification reference (never in /tmp)

A failure or an interrupt removes the folder. A process killed outright (SIGKILL, power
loss) cannot, so every export first removes the staging folders of dead exports of its
base path: those whose name parses, whose host is this host and whose pid is gone (or a
zombie). A live export's folder, another host's, and anything not named like a staging
folder are left alone. Nothing is removed outside the base path. A dead export's pid
reused by a new process keeps its folder until that process ends (the safe side).

Listing a base path costs O(entries); nothing here loads TensorFlow.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from export.errors import ExportError

STAGING_PREFIX = ".tmp-export-"
SAVED_MODEL = "saved_model"
SCRATCH = "scratch"
_STAGING = re.compile(
    r"^\.tmp-export-v(?P<version>\d+)-pid(?P<pid>\d+)-(?P<nonce>[0-9a-f]{8})-(?P<host>[A-Za-z0-9._-]+)$"
)


def this_host() -> str:
    """This machine's name, restricted to characters safe in a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


@dataclass(frozen=True)
class StagingName:
    """The owner of a staging folder, as its name records it."""

    version: int
    pid: int
    host: str
    nonce: str

    @property
    def folder(self) -> str:
        return f"{STAGING_PREFIX}v{self.version}-pid{self.pid}-{self.nonce}-{self.host}"

    @classmethod
    def parse(cls, name: str) -> StagingName | None:
        """The owner recorded in a folder name; None when it is not a staging folder."""
        match = _STAGING.match(name)
        if match is None:
            return None
        return cls(int(match["version"]), int(match["pid"]), match["host"], match["nonce"])

    @classmethod
    def for_this_process(cls, version: int) -> StagingName:
        return cls(version, os.getpid(), this_host(), secrets.token_hex(4))

    def owner_alive(self) -> bool:
        """Whether the owning export may still run (True when that cannot be known here)."""
        return self.host != this_host() or process_alive(self.pid)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux ``/proc``; else kill 0)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # gone meanwhile, unless there is no /proc
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :][:1] not in ("Z", "X")  # state follows "(comm) "


def staging_folders(base: Path) -> list[tuple[Path, StagingName]]:
    """Every staging folder directly in ``base`` with its recorded owner."""
    if not base.is_dir():
        return []
    found = []
    for path in base.iterdir():
        name = StagingName.parse(path.name)
        if name is not None and path.is_dir() and not path.is_symlink():
            found.append((path, name))
    return sorted(found)


def remove_leftovers(base: Path, log: Callable[[str], None]) -> list[Path]:
    """Removes the staging folders of dead exports on this host; returns what it removed."""
    removed = []
    for path, name in staging_folders(base):
        if name.owner_alive():
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            log(f"export: removed {path.name}, left by export process {name.pid} that is gone")
            removed.append(path)
    return removed


def existing_versions(model_base_path: str | Path) -> list[int]:
    """The integer version folders under ``model_base_path`` (TF Serving's layout), sorted."""
    base = Path(model_base_path)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def resolve_version(model_base_path: str | Path, version: int | None) -> int:
    """``version``, or the next one after every existing and live-staged version.

    Raises:
      ExportError: the base path is a file, the version exists, or a live export is
        writing it.
    """
    base = Path(model_base_path)
    if base.exists() and not base.is_dir():
        raise ExportError(f"model base path {base} is a file, not a directory")
    parent = next((p for p in base.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ExportError(f"model base path {base} cannot be created: {parent} is a file")
    staged = {name.version: name for _, name in staging_folders(base) if name.owner_alive()}
    if version is None:
        return max([0, *existing_versions(base), *staged]) + 1
    if (base / str(version)).exists():
        raise ExportError(
            f"version {version} already exists in {base}; "
            "choose another --version (existing versions are never overwritten)"
        )
    if version in staged:
        owner = staged[version]
        raise ExportError(
            f"version {version} is being exported to {base} by pid {owner.pid} on {owner.host}"
        )
    return version


class Staging:
    """The folder one export is built in; a context manager that always cleans up.

    On entry: creates the base path if needed, removes leftovers of dead exports, and
    creates ``.tmp-export-...`` with ``saved_model`` (to be written) and ``scratch``.
    ``publish()`` renames the SavedModel into ``base/<version>``. On exit, success or not,
    the staging folder is removed; after a failure a base path this export created is
    removed too when it is empty.
    """

    def __init__(self, base: Path, version: int, log: Callable[[str], None]):
        self.base, self.version, self.log = Path(base), version, log
        self.name = StagingName.for_this_process(version)
        self.path = self.base / self.name.folder
        self.saved_model = self.path / SAVED_MODEL
        self.scratch = self.path / SCRATCH
        self._created_base = False

    def __enter__(self) -> Staging:
        self._created_base = not self.base.exists()
        try:
            self.base.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ExportError(f"cannot create model base path {self.base}: {e.strerror}") from None
        remove_leftovers(self.base, self.log)
        self.scratch.mkdir(parents=True)
        return self

    def publish(self) -> Path:
        """Renames the finished SavedModel to ``base/<version>`` (atomic; never overwrites)."""
        target = self.base / str(self.version)
        if target.exists():
            raise ExportError(f"version {self.version} already exists in {self.base}")
        try:
            os.rename(self.saved_model, target)
        except OSError as e:
            raise ExportError(f"cannot move the export into {target}: {e.strerror}") from None
        return target

    def __exit__(self, kind, error, traceback) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if kind is not None and self._created_base:
            try:
                self.base.rmdir()  # only when empty
            except OSError:
                pass
