"""Figure exports for every `figure_card`: SVG and self-contained HTML.

The SVG is drawn in the browser by plotly.js itself (`Plotly.toImage`), from the figure as shown:
instant, offline, and with no server-side browser. PNG comes from the graph's own modebar. Scripts
that need image files use `dashboards.static_export` (kaleido in a child process with a deadline).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from dash import MATCH, Dash, Input, Output, State, ctx, no_update

from dashboards.static_export import figure_image, write_images  # noqa: F401  (re-exported for scripts)

_SVG_IN_BROWSER = """
function(n, figure, buttonId) {
    if (!n || !figure || !figure.data || !figure.data.length || !window.Plotly) {
        return window.dash_clientside.no_update;
    }
    const layout = figure.layout || {};
    const opts = {format: 'svg', width: layout.width || 900, height: layout.height || 500};
    return window.Plotly.toImage({data: figure.data, layout: layout}, opts).then(function(url) {
        const svg = decodeURIComponent(url.slice(url.indexOf(',') + 1));
        return {content: svg, filename: buttonId.id + '.svg', type: 'image/svg+xml', base64: false};
    });
}
"""


def figure_html(fig: go.Figure | dict) -> str:
    """A self-contained HTML page of an interactive figure (plotly.js inlined, works offline)."""
    f = fig if isinstance(fig, go.Figure) else go.Figure(fig)
    return f.to_html(include_plotlyjs=True, full_html=True)


def register_export_callbacks(app: Dash) -> None:
    """SVG and HTML buttons of every figure card (pattern-matching ids, call once per app).

    SVG is drawn in the browser (a clientside callback); HTML is built on the server.
    """

    app.clientside_callback(
        _SVG_IN_BROWSER,
        Output({"type": "export-download", "id": MATCH}, "data"),
        Input({"type": "export-svg", "id": MATCH}, "n_clicks"),
        State({"type": "wb-graph", "id": MATCH}, "figure"),
        State({"type": "export-svg", "id": MATCH}, "id"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output({"type": "export-download-html", "id": MATCH}, "data"),
        Input({"type": "export-html", "id": MATCH}, "n_clicks"),
        State({"type": "wb-graph", "id": MATCH}, "figure"),
        prevent_initial_call=True,
    )
    def _html(_n, figure: dict[str, Any] | None):
        if not figure or not figure.get("data"):
            return no_update
        return dict(content=figure_html(figure), filename=f"{ctx.triggered_id['id']}.html", type="text/html")
