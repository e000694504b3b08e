"""Shared plumbing for experiment scripts: output folders, figure export (PNG + HTML), the
report section each script returns, and a record of the machine and wall time."""

from __future__ import annotations

import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import psutil
import torch

from dashboards.static_export import write_images
from workbench.io import atomic_path

DEFAULT_OUT = Path(__file__).parent / "out"


@dataclass
class ReportSection:
    """One analysis's part of experiments/REPORT.md."""

    title: str
    markdown: str
    figures: list[str] = field(default_factory=list)  # paths relative to the output folder
    wall_s: float = 0.0
    preset: str = ""
    finished: str = ""  # UTC time the experiment finished, set by save()
    verdict: str = ""  # the verdict on the paper's headline (its section's `**Verdict: ...**`), set when it is made
    finding: str = ""  # what the section found, as its verdict line says it after the verdict word

    SECTION_FILE = "section.json"

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict, found = verdict_of(self.markdown)
            self.finding = self.finding or found

    def save(self, out: Path, preset: str | None = None) -> Path:
        """Write this section to `out`/section.json (atomically), so that a report can be assembled
        later without rerunning the experiment (`python -m experiments.run_all --assemble`)."""
        import json


        self.preset = preset if preset is not None else self.preset
        self.finished = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        out.mkdir(parents=True, exist_ok=True)
        target = out / self.SECTION_FILE
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(dict(title=self.title, markdown=self.markdown, figures=self.figures,
                                           wall_s=self.wall_s, preset=self.preset, finished=self.finished,
                                           verdict=self.verdict, finding=self.finding), indent=1))
        return target

    def publish(self, out: Path, preset: str) -> None:
        """The end of every experiment script: save the section (for `run_all --assemble`) and print it."""
        self.save(out, preset)
        print(self.markdown)
        print("figures:", ", ".join(self.figures))

    @classmethod
    def load(cls, out: Path) -> "ReportSection":
        """The section saved in `out` by save(); FileNotFoundError when the experiment never finished there."""
        import json

        d = json.loads((out / cls.SECTION_FILE).read_text())
        return cls(**{k: d[k] for k in ("title", "markdown", "figures", "wall_s", "preset", "finished", "verdict", "finding")
                      if k in d})


def verdict_of(markdown: str) -> tuple[str, str]:
    """(verdict, finding) of a section the experiment just wrote: its `**Verdict: ...**` line's word
    and what follows it; ("not stated", "") without one. Read once, when the section is made."""
    m = re.search(r"\*\*Verdict: ([^*]+)\*\*(.*)", markdown)
    return (m.group(1).strip(), m.group(2).lstrip(" .:").strip()) if m else ("not stated", "")


def hardware() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPU threads, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {gpu}, torch {torch.__version__}"


def write_figure(fig: go.Figure, out: Path, name: str, png: bool = True) -> list[str]:
    """Write `name`.html (self-contained, offline) and `name`.png; returns the relative paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig.write_html(out / f"{name}.html", include_plotlyjs=True)
    written.append(f"{name}.html")
    if png:

        write_images([(fig, out / f"{name}.png")], scale=2)
        written.append(f"{name}.png")
    return written


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
