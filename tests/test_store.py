"""Result store: keys, atomic self-describing results, the run registry, and reuse rules."""

from __future__ import annotations

import dataclasses
import json

import networkx as nx
import pandas as pd
import pytest
import torch

from workbench.corpora import Corpus, Document
from workbench.errors import ConfigError, EmptyCorpusError
from workbench.results import Result
from workbench.runner import run_probe
from workbench.store import result_key


@dataclasses.dataclass
class DemoResult(Result):
    weights: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0))
    per_layer: dict = dataclasses.field(default_factory=dict)
    table: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    graph: nx.Graph = dataclasses.field(default_factory=nx.Graph)
    numbers: list = dataclasses.field(default_factory=list)


def small_corpus() -> Corpus:
    text = "The jury said the election was conducted well. " * 40
    return Corpus("demo", "1", [Document(f"d{i}", text, genre="x") for i in range(6)])


def test_key_changes_with_every_input():
    base = dict(model_key="m|raw", corpus_key="c:all", probe="p", config={"a": 1}, code_version="v1")
    k0 = result_key(**base)
    assert k0 == result_key(**base)
    for field, value in [("model_key", "m|processed"), ("corpus_key", "c:train"), ("probe", "q"), ("config", {"a": 2}), ("code_version", "v2")]:
        assert result_key(**{**base, field: value}) != k0, field


def test_result_round_trip(tmp_path):
    g = nx.Graph()
    g.add_edge("tok:the", "feat:3", weight=0.5)
    r = DemoResult(meta={"x": 1}, weights=torch.arange(6.0).view(2, 3), per_layer={"l0": torch.ones(2), "l1": torch.zeros(3)},
                   table=pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), graph=g, numbers=[1.5, 2.5])
    path = r.save(tmp_path / "r")
    files = sorted(p.name for p in path.iterdir())
    assert files == ["files.json", "graph.graph.json", "result.json", "table.parquet", "tensors.safetensors"]
    assert not any(p.suffix in (".pkl", ".pt", ".pickle") for p in path.iterdir())
    back = DemoResult.load(path)
    assert torch.equal(back.weights, r.weights)
    assert set(back.per_layer) == {"l0", "l1"} and torch.equal(back.per_layer["l1"], torch.zeros(3))
    pd.testing.assert_frame_equal(back.table, r.table)
    assert back.graph.edges["tok:the", "feat:3"]["weight"] == 0.5
    assert back.numbers == [1.5, 2.5] and back.meta == {"x": 1}


def test_failed_save_leaves_previous_result_intact(tmp_path):
    path = DemoResult(numbers=[1]).save(tmp_path / "r")

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        DemoResult(numbers=[Unserialisable()]).save(path)
    assert DemoResult.load(path).numbers == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temporary directories left behind


def test_wrong_result_type_is_refused(tmp_path):
    from probes.residual_norms import ResidualNormsResult

    path = DemoResult().save(tmp_path / "r")
    with pytest.raises(TypeError, match="DemoResult"):
        ResidualNormsResult.load(path)


def test_run_probe_reuses_only_identical_inputs(tiny, store):
    corpus = small_corpus()
    cfg = {"max_tokens": 256, "seq_len": 32, "batch_size": 4}
    first = run_probe("residual-norms", tiny, corpus, cfg, store=store)
    assert not first.reused
    again = run_probe("residual-norms", tiny, corpus, cfg, store=store)
    assert again.reused and again.key == first.key
    pd.testing.assert_frame_equal(again.result.table, first.result.table)
    changed = run_probe("residual-norms", tiny, corpus, {**cfg, "seq_len": 64}, store=store)
    assert not changed.reused and changed.key != first.key
    other_split = run_probe("residual-norms", tiny, corpus, {**cfg, "split": "train"}, store=store)
    assert other_split.key != first.key
    statuses = [r["status"] for r in store.runs()]
    assert statuses == ["done", "done", "reused", "done"]
    row = store.get_run(first.run_id)
    assert row["model"] == "tiny" and row["numerics"] == "raw" and row["corpus"] == "demo@1:all"
    assert json.loads(row["config"])["max_tokens"] == 256 and row["wall_s"] > 0
    meta = first.result.meta
    assert meta["numerics"] == "raw" and meta["key"] == first.key and meta["slice"]["n_chunks"] >= 1


def test_numerics_mode_is_part_of_the_key_and_checked(store):
    from workbench.models import load_model

    proc = load_model("tiny", numerics="processed", device="cpu")
    with pytest.raises(ConfigError, match="numerics"):
        run_probe("residual-norms", proc, small_corpus(), {"max_tokens": 64}, store=store)


def test_bad_inputs_give_clear_errors(tiny, store):
    with pytest.raises(ConfigError, match="Unknown field"):
        run_probe("residual-norms", tiny, small_corpus(), {"max_tokenz": 10}, store=store)
    with pytest.raises(ConfigError, match="token budget"):
        run_probe("residual-norms", tiny, small_corpus(), {"max_tokens": 0}, store=store)
    with pytest.raises(ConfigError, match="integer"):
        run_probe("residual-norms", tiny, small_corpus(), {"seq_len": "long"}, store=store)
    with pytest.raises(EmptyCorpusError):
        run_probe("residual-norms", tiny, Corpus("empty", "0", []), {"max_tokens": 64}, store=store)
    with pytest.raises(ConfigError, match="Unknown probe"):
        run_probe("no-such-probe", tiny, small_corpus(), None, store=store)
    failed = [r for r in store.runs() if r["status"] == "failed"]
    assert failed and "EmptyCorpusError" in failed[0]["error"]


def test_code_version_covers_the_analysis_package_and_what_it_imports(tmp_path, monkeypatch):
    """Editing a module or a data file of the analysis, or a kernel module it imports, changes the
    version; editing another analysis does not."""
    import importlib
    import sys

    from workbench import probe_api

    for name, body in {"toy_a": "from toy_a.helper import SCALE\n", "toy_b": "X = 1\n"}.items():
        pkg = tmp_path / name
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "probe.py").write_text(body + "from workbench import hooks\n")
        (pkg / "helper.py").write_text("SCALE = 1\n")
        (pkg / "data" / "gold.json").write_text('{"a": 1}')
    monkeypatch.syspath_prepend(str(tmp_path))

    def version(module: str = "toy_a.probe") -> str:
        for name in [m for m in sys.modules if m.startswith("toy_")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        probe_api._VERSIONS.clear()

        def run():
            pass

        run.__module__ = module  # a probe whose run lives in that module
        return probe_api.code_version(probe_api.ProbeSpec("toy", "", object, Result, run))

    deps = probe_api.dependencies("toy_a")
    assert {"toy_a", "toy_a.probe", "toy_a.helper", "workbench.hooks"} <= set(deps) and not any(m.startswith("toy_b") for m in deps)
    v0 = version()
    (tmp_path / "toy_b" / "helper.py").write_text("SCALE = 2\n")
    assert version() == v0
    (tmp_path / "toy_a" / "helper.py").write_text("SCALE = 2\n")
    v1 = version()
    assert v1 != v0
    (tmp_path / "toy_a" / "data" / "gold.json").write_text('{"a": 2}')
    assert version() != v1
