"""Reports, the third kind: a report added by following docs/ARCHITECTURE.md's guide (its own
package, installed with a `workbench.reports` entry point) is found through the entry point, runs
from `workbench run` and from the dashboard's queue, and is stored and reused like a probe."""

from __future__ import annotations

import textwrap

import pytest
from typer.testing import CliRunner

from workbench import probe_api
from workbench.cli import app

REPORT_MODULE = '''
from experiments.common import ReportSection
from experiments.reporting import report as register_report
from workbench.corpora import Corpus, Document
from workbench.models import load_model
from workbench.probe_api import get_probe
from workbench.runner import run_probe

PRESETS = {"cpu": {"max_tokens": 256}, "quick": {"max_tokens": 128}}


def run(out, quick=False, preset="cpu", device=None):
    spec = get_probe("residual-norms")
    model = load_model("tiny", numerics=spec.numerics, device=device or "cpu")
    corpus = Corpus("lab", "1", [Document(f"d{i}", "the cat sat on the mat " * 40, genre="g") for i in range(4)])
    cfg = {"max_tokens": PRESETS[preset]["max_tokens"], "seq_len": 32, "batch_size": 4}
    res = run_probe(spec, model, corpus, cfg).result
    out.mkdir(parents=True, exist_ok=True)
    tokens = res.summary().get("n_tokens", cfg["max_tokens"])
    return ReportSection(title="Lab tokens", markdown=f"**Verdict: untestable here**: {tokens} tokens streamed.", wall_s=0.1)


REPORT = register_report("lab_tokens", description="a report added by following the guide", presets=PRESETS, order=99,
                         module=__name__)
'''


@pytest.fixture
def lab_report(tmp_path, monkeypatch):
    """The guide's report as an installed package: its module and a dist-info with the entry point."""
    site = tmp_path / "site"
    (site / "labreport").mkdir(parents=True)
    (site / "labreport" / "__init__.py").write_text("")
    (site / "labreport" / "tokens.py").write_text(textwrap.dedent(REPORT_MODULE))
    info = site / "labreport-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labreport\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[workbench.reports]\nlab_tokens = labreport.tokens:REPORT\n")
    monkeypatch.syspath_prepend(str(site))
    probe_api.discover()  # the probes and studies, registered once per process
    monkeypatch.setattr(probe_api, "REGISTRY", dict(probe_api.REGISTRY))  # what this test registers leaves with it
    monkeypatch.setattr(probe_api, "_reports_discovered", False)
    yield "lab_tokens"
    import sys

    for name in [m for m in sys.modules if m == "labreport" or m.startswith("labreport.")]:
        del sys.modules[name]


def test_a_report_added_by_the_guide_is_found_through_its_entry_point(lab_report):
    spec = probe_api.get_spec(lab_report)
    assert isinstance(spec, probe_api.ReportSpec) and spec.kind == "report" and spec.module == "labreport.tokens"
    assert [r.name for r in probe_api.list_reports()][-1] == "lab_tokens"  # order 99: after the project's reports
    assert "lab_tokens" not in [s.name for s in probe_api.list_studies()]
    assert "labreport" in probe_api.project_packages()  # its code is in its results' code version


def test_a_report_runs_from_the_cli_and_is_reused_with_the_same_key(lab_report, store, tmp_path, monkeypatch):
    from experiments import reporting

    monkeypatch.setattr(reporting, "_OUTPUT", reporting.contextvars.ContextVar("out", default=tmp_path / "figs"))
    cli = CliRunner()
    args = ["run", lab_report, "--device", "cpu", "--set", "preset=quick"]
    first = cli.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = cli.invoke(app, args)
    assert again.exit_code == 0 and "reused stored result" in again.output, again.output
    rows = store.runs(probe=lab_report)
    assert [r["status"] for r in rows] == ["reused", "done"] and rows[0]["key"] == rows[1]["key"]
    parts = [r for r in store.runs(probe="residual-norms")]
    assert len(parts) == 2 and parts[0]["status"] == "reused"  # its probe run is a part, reused the second time
    other = cli.invoke(app, ["run", lab_report, "--device", "cpu", "--set", "preset=cpu"])  # another entry, another part
    assert other.exit_code == 0 and store.runs(probe=lab_report)[0]["key"] != rows[0]["key"]
    bad = cli.invoke(app, ["run", lab_report, "--set", "preset=gpu"])
    assert bad.exit_code != 0 and "no settings entry 'gpu'" in bad.output
    assert "does not apply" in cli.invoke(app, [*args, "--model", "tiny"]).output


def test_a_report_queued_from_the_dashboard_runs_in_the_worker(lab_report, store, tmp_path, monkeypatch):
    from dashboards.jobs import STUDY_MODEL, check_request
    from dashboards.worker import Worker
    from experiments import reporting

    monkeypatch.setattr(reporting, "_OUTPUT", reporting.contextvars.ContextVar("out", default=tmp_path / "figs"))
    req = check_request(lab_report, "anything", None, {"preset": "quick"})
    assert req.model == STUDY_MODEL and req.config == {"preset": "quick"}
    ids = [store.start_run("queued", req.probe, req.model, req.numerics, None, req.config, "", status="queued",
                           request_extra={"dtype": req.dtype}) for _ in range(2)]
    assert Worker(store).run(ids[0]) == "done"
    assert Worker(store).run(ids[1]) == "reused"
    rows = [store.get_run(i) for i in ids]
    assert rows[0]["key"] == rows[1]["key"] and rows[0]["model"] == "report"
    from workbench.runner import result_of_run

    stored = result_of_run(ids[0], store, expect=lab_report)  # the section, read through the store's verified path
    assert stored.verdict == "untestable here" and stored.title == "Lab tokens" and stored.finding.endswith("tokens streamed.")
