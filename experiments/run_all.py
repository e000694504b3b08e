"""Regenerate every analysis's figures and write experiments/REPORT.md.

Each experiment module exposes `run(out: Path, quick: bool = False, preset: str = "cpu") -> ReportSection`.
`--preset` names one of experiments/presets.py (cpu, gpu, gpt2-small, pythia-70m, pythia-160m); it maps
every experiment to an entry of that experiment's own settings table (`python -m experiments.presets`
lists what each preset sets and what stays the same under it).
Results come from the store, so a rerun with unchanged inputs reuses them; an interrupted run
resumes. A failing analysis is reported in its section and does not stop the others.

Usage: workbench figures [--only attention_sinks ...]   or   python -m experiments.run_all --help
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import time
import traceback
from pathlib import Path

from experiments import presets as named_presets
from experiments.common import DEFAULT_OUT, ReportSection, hardware
from workbench.io import atomic_path

ANALYSES = [
    "attention_sinks",
    "function_tokens",
    "bigram_subnetworks",
    "linguistic_collapse",
    "key_space",
    "sae_circuits",
    "cross_analysis",
]
REPORT = Path(__file__).parent / "REPORT.md"


def run_one(name: str, out: Path, quick: bool, preset: str, device: str | None = None) -> ReportSection:
    mod = importlib.import_module(f"experiments.{name}")
    kwargs: dict = {"quick": quick}
    if "device" in inspect.signature(mod.run).parameters:
        kwargs["device"] = device
    if "preset" in inspect.signature(mod.run).parameters:
        # the module's own key for this preset (a named preset's entry is registered in its table)
        kwargs["preset"] = named_presets.install(named_presets.resolve(preset), name, mod, quick)
    t0 = time.perf_counter()
    section = mod.run(out / name, **kwargs)
    section.wall_s = section.wall_s or time.perf_counter() - t0
    section.save(out / name, "quick" if quick else preset)
    return _prefixed(section, name)


def _with_the_others(sections: list[ReportSection], names: list[str], out: Path, target: Path) -> list[ReportSection]:
    """The report's sections: those just run, and for the other analyses their saved section in `out`
    or their section of the report being replaced (so that `--only` keeps the rest of the report);
    in report order, without the analyses found nowhere."""
    ran = dict(zip(names, sections))
    carried = sections_in_report(target) if set(ANALYSES) - set(ran) else {}  # a full run replaces every section
    kept = [ran.get(n) or _saved_section(out, n) or carried.get(n) for n in ANALYSES]
    return [sec for sec in kept if sec is not None]


def _prefixed(section: ReportSection, name: str) -> ReportSection:
    section.figures = [f"{name}/{f}" if not f.startswith(f"{name}/") else f for f in section.figures]
    return section


def assemble(out: Path, names: list[str], previous: Path | None = None) -> list[ReportSection]:
    """Sections saved by each experiment's last finished run in `out` (nothing is recomputed); an
    experiment with no saved section keeps its section of the `previous` report (a fresh clone has
    REPORT.md but not the sections, which git ignores); one in neither gets a section saying how to
    run it."""
    carried = sections_in_report(previous) if previous is not None else {}
    return [_saved_section(out, name) or carried.get(name)
            or ReportSection(title=name, markdown=f"**Not run yet** in `{out}`: `python -m experiments.{name}`.") for name in names]


def _saved_section(out: Path, name: str) -> ReportSection | None:
    """The section an experiment saved in `out` when it last finished, stamped with its time and preset."""
    try:
        sec = ReportSection.load(out / name)
    except FileNotFoundError:
        return _from_markdown(out / name, name)
    stamp = f"Section written {sec.finished}" + (f" by the `{sec.preset}` preset" if sec.preset else "")
    sec.markdown = f"*{stamp}.*\n\n{sec.markdown.strip()}"
    return _prefixed(sec, name)


def sections_in_report(path: Path) -> dict[str, ReportSection]:
    """The sections of a report `render` wrote, by analysis (named by its figure links, out/<name>/...),
    with their text as it stands (time stamp included), PNG figures and wall time; {} without a report.
    A section without figure links names no analysis and is left out."""
    if not path.is_file():
        return {}
    text = path.read_text()
    # summary rows: | title | headline | ours | verdict | wall | figures | (older reports have fewer text columns)
    walls = {m[1]: float(m[2]) * 60 for m in re.finditer(r"^\| (.+?) \| (?:[^|]* \| )*?([\d.]+) min \| \d+ \|$", text, re.M)}
    found: dict[str, ReportSection] = {}
    for chunk in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = chunk.partition("\n")
        head, _, last = body.strip().rpartition("\n")
        if not last.startswith("Figures: "):
            continue
        figures = re.findall(r"\]\(out/([^)]+)\)", last)
        analyses = _analyses_of(figures)
        if len(analyses) == 1:
            found[analyses.pop()] = ReportSection(title=title.strip(), markdown=head.strip(), figures=figures,
                                                  wall_s=walls.get(title.strip(), 0.0))
    return found


def _from_markdown(folder: Path, name: str) -> ReportSection | None:
    """A section an experiment script wrote as markdown only (`section.md` or `<name>.md`, headed
    '## title'); its figures are the PNGs beside it. None when there is neither."""
    for md in (folder / "section.md", folder / f"{name}.md"):
        if md.is_file():
            text = md.read_text().strip()
            first, _, rest = text.partition("\n")
            title = first[3:].strip() if first.startswith("## ") else name
            body = rest if first.startswith("## ") else text
            stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(md.stat().st_mtime))
            figures = sorted(f"{name}/{f.name}" for f in folder.glob("*.png"))
            return ReportSection(title=title, markdown=f"*Section written {stamp}.*\n\n{body.strip()}", figures=figures)
    return None


def section_verdict(markdown: str) -> str:
    """The verdict a section opens with (`**Verdict: ...**`), or says it has none yet."""
    m = re.search(r"\*\*Verdict: ([^*]+)\*\*", markdown)
    return m.group(1).strip() if m else "not stated yet (section from an earlier run)"


def section_finding(markdown: str) -> str:
    """What the section found, as its verdict line says it after the verdict word ("" without one)."""
    m = re.search(r"\*\*Verdict: [^*]+\*\*(.*)", markdown)
    return m.group(1).lstrip(" .:").strip() if m else ""


def paper_headline(analysis: str) -> str:
    """The paper's headline an experiment module states (its PAPER_HEADLINE), "" when it states none."""
    try:
        return getattr(importlib.import_module(f"experiments.{analysis}"), "PAPER_HEADLINE", "")
    except ImportError:
        return ""


def _analyses_of(figures: list[str]) -> set[str]:
    """The analyses figures belong to, named by their folder (out/<name>/...)."""
    return {f.split("/")[0] for f in figures}


def _analysis_of(section: ReportSection) -> str:
    """The analysis a section belongs to ("" without figures, or with figures of several)."""
    names = _analyses_of(section.figures)
    return names.pop() if len(names) == 1 else ""


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


def render(sections: list[ReportSection], total_s: float, quick: bool, preset: str, assembled: bool = False) -> str:
    how = ("Assembled by `python -m experiments.run_all --assemble` from the sections each experiment saved when it last "
           "finished, or as the previous report had them where none was saved (each section names its time and preset); "
           "`workbench figures` reruns them all.") if assembled else \
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
    for s in sections:
        lines.append(f"| {s.title} | {_cell(paper_headline(_analysis_of(s)))} | {_cell(section_finding(s.markdown))} | "
                     f"{section_verdict(s.markdown)} | {s.wall_s / 60:.1f} min | {sum(f.endswith('.png') for f in s.figures)} |")
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
    for exp in ANALYSES:
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
    for name in names or ANALYSES:
        mod = importlib.import_module(f"experiments.{name}")
        key, entry = named_presets.module_settings(p, name, mod, quick)
        entry = entry if entry is not None else getattr(mod, "PRESETS", {}).get(key, {})
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
    names = only or ANALYSES
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise SystemExit(f"Unknown analyses {unknown}; choose from {ANALYSES}")
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
        sections = assemble(out, names, previous=target)
        with atomic_path(target) as tmp:
            tmp.write_text(render(sections, sum(x.wall_s for x in sections), quick, preset, assembled=True))
        print(f"report: {target}")
        return sections
    check_preset(preset)
    from workbench.models import default_device

    device = device or default_device()  # the run's one device decision: every experiment gets it
    sections: list[ReportSection] = []
    t0 = time.perf_counter()
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        try:
            sections.append(run_one(name, out, quick, preset, device))
        except Exception as e:  # noqa: BLE001 - recorded in the report, the others still run
            sections.append(ReportSection(title=name, markdown=f"**Failed**: `{type(e).__name__}: {e}`\n\n```\n{traceback.format_exc(limit=8)}\n```"))
            print(traceback.format_exc())
    target = report or (REPORT if not quick and out == DEFAULT_OUT else out / "REPORT.md")
    with atomic_path(target) as tmp:
        tmp.write_text(render(_with_the_others(sections, names, out, target), time.perf_counter() - t0, quick, preset))
    print(f"report: {target}")
    return sections


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help=f"subset of {ANALYSES}")
    p.add_argument("--out", help="output folder (default experiments/out)")
    p.add_argument("--quick", action="store_true", help="smoke settings (tiny models, seconds)")
    p.add_argument("--preset", default="cpu", help=f"one of {', '.join(named_presets.known())} (see `python -m experiments.presets`)")
    p.add_argument("--assemble", action="store_true",
                   help="write the report from the sections the experiments saved when they last finished (no recomputation)")
    p.add_argument("--device", help="the device every experiment runs on (default: cuda when present, else cpu)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (settings, device, models, memory, hub files); load nothing")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="precision of every model loaded by name (default float32)")
    a = p.parse_args()
    main(a.only, a.out, a.quick, a.preset, assemble_only=a.assemble, device=a.device, dry_run=a.dry_run, dtype=a.dtype)
