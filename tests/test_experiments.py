"""experiments/run_all.py, experiments/presets.py and the cross-analysis experiment, offline and fast:
quick settings on tiny models, a temporary result store, HTML figures only (PNG export is exercised
by the experiment scripts themselves)."""

from __future__ import annotations

import dataclasses
import types

import pytest

from experiments import common, cross_analysis, presets, run_all
from standins import fake_hub_model


@pytest.fixture
def html_only(monkeypatch):
    """write_figure without the PNG export (a browser process per figure; slow on a shared CPU)."""
    monkeypatch.setattr(cross_analysis, "write_figure", lambda fig, out, name, png=True: common.write_figure(fig, out, name, png=False))


def test_every_preset_resolves_and_validates_offline():
    assert set(presets.known()) >= {"cpu", "gpu", "gpt2-small", "pythia-70m", "pythia-160m"}
    for name in presets.known():
        p = presets.resolve(name)
        assert p.name == name
        # TransformerLens names, SAE Lens release ids, and override keys of each experiment's table
        assert presets.validate(p) == [], name
        assert set(p.experiments) <= set(presets.EXPERIMENTS)
    assert presets.resolve("gpt2-small").saes[0] == "gpt2-small-res-jb:blocks.2.hook_resid_pre"
    assert all(s.endswith("hook_resid_post") for s in presets.resolve("pythia-70m").saes)


def test_unknown_preset_and_analysis_name_the_known_ones(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown preset 'gpt3'.*cpu, gpu, gpt2-small, pythia-70m, pythia-160m"):
        presets.resolve("gpt3")
    with pytest.raises(SystemExit, match="unknown preset 'gpt3'"):
        run_all.main(only=["cross_analysis"], out=tmp_path / "o", quick=True, preset="gpt3")
    with pytest.raises(SystemExit, match=r"Unknown analyses \['nope'\]"):
        run_all.main(only=["nope"], out=tmp_path / "o", quick=True)
    assert not (tmp_path / "o").exists()  # nothing ran


def test_install_registers_the_override_and_rejects_stale_keys():
    p = presets.resolve("gpt2-small")
    mod = types.SimpleNamespace(PRESETS={"gpu": {"lm": "smollm2-135m", "survey": {"max_tokens": 10}}, "cpu": {}})
    key = presets.install(p, "attention_sinks", mod)
    assert key == "gpt2-small"
    assert mod.PRESETS["gpt2-small"] == {"lm": "gpt2", "survey": {"max_tokens": 10}}
    assert mod.PRESETS["gpu"]["lm"] == "smollm2-135m"  # the base entry is untouched
    assert presets.install(p, "attention_sinks", mod, quick=True) == "quick"
    assert presets.install(presets.resolve("cpu"), "attention_sinks", mod) == "cpu"
    stale = types.SimpleNamespace(PRESETS={"gpu": {"model": "x"}})
    with pytest.raises(SystemExit, match=r"overrides \['lm'\].*has only \['model'\]"):
        presets.install(p, "attention_sinks", stale)
    assert presets.install(p, "key_space", types.SimpleNamespace()) == "gpu"  # no table: the base name only


def test_hub_weights_are_checked_in_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert presets.check_weights(presets.resolve("gpt2-small")) == ["gpt2"]
    assert presets.check_weights(presets.resolve("pythia-70m")) == ["EleutherAI/pythia-70m-deduped"]
    assert presets.check_weights(presets.resolve("cpu")) == []
    fake_hub_model(tmp_path / "hf", "gpt2")
    assert presets.check_weights(presets.resolve("gpt2-small")) == []


def test_run_all_quick_cross_analysis_writes_the_report(tmp_path, store, html_only):
    sections = run_all.main(only=["cross_analysis"], out=tmp_path / "out", quick=True)
    assert len(sections) == 1 and not sections[0].markdown.startswith("**Failed**"), sections[0].markdown
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "## Cross-analysis views" in report and "(quick smoke settings" in report
    assert "(a) Sink heads against function tokens" in report and "Spearman" in report
    assert "No bigram-subnetworks result is in the store" in report  # the temporary store holds none
    figs = sections[0].figures
    assert "cross_analysis/sink_function_vs_content.html" in figs and "cross_analysis/bigram_layers_vs_residual_peak.html" in figs
    for f in figs:
        assert (tmp_path / "out" / f).stat().st_size > 1000
    heads = (tmp_path / "out" / "cross_analysis" / "heads.csv").read_text().splitlines()
    assert len(heads) == 1 + 2 * 4  # tiny: 2 layers x 4 heads


def test_assemble_writes_the_report_from_saved_sections_without_running(tmp_path, monkeypatch):
    out = tmp_path / "out"
    saved = common.ReportSection(title="Attention sinks", markdown="sink mass 0.91", figures=["a.png"], wall_s=120.0)
    saved.save(out / "attention_sinks", "cpu")
    monkeypatch.setattr(run_all, "run_one", lambda *a, **k: pytest.fail("assemble must not run an experiment"))
    (out / "function_tokens").mkdir(parents=True)
    (out / "function_tokens" / "function_tokens.md").write_text("## Function tokens\n\ncoverage 71%\n")
    (out / "function_tokens" / "graph.png").write_bytes(b"png")
    sections = run_all.main(only=["attention_sinks", "function_tokens", "key_space"], out=out, assemble_only=True)
    report = (out / "REPORT.md").read_text()
    assert [s.title for s in sections] == ["Attention sinks", "Function tokens", "key_space"]
    assert "coverage 71%" in report and "(out/function_tokens/graph.png)" in report  # a markdown-only section
    assert "sink mass 0.91" in report and "by the `cpu` preset" in report and "(out/attention_sinks/a.png)" in report
    assert "**Not run yet**" in report and "python -m experiments.key_space" in report
    assert "total wall time: 2.0 min (sum of the saved sections' last runs" in report
    again = common.ReportSection.load(out / "attention_sinks")
    assert again.markdown == "sink mass 0.91" and again.figures == ["a.png"] and again.finished


def test_hub_preset_runs_offline_on_a_stand_in(tmp_path, store, html_only, monkeypatch):
    """`--preset gpt2-small` end to end through run_all, with a tiny GPT-2 in a local HF cache as `gpt2`
    (budgets shrunk, the SAE Lens release left out: it would need the hub)."""
    import huggingface_hub.constants as hc

    fake_hub_model(tmp_path / "hf", "gpt2")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(cross_analysis, "PRESETS", {**cross_analysis.PRESETS, "gpu": {**cross_analysis.PRESETS["quick"], "model": "smollm2-135m"}})
    real = presets.resolve("gpt2-small")
    exps = {**real.experiments, "cross_analysis": presets.Setting("gpu", {"model": "gpt2", "saes": []})}
    monkeypatch.setitem(presets.PRESETS, "gpt2-small", dataclasses.replace(real, experiments=exps))

    sections = run_all.main(only=["cross_analysis"], out=tmp_path / "out", preset="gpt2-small", report=tmp_path / "R.md")
    md = sections[0].markdown
    assert "Model `gpt2`" in md and "**Failed**" not in md, md
    assert cross_analysis.PRESETS["gpt2-small"]["model"] == "gpt2"
    report = (tmp_path / "R.md").read_text()
    assert "- preset: gpt2-small" in report and "Preset `gpt2-small`: GPT-2 small" in report
    assert "key_space: gpu; key-space geometry always runs on the embedded model" in report


def test_head_view_splits_dormant_heads():
    import pandas as pd

    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "sink_mass": [0.9, 0.1, 0.8, 0.2],
                          "delta_loss": [0.001, 0.2, -0.002, 0.1], "dormant": [True, False, True, False]})
    split = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "sink_function": [0.95, 0.1, 0.7, 0.3],
                          "sink_content": [0.85, 0.1, 0.9, 0.1]})
    t, s = cross_analysis.head_view(heads, split)
    assert s["n_dormant"] == 2 and s["dormant_mean_f_minus_c"] == pytest.approx((0.1 - 0.2) / 2)
    assert s["other_mean_f_minus_c"] == pytest.approx(0.1) and s["dormant_share_f_gt_c"] == 0.5
    assert list(t["f_minus_c"].round(3)) == [0.1, 0.0, -0.2, 0.2]
