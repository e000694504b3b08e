"""Home: the run registry (every stored run, live progress for running ones) and a form that starts
a run of any registered probe in the background worker."""

from __future__ import annotations

import json
import time
from typing import Any

from dash import ALL, Dash, Input, Output, State, callback_context, dcc, html, no_update

from dashboards.base import AppState, DashPage, error_message, model_names
from dashboards.jobs import ACTIVE, FieldSpec, corpus_names, form_fields, form_to_config
from workbench.models.info import DTYPES
from workbench.probe_api import (
    StudySpec,
    describe_config,
    get_spec,
    list_probes,
    list_reports,
    list_studies,
)
from workbench.store import parse_run_id

MAX_ROWS = 100


def _field_widget(f: FieldSpec) -> html.Div:
    fid = {"type": "home-cfg", "field": f.name}
    if f.widget == "bool":
        w = dcc.RadioItems(id=fid, options=[{"label": "true", "value": True}, {"label": "false", "value": False}],
                           value=f.default, inline=True, className="radio-inline")
    elif f.widget == "choice":
        w = dcc.Dropdown(id=fid, options=[{"label": str(c), "value": c} for c in (f.choices or [])], value=f.default, clearable=False)
    elif f.widget == "number":
        w = dcc.Input(id=fid, type="number", value=f.initial(), step="any" if f.type == "float" else 1, debounce=True)
    else:
        w = dcc.Input(id=fid, type="text", value=f.initial(), placeholder="none" if f.optional else "", debounce=True, maxLength=500)
    return html.Div([html.Label(f.name, title=f.type), w, html.Span(f.type, className="field-type")], className="form-field")


def _probe_options() -> list[dict]:
    """Every probe, then every study and report (they name their own models and corpora in their config)."""
    return ([{"label": s.name, "value": s.name} for s in list_probes()]
            + [{"label": f"{s.name} ({s.kind})", "value": s.name} for s in [*list_studies(), *list_reports()]])


def layout() -> html.Div:
    probes = _probe_options()
    first = "residual-norms" if any(p["value"] == "residual-norms" for p in probes) else (probes[0]["value"] if probes else None)
    models = model_names()
    return html.Div(
        [
            html.H2("Runs"),
            html.P("Every run in the result store, newest first. Runs started here go to a background worker; "
                   "this table follows their progress.", className="lead"),
            html.Div(
                [
                    html.H4("Start a run"),
                    html.Div(
                        [
                            html.Div([html.Label("Probe", htmlFor="home-probe"),
                                      dcc.Dropdown(id="home-probe", options=probes, value=first, clearable=False)], className="form-field wide"),
                            html.Div([html.Label("Model", htmlFor="home-model"),
                                      dcc.Dropdown(id="home-model", options=[{"label": m, "value": m} for m in models],
                                                   value=models[0] if models else None, clearable=False)], className="form-field"),
                            html.Div([html.Label("Corpus", htmlFor="home-corpus"),
                                      dcc.Dropdown(id="home-corpus", options=[{"label": c, "value": c} for c in corpus_names()],
                                                   value="brown", clearable=False)], className="form-field"),
                            html.Div([html.Label("Precision", htmlFor="home-dtype"),
                                      dcc.Dropdown(id="home-dtype", options=[{"label": d, "value": d} for d in DTYPES],
                                                   value="float32", clearable=False)], className="form-field"),
                        ],
                        className="form-row",
                    ),
                    html.P(id="home-probe-desc", className="probe-desc"),
                    html.Details([html.Summary("Config"), html.Div(id="home-config-fields", className="form-grid")], open=True, className="config-details"),
                    html.Div([html.Button("Start run", id="home-start", className="primary-btn"),
                              html.Div(id="home-start-msg", className="start-msg", role="status")], className="form-actions"),
                ],
                className="card start-card",
            ),
            html.Div([html.H4("Registry"), html.Div(id="home-row-msg", className="start-msg", role="status"),
                      html.Div(id="home-runs", className="runs-table-wrap")], className="card"),
            dcc.Interval(id="home-poll", interval=1000),
            dcc.Store(id="home-sig"),
            dcc.Store(id="home-kick"),
            dcc.Store(id="home-cancelling"),  # a run whose cancellation was asked while it ran: its message follows its row
        ]
    )


def _compact_config(probe: str, config_json: str | None) -> tuple[str, str]:
    """(non-default fields as 'k=v, ...', full JSON) for a registry row."""
    try:
        cfg = json.loads(config_json or "{}")
        defaults = {f["name"]: f["default"] for f in describe_config(get_spec(probe))}
    except Exception:
        return (config_json or "")[:60], config_json or ""
    changed = [f"{k}={v}" for k, v in sorted(cfg.items()) if k in defaults and _norm(defaults[k]) != _norm(v)]
    return (", ".join(changed) or "defaults"), json.dumps(cfg, indent=1, sort_keys=True)


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _summary_text(summary: str | None) -> str:
    if not summary:
        return ""
    try:
        d = json.loads(summary)
    except json.JSONDecodeError:
        return summary[:80]
    if not isinstance(d, dict):
        return str(d)[:80]
    return ", ".join(f"{k} {v}" for k, v in list(d.items())[:4])


RETRYABLE = ("failed", "interrupted", "cancelled")


def _status_cell(r: dict) -> html.Td:
    s = r["status"]
    badge = html.Span(s, className=f"status status-{s}")
    if s in ACTIVE:
        pct = float(r["progress"] or 0)
        cancel = html.Button("Cancel", id={"type": "home-cancel", "run": r["run_id"]}, className="row-btn",
                             title="stop this run (it keeps its checkpoints; Retry resumes it)")
        return html.Td([badge, cancel, html.Progress(value=str(pct), max="1", className="run-progress"),
                        html.Span(f"{pct:.0%} {r['message'] or ''}", className="run-message")], className="c-status")
    parts: list[Any] = [badge]
    if s in RETRYABLE:
        parts.append(html.Button("Retry", id={"type": "home-retry", "run": r["run_id"]}, className="row-btn",
                                 title="queue this run again; it resumes from its checkpoints"))
        parts.append(html.Button("Clear", id={"type": "home-clear", "run": r["run_id"]}, className="row-btn",
                                 title="remove this row from the registry (its checkpoints stay)"))
        first = (r["error"] or "").strip().splitlines()[:1]
        if first:
            parts.append(html.Details([html.Summary(first[0][:120], title=first[0]), html.Pre(r["error"] or "", className="traceback")],
                                      className="run-error"))
    return html.Td(parts, className="c-status")


def runs_table(ctx: AppState, rows: list[dict]) -> html.Table | html.P:
    if not rows:
        return html.P("No runs yet. Start one above, or run `workbench run residual-norms`.", className="empty")
    head = html.Thead(html.Tr([html.Th(h, className=f"c-{c}") for h, c in (
        ("#", "id"), ("probe", "probe"), ("status", "status"), ("model", "model"), ("corpus", "corpus"), ("config", "config"),
        ("started", "time"), ("wall", "wall"), ("result", "result"))]))
    body = []
    for r in rows:
        short, full = _compact_config(r["probe"], r["config"])
        page = ctx.probe_pages.get(r["probe"])
        probe_cell = dcc.Link(r["probe"], href=page) if page else r["probe"]
        summary = _summary_text(r["summary"])
        result: list[Any] = [html.Span(summary, className="summary", title=summary)]
        if page and r["status"] in ("done", "reused"):
            result.append(dcc.Link("open →", href=f"{page}?run={r['run_id']}", className="open-link", id=f"open-run-{r['run_id']}"))
        when = r["started"] or r["created"]
        body.append(html.Tr(
            [
                html.Td(str(r["run_id"]), className="c-id"),
                html.Td(probe_cell, title=r["probe"], className="c-probe"),
                _status_cell(r),
                html.Td([html.Span(str(r["model"] or "")), html.Span(f" {r['numerics'] or ''}", className="muted")],
                        title=f"{r['model'] or ''} {r['numerics'] or ''}", className="c-model"),
                html.Td(str(r["corpus"] or "—"), title=str(r["corpus"] or ""), className="c-corpus"),
                html.Td(short, title=full, className="c-config config-cell"),
                html.Td(time.strftime("%m-%d %H:%M", time.localtime(when)) if when else "", className="c-time",
                        title=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else None),
                html.Td(f"{r['wall_s']:.1f} s" if r["wall_s"] else "", className="c-wall"),
                html.Td(result, className="c-result"),
            ],
            id=f"run-row-{r['run_id']}", className=f"run-row row-{r['status']}", **{"data-status": r["status"]},
            title=r.get("label") or None,
        ))
    return html.Table([head, html.Tbody(body)], className="runs-table")


def register(app: Dash, ctx: AppState) -> None:
    @app.callback(
        Output("home-probe-desc", "children"), Output("home-config-fields", "children"),
        Output("home-model", "value"), Output("home-corpus", "disabled"), Output("home-model", "disabled"),
        Input("home-probe", "value"),
    )
    def _probe_form(probe: str | None):
        if not probe:
            return "", [], no_update, False, False
        try:
            spec = get_spec(probe)
        except Exception as e:
            return error_message(e), [], no_update, False, False
        fields = [_field_widget(f) for f in form_fields(spec)]
        if isinstance(spec, StudySpec):
            return (spec.description + " A study: it names its models and corpora in its config fields below.", fields,
                    no_update, True, True)
        model = spec.default_model if spec.default_model in model_names() else no_update
        note = f" Defined on {spec.numerics} weights." + ("" if spec.needs_corpus else " Needs no corpus.")
        return spec.description + note, fields, model, not spec.needs_corpus, False

    @app.callback(
        Output("home-start-msg", "children"), Output("home-kick", "data"),
        Input("home-start", "n_clicks"),
        State("home-probe", "value"), State("home-model", "value"), State("home-corpus", "value"),
        State({"type": "home-cfg", "field": ALL}, "value"), State({"type": "home-cfg", "field": ALL}, "id"),
        State("home-dtype", "value"),
        prevent_initial_call=True,
    )
    def _start(_n, probe, model, corpus, values, ids, dtype):
        try:
            spec = get_spec(probe)
            cfg = form_to_config(spec, {i["field"]: v for i, v in zip(ids, values)})
            run_id = ctx.jobs.submit(probe, model, corpus, cfg, dtype=dtype or "float32")
        except Exception as e:
            return error_message(e), no_update
        return html.Span(f"Run #{run_id} queued.", className="ok", id="home-queued", **{"data-run": str(run_id)}), run_id

    @app.callback(
        Output("home-row-msg", "children"), Output("home-cancelling", "data"),
        Input({"type": "home-cancel", "run": ALL}, "n_clicks"), Input({"type": "home-retry", "run": ALL}, "n_clicks"),
        Input({"type": "home-clear", "run": ALL}, "n_clicks"),
        prevent_initial_call=True,
    )
    def _row_action(_cancels, _retries, _clears):
        trig = callback_context.triggered_id
        if not isinstance(trig, dict) or not any(t["value"] for t in callback_context.triggered):
            return no_update, no_update  # the buttons were (re)drawn, not clicked
        run_id = parse_run_id(trig.get("run"))
        if run_id is None:
            return f"{str(trig.get('run'))[:40]!r} is not a run id.", None
        if trig["type"] == "home-cancel":
            status = ctx.jobs.cancel(run_id)
            return (f"Run #{run_id}: " + ("cancelled." if status == "cancelled" else "cancelling…" if status == "running" else f"it is {status}."),
                    run_id if status == "running" else None)
        if trig["type"] == "home-clear":
            return (f"Run #{run_id} cleared." if ctx.store.forget_run(run_id) else
                    f"Run #{run_id} cannot be cleared (only runs that ended without a result)."), None
        ok = ctx.jobs.retry(run_id)
        return (f"Run #{run_id} queued again." if ok else f"Run #{run_id} cannot be retried now."), None

    @app.callback(
        Output("home-runs", "children"), Output("home-sig", "data"), Output("home-poll", "interval"),
        Output("home-row-msg", "children", allow_duplicate=True), Output("home-cancelling", "data", allow_duplicate=True),
        Input("home-poll", "n_intervals"), Input("home-kick", "data"),
        State("home-sig", "data"), State("home-cancelling", "data"),
        prevent_initial_call="initial_duplicate",
    )
    def _refresh(_n, _kick, sig, cancelling):
        ctx.jobs.check()
        ctx.store.mark_interrupted()  # a run whose process was killed from outside stops showing "running"
        rows = ctx.store.runs(limit=MAX_ROWS)
        active = any(r["status"] in ACTIVE for r in rows)
        new_sig = [[r["run_id"], r["status"], round(float(r["progress"] or 0), 3), r["message"]] for r in rows]
        interval = 1000 if active else 3000
        msg, pending = no_update, no_update
        if cancelling is not None:  # the "cancelling…" message follows the row once the run has stopped
            row = ctx.store.get_run(cancelling)
            if row is None or row["status"] not in ACTIVE:
                msg, pending = f"Run #{cancelling}: {row['status'] if row else 'gone'}.", None
        if sig == new_sig and callback_context.triggered_id == "home-poll":
            return no_update, no_update, interval, msg, pending
        return runs_table(ctx, rows), new_sig, interval, msg, pending


PAGE = DashPage(path="/", name="Home", layout=layout, register=register, order=0)
