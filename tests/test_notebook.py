"""The example notebook runs top to bottom (nbclient) and shows its figures and the app."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "experiments" / "example_notebook.ipynb"


def test_example_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path / "store"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) >= 6  # three probe figures, three explorer figures
    text = json.dumps([o.get("text", "") for o in outputs])
    assert "dashboard answers: 200" in text
    pages = json.dumps([o.get("data", {}).get("text/plain", "") for o in outputs])
    assert "Home" in pages and "Model explorer" in pages


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(Path(__file__).parent.parent)
