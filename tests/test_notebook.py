"""The example notebook: its stored copy is the regeneration script's cells with outputs from the
embedded model (a PNG beside every figure), and it runs top to bottom (nbclient) on the tiny model
with its figures, the attention view, direct logit attribution, patching and the app."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parent.parent
NOTEBOOK = ROOT / "experiments" / "example_notebook.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"


def _script():
    spec = importlib.util.spec_from_file_location("regenerate_notebook", ROOT / "scripts" / "regenerate_notebook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_the_stored_notebook_is_the_scripts_cells_with_outputs_from_the_embedded_model():
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in stored.cells] == [c.source for c in _script().build().cells]
    outputs = _outputs(stored)
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if PLOTLY in o.get("data", {})]
    assert len(figures) >= 6 and all("image/png" in o["data"] for o in figures)  # visible where no script runs
    text = json.dumps(outputs)
    assert "SmolLM2" in text or "smollm2" in text
    logit, total = map(float, re.search(r"logit (-?[\d.]+), sum of the terms (-?[\d.]+)", text).groups())
    assert abs(logit - total) < 1e-2


def test_example_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("WORKBENCH_NOTEBOOK_MODEL", "tiny")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for c in nb.cells:
        c.outputs = [] if c.cell_type == "code" else None
        if c.cell_type != "code":
            c.pop("outputs")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"], [o.get("evalue") for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if PLOTLY in o.get("data", {})]
    assert len(figures) >= 6  # the result's own figure, two probe figures, top-k, lens, DLA, patching
    html = json.dumps([o.get("data", {}).get("text/html", "") for o in outputs])
    assert "ResidualNormsResult" in html  # the result's summary table
    assert "attention-view" in html  # the hover view rendered
    assert "IProgress not found" not in json.dumps([o.get("text", "") for o in outputs])  # widgets, not a warning
    text = json.dumps([o.get("text", "") for o in outputs])
    assert "dashboard answers: 200" in text
    logit, total = map(float, re.search(r"logit (-?[\d.]+), sum of the terms (-?[\d.]+)", text).groups())
    assert abs(logit - total) < 1e-2
    pages = json.dumps([o.get("data", {}).get("text/plain", "") for o in outputs])
    assert "Home" in pages and "Model explorer" in pages


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_a_result_shows_its_summary_and_main_figure(tiny, brown, store):
    """`_repr_html_` (any HTML front end) and the figure plugin the dashboard registers."""
    from workbench.display import figure_builders, main_figure
    from workbench.runner import run_probe

    res = run_probe("residual-norms", tiny, brown, {"max_tokens": 256, "seq_len": 64}, store=store).result
    assert figure_builders(), "the dashboard's figure plugin is not registered (pip install -e .)"
    fig = main_figure(res)
    assert fig is not None and any(len(t.y) == tiny.cfg.n_layers + 1 for t in fig.data)  # one point per layer
    page = res._repr_html_()
    assert "ResidualNormsResult" in page and "final_top1" in page and "plotly" in page.lower()
    assert main_figure(object()) is None


def test_a_result_in_terminal_ipython_prints_its_summary_as_text(store, tmp_path):
    """A real terminal IPython (its stdin piped): typing a result prints its summary as text; no
    `<IPython.core.display.HTML object>`, no browser, no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("from workbench.models import load_model\n"
              "from workbench.corpora import Corpus, Document\n"
              "from workbench.runner import run_probe\n"
              "m = load_model('tiny', device='cpu')\n"
              "c = Corpus('t', '1', [Document('d', 'the cat sat on the mat ' * 60, genre='g')])\n"
              "r = run_probe('residual-norms', m, c, {'max_tokens': 128, 'seq_len': 32}).result\n"
              "r\n")
    ipython = Path(sys.executable).with_name("ipython")
    out = subprocess.run([str(ipython), "--simple-prompt", "--no-banner", "--colors=NoColor"], input=script, text=True,
                         capture_output=True, timeout=120, env={**__import__("os").environ, "BROWSER": "false"})
    text = out.stdout + out.stderr
    assert "ResidualNormsResult" in text and "final_top1:" in text, text[-2000:]
    assert "IPython.core.display.HTML object" not in text and "Traceback" not in text and "browser" not in text.lower(), text[-2000:]
