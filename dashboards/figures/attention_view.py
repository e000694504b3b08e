"""A token-level attention view: hover a token to see how much it attends to each earlier token,
for one head or the mean over heads (what CircuitsVis's attention view gives in a notebook).

`attention_view_html` returns one self-contained HTML document (no network, no libraries), so the
same view renders in the dashboard (in an iframe) and in Jupyter (`AttentionView._repr_html_`).
"""

from __future__ import annotations

import html
import json
import uuid

import numpy as np

from dashboards.figures import show_token

MAX_VIEW_TOKENS = 128  # the view covers the last this many positions (its data grows with the square)


def _lower_triangle(pattern: np.ndarray) -> list[list[float]]:
    """Row q of a causal pattern [T, T] up to and including q, rounded to 3 decimals."""
    return [[round(float(v), 3) for v in pattern[q, : q + 1]] for q in range(pattern.shape[0])]


def attention_view_html(pattern: np.ndarray, tokens: list[str], layer: int, title: str = "") -> str:
    """The view of one layer's pattern [n_heads, T, T] (query x key) over `tokens`."""
    pattern = np.asarray(pattern, dtype=np.float32)
    H, T = pattern.shape[0], pattern.shape[1]
    start = max(0, T - MAX_VIEW_TOKENS)
    pattern = pattern[:, start:, start:]
    pattern = pattern / np.maximum(pattern.sum(-1, keepdims=True), 1e-12)  # rows renormalised over the shown window
    data = {"tokens": [show_token(t) for t in tokens[start:]], "offset": start,
            "heads": [_lower_triangle(pattern[h]) for h in range(H)], "mean": _lower_triangle(pattern.mean(0))}
    uid = "av" + uuid.uuid4().hex[:8]
    options = "".join(f'<option value="{h}">head {h}</option>' for h in range(H))
    note = f"<p class='av-note'>The last {MAX_VIEW_TOKENS} of {T} positions are shown.</p>" if start else ""
    return f"""<div id="{uid}" class="attention-view" style="font-family: system-ui, sans-serif; font-size: 14px; line-height: 2;">
<style>
#{uid} .av-tok {{ display: inline-block; padding: 0 3px; margin: 1px; border-radius: 3px; border: 1px solid #d9dee4;
  white-space: pre; cursor: pointer; font-family: ui-monospace, monospace; }}
#{uid} .av-tok.av-query {{ outline: 2px solid #D55E00; }}
#{uid} .av-info {{ color: #52606d; min-height: 1.5em; }}
#{uid} .av-note {{ color: #52606d; margin: 0; }}
</style>
<div class="av-controls">{html.escape(title or f"Layer {layer}")}: <label>head <select class="av-head">
<option value="mean">mean over heads</option>{options}</select></label></div>
{note}<div class="av-tokens"></div>
<div class="av-info">Hover a token to see where it attends; click to keep it.</div>
<script>
(function() {{
  const root = document.getElementById("{uid}"), data = {json.dumps(data)};
  const box = root.querySelector(".av-tokens"), info = root.querySelector(".av-info"), sel = root.querySelector(".av-head");
  let pinned = null, current = null;
  data.tokens.forEach((t, i) => {{
    const s = document.createElement("span");
    s.className = "av-tok"; s.textContent = t; s.dataset.pos = i;
    s.addEventListener("mouseenter", () => {{ if (pinned === null) show(i); }});
    s.addEventListener("click", () => {{ pinned = (pinned === i ? null : i); show(i); }});
    box.appendChild(s);
  }});
  function rows() {{ return sel.value === "mean" ? data.mean : data.heads[+sel.value]; }}
  function show(q) {{
    current = q;
    const w = rows()[q], spans = box.children;
    let best = [];
    for (let k = 0; k < spans.length; k++) {{
      const v = k <= q ? w[k] : 0;
      spans[k].style.background = k <= q ? "rgba(0,114,178," + v.toFixed(3) + ")" : "transparent";
      spans[k].style.color = v > 0.55 ? "#fff" : "#1f2933";
      spans[k].dataset.weight = k <= q ? v.toFixed(3) : "";
      spans[k].title = k <= q ? "attention " + v.toFixed(3) : "";
      spans[k].classList.toggle("av-query", k === q);
      if (k <= q) best.push([v, k]);
    }}
    best.sort((a, b) => b[0] - a[0]);
    info.textContent = "position " + (q + data.offset) + " " + JSON.stringify(data.tokens[q]) + " attends most to: " +
      best.slice(0, 3).map(([v, k]) => JSON.stringify(data.tokens[k]) + " " + v.toFixed(2)).join(", ");
  }}
  sel.addEventListener("change", () => {{ if (current !== null) show(current); }});
  show(data.tokens.length - 1);
}})();
</script></div>"""


def attention_page_html(pattern: np.ndarray, tokens: list[str], layer: int, title: str = "") -> str:
    """The view as a whole HTML page (for an iframe's srcDoc)."""
    return f"<!doctype html><html><head><meta charset='utf-8'></head><body style='margin:8px'>{attention_view_html(pattern, tokens, layer, title)}</body></html>"


class AttentionView:
    """The view of one layer, shown inline by Jupyter: `AttentionView(analysis, layer=3)`."""

    def __init__(self, analysis, layer: int):
        self.analysis, self.layer = analysis, int(layer)

    def _repr_html_(self) -> str:
        a = self.analysis
        return attention_view_html(a.attn[self.layer].float().numpy(), a.tokens, self.layer)
