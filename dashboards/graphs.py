"""networkx graphs drawn interactively with dash-cytoscape.

- `nx_to_elements(G, pos=...)` turns a graph into Cytoscape elements (node and edge attributes are
  kept in `data`, so hover and click show them; `pos` gives a preset layout);
- `graph_card(graph_id, title)` is the component: the graph, a hover line, a details panel filled
  when a node or edge is clicked, and PNG / SVG / GraphML / JSON export buttons;
- `register_graph_callbacks(app)` adds the app-wide callbacks for every graph card (the app
  calls it once). Pages fill a card with `Output(cyto_graph("my-id"), "elements")`.

Node data keys with a meaning: `label` (shown), `color`, `size`, `href` (the details panel links
to it: click-through to another page), `title` (hover text). Edge keys: `weight`, `color`, `label`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

import dash_cytoscape as cyto
import networkx as nx
from dash import MATCH, Dash, Input, Output, State, ctx, dcc, html, no_update

from dashboards.figures import show_token

cyto.load_extra_layouts()  # also brings cytoscape-svg, needed for SVG export

DEFAULT_STYLESHEET = [
    {"selector": "node", "style": {
        "label": "data(label)", "font-size": 10, "text-valign": "center", "text-halign": "center",
        "color": "#1f2933", "background-color": "data(color)", "width": "data(size)", "height": "data(size)",
        "border-width": 1, "border-color": "#52606d", "text-outline-color": "#ffffff", "text-outline-width": 2,
    }},
    {"selector": "edge", "style": {
        "width": "mapData(weight, 0, 1, 0.5, 6)", "line-color": "data(color)", "target-arrow-color": "data(color)",
        "curve-style": "bezier", "opacity": 0.75,
    }},
    {"selector": "edge[?directed]", "style": {"target-arrow-shape": "triangle", "arrow-scale": 0.8}},
    {"selector": ":selected", "style": {"border-width": 3, "border-color": "#D55E00", "line-color": "#D55E00", "opacity": 1}},
]


def cyto_graph(graph_id: str) -> dict:
    """The component id of a graph card's Cytoscape graph (use it in page callbacks)."""
    return {"type": "wb-cyto", "id": graph_id}


def _clean(v: Any) -> Any:
    """JSON-safe attribute values (numpy scalars, tuples, sets)."""
    if hasattr(v, "item") and callable(v.item):
        try:
            return v.item()
        except (ValueError, TypeError):
            pass
    if isinstance(v, (tuple, set, frozenset)):
        return [_clean(x) for x in v]
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def nx_to_elements(
    G: nx.Graph,
    pos: dict[Any, tuple[float, float]] | None = None,
    scale: float = 1.0,
    node_color: str = "#56B4E9",
    edge_color: str = "#7b8794",
    node_size: float = 18.0,
) -> list[dict]:
    """Cytoscape elements for `G`; every node and edge attribute is kept in `data`.

    Node ids become strings (the original is kept as `data.nx_id` when it is not a string).
    Edge weights are normalised into `data.weight` in [0, 1] for drawing; the original value stays
    in `data.value` (or in the attribute it came from).
    """
    directed = G.is_directed()
    weights = [abs(float(d.get("weight", 1.0))) for _, _, d in G.edges(data=True)]
    wmax = max(weights, default=1.0) or 1.0
    elements: list[dict] = []
    for n, d in G.nodes(data=True):
        data = {k: _clean(v) for k, v in d.items()}
        data.update(id=str(n), label=str(d.get("label", n)))
        data.setdefault("color", node_color)
        data.setdefault("size", node_size)
        if not isinstance(n, str):
            data["nx_id"] = _clean(n)
        el: dict[str, Any] = {"data": data}
        if pos is not None and n in pos:
            x, y = pos[n]
            el["position"] = {"x": float(x) * scale, "y": float(y) * scale}
        elements.append(el)
    for i, (u, v, d) in enumerate(G.edges(data=True)):
        data = {k: _clean(x) for k, x in d.items()}
        raw = float(d.get("weight", 1.0))
        # ids from the endpoints: Cytoscape patches elements by id and cannot move an edge's ends
        eid = f"{u}->{v}" if not G.is_multigraph() else f"{u}->{v}#{i}"
        data.update(id=eid, source=str(u), target=str(v), weight=abs(raw) / wmax, directed=directed)
        data.setdefault("value", raw)
        data.setdefault("color", edge_color)
        elements.append({"data": data})
    return elements


def elements_to_nx(elements: Iterable[dict]) -> nx.Graph:
    """Back from Cytoscape elements to networkx (for GraphML / JSON export)."""
    elements = list(elements or [])
    directed = any(e["data"].get("directed") for e in elements if "source" in e.get("data", {}))
    G: nx.Graph = nx.DiGraph() if directed else nx.Graph()
    skip_node = {"id", "size", "color"}
    skip_edge = {"id", "source", "target", "directed", "color"}
    for e in elements:
        d = e.get("data", {})
        if "source" in d:
            continue
        attrs = {k: v for k, v in d.items() if k not in skip_node}
        if "position" in e:
            attrs["x"], attrs["y"] = e["position"]["x"], e["position"]["y"]
        G.add_node(d["id"], **attrs)
    for e in elements:
        d = e.get("data", {})
        if "source" in d:
            attrs = {k: v for k, v in d.items() if k not in skip_edge}
            attrs["weight"] = attrs.pop("value", attrs.get("weight", 1.0))
            G.add_edge(d["source"], d["target"], **attrs)
    return G


_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_safe(s: str) -> str:
    """Characters XML 1.0 cannot hold (control bytes, e.g. from byte-level tokens) as \\xNN escapes."""
    return _XML_BAD.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def graphml_text(G: nx.Graph) -> str:
    """GraphML; attributes GraphML cannot hold (lists, dicts, None) are written as JSON strings."""
    H = nx.relabel_nodes(G, {n: _xml_safe(n) for n in G.nodes if isinstance(n, str) and _XML_BAD.search(n)})
    for _, d in list(H.nodes(data=True)) + [(None, d) for *_, d in H.edges(data=True)]:
        for k, v in list(d.items()):
            if v is None or isinstance(v, (list, dict)):
                v = d[k] = json.dumps(v)
            if isinstance(v, str):
                d[k] = _xml_safe(v)
    return "\n".join(nx.generate_graphml(H))


def graph_card(graph_id: str, title: str, description: str = "", height: str = "520px",
               stylesheet: list[dict] | None = None, layout: dict | None = None) -> html.Div:
    """A titled interactive graph with hover text, a click details panel and exports."""
    gid = {"id": graph_id}
    return html.Div(
        [
            html.H4(title),
            html.P(description, className="figure-description") if description else None,
            html.Div(
                [
                    cyto.Cytoscape(
                        id=cyto_graph(graph_id), elements=[], layout=layout or {"name": "preset", "fit": True, "padding": 20},
                        stylesheet=stylesheet or DEFAULT_STYLESHEET, style={"width": "100%", "height": height},
                        minZoom=0.1, maxZoom=4, wheelSensitivity=0.3, responsive=True, clearOnUnhover=True,
                    ),
                    html.Div(
                        [html.Div("Click a node or an edge to see its details.", id={"type": "wb-cyto-details", **gid}, className="graph-details")],
                        className="graph-side",
                    ),
                ],
                className="graph-body",
            ),
            html.Div("", id={"type": "wb-cyto-hover", **gid}, className="graph-hover"),
            html.Div(
                [
                    html.Button("PNG", id={"type": "wb-cyto-png", **gid}, className="export-btn"),
                    html.Button("SVG", id={"type": "wb-cyto-svg", **gid}, className="export-btn"),
                    html.Button("GraphML", id={"type": "wb-cyto-graphml", **gid}, className="export-btn"),
                    html.Button("JSON", id={"type": "wb-cyto-json", **gid}, className="export-btn"),
                    dcc.Download(id={"type": "wb-cyto-download", **gid}),
                ],
                className="export-row",
            ),
        ],
        className="figure-card graph-card",
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)[:200]
    return str(v)


def _attribute_rows(d: dict) -> list[html.Tr]:
    """A node's or edge's attributes as table rows: readable names, absent values left out (the
    last prompt position has no next token, so no lens p(next))."""
    return [html.Tr([html.Th(k.replace("_", " ")), html.Td(_fmt(v))]) for k, v in d.items() if k not in _HIDDEN and v is not None]


_HIDDEN = {"id", "label", "color", "size", "directed", "nx_id", "href", "source", "target", "weight", "title", "timeStamp"}


def node_details(node: dict, elements: list[dict]) -> html.Div:
    """Details of a clicked node: its attributes and its strongest incoming and outgoing edges."""
    nid = node["id"]
    rows = _attribute_rows(node)
    labels = {e["data"]["id"]: e["data"].get("label") or e["data"]["id"] for e in elements if "source" not in e["data"]}
    edges = [e["data"] for e in elements if "source" in e["data"]]

    def lst(title: str, items: list[dict], other: str) -> html.Div | None:
        if not items:
            return None
        items = sorted(items, key=lambda d: -abs(float(d.get("value", d.get("weight", 0)))))[:8]
        return html.Div([html.H5(title), html.Ul([html.Li(f"{labels.get(d[other], d[other])}  ({_fmt(d.get('value', d.get('weight')))})") for d in items])])

    return html.Div(
        [
            html.H5(node.get("title") or node.get("label") or nid, className="details-title"),
            html.Table(html.Tbody(rows), className="details-table"),
            lst("incoming", [d for d in edges if d["target"] == nid], "source"),
            lst("outgoing", [d for d in edges if d["source"] == nid], "target"),
            dcc.Link("open →", href=node["href"], className="details-link") if node.get("href") else None,
        ],
        className="node-details",
    )


def edge_details(edge: dict) -> html.Div:
    rows = _attribute_rows(edge)
    return html.Div([html.H5(f"{edge.get('source')} → {edge.get('target')}", className="details-title"),
                     html.Table(html.Tbody(rows), className="details-table")], className="node-details")


def register_graph_callbacks(app: Dash) -> None:
    """Hover, click details and exports for every graph card in the app (call once)."""

    @app.callback(
        Output({"type": "wb-cyto-hover", "id": MATCH}, "children"),
        Input({"type": "wb-cyto", "id": MATCH}, "mouseoverNodeData"),
        Input({"type": "wb-cyto", "id": MATCH}, "mouseoverEdgeData"),
        prevent_initial_call=True,
    )
    def _hover(node, edge):
        which = ctx.triggered[0]["prop_id"] if ctx.triggered else ""
        if "Node" in which and node:
            return node.get("title") or f"{node.get('label', node['id'])}"
        if "Edge" in which and edge:
            return edge.get("title") or f"{edge['source']} → {edge['target']}  weight {_fmt(edge.get('value', edge.get('weight')))}"
        return ""

    @app.callback(
        Output({"type": "wb-cyto-details", "id": MATCH}, "children"),
        Input({"type": "wb-cyto", "id": MATCH}, "tapNodeData"),
        Input({"type": "wb-cyto", "id": MATCH}, "tapEdgeData"),
        State({"type": "wb-cyto", "id": MATCH}, "elements"),
        prevent_initial_call=True,
    )
    def _details(node, edge, elements):
        which = ctx.triggered[0]["prop_id"] if ctx.triggered else ""
        if "tapEdgeData" in which and edge:
            return edge_details(edge)
        if node:
            return node_details(node, elements or [])
        return no_update

    @app.callback(
        Output({"type": "wb-cyto", "id": MATCH}, "generateImage"),
        Input({"type": "wb-cyto-png", "id": MATCH}, "n_clicks"),
        Input({"type": "wb-cyto-svg", "id": MATCH}, "n_clicks"),
        prevent_initial_call=True,
    )
    def _image(_png, _svg):
        t = ctx.triggered_id
        if not t:
            return no_update
        kind = "svg" if t["type"] == "wb-cyto-svg" else "png"
        opts = {"full": True} if kind == "svg" else {"full": True, "scale": 2, "bg": "#ffffff"}
        return {"type": kind, "action": "download", "filename": t["id"], "options": opts}

    @app.callback(
        Output({"type": "wb-cyto-download", "id": MATCH}, "data"),
        Input({"type": "wb-cyto-graphml", "id": MATCH}, "n_clicks"),
        Input({"type": "wb-cyto-json", "id": MATCH}, "n_clicks"),
        State({"type": "wb-cyto", "id": MATCH}, "elements"),
        prevent_initial_call=True,
    )
    def _export(_gml, _json, elements):
        t = ctx.triggered_id
        if not t or not elements:
            return no_update
        G = elements_to_nx(elements)
        if t["type"] == "wb-cyto-graphml":
            return dict(content=graphml_text(G), filename=f"{t['id']}.graphml", type="application/xml")
        blob = nx.node_link_data(G, edges="links")
        return dict(content=json.dumps(blob, indent=1, default=str), filename=f"{t['id']}.json", type="application/json")


__all__ = ["cyto_graph", "graph_card", "nx_to_elements", "elements_to_nx", "graphml_text", "register_graph_callbacks",
           "node_details", "DEFAULT_STYLESHEET"]


# ----- the model explorer's attention-flow graph -----


def flow_positions(G: nx.DiGraph, dx: float = 70, aspect: float = 0.7) -> dict[str, tuple[float, float]]:
    """Preset layout: positions left to right, layers bottom to top, about `aspect` times as tall as wide."""
    n_pos = len({d["position"] for _, d in G.nodes(data=True)}) or 1
    n_layers = len({d["layer"] for _, d in G.nodes(data=True)}) or 1
    dy = min(46.0, max(12.0, dx * n_pos * aspect / n_layers))
    return {n: (d["position"] * dx, -d["layer"] * dy) for n, d in G.nodes(data=True)}


def prob_color(p: float) -> str:
    """White to blue by probability (the lens's belief in the actual next token)."""
    p = max(0.0, min(1.0, p)) ** 0.5
    r, g, b = (int(255 + (c - 255) * p) for c in (0, 114, 178))
    return f"#{r:02x}{g:02x}{b:02x}"


def style_flow_graph(G: nx.DiGraph) -> nx.DiGraph:
    """Add the drawing attributes to a `workbench.prompt_analysis.attention_flow_graph`: labels on the
    first and last layer, size by residual norm, colour by the lens's probability of the next token."""

    last = max((d["layer"] for _, d in G.nodes(data=True)), default=0)
    for _, d in G.nodes(data=True):
        tok = show_token(d["token"])
        p = d["lens_p_next"] if d["lens_p_next"] is not None else d["lens_top1_prob"]
        d.update(label=tok if d["layer"] in (0, last) else "", size=10 + 14 * d["resid_norm_share"], color=prob_color(p),
                 title=f"layer {d['layer']} · pos {d['position']} {tok!r} · norm {d['resid_norm']:.1f} · lens top-1 {show_token(d['lens_top1'])!r}")
    return G
