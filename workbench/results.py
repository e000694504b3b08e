"""Results that save and load themselves, without pickle.

A probe's result is a dataclass subclass of `Result`. On save, each field is written by what it
holds: tensors (and dicts of tensors) to one safetensors file, pandas DataFrames to parquet,
networkx graphs to node-link JSON, everything else to `result.json`. A manifest in
`result.json` records each field's kind, so loading needs no type annotations.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import networkx as nx
import pandas as pd
import torch

from workbench.io import _json_default, read_json, read_tensors, write_tensors

R = TypeVar("R", bound="Result")
RESULT_FILE = "result.json"
TENSOR_FILE = "tensors.safetensors"


@dataclasses.dataclass
class Result:
    """Base class. `meta` holds provenance: model, numerics, corpus slice, config, code version, timings."""

    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ----- saving -----
    def save(self, path: str | Path) -> Path:
        """Write to directory `path` atomically (a temporary directory renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            self._write(tmp)
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old)
            else:
                tmp.rename(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return path

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
        path = Path(path)
        blob = read_json(path / RESULT_FILE)
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


def graph_to_json(g: nx.Graph) -> dict[str, Any]:
    return nx.node_link_data(g, edges="edges")


def graph_from_json(data: dict[str, Any]) -> nx.Graph:
    return nx.node_link_graph(data, edges="edges")
