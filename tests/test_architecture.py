"""The layout is the architecture (docs/ARCHITECTURE.md): no import cycles, a kernel that knows no
analysis, one package per analysis used only through its public names, hook names from one
module, a registry that refuses duplicates and does not swallow import errors, code versions that
follow what an analysis imports, and a new analysis added by following the guide."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import probes
from workbench.config import ConfigBase, StreamConfig, setting
from workbench.errors import ConfigError
from workbench.probe_api import (
    StudySpec,
    ProbeSpec,
    import_analyses,
    list_probes,
    list_studies,
    register,
)
from workbench.results import Result

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("workbench", "probes", "dashboards", "experiments", "benchmarks")
ANALYSES = {"attention_sinks", "bigram_subnetworks", "cross_analysis", "function_tokens", "key_space",
            "linguistic_collapse", "residual_norms", "sae_circuits", "sae_features"}


def modules() -> dict[str, Path]:
    out = {}
    for layer in LAYERS:
        for p in sorted((ROOT / layer).rglob("*.py")):
            out[".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = p
    return out


def imports_of(path: Path, name: str, known: set[str], top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if path.name == "__init__.py" else 0)]
                base = ".".join(parts + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            # `from pkg import sub` depends on the submodule; `from pkg import name` on the package
            cands = [c for c in subs if c in known] + ([base] if any(c not in known for c in subs) else [])
        else:
            continue
        for c in cands:
            while c and c not in known:
                c = c.rpartition(".")[0]
            if c and c != name:
                out.add(c)
    return out


def test_no_import_cycle_anywhere():
    mods = modules()
    known = set(mods)
    graph = {m: imports_of(p, m, known) for m, p in mods.items()}
    graph["probes"] = set()  # the package imports every analysis by design (discovery), never the reverse
    index, low, on, stack, cycles = {}, {}, set(), [], []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_layers_import_only_downwards():
    mods = modules()
    known = set(mods)
    rank = {layer: i for i, layer in enumerate(LAYERS[:4])}
    rank["benchmarks"] = rank["experiments"]
    bad = []
    for m, p in mods.items():
        for dep in imports_of(p, m, known):  # every import, at the top or inside a function: no exemption
            a, b = m.split(".")[0], dep.split(".")[0]
            if rank[b] > rank[a]:
                bad.append(f"{m} -> {dep}")
    assert bad == []


def test_the_kernel_never_names_a_package_above_it():
    """Not even as a string: no `import_module("probes")`, no literal module path of an upper layer.
    What lives above is found through entry points (`workbench.plugins`)."""
    upper = {"probes", "dashboards", "experiments", "benchmarks"}
    bad = []
    for p in sorted((ROOT / "workbench").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__"):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.split(".")[0] in upper:
                        bad.append(f"{p.relative_to(ROOT)}:{node.lineno} imports {arg.value!r} by name")
    assert bad == []
    from importlib.metadata import entry_points

    assert {ep.value for ep in entry_points(group="workbench.analyses")} >= {"probes"}
    assert {ep.name for ep in entry_points(group="workbench.commands")} >= {"dashboard", "figures"}


def test_the_kernel_imports_no_analysis_when_imported():
    """Importing every kernel module imports no analysis and nothing above the kernel but the CLI's
    declared command plugins (light modules that import the dashboard or the experiments only when
    their command runs)."""
    code = ("import importlib, pkgutil, sys, workbench\n"
            "from importlib.metadata import entry_points\n"
            "plugins = {ep.value.split(':')[0] for ep in entry_points(group='workbench.commands')}\n"
            "allowed = plugins | {p.split('.')[0] for p in plugins}\n"
            "names = [m.name for m in pkgutil.walk_packages(workbench.__path__, 'workbench.')]\n"
            "for n in names: importlib.import_module(n)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('probes', 'dashboards', 'experiments', 'benchmarks') "
            "and m not in allowed)\n"
            "print(len(names), bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    n, bad = out.stdout.strip().split(" ", 1)
    assert int(n) > 30 and bad == "[]"


def test_probes_holds_only_packages():
    entries = {p.name for p in (ROOT / "probes").iterdir() if p.name != "__pycache__"}
    assert entries == ANALYSES | {"__init__.py"}
    assert set(probes.ANALYSES) == ANALYSES
    for a in ANALYSES:
        assert (ROOT / "probes" / a / "__init__.py").is_file()


def test_outside_a_package_only_its_public_names_are_used():
    mods = modules()
    known = set(mods)
    bad = []
    for m, p in mods.items():
        own = m.split(".")[1] if m.startswith("probes.") and m.count(".") >= 1 else None
        for dep in imports_of(p, m, known):
            parts = dep.split(".")
            if parts[0] == "probes" and len(parts) > 2 and parts[1] != own:
                bad.append(f"{m} -> {dep}")
    assert bad == []


HOOKISH = re.compile(r"(^|\.)hook_[a-z_]+$")
NOT_HOOKS = {"hook_name", "hook_layer"}  # SAE Lens config fields that hold a hook's name, not hook points


def test_hook_names_come_from_one_module():
    """No hook name is spelt outside `workbench.hooks`: no f"blocks.{l}..." and no string constant that
    is a hook name or a suffix of one ("hook_embed", "ln_final.hook_normalized", "hook_attn_scores")
    in the kernel or an analysis (docstrings and comments may name them)."""
    offenders = []
    for m, p in modules().items():
        if m == "workbench.hooks" or m.split(".")[0] not in ("workbench", "probes"):
            continue
        text = p.read_text()
        if 'f"blocks.' in text or "f'blocks." in text or '"blocks.0.hook' in text:
            offenders.append(m)
        tree = ast.parse(text)
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and HOOKISH.search(node.value) and " " not in node.value and node.value not in NOT_HOOKS):
                offenders.append(f"{m}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_every_analysis_has_the_standard_shape():
    specs = list_probes() + list_studies()
    assert {"residual-norms", "attention-sinks", "bigram-backcopy", "function-tokens", "function-token-loss",
            "function-token-steering", "bigram-subnetworks", "linguistic-collapse", "key-space", "sae-circuits",
            "sinks-by-token-kind"} <= {s.name for s in list_probes()}
    assert {"linguistic-collapse-sweep", "function-token-loss-over-training", "cross-analysis"} <= {s.name for s in list_studies()}
    for spec in specs:
        assert dataclasses.is_dataclass(spec.config_cls) and issubclass(spec.config_cls, ConfigBase), spec.name
        assert issubclass(spec.result_cls, Result) and callable(spec.run) and spec.description, spec.name
        cfg = spec.config_cls()
        assert spec.config_cls.from_dict(cfg.to_dict()) == cfg, spec.name  # round trip through a plain dict
    for spec in list_probes():
        assert spec.numerics in ("raw", "processed"), spec.name


def test_the_registry_refuses_a_second_analysis_under_a_taken_name():
    spec = list_probes()[0]

    def run(model, corpus, config):
        return Result()

    with pytest.raises(ConfigError, match="already registered"):
        register(ProbeSpec(spec.name, "an impostor", spec.config_cls, spec.result_cls, run))
    assert register(spec) is spec  # registering the same spec again is harmless (a reload)


def test_a_broken_analysis_package_raises_with_its_traceback(tmp_path, monkeypatch):
    pkg = tmp_path / "toy_analyses"
    for name, body in {"good": "OK = True\n", "broken": "import math\nraise RuntimeError('broken on purpose')\n"}.items():
        (pkg / name).mkdir(parents=True)
        (pkg / name / "__init__.py").write_text(body)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_analyses

    with pytest.raises(RuntimeError, match="broken on purpose") as e:
        import_analyses("toy_analyses", toy_analyses.__path__)
    assert any("broken/__init__.py" in str(t.path) for t in e.traceback)


def test_editing_the_bb_recipe_leaves_other_results_keys_unchanged(tmp_path):
    """Copies of the kernel and the analyses; the residual-norms key is computed before and after an
    edit of the Bigram-Backcopy recipe module (and the attention-sinks code version must change)."""
    for d in ("workbench", "probes"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import json\n"
        "from workbench.corpora import Corpus, Document\n"
        "from workbench.models import load_model\n"
        "from workbench.probe_api import code_version, get_probe\n"
        "from workbench.runner import probe_key\n"
        "c = Corpus('k', '1', [Document('d', 'the cat sat on the mat ' * 40)])\n"
        "m = load_model('tiny', device='cpu')\n"
        "print(json.dumps({'rn': probe_key(get_probe('residual-norms'), m, c, {'max_tokens': 200}),"
        " 'ks': code_version(get_probe('key-space')), 'as': code_version(get_probe('attention-sinks')),"
        " 'bb': code_version(get_probe('bigram-backcopy'))}))\n"
    )

    def keys() -> dict:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=180)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    before = keys()
    recipe = tmp_path / "probes" / "attention_sinks" / "bigram_backcopy" / "recipes.py"
    recipe.write_text(recipe.read_text().replace('"sgd": {"optimizer": "sgd", "lr": 0.03}', '"sgd": {"optimizer": "sgd", "lr": 0.02}'))
    after = keys()
    assert after["rn"] == before["rn"] and after["ks"] == before["ks"]
    assert after["as"] != before["as"] and after["bb"] != before["bb"]


# ----- the guide's ten steps, followed in a test -----


@dataclasses.dataclass
class TokenCountConfig(StreamConfig):
    max_tokens: int | None = 600
    top: int = setting(5, min=1, max=1000, why="rows of the table")


@dataclasses.dataclass
class TokenCountResult(Result):
    counts: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0))
    table: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)

    def summary(self) -> dict:
        return {"tokens": int(self.counts.sum())}


class TokenCounter:
    """Counts each input token id over the valid positions (an accumulator, as the guide's step 4)."""

    needs_logits = False

    def __init__(self, model):
        from workbench import hooks

        self.hook_names = [hooks.resid_post(0)]
        self.counts = torch.zeros(model.cfg.d_vocab, dtype=torch.int64)

    def update(self, batch, acts, logits):
        self.counts += torch.bincount(batch.tokens[batch.valid].cpu(), minlength=self.counts.numel())

    def state_dict(self):
        return {"counts": self.counts}

    def load_state_dict(self, state):
        self.counts = state["counts"].clone()


def count_tokens(model, corpus, config: TokenCountConfig) -> TokenCountResult:
    from workbench.slices import stream_corpus

    acc = TokenCounter(model)
    stream_corpus(model, corpus, config, acc, desc="token-count", progress=False)
    top = torch.topk(acc.counts, config.top)
    return TokenCountResult(counts=acc.counts, table=pd.DataFrame({"token_id": top.indices.numpy(), "count": top.values.numpy()}))


TOKEN_COUNT = register(ProbeSpec("token-count", "how often each token occurs (a test probe)", TokenCountConfig,
                                 TokenCountResult, count_tokens))


def test_a_new_probe_following_the_guide_registers_runs_stores_and_is_reused(tiny, store):
    from workbench.corpora import Corpus, Document
    from workbench.probe_api import get_probe
    from workbench.runner import run_probe
    from workbench.slices import corpus_batches

    corpus = Corpus("guide", "1", [Document(f"d{i}", "abc abd abe " * 60, genre="g") for i in range(5)])
    assert get_probe("token-count") is TOKEN_COUNT
    first = run_probe("token-count", tiny, corpus, {"top": 3}, store=store)
    assert not first.reused and store.get_run(first.run_id)["status"] == "done"
    brute = torch.zeros(tiny.cfg.d_vocab, dtype=torch.int64)  # independent count over the same batches
    for b in corpus_batches(tiny, corpus, TokenCountConfig(top=3)):
        for row, ok in zip(b.tokens, b.valid):
            for t in row[ok].tolist():
                brute[t] += 1
    assert torch.equal(first.result.counts, brute) and first.result.table["count"].tolist() == brute.topk(3).values.tolist()
    again = run_probe("token-count", tiny, corpus, {"top": 3}, store=store)
    assert again.reused and again.key == first.key and torch.equal(again.result.counts, brute)


@dataclasses.dataclass
class TokenCountPairConfig(ConfigBase):
    tops: list = setting(default_factory=lambda: [2, 4], max_items=4, why="one probe run per entry")
    corpus_text: str = setting("abc abd abe ", text=True, why="the text of the study's small corpus")


@dataclasses.dataclass
class TokenCountPairResult(Result):
    totals: list = dataclasses.field(default_factory=list)


def count_pairs(config: TokenCountPairConfig, ctx) -> TokenCountPairResult:
    from workbench.corpora import Corpus, Document
    from workbench.models import load_model

    model = load_model("tiny", device=ctx.device)
    corpus = Corpus("guide", "1", [Document(f"d{i}", config.corpus_text * 60, genre="g") for i in range(5)])
    totals = [int(ctx.run_probe("token-count", model, corpus, {"top": k}).result.table["count"].sum()) for k in config.tops]
    return TokenCountPairResult(totals=totals)


TOKEN_COUNT_PAIR = register(StudySpec("token-count-pair", "token counts at two table sizes (a test study)",
                                      TokenCountPairConfig, TokenCountPairResult, count_pairs))


def test_a_new_study_following_the_guide_composes_keyed_parts_and_is_reused(store):
    from workbench.runner import run_study

    first = run_study("token-count-pair", {"tops": [2, 4]}, store=store, device="cpu")
    assert not first.reused and len(first.result.totals) == 2 and first.result.totals[0] <= first.result.totals[1]
    parts = store.runs(probe="token-count")
    assert len(parts) == 2 and {p["status"] for p in parts} == {"done"}
    again = run_study("token-count-pair", {"tops": [2, 4]}, store=store, device="cpu")
    assert again.reused and again.key == first.key
    assert [p["status"] for p in store.runs(probe="token-count")][:2] == ["reused", "reused"]  # its parts, reused
    other = run_study("token-count-pair", {"tops": [2, 3]}, store=store, device="cpu")
    assert not other.reused and other.key != first.key
    assert first.result.meta["parts"] and len(first.result.meta["parts"]) == 2  # each part's key, recorded once


def test_analyses_use_only_the_kernels_public_names():
    """No `from workbench... import _private` above the kernel: what an analysis needs is public
    (resumable training state, for one, lives in `workbench.resume` for every trainer)."""
    bad = []
    mods = modules()
    for m, p in mods.items():
        if m.split(".")[0] == "workbench":
            continue
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "workbench":
                bad += [f"{m}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert bad == []


FOR_USERS = {"bigram_subnetworks": {"load_masks", "apply_masks"}}  # a stored subnetwork, loaded into a model by hand


def test_every_public_name_of_an_analysis_is_used_above_it_or_is_its_config_or_result():
    """An analysis's public face (`__all__`) holds its config and result classes and what the
    dashboard, the experiments, the benchmarks or another analysis use, nothing more (tests import
    internals from the module that defines them)."""
    users = [p for layer in ("probes", "dashboards", "experiments", "benchmarks") for p in (ROOT / layer).rglob("*.py")]
    texts = {p: p.read_text() for p in users}
    extra = {}
    for pkg in sorted(ANALYSES):
        module = f"probes.{pkg}"
        exported = __import__(module, fromlist=["__all__"]).__all__
        used: set[str] = set()
        for p, text in texts.items():
            if (ROOT / "probes" / pkg) in p.parents:
                continue
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ImportFrom) and node.module == module:
                    used |= {a.name for a in node.names}
        spare = [n for n in exported if n not in used and not n.endswith(("Config", "Result")) and n not in FOR_USERS.get(pkg, ())]
        if spare:
            extra[pkg] = spare
    assert extra == {}


def test_nothing_above_the_kernel_reads_a_result_around_the_store():
    """`Result.load(path)` skips the store's checks (its key, links, quarantine): layers above the
    kernel read results through `result_of_run`, `stored_result` or `ResultStore.load`."""
    bad = []
    for m, p in modules().items():
        if m.split(".")[0] == "workbench":
            continue
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id.endswith("Result")):
                bad.append(f"{m}:{node.lineno} {node.func.value.id}.load")
    assert bad == []
