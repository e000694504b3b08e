"""The dashboard's `workbench dashboard` subcommand (a `workbench.commands` plugin: the kernel's CLI
finds it through the entry point, never by name). Imports nothing heavy until it runs."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def dashboard_cmd(
        host: str = typer.Option("127.0.0.1", help="interface to listen on (127.0.0.1 keeps it local)"),
        port: int = typer.Option(8050, help="port"),
        model: str = typer.Option("smollm2-135m", help="model for the model explorer"),
        debug: bool = typer.Option(False, help="Dash debug mode (hot reload, error overlay)"),
        device: str = typer.Option("cpu", help="where the app's explorer loads models (the run worker owns the GPU)"),
        worker_device: Optional[str] = typer.Option(None, help="where runs started from the app compute (default: cuda when present)"),
        allow_host: list[str] = typer.Option([], "--allow-host", help="another host name the app answers to (repeatable); "
                                             "by default only the loopback names and --host itself"),
    ) -> None:
        """Start the dashboard (run registry, model explorer, one page per probe)."""
        from dashboards.app import serve

        serve(host=host, port=port, model=model, debug=debug, device=device, worker_device=worker_device,
              allow_hosts=tuple(allow_host))
