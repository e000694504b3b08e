"""The `workbench` command line, driven in-process."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from workbench.cli import app

runner = CliRunner()


def test_help_explains_every_command():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for cmd in ("models", "probes", "run", "runs", "show", "dashboard", "figures", "corpora"):
        assert cmd in out.output


def test_models_and_probes_list(store):
    out = runner.invoke(app, ["models"])
    assert out.exit_code == 0 and "smollm2-135m" in out.output and "tiny-llama" in out.output
    out = runner.invoke(app, ["probes"])
    assert out.exit_code == 0 and "residual-norms" in out.output and "max_tokens" in out.output


def test_run_then_list_and_show(store, tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 30)
    args = ["run", "residual-norms", "--model", "tiny", "--corpus", str(text), "--device", "cpu",
            "--set", "max_tokens=200", "--set", "seq_len=32"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "computed" in out.output and "final_top1" in out.output
    again = runner.invoke(app, args)
    assert "reused stored result" in again.output
    listing = runner.invoke(app, ["runs"])
    assert listing.exit_code == 0 and "residual-norms" in listing.output and "reused" in listing.output
    run_id = store.runs()[-1]["run_id"]
    shown = runner.invoke(app, ["show", str(run_id)])
    assert shown.exit_code == 0 and '"max_tokens": 200' in shown.output
    summary = json.loads(store.get_run(run_id)["summary"])
    assert summary["layers"] == 2


def test_bad_inputs_exit_2_with_a_message(store, tmp_path):
    out = runner.invoke(app, ["run", "residual-norms", "--model", "nope-model", "--device", "cpu"])
    assert out.exit_code == 2 and "Unknown model 'nope-model'" in out.output
    out = runner.invoke(app, ["run", "residual-norms", "--model", "tiny", "--set", "max_tokens=0"])
    assert out.exit_code == 2 and "max_tokens" in out.output
    bad = tmp_path / "cfg.json"
    bad.write_text("{not json")
    out = runner.invoke(app, ["run", "residual-norms", "--model", "tiny", "--config", str(bad)])
    assert out.exit_code == 2 and "not valid JSON" in out.output
    out = runner.invoke(app, ["run", "residual-norms", "--model", "tiny", "--corpus", str(tmp_path / "missing-dir")])
    assert out.exit_code == 2
    out = runner.invoke(app, ["show", "9999"])
    assert out.exit_code == 2 and "No run 9999" in out.output


# ----------------------------------------------------------------------------- the first hour's rough edges


def _corpus_dir(tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    (d / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    return d


def test_a_hub_model_without_the_hub_is_one_line(store, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    out = runner.invoke(app, ["run", "residual-norms", "--model", "gpt2", "--corpus", str(_corpus_dir(tmp_path))])
    assert out.exit_code == 2
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model 'gpt2'"), out.output
    assert "needs the Hugging Face hub" in lines[0] and "smollm2-135m" in lines[0]


def test_a_budget_larger_than_the_corpus_is_announced(store, tmp_path):
    out = runner.invoke(app, ["run", "residual-norms", "--model", "tiny", "--corpus", str(_corpus_dir(tmp_path)), "--device", "cpu",
                              "--set", "max_tokens=5000000", "--set", "seq_len=32"])
    assert out.exit_code == 0, out.output
    note = [line for line in out.output.splitlines() if line.startswith("note: max_tokens=5,000,000 is more than")]
    assert note and "streaming all of it" in note[0]


def test_corpus_problems_are_found_before_the_model_loads(store, tmp_path, monkeypatch):
    import workbench.models

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the corpus was checked")

    monkeypatch.setattr(workbench.models, "load_model", must_not_load)
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    for corpus, says in ((str(tmp_path / "missing"), "Unknown corpus"), (str(empty), "has no documents")):
        out = runner.invoke(app, ["run", "residual-norms", "--corpus", corpus])
        assert out.exit_code == 2 and says in out.output, out.output


def test_ctrl_c_prints_the_command_that_resumes(store, tmp_path, monkeypatch):
    import workbench.runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(workbench.runner, "run_probe", interrupted)
    corpus = str(_corpus_dir(tmp_path))
    out = runner.invoke(app, ["run", "residual-norms", "--model", "tiny", "--corpus", corpus, "--set", "max_tokens=300"])
    assert out.exit_code == 130
    assert "resumes from its last checkpoint with: workbench run residual-norms --model tiny --corpus" in out.output
    assert "--set max_tokens=300" in out.output


def test_listing_commands_do_not_import_the_model_stack(store, tmp_path):
    """`workbench probes` (from its catalogue, once built) and `workbench runs` answer without
    importing torch, which is what makes them take seconds."""
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from workbench.cli import app; "
            "r = CliRunner().invoke(app, sys.argv[1:]); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules, len(r.output.splitlines()))")
    run = lambda *args: subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout.split()  # noqa: E731
    run("probes")  # builds the catalogue if the sources changed
    torch_loaded, n_lines = run("probes")
    assert torch_loaded == "False" and int(n_lines) > 50
    assert run("runs")[0] == "False"


def test_the_catalogue_notices_an_edited_source(tmp_path):
    from workbench.catalogue import source_fingerprint

    (tmp_path / "probes" / "x").mkdir(parents=True)
    (tmp_path / "workbench").mkdir()
    f = tmp_path / "probes" / "x" / "probe.py"
    f.write_text("A = 1\n")
    dirs = [tmp_path / "probes", tmp_path / "workbench"]
    before = source_fingerprint(dirs)
    assert source_fingerprint(dirs) == before
    f.write_text("A = 22\n")
    assert source_fingerprint(dirs) != before
    from workbench.catalogue import source_dirs

    assert {d.name for d in source_dirs()} == {"workbench", "probes", "experiments"}  # the kernel and the declared roots


def _one_line_error(out) -> str:
    """The CLI's answer to a mistake: exit code 2 and one `error:` line, no traceback."""
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output and out.exception is None or isinstance(out.exception, SystemExit)
    lines = [ln for ln in out.output.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.output
    return lines[0]


def test_a_config_file_holding_a_list_is_one_line(store, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text("[1, 2, 3]")
    line = _one_line_error(runner.invoke(app, ["run", "residual-norms", "--model", "tiny", "--config", str(cfg)]))
    assert "JSON object" in line and "list" in line
    missing = _one_line_error(runner.invoke(app, ["run", "residual-norms", "--model", "tiny", "--config", str(tmp_path / "none.json")]))
    assert "cannot be read" in missing


def test_a_model_directory_with_an_empty_config_is_one_line(store, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("")
    assert "config.json is empty" in _one_line_error(runner.invoke(app, ["run", "residual-norms", "--model", str(d), "--device", "cpu"]))
    (d / "config.json").write_text("{\"hidden_size\": 8}")
    assert "model_type" in _one_line_error(runner.invoke(app, ["run", "residual-norms", "--model", str(d), "--device", "cpu"]))


def test_a_huge_integer_is_read_exactly_or_refused_never_rounded(store, tmp_path):
    from probes.residual_norms.probe import ResidualNormsConfig
    from workbench.config import config_from_dict

    assert config_from_dict(ResidualNormsConfig, {"max_tokens": "123456789012345678"}).max_tokens == 123456789012345678
    line = _one_line_error(runner.invoke(app, ["run", "residual-norms", "--model", "tiny", "--set",
                                               "max_tokens=99999999999999999999999999"]))
    assert "99999999999999999999999999" in line.replace(",", "") and "too large" in line
    assert "4764729344" not in line.replace(",", "")  # what reading it as a float printed


def test_a_prompt_that_is_not_text_is_refused_in_one_line():
    from workbench.errors import ConfigError
    from workbench.prompt_analysis import check_prompt

    for bad, words in [("ab\ud800cd", "not valid text at position 2"), (["a", "b"], "not a list"), (7, "not a int"),
                       (None, "type a prompt"), ("   ", "type a prompt")]:
        try:
            check_prompt(bad)
        except ConfigError as e:
            assert words in str(e) and "\n" not in str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_a_study_runs_from_the_cli_like_a_probe(store, monkeypatch):
    """`workbench run <study>`: the same key, store and registry row as `run_study`; a second call
    reuses it; --model does not apply to a study and says so."""
    from probes.linguistic_collapse import sweep
    from workbench.models import load_model

    monkeypatch.setattr(sweep, "train_lm", lambda recipe, device="cpu", progress=True: None)
    monkeypatch.setattr(sweep, "load_lm", lambda recipe, device="cpu": load_model(
        "tiny", device="cpu", n_layers=recipe.n_layers, d_model=recipe.d_model, d_head=recipe.d_model // 4, seed=recipe.seed))
    probe_cfg = json.dumps({"max_tokens": 300, "heldout_max_tokens": 128, "seq_len": 32, "batch_size": 4})
    args = ["run", "linguistic-collapse-sweep", "--device", "cpu", "--set", "depths=[1]", "--set", "widths=[16, 32]",
            "--set", "steps=[5]", "--set", f"probe={probe_cfg}"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "computed" in out.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "reused stored result" in again.output
    rows = [r for r in store.runs() if r["probe"] == "linguistic-collapse-sweep"]
    assert [r["status"] for r in rows] == ["reused", "done"] and rows[0]["key"] == rows[1]["key"]
    assert "does not apply" in _one_line_error(runner.invoke(app, [*args, "--model", "tiny"]))


_EARLY = '''
import json, sys, time
from typer.testing import CliRunner
from workbench.cli import app
cases = json.loads(sys.argv[1])
out = []
for args in cases:
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, args)
    out.append([r.exit_code, r.output, time.perf_counter() - t0])
print(json.dumps({"torch": "torch" in sys.modules, "answers": out}))
'''


def test_argument_mistakes_are_answered_before_torch_is_imported(tmp_path):
    """A wrong name, field, override, config file, option or rank count gets its one-line error
    from the cached catalogue, in a process that never imports torch."""
    import subprocess
    import sys

    from workbench.catalogue import catalogue

    catalogue()  # the listing cached (as after the first `workbench probes`)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    cases = {
        "Unknown analysis 'nope'; known probes:": ["run", "nope"],
        "Unknown field(s) ['bogus'] for ResidualNormsConfig": ["run", "residual-norms", "--set", "bogus=1"],
        "Expected key=value, got 'max_tokens'": ["run", "residual-norms", "--set", "max_tokens"],
        "must hold a JSON object": ["run", "residual-norms", "--config", str(listed)],
        "cannot be read": ["run", "residual-norms", "--config", str(tmp_path / "absent.json")],
        "is a study: it names its models": ["run", "linguistic-collapse-sweep", "--model", "tiny"],
        "is a report: it names its models": ["run", "key_space", "--corpus", "brown"],
        "dtype must be one of float32, bfloat16, float16, got 'float8'": ["run", "residual-norms", "--dtype", "float8"],
        "numerics must be one of raw, processed, got 'cooked'": ["run", "residual-norms", "--numerics", "cooked"],
        "--nproc takes a positive number of ranks or 'auto', got 'two'": ["run", "residual-norms", "--nproc", "two"],
        "Unknown analysis 'nope'; known": ["probes", "nope"],
        "'bigram-backcopy' has no default model: --model must name a Bigram-Backcopy checkpoint": ["run", "bigram-backcopy"],
    }
    done = subprocess.run([sys.executable, "-c", _EARLY, json.dumps(list(cases.values()))], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["torch"] is False  # nothing above needed torch
    for (words, args), (code, output, _) in zip(cases.items(), answer["answers"]):
        lines = [ln for ln in output.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (args, output)


def test_probes_explains_each_field_of_one_analysis():
    out = runner.invoke(app, ["probes", "sae-circuits"])
    assert out.exit_code == 0, out.output
    text = out.output
    assert text.startswith("sae-circuits (probe)") and "fields (workbench run sae-circuits --set field=value):" in text
    assert "positive/negative pairs (the paper: 250 + 250)" in text  # what the field means (its source comment)
    assert "why bounded: pairs held in memory" in text and "(min 2 max 10000)" in text  # its bound and why
    report = runner.invoke(app, ["probes", "key_space"]).output
    assert "key_space (report)" in report and "settings entries (--set preset=...): cpu, cpu-raw" in report
    assert "--model, --corpus and --numerics do not apply" in report


def test_show_puts_the_sae_quality_badge_beside_a_run_and_warns_when_weak(store):
    weak = {"text": "explained var. 0.815 · dead 65.3% · CE +0.870 nats · L0 64.0", "weak": True,
            "reasons": ["explained variance 0.815 < 0.9"]}
    run_id = store.start_run("k", "sae-features", "smollm2-135m", "raw", "brown", {}, "v")
    store.finish_run(run_id, "done", summary={"sae": "trained:15", "sae_quality": weak})
    out = runner.invoke(app, ["show", str(run_id)])
    assert out.exit_code == 0, out.output
    assert "SAE : WEAK: explained var. 0.815 · dead 65.3%" in out.output and "(explained variance 0.815 < 0.9)" in out.output
    ft = store.start_run("k2", "function-tokens", "smollm2-135m", "raw", "brown", {}, "v")
    store.finish_run(ft, "done", summary={"L15": {"sae_quality": {"text": "quality not measured", "weak": None, "reasons": []}}})
    assert "SAE L15: quality not measured" in runner.invoke(app, ["show", str(ft)]).output
