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
    """Package version + hash of the core and of the probe's module source."""
    from workbench import __version__

    module = importlib.import_module(spec.module)
    src = inspect.getsource(module).encode()
    return f"{__version__}+{_core_hash()}.{hashlib.sha1(src).hexdigest()[:8]}"


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
