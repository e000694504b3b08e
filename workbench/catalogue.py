"""What `workbench probes` lists, answered in well under a second.

Listing the analyses means importing them (torch, TransformerLens, SAE Lens: seconds). The
listing is kept in `<cache>/catalogue.json` together with a fingerprint of every source file it
was built from (path, size and modification time of each .py under probes/ and workbench/); while
the fingerprint matches, the listing is read from there and nothing heavy is imported. Any edit
to a source file changes the fingerprint and the next call rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from workbench.io import atomic_path
from workbench.paths import cache_dir

FILE = "catalogue.json"


def source_dirs() -> list[Path]:
    """The kernel's folder and every analysis root's (found from the entry points, without importing them)."""
    import importlib.util

    from workbench.plugins import analysis_roots

    dirs = [Path(__file__).resolve().parent]
    for name in analysis_roots():
        spec = importlib.util.find_spec(name)
        dirs += [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    return dirs


def source_fingerprint(dirs: list[Path] | None = None) -> str:
    """A digest of (path, size, mtime) of every Python file the listing could depend on."""
    h = hashlib.sha256()
    for top in dirs if dirs is not None else source_dirs():
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
            for name in sorted(filenames):
                if name.endswith(".py"):
                    p = Path(dirpath, name)
                    st = p.stat()
                    h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def build() -> list[dict[str, Any]]:
    """The listing, from the registry itself (imports every analysis)."""
    from workbench.probe_api import describe_config, list_probes, list_reports, list_studies

    rows = []
    for spec in [*list_probes(), *list_studies(), *list_reports()]:
        fields = [{"name": f["name"], "type": f["type"], "default": repr(f["default"]),
                   **{k: f[k] for k in ("help", "why", "min", "max", "max_items", "names") if f.get(k) is not None}}
                  for f in describe_config(spec, comments=True)]
        row = {"name": spec.name, "kind": spec.kind, "description": spec.description, "fields": fields,
               "config": spec.config_cls.__name__}
        if spec.kind == "report":
            row["presets"] = sorted(spec.presets)
        if spec.kind == "probe":
            row |= {"numerics": spec.numerics, "default_model": spec.default_model, "default_corpus": spec.default_corpus,
                    "model_hint": spec.model_hint}
        rows.append(row)
    return rows


def catalogue(refresh: bool = False) -> list[dict[str, Any]]:
    """Every probe and study with its description and config fields (cached; see the module doc)."""
    path = cache_dir() / FILE
    fingerprint = source_fingerprint()
    if not refresh:
        try:
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") == fingerprint:
                return saved["analyses"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # absent or unreadable: rebuilt below
    rows = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "analyses": rows}, indent=1))
    return rows
