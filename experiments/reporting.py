"""Experiments as registered reports: each experiment module declares one `REPORT` (a
`workbench.probe_api.ReportSpec`, found through its `workbench.reports` entry point), so
`workbench run <experiment>`, the dashboard's queue and `workbench figures` all run it the same
way: through the store, keyed by its preset, its code and every run it used, and recorded in the
run table. Its stored result (`SectionResult`) is the section: text, verdict, figures (PNG bytes,
restored to the output folder when it is reused) and wall time, so the report is assembled from
stored results, never from its own markdown.
"""

from __future__ import annotations

import contextvars
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import torch

from experiments.common import DEFAULT_OUT, ReportSection
from workbench.config import setting
from workbench.errors import ConfigError
from workbench.io import atomic_path
from workbench.probe_api import ReportSpec, register
from workbench.results import Result
from workbench.scoped import scoped

_OUTPUT: contextvars.ContextVar[Path] = contextvars.ContextVar("report_output", default=DEFAULT_OUT)


def figures_in(out: Path) -> ContextManager[None]:
    """Reports run inside this block write their figures under `out`/<name> (default experiments/out)."""
    return scoped(_OUTPUT, Path(out))


def output_dir(name: str) -> Path:
    return _OUTPUT.get() / name


@dataclass
class ReportConfig:
    """A report's settings: the entry of its settings table to run (the table is in `ReportSpec.presets`)."""

    preset: str = setting("cpu", text=True, why="an entry of the report's settings table: cpu, gpu, quick or a named "
                                                  "preset (`python -m experiments.presets` lists them)")


@dataclass
class SectionResult(Result):
    """A report's stored result: its section of experiments/REPORT.md and the PNG figures it drew."""

    title: str = ""
    markdown: str = ""
    verdict: str = ""
    finding: str = ""
    figures: list = field(default_factory=list)  # file names inside the report's output folder
    pngs: dict = field(default_factory=dict)  # file name -> the PNG's bytes (uint8)
    preset: str = ""
    compute_s: float = 0.0  # the experiment's own wall time when it ran (a reused one keeps its first)

    def summary(self) -> dict[str, Any]:
        return {"title": self.title, "verdict": self.verdict, "figures": len(self.figures), "compute_s": round(self.compute_s, 1)}

    def section(self, name: str) -> ReportSection:
        """The section as the report renders it, its figures named under `name`/."""
        return ReportSection(title=self.title, markdown=self.markdown, figures=[f"{name}/{f}" for f in self.figures],
                             wall_s=self.compute_s, preset=self.preset, finished=str(self.meta.get("finished", "")),
                             verdict=self.verdict, finding=self.finding)

    def restore_figures(self, folder: Path) -> list[Path]:
        """Write the stored PNGs into `folder` where a file is missing or differs; the paths written."""
        written = []
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.pngs.items():
            target = folder / name
            blob = data.numpy().tobytes()
            if not target.is_file() or target.read_bytes() != blob:
                with atomic_path(target) as tmp:
                    tmp.write_bytes(blob)
                written.append(target)
        return written


def _pngs(folder: Path, figures: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    for f in figures:
        path = folder / f
        if f.endswith(".png") and path.is_file():
            out[f] = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    return out


def _runner(name: str, module: str):
    def run(cfg: ReportConfig, parts: Any) -> SectionResult:
        mod = importlib.import_module(module)
        if cfg.preset not in mod.REPORT.presets:
            raise ConfigError(f"report {name!r} has no settings entry {cfg.preset!r}; it has {sorted(mod.REPORT.presets)}")
        folder = output_dir(name)
        t0 = time.perf_counter()
        section = mod.run(folder, quick=cfg.preset == "quick", preset=cfg.preset, device=parts.device)
        figures = [f.removeprefix(f"{name}/") for f in section.figures]
        return SectionResult(title=section.title, markdown=section.markdown, verdict=section.verdict, finding=section.finding,
                             figures=figures, pngs=_pngs(folder, figures), preset=cfg.preset,
                             compute_s=section.wall_s or time.perf_counter() - t0)

    return run


def report(name: str, *, description: str, presets: dict[str, Any], order: int, module: str | None = None) -> ReportSpec:
    """Register an experiment as report `name`: `module` (default experiments.<name>) defines
    `run(out, quick, preset, device) -> ReportSection` and assigns this spec to `REPORT`, which its
    `workbench.reports` entry point names; `presets` is its settings table."""
    module = module or f"experiments.{name}"
    return register(ReportSpec(name=name, description=description, config_cls=ReportConfig, result_cls=SectionResult,
                               run=_runner(name, module), presets=presets, order=order, source=module))

