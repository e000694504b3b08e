"""The run in progress: where a probe started through `run_probe` may keep resumable state.

Deep code (the streamer's callers, trainers) asks for `scratch_dir(name)` without a parameter
threaded through every function; outside a stored run it gets None and keeps no state.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager

from workbench.distributed import world
from workbench.scoped import scoped

if TYPE_CHECKING:
    from workbench.store import ResultStore


@dataclass
class ActiveRun:
    """Where the running probe may keep resumable state (stream checkpoints, trainer state)."""

    store: "ResultStore"
    probe: str
    key: str
    run_id: int

    @property
    def scratch(self) -> Path:
        return self.store.scratch(self.probe, self.key)


_context: contextvars.ContextVar[ActiveRun | None] = contextvars.ContextVar("wb_run", default=None)


def current_run() -> ActiveRun | None:
    """The run in progress, if the probe was started through `run_probe`."""
    return _context.get()


def scratch_dir(name: str) -> Path | None:
    """A named, resumable scratch directory of the current run, or None outside a stored run.
    In a sharded run every rank has its own (`name/rank{r}of{N}`), so ranks never write one file."""
    ctx = current_run()
    if ctx is None:
        return None
    p = ctx.scratch / name
    w = world()
    if w.sharded:
        p = p / f"rank{w.rank}of{w.size}"
    p.mkdir(parents=True, exist_ok=True)
    return p


def running(ctx: ActiveRun) -> ContextManager[None]:
    return scoped(_context, ctx)


_label: contextvars.ContextVar[str | None] = contextvars.ContextVar("wb_label", default=None)


def current_label() -> str | None:
    """The label runs started now get in the registry (e.g. "first-look: ..."), or None."""
    return _label.get()


def labelled(label: str) -> ContextManager[None]:
    """Runs registered inside get `label` (the dashboard shows it beside the run)."""
    return scoped(_label, label)
