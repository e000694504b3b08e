"""How a Result shows itself in Jupyter: its summary as a table and its main figure.

The kernel draws nothing itself. Figure builders are plugins found through the entry-point group
`workbench.figures` (the dashboard package registers one: `dashboards.notebook:main_figure`, a
function from a Result to a Plotly figure or None). So `result` as the last line of a cell shows
the summary and the figure; `result.show()` does the same from anywhere in a cell.
"""

from __future__ import annotations

import html
import json
from importlib.metadata import entry_points
from typing import Any, Callable

GROUP = "workbench.figures"
_builders: list[Callable[[Any], Any]] | None = None
_plotly_js_sent = False


def figure_builders() -> list[Callable[[Any], Any]]:
    """The registered main-figure builders (loaded once; one that fails to import is skipped)."""
    global _builders
    if _builders is None:
        _builders = []
        for ep in entry_points(group=GROUP):
            try:
                _builders.append(ep.load())
            except Exception:  # noqa: BLE001 - a broken plugin must not break a notebook
                continue
    return _builders


def main_figure(result: Any):
    """The first figure a builder returns for `result`, else None."""
    for build in figure_builders():
        fig = build(result)
        if fig is not None:
            return fig
    return None


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return html.escape(json.dumps(v, default=str)[:300])
    return html.escape(str(v))


def summary_html(result: Any) -> str:
    """The result's type, model, corpus and summary as an HTML table."""
    meta = result.meta or {}
    model = meta.get("model", {})
    where = " · ".join(x for x in (str(model.get("id", "")) if isinstance(model, dict) else str(model), str(meta.get("corpus", "") or "")) if x)
    rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>"
                   for k, v in (result.summary() or {}).items())
    return (f"<div class='wb-result'><strong>{html.escape(type(result).__name__)}</strong>"
            f"{' · ' + html.escape(where) if where else ''}<table>{rows}</table></div>")


def result_html(result: Any) -> str:
    """Summary and main figure as one HTML fragment (plotly.js embedded once per process, so it works offline)."""
    global _plotly_js_sent
    fig = main_figure(result)
    part = ""
    if fig is not None:
        part = fig.to_html(full_html=False, include_plotlyjs=not _plotly_js_sent)
        _plotly_js_sent = True
    return summary_html(result) + part


def summary_text(result: Any) -> str:
    """The result's type, model, corpus and summary as plain text (a terminal has no HTML or figures)."""
    meta = result.meta or {}
    model = meta.get("model", {})
    where = " · ".join(x for x in (str(model.get("id", "")) if isinstance(model, dict) else str(model), str(meta.get("corpus", "") or "")) if x)
    rows = [f"  {k}: {json.dumps(v, default=str)[:300] if isinstance(v, (dict, list)) else (f'{v:.4g}' if isinstance(v, float) else v)}"
            for k, v in (result.summary() or {}).items()]
    return "\n".join([type(result).__name__ + (f" · {where}" if where else ""), *rows])


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (which draws HTML and figures), not in a terminal IPython or plain Python."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show(result: Any) -> None:
    """Display the summary and the main figure (as Plotly's own output, so it stays interactive); in
    a terminal, print the summary as text (with a hint for the figure)."""
    if not in_notebook():
        print(summary_text(result) + "\n  (figures: in a notebook, or `workbench dashboard`)")
        return
    from IPython.display import HTML, display

    display(HTML(summary_html(result)))
    fig = main_figure(result)
    if fig is not None:
        display(fig)
