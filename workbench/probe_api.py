"""The probe registry: every analysis declares a config dataclass, a result class and a
`run(model, corpus, config) -> Result` function, and registers itself here (modelled on SAE Lens's
config dataclasses and registry)."""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from workbench.errors import ConfigError
from workbench.results import Result


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    description: str
    config_cls: type
    result_cls: type[Result]
    run: Callable[..., Result]
    numerics: str = "raw"  # the numerics mode the method is defined on
    needs_corpus: bool = True
    default_model: str = "smollm2-135m"
    default_corpus: str | None = "brown"

    @property
    def module(self) -> str:
        return self.run.__module__


REGISTRY: dict[str, ProbeSpec] = {}
_loaded = False


def register(spec: ProbeSpec) -> ProbeSpec:
    REGISTRY[spec.name] = spec
    return spec


def _load_all() -> None:
    global _loaded
    if not _loaded:
        importlib.import_module("probes")
        _loaded = True


def list_probes() -> list[ProbeSpec]:
    _load_all()
    return [REGISTRY[k] for k in sorted(REGISTRY)]


def get_probe(name: str) -> ProbeSpec:
    _load_all()
    if name not in REGISTRY:
        raise ConfigError(f"Unknown probe {name!r}; known probes: {sorted(REGISTRY)}")
    return REGISTRY[name]


_CORE_HASH: str | None = None


def _core_hash() -> str:
    """Hash of the workbench core sources: a change there may change any result."""
    global _CORE_HASH
    if _CORE_HASH is None:
        root = Path(__file__).parent
        h = hashlib.sha1()
        for p in sorted(root.rglob("*.py")):
            if p.name in ("cli.py",):
                continue
            h.update(p.read_bytes())
        _CORE_HASH = h.hexdigest()[:8]
    return _CORE_HASH


def code_version(spec: ProbeSpec) -> str:
    """Package version + hash of the core + hash of the probe's module and of every module of its
    own package that it imports, directly or not (a probe's private helpers change its results too)."""
    from workbench import __version__

    h = hashlib.sha1()
    sources = [inspect.getsource(importlib.import_module(name)) for name in local_dependencies(spec.module)]
    for src in sources:
        h.update(src.encode())
    data_dir = Path(importlib.import_module(spec.module.split(".")[0]).__file__).parent / "data"
    for f in sorted(data_dir.glob("*")) if data_dir.is_dir() else []:
        if any(f.name in src for src in sources):  # a data file the probe's code names (gold lists ...)
            h.update(f.read_bytes())
    return f"{__version__}+{_core_hash()}.{h.hexdigest()[:8]}"


def local_dependencies(module_name: str) -> list[str]:
    """`module_name` followed by the modules of its top-level package that it imports, transitively
    (found by reading import statements, in first-seen order)."""
    import ast

    package = module_name.split(".")[0]
    seen: list[str] = []
    todo = [module_name]
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.append(name)
        module = importlib.import_module(name)
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            found: list[str] = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for cand in found:
                if cand.split(".")[0] == package and cand != package and _is_module(cand):
                    todo.append(cand)
    return seen


def _is_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def describe_config(spec: ProbeSpec) -> list[dict[str, Any]]:
    """Fields of a probe's config with defaults and types, for the CLI and dashboard forms."""
    import dataclasses

    from workbench.config import config_fields

    types = config_fields(spec.config_cls)
    out = []
    for f in dataclasses.fields(spec.config_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append({"name": f.name, "type": _type_name(types[f.name]), "default": default})
    return out


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t).replace("typing.", ""))
