"""Static figure images (SVG, PNG, PDF) drawn by kaleido in a child process with a deadline.

Kaleido drives a headless Chromium. Rendering runs in a separate process group so that a browser
that never answers (seen on fresh CI machines) costs at most `timeout` seconds and leaves nothing
behind, instead of blocking the caller forever. MathJax is switched off: kaleido would otherwise
ask a CDN for it, which an offline machine may never answer. One call renders any number of
figures with one browser start (about 3-4 s), so batch them where you can.

Run as a module (`python -m dashboards.static_export JOBS.json`) it is the child side: JOBS.json
holds a list of {"fig": figure dict, "path": output file, "opts": {format, width, height, scale}}.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

import plotly.graph_objects as go

from workbench.errors import WorkbenchError

DEFAULT_TIMEOUT_S = 180.0
FORMATS = ("svg", "png", "pdf")


class StaticExportError(WorkbenchError):
    """Kaleido could not draw a static image (no Chromium, a crash, or no answer in time)."""


def _figure_dict(fig: go.Figure | dict) -> dict[str, Any]:
    """Plain JSON data of a figure (numpy arrays and the like converted by plotly itself)."""
    return json.loads((fig if isinstance(fig, go.Figure) else go.Figure(fig)).to_json())


def _job(fig: go.Figure | dict, path: Path, fmt: str, width: int | None, height: int | None, scale: float) -> dict:
    if fmt not in FORMATS:
        raise StaticExportError(f"unknown image format {fmt!r}; choose from {', '.join(FORMATS)}")
    d = _figure_dict(fig)
    layout = d.get("layout", {})
    opts = dict(format=fmt, width=width or layout.get("width") or 900, height=height or layout.get("height") or 500, scale=scale)
    return {"fig": d, "path": str(path), "opts": opts}


def write_images(items: Iterable[tuple[go.Figure | dict, str | Path]], fmt: str | None = None, *, width: int | None = None,
                 height: int | None = None, scale: float = 1, timeout: float = DEFAULT_TIMEOUT_S) -> list[Path]:
    """Write each (figure, path) as a static image in one browser session; the format comes from
    `fmt` or each path's suffix. Raises StaticExportError when the child fails or runs past `timeout`."""
    jobs = []
    for fig, path in items:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append(_job(fig, path, fmt or path.suffix.lstrip(".").lower(), width, height, scale))
    if not jobs:
        return []
    with tempfile.TemporaryDirectory(prefix="wb-export-") as tmp:
        spec = Path(tmp) / "jobs.json"
        spec.write_text(json.dumps(jobs))
        _run_child([sys.executable, "-m", "dashboards.static_export", str(spec)], timeout)
    missing = [j["path"] for j in jobs if not Path(j["path"]).is_file()]
    if missing:
        raise StaticExportError(f"kaleido finished but did not write {', '.join(missing)}")
    return [Path(j["path"]) for j in jobs]


def figure_image(fig: go.Figure | dict, fmt: str = "svg", width: int | None = None, height: int | None = None,
                 scale: float = 1, timeout: float = DEFAULT_TIMEOUT_S) -> bytes:
    """The bytes of one static image of `fig` (svg, png or pdf), drawn offline."""
    with tempfile.TemporaryDirectory(prefix="wb-image-") as tmp:
        out = Path(tmp) / f"figure.{fmt}"
        write_images([(fig, out)], fmt, width=width, height=height, scale=scale, timeout=timeout)
        return out.read_bytes()


def _run_child(cmd: list[str], timeout: float) -> None:
    """Run `cmd` in its own process group; on timeout kill the whole group (the browser too)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            cwd=str(Path(__file__).resolve().parent.parent))
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise StaticExportError(f"static image export gave no answer within {timeout:.0f} s; "
                                "check that Chromium runs headless here (scripts/setup.sh --browser installs it)") from None
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        raise StaticExportError("static image export failed: " + " | ".join(tail))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _child_main(spec: str) -> None:
    import asyncio

    import kaleido

    jobs = json.loads(Path(spec).read_text())

    async def render() -> None:
        async with kaleido.Kaleido(n=1, mathjax=False) as k:
            await k.write_fig_from_object(jobs, cancel_on_error=True)

    asyncio.run(render())


if __name__ == "__main__":
    _child_main(sys.argv[1])
