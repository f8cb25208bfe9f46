"""SIGINT and SIGTERM as one exception in the training job.

Schedulers stop a job with SIGTERM (Kubernetes, Slurm, systemd), people with Ctrl-C
(SIGINT). Inside ``signals_raise()`` both raise ``Interrupted`` in the main thread, a
``KeyboardInterrupt``, so the job marks its run ``interrupted`` on the way out and the
CLI exits ``128 + signal`` (130, 143) as a shell would. A second signal while the job
is cleaning up is ignored, so the cleanup (a few small file writes) completes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised by SIGINT or SIGTERM while ``signals_raise`` is active."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` (once) until the block ends.

    Only the main thread can install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum: int, frame) -> None:
        if not raised:
            raised.append(signum)
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
