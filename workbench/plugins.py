"""How the kernel finds what lives above it, without naming it: Python entry points.

Installed packages declare, in their pyproject.toml,
- `workbench.analyses`: packages whose sub-packages register probes and studies (this project: `probes`);
- `workbench.reports`: reports (experiments), one entry point each, naming the object that registers it
  (this project: `experiments.<name>:REPORT`);
- `workbench.commands`: functions `register(app)` that add subcommands to the `workbench` CLI (this
  project: the dashboard's `dashboard` and the experiments' `figures`);
- `workbench.figures`: a Result's main figure in notebooks (`workbench.display`).
This module imports nothing heavy: listing commands stay fast.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

ANALYSES_GROUP = "workbench.analyses"
COMMANDS_GROUP = "workbench.commands"
REPORTS_GROUP = "workbench.reports"


def analysis_roots() -> tuple[str, ...]:
    """The top-level packages that hold analyses or reports, as the `workbench.analyses` and
    `workbench.reports` entry points declare them."""
    eps = [*entry_points(group=ANALYSES_GROUP), *entry_points(group=REPORTS_GROUP)]
    return tuple(sorted({ep.value.split(":")[0].split(".")[0] for ep in eps}))


def add_commands(app: Any) -> list[str]:
    """Add every installed `workbench.commands` plugin's subcommands to the typer `app`; their names."""
    names = []
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        ep.load()(app)
        names.append(ep.name)
    return names
