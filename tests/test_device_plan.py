"""One device decision per run: every experiment of run_all, asked to run on a device that is not
the default here ("cuda" on this CPU machine), hands that device to every model load, SAE load,
trainer, probe run and study. Spies at those entry points record what each call received and run
the real function on the CPU, so the whole quick plan executes (about three minutes). Also: the
dry-run plan loads no weights, and no hot loop reads a tensor back to the host per iteration."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ASKED = "cuda"
ROOT = Path(__file__).resolve().parent.parent


def _replace_everywhere(monkeypatch, real, spy) -> int:
    """Put `spy` wherever a project module holds `real` (they import it by name)."""
    n = 0
    for name, mod in list(sys.modules.items()):
        if not name.split(".")[0] in ("workbench", "probes", "experiments", "dashboards") or mod is None:
            continue
        for attr, value in list(vars(mod).items()):
            if value is real:
                monkeypatch.setattr(mod, attr, spy)
                n += 1
    return n


@pytest.fixture
def spies(monkeypatch):
    import experiments.run_all  # noqa: F401  (import every experiment module before spying)
    import probes.attention_sinks.bigram_backcopy as bb
    import workbench.models
    import workbench.runner
    import workbench.saes.loading
    import workbench.saes.training
    import workbench.zoo

    for name in experiments.run_all.analyses():
        __import__(f"experiments.{name}")
    calls: list[tuple[str, object]] = []

    def tag(model, device):
        model.requested_device = device
        return model

    def wrap_load_model(real):
        def spy(name, *a, device=None, **k):
            calls.append(("load_model", device))
            return tag(real(name, *a, device="cpu", **k), device)
        return spy

    def wrap_load_sae(real):
        def spy(source, device=None, model=None, **k):
            calls.append(("load_sae", device or getattr(model, "requested_device", None)))
            return real(source, device="cpu", model=model, **k)
        return spy

    def wrap_trainer(label, real):
        def spy(recipe, device=None, *a, **k):
            calls.append((label, device))
            return real(recipe, "cpu", *a, **k)
        return spy

    def wrap_train_saes(real):
        def spy(model, *a, **k):
            calls.append(("train_saes", getattr(model, "requested_device", None)))
            return real(model, *a, **k)
        return spy

    def wrap_run_probe(real):
        def spy(probe, model, *a, **k):
            calls.append((f"run_probe {getattr(probe, 'name', probe)}", getattr(model, "requested_device", None)))
            return real(probe, model, *a, **k)
        return spy

    def wrap_run_study(real):
        def spy(study, config=None, *, device=None, **k):
            calls.append((f"run_study {getattr(study, 'name', study)}", device))
            return real(study, config, device=device, **k)  # its parts go through the spies above
        return spy

    wrappers = [
        (workbench.models.load_model, wrap_load_model),
        (workbench.saes.loading.load_sae, wrap_load_sae),
        (workbench.zoo.train_lm, lambda r: wrap_trainer("train_lm", r)),
        (bb.train_bb, lambda r: wrap_trainer("train_bb", r)),
        (workbench.saes.training.train_saes, wrap_train_saes),
        (workbench.runner.run_probe, wrap_run_probe),
        (workbench.runner.run_study, wrap_run_study),
    ]
    for real, make in wrappers:
        assert _replace_everywhere(monkeypatch, real, make(real)) > 0, real
    return calls


@pytest.mark.timeout(900)  # every experiment's quick settings end to end: ~100 s idle, 220 s with both cores busy
def test_every_experiment_hands_the_runs_device_to_every_call(spies, store, tmp_path, monkeypatch):
    from experiments import common, run_all

    monkeypatch.setattr(common, "write_figure", lambda fig, out, name, png=True: [])  # no figure export: not what is tested
    for name in run_all.analyses():
        mod = sys.modules[f"experiments.{name}"]
        if hasattr(mod, "write_figure"):
            monkeypatch.setattr(mod, "write_figure", lambda fig, out, name, png=True: [])
    sections = run_all.main(out=tmp_path / "out", quick=True, device=ASKED, report=tmp_path / "R.md")
    failed = [s.title for s in sections if "**Failed**" in s.markdown]
    assert failed == [], [s.markdown[:800] for s in sections if "**Failed**" in s.markdown]
    kinds = {c[0].split(" ")[0] for c in spies}
    assert {"load_model", "run_probe", "train_lm", "train_bb", "run_study"} <= kinds, kinds
    wrong = [c for c in spies if c[1] != ASKED]
    assert wrong == [], wrong
    assert len(spies) > 30


def test_the_dry_run_plan_loads_no_weights(monkeypatch, capsys):
    import workbench.models
    from experiments import run_all

    def refuse(*a, **k):
        raise AssertionError("the plan must not load a model")

    monkeypatch.setattr(workbench.models, "load_model", refuse)
    monkeypatch.setattr(workbench.models, "hooked_from_hf_dir", refuse)
    rows = run_all.main(preset="gpu", dry_run=True, device="cuda")
    assert rows == []
    text = capsys.readouterr().out
    for name in run_all.analyses():
        assert f"{name}: settings 'gpu' on cuda" in text
    assert "smollm2-135m (134M parameters): ~" in text and "GiB" in text
    plan = run_all.plan("gpt2-small", device="cuda")
    assert all(r["device"] == "cuda" for r in plan)
    assert {m["model"] for r in plan for m in r["models"]} >= {"gpt2"}


def test_a_hub_preset_lists_every_file_it_needs(tmp_path, monkeypatch):
    from standins import fake_hub_model

    from experiments import presets

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    needed = presets.needed_files(presets.resolve("gpt2-small"))
    assert [n.what for n in needed][:3] == ["gpt2: config", "gpt2: weights (or pytorch_model.bin)", "gpt2: tokenizer"]
    assert sum(n.what.startswith("SAE ") for n in needed) == 3 and not any(n.cached for n in needed)
    fake_hub_model(tmp_path, "gpt2")  # writes <tmp>/hub/models--gpt2/...
    now = {n.what: n.cached for n in presets.needed_files(presets.resolve("gpt2-small"))}
    assert now["gpt2: config"] and now["gpt2: weights (or pytorch_model.bin)"]
    assert presets.resolve("gpt2-small").setting("cross_analysis").overrides["sae_layers"] == (2, 6, 10)


# ----- no per-iteration host synchronisation in hot loops (a static check) -----
HOT = {  # (file, function) -> host reads allowed per call: bodies that run once per batch or per step
    ("probes/bigram_subnetworks/mask_training.py", "optimizer_step"): 1,  # loss, ce and the stopping rule's counts, together
    ("probes/bigram_subnetworks/mask_training.py", "mask_step"): 0,
    ("probes/bigram_subnetworks/masking.py", "decided_counts"): 0,
    ("probes/attention_sinks/bigram_backcopy/training.py", "fn"): 0,  # the BB training loss
    ("probes/function_tokens/probe.py", "update"): 0,
    ("probes/cross_analysis/token_kind.py", "update"): 0,
    ("workbench/saes/quality.py", "update"): 0,
    ("probes/residual_norms/probe.py", "update"): 0,
    ("probes/linguistic_collapse/probe.py", "update"): 0,
}
SYNCING = {"item", "tolist", "numpy", "cpu"}
TENSOR_HINTS = (".sum(", ".mean(", ".any(", ".all(", ".detach(", ".max(", ".min(", "torch.", ".norm(")


def test_hot_loops_read_nothing_back_per_iteration():
    offenders = []
    for (file, func), allowed in HOT.items():
        tree = ast.parse((ROOT / file).read_text())
        bodies = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == func]
        assert bodies, (file, func)
        for body in bodies:
            reads = []
            for node in ast.walk(body):
                if isinstance(node, ast.Call):
                    f = node.func
                    if isinstance(f, ast.Attribute) and f.attr in SYNCING:
                        reads.append(f"{file}:{node.lineno} .{f.attr}()")
                    if isinstance(f, ast.Name) and f.id in ("float", "int", "bool") and node.args:
                        arg = ast.unparse(node.args[0])
                        if any(h in arg for h in TENSOR_HINTS):  # a tensor expression read back to the host
                            reads.append(f"{file}:{node.lineno} {f.id}({arg})")
            if len(reads) > allowed:
                offenders += reads
    assert offenders == [], offenders


def test_the_plan_counts_the_bytes_of_the_runs_precision():
    """The memory plan counts 2 bytes per parameter in bfloat16 (it assumed 4 whatever the dtype)."""
    from experiments import run_all
    from workbench.models.info import using_dtype

    def smol(rows):
        return next(m for r in rows for m in r["models"] if m["model"] == "smollm2-135m" and m.get("memory_gib"))

    full = smol(run_all.plan("gpu", device="cuda"))
    with using_dtype("bfloat16"):
        half = smol(run_all.plan("gpu", device="cuda"))
    assert full["dtype"] == "float32" and half["dtype"] == "bfloat16"
    assert half["memory_gib"] == pytest.approx(full["memory_gib"] / 2, rel=1e-9)
    assert half["memory_gib"] * 2**30 >= 2 * full["n_params"]  # the weights alone, in two bytes each
