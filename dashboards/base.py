"""What every dashboard page shares: the page contract, the app context (store, models, cached
results) and small components (run picker, figure card with exports, error box).

A page module exposes `PAGE = DashPage(...)`. `layout()` builds its components; `register(app, ctx)`
adds its callbacks. Pages read results from the store by run id and draw them with the figure
builders in `dashboards.figures` (which return plain Plotly figures, so they also work in notebooks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from dash import Dash, dcc, html

from dashboards.cache import LRU
from workbench.prompt_analysis import MAX_PROMPT_CHARS, check_prompt  # noqa: F401  (the pages' prompt bound)
from workbench.results import Result
from workbench.store import ResultStore, parse_run_id

MAX_MODELS = 3  # models the app keeps loaded at once
MAX_RESULTS = 16  # stored results the app keeps in memory


@dataclass
class AppState:
    """Shared state of one running app: the store, lazily loaded models, and a small result cache."""

    store: ResultStore
    default_model: str = "smollm2-135m"
    model_loader: Callable[..., Any] | None = None
    jobs: Any = None  # dashboards.jobs.JobManager, set by the app
    device: str = "cpu"  # where the app loads models (the run worker owns the GPU)
    probe_pages: dict[str, str] = field(default_factory=dict)  # probe name -> page path
    _models: LRU = field(default_factory=lambda: LRU(MAX_MODELS))
    _results: LRU = field(default_factory=lambda: LRU(MAX_RESULTS))

    def model(self, name: str | None = None, numerics: str = "raw"):
        """Load (once) and return a model. Only registry names are accepted (see `model_names`)."""
        name = name or self.default_model
        check_model_name(name, extra=(self.default_model,))
        return self._cached_model(name, numerics)

    def model_of(self, result: Result):
        """The model a stored result was computed on: a registry name, or a workbench checkpoint at
        the path the store recorded (never a path typed by a user). One cache for the whole app."""
        m = result.meta.get("model", {})
        numerics = result.meta.get("numerics", "raw")
        if m.get("source") == "checkpoint" and m.get("path"):
            return self._cached_model(str(m["path"]), numerics)
        return self.model(m.get("id"), numerics=numerics)

    def _cached_model(self, name: str, numerics: str):
        def load():
            if self.model_loader is not None:
                return self.model_loader(name, numerics=numerics)
            from workbench.models import load_model

            return load_model(name, numerics=numerics, device=self.device)

        return self._models.get((name, numerics), load)

    def result(self, run_id: int) -> Result:
        """The stored result of a finished run (cached, at most 16 in memory)."""
        from workbench.runner import result_of_run

        asked = run_id
        run_id = parse_run_id(run_id)
        if run_id is None:
            raise LookupError(f"{str(asked)[:40]!r} is not a run id")
        return self._results.get(run_id, lambda: result_of_run(run_id, self.store))

    def finished_runs(self, probes: str | tuple[str, ...]) -> list[dict]:
        """Finished runs of one probe (or study) or of several, newest first."""
        names = (probes,) if isinstance(probes, str) else tuple(probes)
        rows = [r for name in names for r in self.store.runs(limit=500, probe=name) if r["status"] in ("done", "reused")]
        return sorted(rows, key=lambda r: -r["run_id"])


def model_names() -> list[str]:
    """Model names the dashboard offers: the embedded model and the tiny presets (no paths, no hub)."""
    from workbench.models import list_models

    return [m["name"] for m in list_models() if m["source"] in ("embedded", "tiny")]


def check_model_name(name: Any, extra: tuple[str, ...] = ()) -> str:
    """`name` if it is a registry model name (or one the app was started with), else a clear error."""
    from workbench.errors import ConfigError

    allowed = model_names()
    if not isinstance(name, str) or (name not in allowed and name not in extra):
        shown = repr(name)[:80]
        raise ConfigError(f"unknown model {shown}; choose one of: {', '.join(allowed)}")
    return name


@dataclass
class DashPage:
    path: str
    name: str
    layout: Callable[[], Any]
    register: Callable[[Dash, AppState], None] = lambda app, ctx: None
    probe: str | None = None
    order: int = 100
    also_shows: tuple[str, ...] = ()  # other probes or studies whose runs this page opens


def run_options(ctx: AppState, probes: str | tuple[str, ...]) -> list[dict]:
    """Dropdown options for the finished runs of a probe (or several), newest first."""
    seen, out = set(), []
    for r in ctx.finished_runs(probes):
        if r["key"] in seen:
            continue
        seen.add(r["key"])
        out.append({"label": run_label(r), "value": r["run_id"]})
    return out


def run_label(r: dict) -> str:
    return f"#{r['run_id']} {r['model']} [{r['numerics']}] {r['corpus'] or ''}"


def run_picker(component_id: str, what: str) -> html.Div:
    """A dropdown of stored runs; its options are filled by `register_run_picker`."""
    return html.Div(
        [html.Label("Stored run", htmlFor=component_id), dcc.Dropdown(id=component_id, placeholder=f"choose a run ({what})", clearable=False)],
        className="run-picker",
    )


def register_run_picker(app: Dash, ctx: AppState, component_id: str, probes: str | tuple[str, ...]) -> None:
    """Fill the picker when its page opens; `?run=<id>` in the address selects that run."""
    from dash import Input, Output, State

    names = (probes,) if isinstance(probes, str) else tuple(probes)

    @app.callback(Output(component_id, "options"), Output(component_id, "value"), Input("url", "pathname"), State("url", "search"))
    def _fill(_path, search):
        return picker_state(ctx, names, run_from_search(search))


def picker_state(ctx: AppState, probes: str | tuple[str, ...], wanted: int | None) -> tuple[list[dict], int | None]:
    """A picker's options and value: `wanted` when it is a finished run of one of `probes` (added to
    the options if the list left it out), else the newest run, else None."""
    names = (probes,) if isinstance(probes, str) else tuple(probes)
    opts = run_options(ctx, names)
    if wanted is not None and wanted not in {o["value"] for o in opts}:
        row = ctx.store.get_run(wanted)
        if row is not None and row["probe"] in names and row["status"] in ("done", "reused"):
            opts.insert(0, {"label": run_label(row), "value": wanted})
        else:
            wanted = None
    return opts, (wanted if wanted is not None else opts[0]["value"] if opts else None)


def sae_badge(quality: dict | None, badge_id: str | None = None) -> html.Span:
    """The quality badge beside an SAE (explained variance, dead share, CE increase, L0; see
    `workbench.saes.quality_badge`), marked weak, with the reasons, where it is."""
    from workbench.saes.quality import quality_badge

    b = quality_badge(quality)
    state = "unknown" if b["weak"] is None else "weak" if b["weak"] else "ok"
    label = {"weak": "weak SAE: ", "ok": "SAE: ", "unknown": "SAE "}[state] + b["text"]
    extra = {"id": badge_id} if badge_id else {}
    return html.Span(label, className=f"sae-badge sae-{state}", title="; ".join(b["reasons"]) or label,
                     **{"data-weak": state}, **extra)


def feature_href(sae_source: str, feature: int) -> str:
    """The address of an SAE feature's page, by the SAE's source (what every page naming a feature knows)."""
    from urllib.parse import quote

    return f"/sae-features?sae={quote(str(sae_source), safe='')}&feature={int(feature)}"


def run_from_search(search: str | None) -> int | None:
    """The run id in a query string like `?run=12` (None when absent or not an integer)."""
    from urllib.parse import parse_qs

    values = parse_qs((search or "")[:4096].lstrip("?")).get("run", [])
    return parse_run_id(values[0]) if values else None


GRAPH_CONFIG = {
    "displaylogo": False,
    "modeBarButtonsToRemove": ["lasso2d", "select2d", "autoScale2d", "zoomIn2d", "zoomOut2d"],
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
            dcc.Loading(dcc.Graph(id=graph(graph_id), config=GRAPH_CONFIG), type="dot", delay_show=400),  # no flash for quick updates
            html.Div(
                [
                    html.Button("SVG", id={"type": "export-svg", "id": graph_id}, className="export-btn"),
                    html.Button("HTML", id={"type": "export-html", "id": graph_id}, className="export-btn"),
                    dcc.Download(id={"type": "export-download", "id": graph_id}),  # SVG
                    dcc.Download(id={"type": "export-download-html", "id": graph_id}),
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


# ----------------------------------------------------------------------------- what a page says about its run

FIRST_LOOK = "first-look"
CPU_PRESET = "workbench figures --preset cpu"


def run_note(note_id: str) -> html.Div:
    """Where a page says what it shows: an empty state with a one-click run, a first-look banner,
    or why the run in the address is not the one shown (filled by `register_run_note`)."""
    return html.Div(id=note_id, className="run-note", role="status")


def register_run_note(app: Dash, ctx: AppState, picker_id: str, note_id: str, probe: str, also: tuple[str, ...] = ()) -> None:
    """Fill `note_id` from the picker's run: "No <probe> run yet" with a "Run with defaults" button
    and the time it should take here; the label of a first-look run and how to get the report's
    numbers; a `?run=` that names a run of another probe (`also`: other probes the picker offers)."""
    from dash import Input, Output, State

    @app.callback(Output(note_id, "children"), Input(picker_id, "value"), State("url", "search"))
    def _note(run_id, search):
        parts = []
        wanted = run_from_search(search)
        if wanted is not None and wanted != run_id:
            row = ctx.store.get_run(wanted)
            what = ("no such run" if row is None else f"a {row['probe']} run" if row["probe"] not in (probe, *also)
                    else f"{row['status']}, not finished")
            parts.append(html.P(f"Run #{wanted} in the address is {what}; "
                                + (f"showing #{run_id} instead." if run_id is not None else "nothing to show."),
                                className="warning", id=f"{note_id}-wrong-run"))
        if run_id is None:
            parts.append(empty_state(ctx, probe, note_id))
            return parts
        row = ctx.store.get_run(run_id)
        label = (row or {}).get("label") or ""
        if label.startswith(FIRST_LOOK):
            budget = label.split(":", 1)[1].strip() if ":" in label else ""
            parts.append(html.P([html.Strong("First look"), f" (budget: {budget}). For the report's numbers run ",
                                 html.Code(CPU_PRESET), " (about 5 h 30 min on a 2-core CPU)."], className="first-look"))
        return parts


def empty_state(ctx: AppState, probe: str, note_id: str) -> html.Div:
    """No stored run yet: what to run, in one click, and how long it should take here."""
    from workbench.probe_api import get_probe

    spec = get_probe(probe)
    took = estimate_text(ctx, spec)
    return html.Div([
        html.P([html.Strong(f"No {probe} run yet. "), f"Run it on {spec.default_model} with its defaults{took}: ",
                html.Button("Run with defaults", id={"type": "run-defaults", "probe": probe}, className="primary-btn"),
                " — or from a terminal: ", html.Code(f"workbench run {probe}"), "; or fill every page at once with ",
                html.Code("workbench figures --preset first-look"), "."]),
        html.Div(id={"type": "run-defaults-status", "probe": probe}, className="run-defaults-status"),
    ], className="empty-state", id=f"{note_id}-empty")


def estimate_text(ctx: AppState, spec) -> str:
    """", about 4 min here" from the probe's cost model and this machine's measured speed ("" when
    the probe has none or the model cannot be loaded)."""
    from workbench.config import config_from_dict
    from workbench.cost import estimate_seconds
    from workbench.progress import format_seconds

    if getattr(spec, "cost", None) is None:
        return ""
    try:
        model = ctx.model(spec.default_model, numerics=spec.numerics)
        seconds = estimate_seconds(spec, config_from_dict(spec.config_cls, {}), model)
    except Exception:  # noqa: BLE001 - an estimate is a courtesy; the button still works
        return ""
    return "" if seconds is None else f" (about {format_seconds(seconds)} here)"


def register_run_defaults(app: Dash, ctx: AppState) -> None:
    """Every page's "Run with defaults" button queues its probe to the worker (app-wide, once)."""
    from dash import MATCH, Input, Output, State

    @app.callback(Output({"type": "run-defaults-status", "probe": MATCH}, "children"),
                  Input({"type": "run-defaults", "probe": MATCH}, "n_clicks"),
                  State({"type": "run-defaults", "probe": MATCH}, "id"), prevent_initial_call=True)
    def _queue(n, ident):
        from workbench.probe_api import get_probe

        if not n:
            return ""
        try:
            spec = get_probe(ident["probe"])
            run_id = ctx.jobs.submit(spec.name, spec.default_model, spec.default_corpus, {})
        except Exception as e:  # noqa: BLE001 - shown on the page
            return error_message(e)
        return html.Span(["Queued as run ", html.A(f"#{run_id}", href="/"), ": follow its progress on Home; this page "
                          "shows it when it is done (reload)."])
