"""Regenerate every analysis's figures and write experiments/REPORT.md.

Each experiment is a registered report (`experiments/reporting.py`; its module declares `REPORT`
and a `workbench.reports` entry point names it), so this script is one client of the registry:
each report runs through the store like any run (`workbench run attention_sinks --set preset=gpu`
and the dashboard's queue run the same thing), keyed by its settings entry, its code and every run
it used, and recorded in the run table. `--preset` names one of experiments/presets.py (cpu, gpu,
gpt2-small, pythia-70m, pythia-160m), which picks an entry of every report's settings table
(`python -m experiments.presets` lists them). A failing report is reported in its section and does
not stop the others.

The report is rendered from stored, structured results: the sections just run, each other
report's latest stored section (`--assemble` uses only those), and otherwise the structured record
of the last rendered report (experiments/sections.json, kept beside REPORT.md), never by parsing
REPORT.md.

Usage: workbench figures [--only attention_sinks ...]   or   python -m experiments.run_all --help
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

from experiments import presets as named_presets
from experiments.common import DEFAULT_OUT, ReportSection, hardware
from experiments.reporting import SectionResult, figures_in
from workbench.io import atomic_path

REPORT = Path(__file__).parent / "REPORT.md"
SECTIONS = Path(__file__).parent / "sections.json"  # the structured record REPORT.md is rendered from


def record_beside(report: Path) -> Path:
    """The structured record a rendered report keeps beside it (experiments/sections.json for REPORT.md)."""
    return SECTIONS if report == REPORT else report.with_name("sections.json")


def analyses() -> list[str]:
    """The registered reports, in report order."""
    return named_presets.experiments()


def run_one(name: str, out: Path, quick: bool, preset: str, device: str | None = None, store=None) -> ReportSection:
    """Run (or reuse) report `name` through the store under the preset's settings entry; its section
    with figures restored under `out`/`name`."""
    from experiments.reporting import ReportConfig
    from workbench.probe_api import get_report
    from workbench.runner import run_study

    key = named_presets.key_for(named_presets.resolve(preset), name, quick)
    with figures_in(out):
        outcome = run_study(get_report(name), ReportConfig(preset=key), device=device, store=store)
    result: SectionResult = outcome.result
    result.restore_figures(out / name)
    return result.section(name)


def publish_report(name: str, out: Path, quick: bool, preset: str) -> ReportSection:
    """`python -m experiments.<name>` with its standard arguments: the registered report, run (or
    reused) through the store like `workbench figures --only <name>`, its section printed and its
    figures under `<out's parent>/<name>` (the default --out is experiments/out/<name>).
    `run_all --assemble` then finds it in the store."""
    root = Path(out).parent
    section = run_one(name, root, quick, preset)
    print(section.markdown)
    print(f"figures (in {root}):", ", ".join(section.figures))
    return section


def stored_section(name: str, out: Path, store=None) -> ReportSection | None:
    """Report `name`'s latest stored section (its figures restored under `out`), or None."""
    from workbench.runner import result_of_run
    from workbench.store import FINISHED_OK, ResultStore

    store = store or ResultStore()
    for row in store.runs(limit=200, probe=name):
        if row["status"] in FINISHED_OK and row["artifact"]:
            try:
                result = result_of_run(row["run_id"], store, expect=name)
            except Exception:  # noqa: BLE001 - a missing or corrupt one (quarantined): try the one before
                continue
            result.restore_figures(out / name)
            sec = result.section(name)
            sec.markdown = f"*Section of run {row['run_id']}, finished {sec.finished} with settings `{sec.preset}`.*\n\n{sec.markdown.strip()}"
            return sec
    return None


def recorded_sections(path: Path = SECTIONS) -> dict[str, ReportSection]:
    """The sections of the last rendered report, by report name, from its structured record; {} without one."""
    try:
        rows = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {r["name"]: ReportSection(**{k: v for k, v in r.items() if k != "name"}) for r in rows if isinstance(r, dict) and "name" in r}


def write_record(sections: dict[str, ReportSection], path: Path = SECTIONS) -> None:
    rows = [dict(name=n, title=s.title, markdown=s.markdown, figures=s.figures, wall_s=s.wall_s, preset=s.preset,
                 finished=s.finished, verdict=s.verdict, finding=s.finding) for n, s in sections.items()]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rows, indent=1) + "\n")


def assemble(out: Path, names: list[str], ran: dict[str, ReportSection] | None = None, record: Path = SECTIONS,
             store=None, placeholders: bool = True) -> dict[str, ReportSection]:
    """The report's sections by name, in report order: those just run (`ran`), else each report's
    latest stored section, else its section in the structured record of the last report; a report
    in none gets a section saying how to run it (or, without `placeholders`, is left out). Nothing
    is recomputed."""
    ran = ran or {}
    carried = recorded_sections(record)
    found = {}
    for name in names:
        sec = ran.get(name) or stored_section(name, out, store) or carried.get(name)
        if sec is None and placeholders:
            sec = ReportSection(title=name, markdown=f"**Not run yet**: `workbench run {name}` or `workbench figures --only {name}`.")
        if sec is not None:
            found[name] = sec
    return found


def paper_headline(analysis: str) -> str:
    """The paper's headline an experiment module states (its PAPER_HEADLINE), "" when it states none."""
    import importlib

    try:
        return getattr(importlib.import_module(f"experiments.{analysis}"), "PAPER_HEADLINE", "")
    except ImportError:
        return ""


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ") or "—"


def _precision() -> str:
    """The run's precision ("float32" unless `--dtype` or WORKBENCH_DTYPE says otherwise)."""
    from workbench.models.info import default_dtype

    return str(default_dtype()).removeprefix("torch.")


def _itemsize() -> int:
    import torch

    from workbench.models.info import default_dtype

    return torch.finfo(default_dtype()).bits // 8


def render(named: dict[str, ReportSection], total_s: float, quick: bool, preset: str, assembled: bool = False) -> str:
    sections = list(named.values())
    how = ("Assembled by `python -m experiments.run_all --assemble` from each report's latest stored result, or from the "
           "structured record of the previous report (experiments/sections.json) where none is stored (each section names "
           "its time and settings); `workbench figures` reruns them all.") if assembled else \
          "Generated by `workbench figures` (experiments/run_all.py)."
    lines = [
        "# Experiment report",
        "",
        how + " Each section sets the paper's headline",
        "claim and numbers beside ours, on the setting we ran, and says where they agree and why not.",
        "",
        f"- hardware: {hardware()}",
        f"- preset: {preset}{' (quick smoke settings, not the real experiment)' if quick else ''}",
        f"- precision of the models loaded by name: {_precision()}",
        f"- total wall time: {total_s / 60:.1f} min" + (" (sum of the saved sections' last runs; a section whose results "
                                                         "were reused from the store shows little time here, and states its "
                                                         "compute time in its text)" if assembled else ""),
        "",
        *preset_notes(preset, [s.title for s in sections], quick),
        "| analysis | the paper's headline | ours (the section's verdict line) | verdict on the paper's headline | wall time | "
        "figures (PNG, each also as HTML where made) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in named.items():
        lines.append(f"| {s.title} | {_cell(paper_headline(name))} | {_cell(s.finding)} | "
                     f"{s.verdict} | {s.wall_s / 60:.1f} min | {sum(f.endswith('.png') for f in s.figures)} |")
    for s in sections:
        lines += ["", f"## {s.title}", "", s.markdown.strip(), ""]
        pngs = [f for f in s.figures if f.endswith(".png")]
        if pngs:
            lines.append("Figures: " + ", ".join(f"[{Path(f).stem}](out/{f})" for f in pngs))
    return "\n".join(lines) + "\n"


def preset_notes(preset: str, titles: list[str], quick: bool) -> list[str]:
    """Report lines saying what a named preset sets and what stays the same (none for cpu or quick)."""
    p = named_presets.PRESETS.get(preset)
    if p is None or quick or preset == "cpu":
        return []
    lines = [f"Preset `{preset}`: {p.description}."]
    for exp in analyses():
        s = p.setting(exp)
        over = ", ".join(f"{k}={v!r}" for k, v in s.overrides.items())
        if over or s.note:
            lines.append(f"- {exp}: {s.base}{' with ' + over if over else ''}{'; ' + s.note if s.note else ''}")
    return lines + [""]


def check_preset(preset: str) -> named_presets.Preset:
    """The named preset (an error naming the known ones otherwise); warns about missing hub weights or GPU."""
    p = named_presets.resolve(preset)
    if p.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(f"warning: preset {preset!r} is sized for a GPU and none is available; expect very long runs", flush=True)
    if p.hub_models:
        try:
            missing = named_presets.check_weights(p)
        except Exception as e:  # noqa: BLE001 - a warning only
            missing = [f"(could not check: {e})"]
        if missing:
            print(f"note: not in the local Hugging Face cache, downloaded on first use (needs the hub): {', '.join(missing)}", flush=True)
    return p


def model_names_in(entry: object) -> list[str]:
    """The model names a settings entry names (keys "model" and "lm", at any depth)."""
    found: list[str] = []
    if isinstance(entry, dict):
        for k, v in entry.items():
            if k in ("model", "lm") and isinstance(v, str):
                found.append(v)
            else:
                found += model_names_in(v)
    return found


def _batch_shape(entry: object) -> tuple[int, int]:
    """(batch, seq_len) the loaded model streams with: from the entry's probe settings of the model
    ("survey", "probe", "lm_config") or its top level; 8 x 128 when it says neither."""
    if not isinstance(entry, dict):
        return 8, 128
    for part in (entry.get("survey"), entry.get("probe"), entry.get("lm_config"), entry):
        if isinstance(part, dict) and ("batch_size" in part or "seq_len" in part):
            return int(part.get("batch_size", 8)), int(part.get("seq_len", 128))
    return 8, 128


def plan(preset: str, quick: bool = False, device: str | None = None, names: list[str] | None = None) -> list[dict]:
    """What `main` would run, without loading any weights: per experiment its settings entry, the
    device, the models it loads with a memory estimate (weights + one batch), and the hub files the
    preset needs (with whether the local cache holds them)."""
    from workbench.activations import transient_bytes
    from workbench.models import default_device, offline_shape

    p = named_presets.resolve(preset)
    device = device or default_device()
    rows = []
    from workbench.probe_api import get_report

    for name in names or analyses():
        key = named_presets.key_for(p, name, quick)
        entry = get_report(name).presets.get(key, {})
        models = []
        for m in dict.fromkeys(model_names_in(entry)):
            shape = offline_shape(m)
            if shape is None:
                models.append({"model": m, "memory_gib": None, "note": "shape unknown offline (config not in the cache)"})
                continue
            batch, seq = _batch_shape(entry)
            itemsize = _itemsize()  # the run's precision, not always 4 bytes
            transient = transient_bytes(shape["d_model"], shape["d_mlp"], shape["n_heads"], shape["d_vocab"], itemsize, batch, seq)
            models.append({"model": m, "n_params": shape["n_params"], "batch": batch, "seq_len": seq,
                           "dtype": _precision(),
                           "memory_gib": (itemsize * shape["n_params"] + transient) / 2**30})
        rows.append({"experiment": name, "setting": key, "device": device, "models": models,
                     "note": p.setting(name).note})
    return rows


def print_plan(preset: str, quick: bool = False, device: str | None = None, names: list[str] | None = None) -> list[dict]:
    rows = plan(preset, quick, device, names)
    p = named_presets.resolve(preset)
    print(f"plan for preset {preset!r}{' (quick)' if quick else ''}: {p.description}")
    for r in rows:
        print(f"\n{r['experiment']}: settings {r['setting']!r} on {r['device']}" + (f"; {r['note']}" if r["note"] else ""))
        for m in r["models"] or [{"model": "(models the experiment trains itself)", "memory_gib": None}]:
            mem = (f"~{m['memory_gib']:.2f} GiB in {m['dtype']} (weights + one batch of {m['batch']} x {m['seq_len']})"
                   if m.get("memory_gib") else m.get("note", ""))
            print(f"  loads {m['model']}" + (f" ({m['n_params'] / 1e6:.0f}M parameters)" if m.get("n_params") else "") + (f": {mem}" if mem else ""))
    needed = named_presets.needed_files(p) if not quick else []
    if needed:
        print("\nhub files:")
        for n in needed:
            print(f"  {'cached ' if n.cached else 'MISSING'}  {n.repo}: {', '.join(n.files)}")
    else:
        print("\nhub files: none (embedded model and corpus)")
    return rows


def main(only: list[str] | None = None, out: str | Path | None = None, quick: bool = False, preset: str = "cpu",
         report: Path | None = None, assemble_only: bool = False, device: str | None = None,
         dry_run: bool = False, dtype: str | None = None) -> list[ReportSection]:
    """Regenerate the report (see the module docstring). `dtype`: the precision every model loaded by
    name loads in (default float32; `workbench.models.info.using_dtype`)."""
    from workbench.models.info import using_dtype

    with using_dtype(dtype):
        return _main(only, out, quick, preset, report, assemble_only, device, dry_run)


def _main(only: list[str] | None, out: str | Path | None, quick: bool, preset: str, report: Path | None,
          assemble_only: bool, device: str | None, dry_run: bool) -> list[ReportSection]:
    out = Path(out) if out else DEFAULT_OUT
    known = analyses()
    names = only or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"Unknown analyses {unknown}; choose from {known}")
    if preset == named_presets.FIRST_LOOK:  # not a report: real runs that fill every page, quickly
        from experiments import first_look

        if dry_run:
            first_look.print_plan()
        else:
            first_look.main(device)
        return []
    if dry_run:
        print_plan(preset, quick, device, names)
        return []
    if assemble_only:
        target = report or (REPORT if out == DEFAULT_OUT else out / "REPORT.md")
        record = record_beside(target)
        found = assemble(out, names, record=record)
        with atomic_path(target) as tmp:
            tmp.write_text(render(found, sum(x.wall_s for x in found.values()), quick, preset, assembled=True))
        write_record(found, record)
        print(f"report: {target}")
        return list(found.values())
    check_preset(preset)
    from workbench.models import default_device

    device = device or default_device()  # the run's one device decision: every experiment gets it
    ran: dict[str, ReportSection] = {}
    t0 = time.perf_counter()
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        try:
            ran[name] = run_one(name, out, quick, preset, device)
        except Exception as e:  # noqa: BLE001 - recorded in the report, the others still run
            ran[name] = ReportSection(title=name, markdown=f"**Failed**: `{type(e).__name__}: {e}`\n\n```\n{traceback.format_exc(limit=8)}\n```")
            print(traceback.format_exc())
    target = report or (REPORT if not quick and out == DEFAULT_OUT else out / "REPORT.md")
    record = record_beside(target)
    found = assemble(out, known, ran, record=record, placeholders=False)  # --only keeps the other sections
    with atomic_path(target) as tmp:
        tmp.write_text(render(found, time.perf_counter() - t0, quick, preset))
    write_record(found, record)
    print(f"report: {target}")
    return list(ran.values())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="a subset of the registered reports (`workbench probes` lists them)")
    p.add_argument("--out", help="output folder (default experiments/out)")
    p.add_argument("--quick", action="store_true", help="smoke settings (tiny models, seconds)")
    p.add_argument("--preset", default="cpu", help=f"one of {', '.join(named_presets.known())} (see `python -m experiments.presets`)")
    p.add_argument("--assemble", action="store_true",
                   help="write the report from each report's latest stored section (no recomputation)")
    p.add_argument("--device", help="the device every experiment runs on (default: cuda when present, else cpu)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (settings, device, models, memory, hub files); load nothing")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="precision of every model loaded by name (default float32)")
    a = p.parse_args()
    main(a.only, a.out, a.quick, a.preset, assemble_only=a.assemble, device=a.device, dry_run=a.dry_run, dtype=a.dtype)
