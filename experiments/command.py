"""The experiments' `workbench figures` subcommand (a `workbench.commands` plugin: the kernel's CLI
finds it through the entry point, never by name). Imports nothing heavy until it runs."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("figures")
    def figures_cmd(
        only: list[str] = typer.Option([], help="only these analyses (repeatable), e.g. --only attention_sinks"),
        out: Optional[str] = typer.Option(None, help="output directory (default experiments/out)"),
        quick: bool = typer.Option(False, help="smoke settings: tiny models, seconds (for checking the pipeline)"),
        preset: str = typer.Option("cpu", help="cpu (embedded defaults) or a GPU preset from experiments/presets.py"),
        device: Optional[str] = typer.Option(None, help="the device every experiment runs on (default: cuda when present, else cpu)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (settings, device, models, memory, hub files); load nothing"),
        dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16: precision of every model loaded by name "
                                            "(default float32; the models the workbench trains itself stay float32)"),
    ) -> None:
        """Regenerate every analysis's figures and experiments/REPORT.md (resumes; reuses stored results)."""
        from experiments.run_all import main as run_all

        run_all(only=only or None, out=out, quick=quick, preset=preset, device=device, dry_run=dry_run, dtype=dtype)
