"""Results that save and load themselves, without pickle.

A probe's result is a dataclass subclass of `Result`. On save, each field is written by what it
holds: tensors (and dicts of tensors) to one safetensors file, pandas DataFrames to parquet,
networkx graphs to node-link JSON, everything else to `result.json`. `result.json` records each
field's kind, so loading needs no type annotations, and `files.json` records the SHA-256 of every
file: a result whose files were truncated, edited or lost does not load (CorruptResultError).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import networkx as nx
import pandas as pd
import torch

from workbench.errors import CorruptResultError
from workbench.io import (
    RESULT_FILE,
    _json_default,
    read_json,
    read_tensors,
    replace_dir,
    write_tensors,
)

R = TypeVar("R", bound="Result")
TENSOR_FILE = "tensors.safetensors"
FILES_MANIFEST = "files.json"


@dataclasses.dataclass
class Result:
    """Base class. `meta` holds provenance: model, numerics, corpus slice, config, code version, timings."""

    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ----- saving -----
    def save(self, path: str | Path) -> Path:
        """Write to directory `path` atomically (a temporary directory renamed into place)."""
        with replace_dir(path) as tmp:
            self._write(tmp)
            write_files_manifest(tmp)
        return Path(path)

    def _write(self, d: Path) -> None:
        manifest: dict[str, str] = {}
        scalars: dict[str, Any] = {}
        tensors: dict[str, torch.Tensor] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                manifest[f.name] = "tensor"
                tensors[f.name] = v
            elif isinstance(v, dict) and v and all(isinstance(x, torch.Tensor) for x in v.values()):
                manifest[f.name] = "tensor_dict"
                for k, x in v.items():
                    tensors[f"{f.name}/{k}"] = x
            elif isinstance(v, pd.DataFrame):
                manifest[f.name] = "table"
                v.to_parquet(d / f"{f.name}.parquet", index=False)
            elif isinstance(v, nx.Graph):
                manifest[f.name] = "graph"
                (d / f"{f.name}.graph.json").write_text(json.dumps(graph_to_json(v), default=_json_default))
            else:
                manifest[f.name] = "json"
                scalars[f.name] = v
        if tensors:
            write_tensors(d / TENSOR_FILE, tensors)
        blob = {"type": type(self).__name__, "manifest": manifest, "fields": scalars}
        (d / RESULT_FILE).write_text(json.dumps(blob, indent=1, default=_json_default, sort_keys=True))

    # ----- loading -----
    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a saved result after checking every file against `files.json` (CorruptResultError
        if one is missing, changed or unreadable; TypeError if it holds another result class)."""
        path = Path(path)
        verify_files(path)
        try:
            blob = read_json(path / RESULT_FILE)
        except ValueError as e:
            raise CorruptResultError(f"{path / RESULT_FILE} is not valid JSON ({e})") from None
        if blob["type"] != cls.__name__:
            raise TypeError(f"{path} holds a {blob['type']}, not a {cls.__name__}")
        tensors = read_tensors(path / TENSOR_FILE) if (path / TENSOR_FILE).exists() else {}
        kwargs: dict[str, Any] = {}
        for name, kind in blob["manifest"].items():
            if kind == "tensor":
                kwargs[name] = tensors[name]
            elif kind == "tensor_dict":
                prefix = f"{name}/"
                kwargs[name] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            elif kind == "table":
                kwargs[name] = pd.read_parquet(path / f"{name}.parquet")
            elif kind == "graph":
                kwargs[name] = graph_from_json(read_json(path / f"{name}.graph.json"))
            else:
                kwargs[name] = blob["fields"][name]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in known})

    def summary(self) -> dict[str, Any]:
        """A short, JSON-able summary for the CLI and the run registry. Probes override this."""
        return {}

    # ----- in a notebook (see workbench.display) -----
    def show(self) -> None:
        """Display the summary and the main figure in Jupyter."""
        from workbench.display import show

        show(self)

    def _ipython_display_(self) -> None:
        self.show()

    def _repr_html_(self) -> str:
        from workbench.display import result_html

        return result_html(self)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_files_manifest(d: Path) -> None:
    """Record the SHA-256 of every file in directory `d` (recursively) in `d/files.json`."""
    files = {p.relative_to(d).as_posix(): _sha256(p) for p in sorted(d.rglob("*")) if p.is_file() and p.name != FILES_MANIFEST}
    (d / FILES_MANIFEST).write_text(json.dumps({"sha256": files}, indent=1, sort_keys=True))


def verify_files(d: Path) -> None:
    """Raise CorruptResultError unless `d` holds exactly the files its manifest lists, unchanged."""
    if not d.is_dir():
        raise CorruptResultError(f"{d} does not exist")
    links = [p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_symlink()]
    if links:  # a stored result is plain files written by the workbench, never a link to elsewhere
        raise CorruptResultError(f"{d}: holds symbolic links {links[:3]}")
    try:
        listed: dict[str, str] = json.loads((d / FILES_MANIFEST).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptResultError(f"{d / FILES_MANIFEST} is missing or unreadable ({type(e).__name__})") from None
    present = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and p.name != FILES_MANIFEST}
    missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
    if missing or extra:
        raise CorruptResultError(f"{d}: files missing {missing[:3]} or unexpected {extra[:3]}")
    for name, digest in listed.items():
        if _sha256(d / name) != digest:
            raise CorruptResultError(f"{d / name} does not match its recorded SHA-256 (truncated or edited)")


def graph_to_json(g: nx.Graph) -> dict[str, Any]:
    return nx.node_link_data(g, edges="edges")


def graph_from_json(data: dict[str, Any]) -> nx.Graph:
    return nx.node_link_graph(data, edges="edges")
