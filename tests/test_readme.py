"""The README's Python example runs as written (on the tiny model and a small slice)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path / "store"))
    blocks = python_blocks()
    assert blocks, "README has no python example"
    code = blocks[0]
    assert '"smollm2-135m"' in code and "20_000" in code  # the text users read names the defaults
    code = code.replace('"smollm2-135m"', '"tiny"').replace("20_000", "512")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    out, fig = scope["out"], scope["fig"]
    assert not out.reused and out.path.exists()
    assert len(scope["table"]) == scope["model"].cfg.n_layers + 1 and len(fig.data) >= 1
    assert str(out.run_id) in capsys.readouterr().out
