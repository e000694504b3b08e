"""The registry of three kinds (modelled on SAE Lens's config dataclasses and registry).

A **probe** is one analysis of one model on one corpus: a config dataclass, a result class and
`run(model, corpus, config) -> Result`. A **study** composes probe runs (and the kernel's trainers)
into one stored result: `run(config, ctx) -> Result`, where every probe run goes through
`ctx.run_probe`, so each part is keyed, reused, registered and shown in the run table. A **report**
(an experiment) is a study whose result is a section of the experiment report: its figures, its
text and its claims with their verdicts; it declares its presets as data.

Probes and studies register at import of their analysis package, reports at import of their
module; the registry imports what the `workbench.analyses` and `workbench.reports` entry points
declare (this project's `probes` and `experiments.<name>:REPORT`) the first time it is asked for a
name (`discover`), so the kernel never names a package above it. A package that fails to import
raises with its traceback. A name can be registered once.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from workbench.errors import ConfigError
from workbench.plugins import ANALYSES_GROUP, REPORTS_GROUP, analysis_roots
from workbench.results import Result


def project_packages() -> tuple[str, ...]:
    """The code a result can depend on: the kernel and every analysis root."""
    return ("workbench", *analysis_roots())


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    description: str
    config_cls: type
    result_cls: type[Result]
    run: Callable[..., Result]
    numerics: str = "raw"  # the numerics mode the method is defined on
    needs_corpus: bool = True
    default_model: str = "smollm2-135m"  # "": none; the model must be named (`model_hint` says what it must be)
    default_corpus: str | None = "brown"
    kind: str = "probe"
    model_hint: str = ""  # what --model must name when there is no default model
    # the work of a run in forward token-passes, from its config and the model's config (workbench.cost); None: unknown
    cost: Callable[[Any, Any], float | None] | None = None

    @property
    def module(self) -> str:
        return self.run.__module__


@dataclass(frozen=True)
class StudySpec:
    """A registered composition of probe runs (see the module docstring)."""

    name: str
    description: str
    config_cls: type
    result_cls: type[Result]
    run: Callable[..., Result]
    kind: str = "study"

    @property
    def module(self) -> str:
        return self.run.__module__


@dataclass(frozen=True)
class ReportSpec(StudySpec):
    """A registered report: a study (keyed by its config, code and the keys of every run it used;
    stored and reused like any run) whose result is one section of the experiment report.

    `presets` maps each preset name the report accepts to its settings (data the report declares;
    `None` for a preset it takes as it is); `order` places its section in the report; `source` is
    the module whose code (and what it imports) the result's code version covers."""

    presets: Any = None
    order: int = 100
    source: str = ""
    kind: str = "report"

    @property
    def module(self) -> str:
        return self.source or self.run.__module__


Spec = ProbeSpec | StudySpec
REGISTRY: dict[str, Spec] = {}
_discovered = False
_reports_discovered = False


def register(spec: Spec) -> Spec:
    """Add a probe or study; a second spec under a registered name is refused, and so is a config
    with a string field that does not declare whether it names a resource (see
    `workbench.config.setting`): such a field could change a result without changing its key."""
    from workbench.config import undeclared_string_fields

    if dataclasses.is_dataclass(spec.config_cls):
        undeclared = undeclared_string_fields(spec.config_cls)
        if undeclared:
            raise ConfigError(f"{spec.kind} {spec.name!r}: config field(s) {undeclared} of {spec.config_cls.__name__} hold "
                              "strings but declare neither setting(names=...) (a corpus, SAE or model) nor setting(text=True)")
    known = REGISTRY.get(spec.name)
    if known is not None and known is not spec and (known.module, known.run.__qualname__) != (spec.module, spec.run.__qualname__):
        raise ConfigError(f"{spec.kind} name {spec.name!r} is already registered by {known.module}")
    REGISTRY[spec.name] = spec
    return spec


def import_analyses(package: str, path: list[str]) -> list[str]:
    """Import every sub-package of `package` (at `path`) in name order, so each registers its probes
    and studies; return their names. An import error propagates with its traceback."""
    import pkgutil

    names = sorted(m.name for m in pkgutil.iter_modules(path) if m.ispkg and not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


def discover(reports: bool = False) -> None:
    """Import every analysis package under `probes/` once (each registers its probes and studies);
    with `reports`, also every report's module (heavier: figures and their export), which only
    what asks for a report, or for a name no probe or study has, needs.

    An import error propagates with its traceback: a broken analysis must not vanish silently.
    """
    global _discovered, _reports_discovered
    if not _discovered:
        eps = sorted(entry_points(group=ANALYSES_GROUP), key=lambda e: e.name)
        if not eps:
            raise ConfigError(f"no analyses are installed (no '{ANALYSES_GROUP}' entry points); install the project "
                              "with `pip install -e .` (scripts/setup.sh does)")
        for ep in eps:
            ep.load()
        _discovered = True
    if reports and not _reports_discovered:
        _reports_discovered = True  # before loading: a report's module may ask the registry for its probes
        try:
            for ep in sorted(entry_points(group=REPORTS_GROUP), key=lambda e: e.name):
                spec = ep.load()
                if not isinstance(spec, ReportSpec) or spec.name != ep.name:
                    raise ConfigError(f"entry point {REPORTS_GROUP}:{ep.name} names {ep.value}, which is not the registered "
                                      f"report {ep.name!r}")
                register(spec)  # the same spec again is a no-op (a module imported before registers nothing anew)
        except BaseException:
            _reports_discovered = False
            raise


def list_probes() -> list[ProbeSpec]:
    discover()
    return [s for k, s in sorted(REGISTRY.items()) if isinstance(s, ProbeSpec)]


def list_studies() -> list[StudySpec]:
    discover()
    return [s for k, s in sorted(REGISTRY.items()) if isinstance(s, StudySpec) and s.kind == "study"]


def list_reports() -> list[ReportSpec]:
    """The registered reports, in report order."""
    discover(reports=True)
    return sorted((s for s in REGISTRY.values() if isinstance(s, ReportSpec)), key=lambda s: (s.order, s.name))


def get_spec(name: str) -> Spec:
    """A probe, a study or a report by name."""
    discover()
    if name not in REGISTRY:
        discover(reports=True)
    if name not in REGISTRY:
        raise ConfigError(f"Unknown analysis {name!r}; known probes: {[s.name for s in list_probes()]}; "
                          f"studies: {[s.name for s in list_studies()]}; reports: {[s.name for s in list_reports()]}")
    return REGISTRY[name]


def get_probe(name: str) -> ProbeSpec:
    discover()
    spec = REGISTRY.get(name)
    if not isinstance(spec, ProbeSpec):
        raise ConfigError(f"Unknown probe {name!r}; known probes: {[s.name for s in list_probes()]}")
    return spec


def get_study(name: str) -> StudySpec:
    """A study or a report (a report is a study whose result is a report section)."""
    discover()
    if name not in REGISTRY:
        discover(reports=True)
    spec = REGISTRY.get(name)
    if not isinstance(spec, StudySpec):
        raise ConfigError(f"Unknown study {name!r}; known studies: {[s.name for s in list_studies()]}; "
                          f"reports: {[s.name for s in list_reports()]}")
    return spec


def get_report(name: str) -> ReportSpec:
    discover(reports=True)
    spec = REGISTRY.get(name)
    if not isinstance(spec, ReportSpec):
        raise ConfigError(f"Unknown report {name!r}; known reports: {[s.name for s in list_reports()]}")
    return spec


# ----- code versions -----
_VERSIONS: dict[str, str] = {}


def code_version(spec: Spec) -> str:
    """Package version + a hash of every project module the analysis's package depends on
    (its own modules and the kernel and other packages they import, transitively, whether at the
    top or inside functions) and of the data files in those packages. Editing one analysis leaves
    the code version of every analysis that does not import it unchanged."""
    from workbench import __version__

    package = analysis_package(spec.module)
    if package not in _VERSIONS:
        h = hashlib.sha1()
        for name, path in sorted(dependencies(package).items()):
            h.update(name.encode())
            h.update(path.read_bytes())
        for data in sorted(data_files(package)):
            h.update(data.name.encode())
            h.update(data.read_bytes())
        _VERSIONS[package] = h.hexdigest()[:12]
    return f"{__version__}+{_VERSIONS[package]}"


def analysis_package(module: str) -> str:
    """The unit a code version covers: `probes.<analysis>` for a module of an analysis package,
    else the module's top-level package (an analysis defined outside `probes/`, e.g. in a test)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] in analysis_roots() and len(parts) > 1 else parts[0]


def _module_path(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _package_modules(name: str) -> list[str]:
    """`name` and, when it is a package, every module inside it."""
    path = _module_path(name)
    if path is None:
        return []
    if path.name != "__init__.py":
        return [name]
    root = path.parent
    return [".".join([name, *p.relative_to(root).with_suffix("").parts]).removesuffix(".__init__") for p in sorted(root.rglob("*.py"))]


def imported_modules(path: Path, name: str, roots: tuple[str, ...] | None = None) -> set[str]:
    """Modules under `roots` that the source at `path` (module `name`) imports, anywhere in the file."""
    roots = roots if roots is not None else project_packages()
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parent + ([base] if base else []))
            cands = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for cand in cands:
            if cand.split(".")[0] not in roots:
                continue
            while cand and _module_path(cand) is None:
                cand = cand.rpartition(".")[0]
            if cand:
                found.add(cand)
    return found


def dependencies(package: str) -> dict[str, Path]:
    """Module name -> source path of `package`'s modules and every project module they import,
    transitively (the `probes` package's own `__init__`, which imports every analysis, excluded)."""
    roots = tuple(dict.fromkeys([*project_packages(), package.split(".")[0]]))
    todo = _package_modules(package)
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen or name in analysis_roots():  # a root's own __init__ imports every analysis
            continue
        path = _module_path(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(imported_modules(path, name, roots) - set(seen))
    return seen


def data_files(package: str) -> list[Path]:
    """Files in the `data/` folders of the analysis packages `package` depends on (itself included)."""
    roots = {analysis_package(m) for m in dependencies(package)} - {"workbench"}
    out: list[Path] = []
    for root in roots:
        path = _module_path(root)
        if path is not None and (path.parent / "data").is_dir():
            out.extend(p for p in (path.parent / "data").rglob("*") if p.is_file())
    return out


def describe_config(spec: Spec, comments: bool = False) -> list[dict[str, Any]]:
    """Fields of a config with defaults, types and bounds, for the CLI and dashboard forms; with
    `comments`, also what each field means from its source comment (parses the source: for the
    cached catalogue, not for every table row drawn)."""
    from workbench.config import config_fields, field_meta

    types = config_fields(spec.config_cls)
    out = []
    for f in dataclasses.fields(spec.config_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        meta = field_meta(spec.config_cls, f.name)
        out.append({"name": f.name, "type": _type_name(types[f.name]), "default": default,
                    **{k: meta[k] for k in ("why", "min", "max", "max_items", "names") if meta.get(k) is not None},
                    **({"help": h} if comments and (h := field_comments(spec.config_cls).get(f.name)) else {})})
    return out


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """What each field of a config dataclass means, as its source says it in the comment on the
    field's line (the nearest class in the MRO that defines the field); {} where the source is not
    available."""
    import inspect
    import io
    import tokenize

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines, start = inspect.getsourcelines(klass)
        except (OSError, TypeError):
            continue
        comments = {t.start[0]: t.string.lstrip("# ").strip() for t in tokenize.generate_tokens(io.StringIO("".join(lines)).readline)
                    if t.type == tokenize.COMMENT}
        for node in ast.parse("".join(lines).strip() if lines[0][0] in " \t" else "".join(lines)).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                text = " ".join(comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments)
                if text:
                    out[node.target.id] = text
    return out


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t).replace("typing.", ""))
