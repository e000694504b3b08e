"""Progress reporting: a tqdm bar for people, and an optional callback (run registry, dashboard).

Deep code calls `progress_bar(...)`; whoever started the run sets the callback with
`reporting_to(callback)`, so progress reaches the registry without threading a parameter
through every function.
"""

from __future__ import annotations

import contextvars
import time
from typing import Callable, ContextManager

from tqdm.auto import tqdm

from workbench.scoped import scoped

ProgressCallback = Callable[[float, str], None]
_callback: contextvars.ContextVar[ProgressCallback | None] = contextvars.ContextVar("wb_progress", default=None)


def reporting_to(callback: ProgressCallback | None) -> ContextManager[None]:
    return scoped(_callback, callback)


def report(fraction: float, message: str = "") -> None:
    cb = _callback.get()
    if cb is not None:
        cb(max(0.0, min(1.0, fraction)), message)


class ProgressBar:
    """tqdm bar (rate and ETA) that also forwards its fraction to the active callback, at most every 0.5 s."""

    def __init__(self, total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0):
        self.total, self.desc = max(total, 1), desc
        self.n = initial
        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not enabled, initial=initial, dynamic_ncols=True)
        self._last = 0.0

    def update(self, n: int) -> None:
        self.n += n
        self.bar.update(n)
        now = time.monotonic()
        if now - self._last > 0.5 or self.n >= self.total:
            self._last = now
            report(self.n / self.total, self.desc)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0) -> ProgressBar:
    return ProgressBar(total, desc, unit, enabled, initial)


def format_seconds(seconds: float) -> str:
    """'45 s', '3 min 20 s', '1 h 05 min': durations as a person reads them."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
