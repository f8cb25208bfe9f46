"""Progress lines for long passes over data: rows, rows/s, and where the pass is."""

from __future__ import annotations

import time
from collections.abc import Callable

Log = Callable[[str], None]


class RateLog:
    """Counts rows of one phase; logs a line every ``every`` seconds and at the end.

    ``clock`` is injectable so tests need no sleeps.
    """

    def __init__(
        self, phase: str, log: Log, every: float = 30.0,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.phase, self.log, self.every, self.clock = phase, log, every, clock
        self.rows = 0
        self.started = self.last = clock()

    @property
    def seconds(self) -> float:
        return self.clock() - self.started

    def rate(self) -> float:
        return self.rows / max(self.seconds, 1e-9)

    def add(self, rows: int, where: str = "") -> None:
        """Counts ``rows``; ``where`` (e.g. "file 3 of 16") goes into a progress line."""
        self.rows += rows
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            where = f", {where}" if where else ""
            self.log(f"{self.phase}: {self.rows:,} rows so far{where} ({self.rate():,.0f} rows/s)")

    def done(self, details: str = "") -> None:
        extra = f"; {details}" if details else ""
        self.log(
            f"{self.phase}: {self.rows:,} rows in {self.seconds:.1f} s "
            f"({self.rate():,.0f} rows/s){extra}"
        )
