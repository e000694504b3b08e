"""The dashboard app: a shell with navigation over every page in `dashboards/pages/`.

A page module exposes `PAGE = DashPage(...)`; pages are sorted by `order`. A module that fails to
import (or whose `register` fails) does not take the app down: it shows up in the navigation as a
broken entry whose page explains the error.

    from dashboards.app import create_app, serve
    app = create_app()          # a Dash object (also usable in Jupyter: app.run(jupyter_mode="inline"))
    serve(port=8050)            # http://127.0.0.1:8050
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dash import Dash, Input, Output, dcc, html, set_props

from dashboards.base import AppState, DashPage, error_message, register_run_defaults
from dashboards.exports import register_export_callbacks
from dashboards.graphs import register_graph_callbacks
from dashboards.guard import LOOPBACK_NAMES, allowed_hosts_for, guard_requests
from dashboards.jobs import JobManager
from workbench.store import ResultStore

log = logging.getLogger("workbench.dashboard")
ASSETS = Path(__file__).parent / "assets"
APP_ERROR = "app-error"  # the page-wide alert where a failed callback says what went wrong


@dataclass
class BrokenPage:
    """A page module that could not be loaded, shown as an error entry."""

    module: str
    path: str
    error: str
    detail: str


def discover_pages(package: str = "dashboards.pages") -> tuple[list[DashPage], list[BrokenPage]]:
    """Import every module of `package` that exposes PAGE; import errors become BrokenPage entries."""
    pkg = importlib.import_module(package)
    pages: list[DashPage] = []
    broken: list[BrokenPage] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        modname = f"{package}.{info.name}"
        try:
            mod = importlib.import_module(modname)
        except Exception as e:  # a broken page must not kill the app
            broken.append(BrokenPage(modname, "/broken/" + info.name, f"{type(e).__name__}: {e}", traceback.format_exc(limit=3)))
            log.error("page %s failed to import: %s", modname, e)
            continue
        page = getattr(mod, "PAGE", None)
        if isinstance(page, DashPage):
            pages.append(page)
        elif page is not None:
            broken.append(BrokenPage(modname, "/broken/" + info.name, "PAGE is not a DashPage", ""))
    pages.sort(key=lambda p: (p.order, p.name))
    return pages, broken


def _nav(pages: list[DashPage], broken: list[BrokenPage], current: str) -> list[Any]:
    def link(path: str, name: str, extra: str = "") -> dcc.Link:
        cls = "nav-link" + (" active" if path == current else "") + extra
        return dcc.Link(name, href=path, className=cls)

    core = [p for p in pages if p.probe is None]
    probes = [p for p in pages if p.probe is not None]
    items: list[Any] = [link(p.path, p.name) for p in core]
    if probes:
        items.append(html.Div("Probes", className="nav-section"))
        items += [link(p.path, p.name) for p in probes]
    if broken:
        items.append(html.Div("Not loaded", className="nav-section"))
        items += [link(b.path, b.module.rsplit(".", 1)[-1], " broken") for b in broken]
    return items


def _broken_layout(b: BrokenPage) -> html.Div:
    return html.Div(
        [
            html.H2(f"Page {b.module} could not be loaded"),
            html.Div([html.Strong("error: "), html.Span(b.error)], className="error"),
            html.Pre(b.detail, className="traceback") if b.detail else None,
        ]
    )


def create_app(
    store: ResultStore | None = None,
    model: str = "smollm2-135m",
    model_loader: Callable[..., Any] | None = None,
    pages_package: str = "dashboards.pages",
    title: str = "Interpretability workbench",
    device: str = "cpu",
    worker_device: str | None = None,
    allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES,
) -> Dash:
    """Build the Dash app over a result store (default: the workbench store).

    allowed_hosts: the Host names it answers to (`dashboards.guard`; None: any); request bodies
    are capped at MAX_REQUEST_BYTES. A callback that fails shows its error in the page's alert
    area instead of answering HTTP 500.

    model: the model the explorer starts with; model_loader: `(name, numerics=...) -> model`
    (default `workbench.models.load_model`). The app's context is `app.workbench_ctx`.
    device: where the app itself loads models (the explorer, live views): the CPU by default, so
    that the run worker, which owns the GPU (`worker_device`, default: CUDA when present), is the
    only process holding model weights there.
    """

    store = store or ResultStore()
    ctx = AppState(store=store, default_model=model, model_loader=model_loader, device=device)
    ctx.jobs = JobManager(store, device=worker_device)
    pages, broken = discover_pages(pages_package)

    app = Dash(
        __name__, title=title, assets_folder=str(ASSETS), suppress_callback_exceptions=True, update_title=None,
        serve_locally=True, on_error=_show_error,
    )
    guard_requests(app.server, allowed_hosts)
    app.workbench_ctx = ctx
    register_export_callbacks(app)
    register_graph_callbacks(app)
    register_run_defaults(app, ctx)

    ok: list[DashPage] = []
    for page in pages:
        try:
            page.register(app, ctx)
        except Exception as e:
            broken.append(BrokenPage(page.layout.__module__, "/broken/" + page.path.strip("/"), f"{type(e).__name__}: {e}", traceback.format_exc(limit=3)))
            log.error("page %s failed to register: %s", page.name, e)
            continue
        ok.append(page)
        for name in ([page.probe] if page.probe else []) + list(page.also_shows):
            ctx.probe_pages.setdefault(name, page.path)
    by_path = {p.path: p for p in ok}
    broken_by_path = {b.path: b for b in broken}
    app.workbench_pages, app.workbench_broken = ok, broken

    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            html.Nav(
                [
                    html.Div([html.Span("◆", className="brand-mark"), html.Span("workbench")], className="brand"),
                    html.Div(_nav(ok, broken, "/"), id="nav-links", className="nav-links"),
                    html.Div([html.Div(f"store: {store.root}", title=str(store.root)), html.Div(f"explorer model: {model}")], className="nav-footer"),
                ],
                className="sidebar",
            ),
            html.Main([html.Div(id=APP_ERROR, className="error-box app-error", role="alert"), html.Div(id="page-content")],
                      className="content"),
        ],
        className="shell",
    )

    @app.callback(Output(APP_ERROR, "children"), Input("url", "pathname"))
    def _clear_error(_pathname):
        return ""  # a new page starts without the last page's error

    @app.callback(Output("page-content", "children"), Output("nav-links", "children"), Input("url", "pathname"))
    def _route(pathname: str | None):
        path = pathname if isinstance(pathname, str) else "/"
        nav = _nav(ok, broken, path)
        page = by_path.get(path)
        if page is not None:
            try:
                body = page.layout()
            except Exception as e:
                log.exception("layout of %s failed", page.name)
                body = html.Div([html.H2(page.name), error_message(e)])
            return html.Div(body, id="page-root", className="page", **{"data-page": page.path}), nav
        if path in broken_by_path:
            return html.Div(_broken_layout(broken_by_path[path]), id="page-root", className="page", **{"data-page": path}), nav
        return html.Div(
            [html.H2("Page not found"), html.P(["No page at ", html.Code(path), ". ", dcc.Link("Back to Home", href="/")])],
            id="page-root", className="page", **{"data-page": "404"},
        ), nav

    return app


def _show_error(err: Exception) -> None:
    """Every callback's last resort: its error, in one line, in the page's alert area (the
    callback's own outputs stay as they were), never an HTTP 500 with a dead widget."""
    log.warning("a callback failed: %s: %s", type(err).__name__, err)
    set_props(APP_ERROR, {"children": error_message(err)})


def serve(host: str = "127.0.0.1", port: int = 8050, model: str = "smollm2-135m", debug: bool = False,
          device: str = "cpu", worker_device: str | None = None, allow_hosts: tuple[str, ...] = ()) -> None:
    """Start the dashboard; the explorer's model loads in the background right away."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    allowed = allowed_hosts_for(host, allow_hosts)
    if allowed is None:
        log.warning("listening on every interface and answering to any host name; --allow-host NAME restricts it")
    app = create_app(model=model, device=device, worker_device=worker_device, allowed_hosts=allowed)
    ctx: AppState = app.workbench_ctx

    def preload() -> None:
        log.info("loading %s for the model explorer (in the background; pages work meanwhile)", model)
        try:
            ctx.model(model)
            log.info("model %s loaded", model)
        except Exception as e:  # the explorer will show the error when it is used
            log.error("could not load %s: %s", model, e)

    threading.Thread(target=preload, daemon=True, name="preload-model").start()
    ctx.jobs.start_worker()  # warm: the first run started from Home does not wait for imports
    log.info("dashboard on http://%s:%d (store %s)", host, port, ctx.store.root)
    app.run(host=host, port=port, debug=debug, use_reloader=False)
