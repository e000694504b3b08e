"""What every dashboard page shares: the page contract, the app context (store, models, cached
results) and small components (run picker, figure card with exports, error box).

A page module exposes `PAGE = DashPage(...)`. `layout()` builds its components; `register(app, ctx)`
adds its callbacks. Pages read results from the store by run id and draw them with the figure
builders in `dashboards.figures` (which return plain Plotly figures, so they also work in notebooks).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from dash import Dash, dcc, html

from workbench.results import Result
from workbench.store import ResultStore

MAX_PROMPT_CHARS = 2000  # input bound for every free-text prompt box


@dataclass
class AppContext:
    """Shared state of one running app: the store, lazily loaded models, and a small result cache."""

    store: ResultStore
    default_model: str = "smollm2-135m"
    model_loader: Callable[..., Any] | None = None
    _models: dict[tuple[str, str], Any] = field(default_factory=dict)
    _results: "OrderedDict[int, Result]" = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def model(self, name: str | None = None, numerics: str = "raw"):
        """Load (once) and return a model; names are checked by the loader, never evaluated."""
        name = name or self.default_model
        key = (name, numerics)
        with self._lock:
            if key not in self._models:
                loader = self.model_loader
                if loader is None:
                    from workbench.models import load_model as loader
                self._models[key] = loader(name, numerics=numerics)
            return self._models[key]

    def result(self, run_id: int) -> Result:
        """The stored result of a finished run (cached, at most 16 in memory)."""
        from workbench.probe_api import get_probe

        with self._lock:
            if run_id in self._results:
                self._results.move_to_end(run_id)
                return self._results[run_id]
        row = self.store.get_run(int(run_id))
        if row is None or row["status"] not in ("done", "reused") or not row["artifact"]:
            raise LookupError(f"run {run_id} has no stored result")
        res = get_probe(row["probe"]).result_cls.load(row["artifact"])
        with self._lock:
            self._results[run_id] = res
            while len(self._results) > 16:
                self._results.popitem(last=False)
        return res

    def finished_runs(self, probe: str) -> list[dict]:
        return [r for r in self.store.runs(limit=500, probe=probe) if r["status"] in ("done", "reused")]


@dataclass
class DashPage:
    path: str
    name: str
    layout: Callable[[], Any]
    register: Callable[[Dash, AppContext], None] = lambda app, ctx: None
    probe: str | None = None
    order: int = 100


def run_options(ctx: AppContext, probe: str) -> list[dict]:
    """Dropdown options for the finished runs of a probe, newest first."""
    seen, out = set(), []
    for r in ctx.finished_runs(probe):
        if r["key"] in seen:
            continue
        seen.add(r["key"])
        label = f"#{r['run_id']} {r['model']} [{r['numerics']}] {r['corpus'] or ''}"
        out.append({"label": label, "value": r["run_id"]})
    return out


def run_picker(component_id: str, probe: str) -> html.Div:
    """A dropdown of stored runs; its options are filled by `register_run_picker`."""
    return html.Div(
        [html.Label("Stored run", htmlFor=component_id), dcc.Dropdown(id=component_id, placeholder=f"choose a {probe} run", clearable=False)],
        className="run-picker",
    )


def register_run_picker(app: Dash, ctx: AppContext, component_id: str, probe: str) -> None:
    from dash import Input, Output

    @app.callback(Output(component_id, "options"), Output(component_id, "value"), Input("url", "pathname"))
    def _fill(_path):
        opts = run_options(ctx, probe)
        return opts, (opts[0]["value"] if opts else None)


GRAPH_CONFIG = {
    "displaylogo": False,
    "toImageButtonOptions": {"format": "png", "scale": 2},
    "modeBarButtonsToAdd": ["toImage"],
}


def graph(graph_id: str) -> dict:
    """The component id of a figure card's graph: use it in callbacks, `Output(graph("x"), "figure")`."""
    return {"type": "wb-graph", "id": graph_id}


def figure_card(graph_id: str, title: str, description: str = "") -> html.Div:
    """A titled graph with PNG (modebar), SVG and HTML export buttons (handled app-wide)."""
    return html.Div(
        [
            html.H4(title),
            html.P(description, className="figure-description") if description else None,
            dcc.Loading(dcc.Graph(id=graph(graph_id), config=GRAPH_CONFIG), type="dot"),
            html.Div(
                [
                    html.Button("SVG", id={"type": "export-svg", "id": graph_id}, className="export-btn"),
                    html.Button("HTML", id={"type": "export-html", "id": graph_id}, className="export-btn"),
                    dcc.Download(id={"type": "export-download", "id": graph_id}),
                ],
                className="export-row",
            ),
        ],
        className="figure-card",
    )


def error_box(component_id: str) -> html.Div:
    return html.Div(id=component_id, className="error-box", role="alert")


def error_message(e: BaseException) -> html.Div:
    """A readable error for the page (never a traceback dump, never a dead app)."""
    return html.Div([html.Strong(type(e).__name__ + ": "), html.Span(str(e))], className="error")
