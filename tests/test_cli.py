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
