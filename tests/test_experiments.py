"""experiments/run_all.py, experiments/presets.py and the cross-analysis experiment, offline and fast:
quick settings on tiny models, a temporary result store, HTML figures only (PNG export is exercised
by the experiment scripts themselves)."""

from __future__ import annotations

import dataclasses
import importlib
import re
import types

import pytest
import torch
from sae_standins import mini_corpus, random_topk_sae
from standins import fake_hub_model, hub_snapshot_dir

from experiments import common, cross_analysis, presets, run_all
from workbench import hooks

HUB_PRESETS = ("gpt2-small", "pythia-70m", "pythia-160m")
# each experiment's settings key naming the model it runs on
MODEL_KEY = {"attention_sinks": "lm", "function_tokens": "model", "bigram_subnetworks": "model", "linguistic_collapse": "model",
             "key_space": "model", "sae_circuits": "lm", "cross_analysis": "model"}


@pytest.fixture
def html_only(monkeypatch):
    """write_figure without the PNG export (a browser process per figure; slow on a shared CPU)."""
    monkeypatch.setattr(cross_analysis, "write_figure", lambda fig, out, name, png=True: common.write_figure(fig, out, name, png=False))


def test_every_preset_resolves_and_validates_offline():
    assert set(presets.known()) >= {"cpu", "gpu", "gpt2-small", "pythia-70m", "pythia-160m", "first-look"}
    for name in presets.PRESETS:  # first-look is a script, not a settings table
        p = presets.resolve(name)
        assert p.name == name
        # TransformerLens names, SAE Lens release ids, and override keys of each experiment's table
        assert presets.validate(p) == [], name
        assert set(p.experiments) <= set(presets.experiments())
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


def test_declare_adds_each_presets_entry_and_rejects_stale_keys():
    p = presets.resolve("gpt2-small")
    base = {"gpu": {"lm": "smollm2-135m", "survey": {"max_tokens": 10}}, "cpu": {}}
    table = presets.declare("attention_sinks", base)
    assert table["gpt2-small"] == {"lm": "gpt2", "survey": {"max_tokens": 10}}
    assert table["gpu"]["lm"] == "smollm2-135m" and base["gpu"]["lm"] == "smollm2-135m"  # the base entry is untouched
    assert "gpt2-small" not in base  # a new table; nothing is written into the one given
    assert presets.key_for(p, "attention_sinks") == "gpt2-small"
    assert presets.key_for(p, "attention_sinks", quick=True) == "quick"
    assert presets.key_for(presets.resolve("cpu"), "attention_sinks") == "cpu"
    with pytest.raises(SystemExit, match=r"overrides \['lm'\].*has only \['model'\]"):
        presets.declare("attention_sinks", {"gpu": {"model": "x"}, "cpu": {}})
    with pytest.raises(SystemExit, match=r"'gpu' entry, which its table lacks"):
        presets.declare("key_space", {"cpu": {}})


def test_every_report_declares_an_entry_for_every_preset():
    from workbench.probe_api import get_report

    for name in presets.PRESETS:
        p = presets.resolve(name)
        for exp in presets.experiments():
            assert presets.key_for(p, exp) in get_report(exp).presets, (name, exp)
            assert get_report(exp).presets is importlib.import_module(f"experiments.{exp}").PRESETS  # one table: the report's


@pytest.fixture
def own_tables():
    """Every experiment module (its settings table is whole at import: a preset's entry is there)."""
    return {exp: importlib.import_module(f"experiments.{exp}") for exp in presets.experiments()}


@pytest.mark.parametrize("name", HUB_PRESETS)
def test_hub_presets_give_every_experiment_their_model_and_saes(name, own_tables):
    p = presets.resolve(name)
    for exp, key in MODEL_KEY.items():
        mod = own_tables[exp]
        assert presets.key_for(p, exp) == name, exp
        assert mod.PRESETS[name][key] == p.model, exp
    for exp in ("attention_sinks", "function_tokens", "bigram_subnetworks", "linguistic_collapse", "key_space"):
        assert own_tables[exp].PRESETS["cpu"][MODEL_KEY[exp]] in ("smollm2-135m", None), exp  # the cpu entries keep their model
    ft = own_tables["function_tokens"].PRESETS[name]
    assert tuple(ft["saes"]) == p.saes
    if p.saes:  # one SAE Lens SAE per analysed layer, the steering layer among them
        assert own_tables["function_tokens"].pretrained_sources(ft) == dict(zip(sorted(ft["layers"]), p.saes))
    else:
        assert name == "pythia-160m" and "trains its own SAEs" in p.setting("function_tokens").note
    assert not any("always" in p.setting(e).note for e in presets.experiments())  # no experiment left on a fixed model


class _Loaded(Exception):
    """Raised by a stand-in load_model: the experiment asked for this model."""


def _stop_at_load(name, *args, **kwargs):
    raise _Loaded(name)


def test_scripts_load_the_model_their_resolved_setting_names(own_tables, store, tmp_path, monkeypatch):
    """Each changed script, run under a hub preset's key, asks load_model for the preset's model (stopped there)."""
    p = presets.resolve("pythia-70m")
    for exp in ("key_space", "bigram_subnetworks", "linguistic_collapse", "function_tokens"):
        monkeypatch.setattr(own_tables[exp], "load_model", _stop_at_load)
    lc = own_tables["linguistic_collapse"]
    grids = []
    monkeypatch.setattr(lc, "run_sweep", lambda grid, store=None, device=None: grids.append(grid) or (None, 1))
    for exp in ("key_space", "bigram_subnetworks", "linguistic_collapse", "function_tokens"):
        key = presets.key_for(p, exp)
        with pytest.raises(_Loaded, match="^pythia-70m-deduped$"):
            own_tables[exp].run(tmp_path / exp, preset=key)
    assert grids == [lc.GRIDS["gpu"]]  # the sweep keeps the gpu grid
    for exp in ("key_space", "bigram_subnetworks", "linguistic_collapse", "function_tokens"):  # the cpu entries: SmolLM2 / Brown LM
        if exp == "bigram_subnetworks":
            assert own_tables[exp].PRESETS["cpu"]["model"] is None
            continue
        with pytest.raises(_Loaded, match="^smollm2-135m$"):
            own_tables[exp].run(tmp_path / exp, preset="cpu")


def test_function_tokens_sae_ids_are_checked_against_the_layers():
    from experiments import function_tokens as ft

    base = {**ft.PRESETS["gpu"], "layers": (2, 6), "steer_layer": 6}
    ok = {**base, "saes": ("gpt2-small-res-jb:blocks.6.hook_resid_pre", "gpt2-small-res-jb:blocks.2.hook_resid_pre")}
    assert ft.pretrained_sources(ok) == {2: "gpt2-small-res-jb:blocks.2.hook_resid_pre", 6: "gpt2-small-res-jb:blocks.6.hook_resid_pre"}
    with pytest.raises(SystemExit, match=r"layers \[2\], the settings' layers are \[2, 6\]"):
        ft.pretrained_sources({**base, "saes": ("gpt2-small-res-jb:blocks.2.hook_resid_pre",)})
    with pytest.raises(SystemExit, match="not an SAE Lens"):
        ft.pretrained_sources({**base, "saes": ("blocks.2.hook_resid_pre", "r:blocks.6.x")})
    with pytest.raises(SystemExit, match="steer_layer 5 has no SAE"):
        ft.pretrained_sources({**ok, "steer_layer": 5})


def _offline_hub(tmp_path, monkeypatch, **sizes):
    """A tiny GPT-2 as `gpt2` in a local Hugging Face cache, the hub switched off."""
    import huggingface_hub.constants as hc

    fake_hub_model(tmp_path / "hf", "gpt2", **sizes)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def test_function_tokens_gives_the_release_ids_to_the_probe_instead_of_training(own_tables, store, tmp_path, monkeypatch):
    """Under gpt2-small the graph probe gets the preset's SAE Lens ids; nothing is trained (stopped at the first probe)."""
    ft = own_tables["function_tokens"]
    p = presets.resolve("gpt2-small")
    key = presets.key_for(p, "function_tokens")
    monkeypatch.setattr(ft, "load_model", lambda name, **kw: types.SimpleNamespace(name=name))
    monkeypatch.setattr(ft, "load_corpus", lambda name: name)
    monkeypatch.setattr(ft, "_train_saes", lambda *a, **kw: pytest.fail("release SAEs must not be trained"))
    scored = []
    monkeypatch.setattr(ft, "pretrained_quality", lambda model, corpus, sources, *a: scored.append((model.name, corpus, sources))
                        or {layer: {"source": src} for layer, src in sources.items()})

    def first_probe(probe, model, corpus, cfg, store=None):
        raise _Loaded(probe, model.name, list(cfg.saes))

    monkeypatch.setattr(ft, "run_probe", first_probe)
    with pytest.raises(_Loaded) as stopped:
        ft.run(tmp_path / "ft", preset=key)
    assert stopped.value.args == ("function-tokens", "gpt2", list(p.saes))
    assert scored == [("gpt2", "brown", dict(zip((2, 6, 10), p.saes)))]


def test_function_tokens_loads_release_saes_by_id_and_scores_them(tmp_path, monkeypatch, brown):
    """The release path: SAE Lens ids resolved through an offline HF cache (stand-in SAEs for the stand-in GPT-2), scored on Brown."""
    from experiments import function_tokens as ft
    from workbench.models import load_model

    _offline_hub(tmp_path, monkeypatch)
    snap = hub_snapshot_dir(tmp_path / "hf", "jbloom/GPT2-Small-SAEs-Reformatted")
    for layer in (0, 1):
        random_topk_sae(hook=hooks.resid_pre(layer), d_in=32, d_sae=48, k=4, seed=layer).save_model(snap / hooks.resid_pre(layer))
    p = {**ft.PRESETS["quick"], "model": "gpt2", "steer_layer": 1,
         "saes": ("gpt2-small-res-jb:blocks.0.hook_resid_pre", "gpt2-small-res-jb:blocks.1.hook_resid_pre")}
    model = load_model("gpt2", numerics="raw", device="cpu")
    rows = ft.pretrained_quality(model, mini_corpus(brown, 40), ft.pretrained_sources(p), max_tokens=256, seq_len=64)
    assert [r["source"] for r in rows.values()] == list(p["saes"]) and all(r["d_sae"] == 48 for r in rows.values())
    assert all(0 < r["quality"]["n_tokens"] <= 256 for r in rows.values())
    table = ft.pretrained_quality_table(rows)
    assert "`gpt2-small-res-jb:blocks.1.hook_resid_pre`" in table and table.count("\n") == 3


def _fake_sinks_report(monkeypatch, text: str = "**Verdict: inconclusive**: sink mass 0.85 [0.80, 0.90].") -> list[str]:
    """The attention-sinks report's own run replaced by one that draws one PNG and returns `text`; the presets it ran."""
    from experiments import attention_sinks as exp

    ran = []

    def fake_run(out, quick=False, preset="cpu", device=None):
        ran.append(preset)
        out.mkdir(parents=True, exist_ok=True)
        (out / "a.png").write_bytes(b"\x89PNG stand-in")
        return common.ReportSection(title="Attention sinks", markdown=text, figures=["a.png", "a.html"], wall_s=60.0)

    monkeypatch.setattr(exp, "run", fake_run)
    return ran


def test_a_report_runs_through_the_store_and_is_reused_like_a_probe(tmp_path, store, monkeypatch):
    ran = _fake_sinks_report(monkeypatch)
    out = tmp_path / "out"
    first = run_all.run_one("attention_sinks", out, False, "cpu", "cpu")
    (out / "attention_sinks" / "a.png").unlink()
    again = run_all.run_one("attention_sinks", out, False, "cpu", "cpu")
    assert ran == ["cpu", "cpu"]  # a report's body runs each time (its parts are reused); its result is then looked up
    rows = store.runs(probe="attention_sinks")
    assert [r["status"] for r in rows] == ["reused", "done"] and rows[0]["key"] == rows[1]["key"] and rows[0]["model"] == "report"
    assert first.verdict == again.verdict == "inconclusive" and first.finding == "sink mass 0.85 [0.80, 0.90]."
    assert (out / "attention_sinks" / "a.png").read_bytes() == b"\x89PNG stand-in"  # restored from the stored result
    other = run_all.run_one("attention_sinks", out, False, "gpt2-small", "cpu")  # another settings entry: another key
    assert ran[-1] == "gpt2-small" and store.runs(probe="attention_sinks")[0]["status"] == "done" and other.title


def test_assemble_reads_stored_results_then_the_structured_record_never_the_markdown(tmp_path, store, monkeypatch):
    _fake_sinks_report(monkeypatch)
    out, report = tmp_path / "out", tmp_path / "REPORT.md"
    run_all.run_one("attention_sinks", out, False, "cpu", "cpu")
    (out / "attention_sinks" / "a.png").unlink()
    run_all.write_record({"key_space": common.ReportSection(title="Key space", markdown="rho 0.4", figures=["key_space/k.png"],
                                                            wall_s=90.0, verdict="contradicted", finding="rho 0.4")},
                         tmp_path / "sections.json")
    report.write_text("## Key space\n\nnothing here is read\n\nFigures: [k](out/key_space/k.png)\n")
    monkeypatch.setattr(run_all, "run_one", lambda *a, **k: pytest.fail("assemble must not run an experiment"))
    run_all.main(only=["attention_sinks", "key_space", "sae_circuits"], out=out, report=report, assemble_only=True)
    text = report.read_text()
    assert "sink mass 0.85" in text and "nothing here is read" not in text and "rho 0.4" in text
    assert (out / "attention_sinks" / "a.png").is_file()  # its figure restored from the store
    assert "**Not run yet**" in text and "workbench run sae_circuits" in text
    assert re.search(r"\| Key space \| (?:[^|]+ \| ){2}contradicted \| 1\.5 min \| 1 \|", text)
    assert re.search(r"\| Attention sinks \| (?:[^|]+ \| ){2}inconclusive \| 1\.0 min \| 1 \|", text)
    record = run_all.recorded_sections(tmp_path / "sections.json")
    assert set(record) == {"attention_sinks", "key_space", "sae_circuits"} and record["key_space"].verdict == "contradicted"


def test_only_rewrites_its_own_sections_and_keeps_the_others(tmp_path, store, monkeypatch):
    out, report = tmp_path / "out", tmp_path / "R.md"
    run_all.write_record({"attention_sinks": common.ReportSection(title="Attention sinks", markdown="old sinks", figures=["attention_sinks/a.png"]),
                          "key_space": common.ReportSection(title="Key space", markdown="old keys", figures=["key_space/k.png"])},
                         tmp_path / "sections.json")
    fresh = common.ReportSection(title="Key space", markdown="new keys", figures=["key_space/k.png"])
    monkeypatch.setattr(run_all, "run_one", lambda name, *a: fresh if name == "key_space" else pytest.fail(name))
    sections = run_all.main(only=["key_space"], out=out, report=report)
    text = report.read_text()
    assert sections == [fresh] and "new keys" in text and "old keys" not in text
    assert "old sinks" in text and text.index("## Attention sinks") < text.index("## Key space")  # report order kept
    assert "Not run yet" not in text  # analyses in neither place stay out of an --only report


def test_key_space_under_a_hub_preset_runs_on_the_stand_in(tmp_path, store, monkeypatch, own_tables):
    """key_space end to end through run_all under `gpt2-small` (its quick budget), on the stand-in `gpt2`."""
    ks = own_tables["key_space"]
    _offline_hub(tmp_path, monkeypatch, n_positions=256)  # byte-level prompts are long
    monkeypatch.setattr(ks, "write_figure", lambda fig, out, name, png=True: common.write_figure(fig, out, name, png=False))
    monkeypatch.setitem(ks.PRESETS, "gpt2-small", {**ks.PRESETS["quick"], "model": "gpt2"})  # the preset's entry, at the quick budget

    sections = run_all.main(only=["key_space"], out=tmp_path / "out", preset="gpt2-small", report=tmp_path / "R.md")
    md = sections[0].markdown
    assert "**Failed**" not in md, md
    verdict, _, body = md.partition("\n\n")
    assert verdict.startswith("**Verdict: ") and "middle-rank bias" in verdict, verdict
    assert body.startswith("Model `gpt2` (raw numerics)") and "Prompt style: **raw**" in md
    assert ks.PRESETS["gpt2-small"]["model"] == "gpt2"
    runs = store.runs(limit=10, probe="key-space")
    assert runs and {r["model"].split("|")[0] for r in runs} == {"gpt2"}, runs
    assert "- key_space: gpu with model='gpt2'" in (tmp_path / "R.md").read_text()


def test_hub_weights_are_checked_in_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    missing = presets.check_weights(presets.resolve("gpt2-small"))
    assert {"gpt2: config.json", "gpt2: model.safetensors", "gpt2: tokenizer.json"} <= set(missing)
    assert "jbloom/GPT2-Small-SAEs-Reformatted: blocks.6.hook_resid_pre/sae_weights.safetensors" in missing
    assert "EleutherAI/pythia-70m-deduped: config.json" in presets.check_weights(presets.resolve("pythia-70m"))
    assert presets.check_weights(presets.resolve("cpu")) == []
    fake_hub_model(tmp_path / "hf", "gpt2")
    after = presets.check_weights(presets.resolve("gpt2-small"))
    assert not any(m.startswith("gpt2:") for m in after) and len(after) == 6  # the model is cached; the SAEs are not


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


def test_hub_preset_runs_offline_on_a_stand_in(tmp_path, store, html_only, monkeypatch):
    """`--preset gpt2-small` end to end through run_all, with a tiny GPT-2 in a local HF cache as `gpt2`
    (budgets shrunk, the SAE Lens release left out: it would need the hub)."""
    import huggingface_hub.constants as hc

    fake_hub_model(tmp_path / "hf", "gpt2")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setitem(cross_analysis.PRESETS, "gpt2-small", {**cross_analysis.PRESETS["quick"], "model": "gpt2", "saes": []})
    from experiments import attention_sinks as exp_sinks
    from experiments import bigram_subnetworks as exp_bigram

    for other in (exp_sinks, exp_bigram):  # their gpu-budget entries for the preset are not what this quick check runs
        monkeypatch.delitem(other.PRESETS, "gpt2-small")

    sections = run_all.main(only=["cross_analysis"], out=tmp_path / "out", preset="gpt2-small", report=tmp_path / "R.md")
    md = sections[0].markdown
    assert "Model `gpt2`" in md and "**Failed**" not in md, md
    assert cross_analysis.PRESETS["gpt2-small"]["model"] == "gpt2"
    report = (tmp_path / "R.md").read_text()
    assert "- preset: gpt2-small" in report and "Preset `gpt2-small`: GPT-2 small" in report
    assert "key_space: gpu with model='gpt2'" in report and "always" not in report
    assert "bigram_subnetworks: gpu with model='gpt2'; masks gpt2's raw weights on Brown" in report


def test_head_view_splits_dormant_heads():
    import pandas as pd

    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "sink_mass": [0.9, 0.1, 0.8, 0.2],
                          "delta_loss": [0.001, 0.2, -0.002, 0.1], "dormant": [True, False, True, False]})
    split = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "sink_function": [0.95, 0.1, 0.7, 0.3],
                          "sink_content": [0.85, 0.1, 0.9, 0.1]})
    from probes.cross_analysis.study import head_view

    t, s = head_view(heads, split)
    assert s["n_dormant"] == 2 and s["dormant_mean_f_minus_c"] == pytest.approx((0.1 - 0.2) / 2)
    assert s["other_mean_f_minus_c"] == pytest.approx(0.1) and s["dormant_share_f_gt_c"] == 0.5
    assert list(t["f_minus_c"].round(3)) == [0.1, 0.0, -0.2, 0.2]


def test_bigram_subnetworks_masks_a_pretrained_model_when_the_setting_names_one(tmp_path, store, monkeypatch, own_tables, brown, capsys):
    """The "model" setting path end to end (quick schedule) on the stand-in `gpt2`, on a Brown slice: no Brown LM is trained."""
    import workbench.corpora
    import workbench.zoo
    from workbench.corpora import Corpus, Document

    bs = own_tables["bigram_subnetworks"]
    _offline_hub(tmp_path, monkeypatch)
    docs = [Document(d.doc_id, d.text[:600], d.genre) for d in brown.documents[:40]]
    monkeypatch.setattr(workbench.corpora, "load_corpus", lambda name: Corpus(brown.name, brown.version + "-first40x600", docs))
    monkeypatch.setattr(workbench.zoo, "train_lm", lambda *a, **k: pytest.fail("no Brown LM is trained for a pretrained model"))
    monkeypatch.setattr(bs, "write_figure", lambda fig, out, name, png=True: common.write_figure(fig, out, name, png=False))
    monkeypatch.setitem(bs.PRESETS, "gpt2-stand-in", {**bs.PRESETS["quick"], "model": "gpt2", "probe": {
        **bs.PRESETS["quick"]["probe"], "max_steps": 10, "eval_tokens": 512, "rotation_tokens": 512, "n_random": 1, "overlap_samples": 200}})
    section = bs.run(tmp_path / "out", preset="gpt2-stand-in")
    assert "estimated peak" in capsys.readouterr().out  # the memory estimate, printed before any work
    verdict, _, body = section.markdown.partition("\n\n")
    assert verdict.startswith("**Verdict: ") and "pretrained `gpt2`" in verdict, verdict
    assert body.startswith("Model: pretrained `gpt2` (not trained here), raw weights, masked on Brown;"), body[:300]
    assert "not on the pretraining text of `gpt2`" in section.markdown and "Brown LM" not in section.markdown
    (run,) = store.runs(probe="bigram-subnetworks")
    assert run["model"].split("|")[0] == "gpt2" and run["status"] == "done"


def test_bigram_subnetworks_trains_and_masks_a_byte_level_brown_lm(tmp_path, store, monkeypatch, own_tables):
    """The workbench-LM path end to end (quick): the byte-level Brown LM is trained, masked and reported as such."""
    from safetensors.torch import load_file

    from probes.bigram_subnetworks.masking import load_masks

    bs = own_tables["bigram_subnetworks"]
    assert bs.PRESETS["cpu"]["recipe"]["tokenizer"] == "bytes" and bs.PRESETS["quick"]["recipe"]["tokenizer"] == "bytes"
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))  # the quick LM is trained here, not reused
    monkeypatch.setattr(bs, "write_figure", lambda fig, out, name, png=True: common.write_figure(fig, out, name, png=False))
    section = bs.run(tmp_path / "out", quick=True)
    md = section.markdown
    verdict, _, body = md.partition("\n\n")
    assert verdict.startswith("**Verdict: ") and "[" in verdict, verdict  # the margin carries its interval
    assert body.startswith("Model: workbench-trained Brown LM `brownlm-L2-d32-s30"), body[:200]
    assert "tokenizer `bytes`" in md and "as bytes (the paper's models use subword tokens)" in md
    assert "sparser rows" not in md  # byte bigram rows are dense: no such caveat
    assert "of contexts unseen" in md and "LM training" in md  # trained in this call, so its cost is reported
    (run,) = store.runs(probe="bigram-subnetworks")
    assert run["status"] == "done"
    (mask_file,) = (tmp_path / "out" / "masks").glob("bigram-lambda*.safetensors")
    assert all(m.dtype == torch.bool for m in load_file(str(mask_file)).values())  # stored boolean
    masks, meta = load_masks(mask_file)
    assert meta["label"].startswith("bigram:") and len(masks) == 2 * 6  # Q, K, V, O, MLP in/out per layer
    assert (tmp_path / "out" / "section.md").read_text() == md


def test_linguistic_collapse_pretrained_part_runs_on_the_settings_model(tmp_path, store, monkeypatch, own_tables):
    """Quick sweep plus the pretrained-model part on the stand-in `gpt2` (the model a hub preset puts in the settings)."""
    lc = own_tables["linguistic_collapse"]
    _offline_hub(tmp_path, monkeypatch, n_positions=256)
    monkeypatch.setattr(lc, "write_figure", lambda fig, out, name, png=True: common.write_figure(fig, out, name, png=False))
    monkeypatch.setitem(lc.PRESETS, "quick", {**lc.PRESETS["quick"], "model": "gpt2"})
    section = lc.run(tmp_path / "out", quick=True)
    assert "gpt2 (raw numerics) over" in section.markdown and "**gpt2 on Brown, beside the paper's" in section.markdown
    assert "SmolLM2" not in section.markdown
    assert {"gpt2_cosines.html", "gpt2_projection.html", "gpt2_min_count.html"} <= set(section.figures)
    models = [r["model"].split("|")[0] for r in store.runs(probe="linguistic-collapse")]
    assert models[0] == "gpt2" and models.count("gpt2") == 1, models  # the last run; the sweep's runs are zoo models


def test_a_section_carries_its_verdict_and_finding_as_fields():
    assert common.verdict_of("**Verdict: reproduced at this scale**: on a model ...")[0] == "reproduced at this scale"
    assert common.verdict_of("Model: ... no verdict") == ("not stated", "")
    assert common.verdict_of("*stamp*\n\n**Verdict: inconclusive** (bias): gap +0.009 [-0.05, +0.07].\nMore.")[1] == \
        "(bias): gap +0.009 [-0.05, +0.07]."
    sec = common.ReportSection(title="t", markdown="**Verdict: contradicted**: x.")
    assert (sec.verdict, sec.finding) == ("contradicted", "x.")
    assert common.ReportSection(title="t", markdown="**Verdict: a**", verdict="b").verdict == "b"  # a given verdict is kept


def test_the_summary_table_states_the_papers_headline_and_ours_beside_the_verdict():
    from experiments import key_space

    sec = common.ReportSection(title="Key space", markdown="**Verdict: contradicted**: precision a|b lower elsewhere.",
                               figures=["key_space/k.png"], wall_s=60.0)
    table_row = next(line for line in run_all.render({"key_space": sec}, 60.0, False, "cpu").splitlines() if line.startswith("| Key space |"))
    cells = [c.strip() for c in table_row.strip("|").split(" | ")]
    assert cells[1] == key_space.PAPER_HEADLINE and "11–100" in cells[1]
    assert cells[2] == "precision a/b lower elsewhere." and cells[3] == "contradicted" and cells[4:] == ["1.0 min", "1"]
    assert all(run_all.paper_headline(name) for name in run_all.analyses())  # every analysis states its paper's headline


def test_running_an_experiment_script_stores_its_report(tmp_path, store, monkeypatch, capsys):
    """`python -m experiments.attention_sinks` (standard arguments) is the registered report: stored,
    so `run_all --assemble` finds it; a second call reuses it."""
    from experiments.run_all import publish_report

    ran = _fake_sinks_report(monkeypatch)
    publish_report("attention_sinks", tmp_path / "out" / "attention_sinks", False, "cpu")
    publish_report("attention_sinks", tmp_path / "out" / "attention_sinks", False, "cpu")
    assert ran == ["cpu", "cpu"] and "sink mass 0.85" in capsys.readouterr().out
    assert [r["status"] for r in store.runs(probe="attention_sinks")] == ["reused", "done"]
    assert run_all.stored_section("attention_sinks", tmp_path / "out", store).verdict == "inconclusive"
