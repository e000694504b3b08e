"""Write experiments/example_notebook.ipynb from its cells below, run it top to bottom on the
embedded model, add a PNG beside every interactive figure (so a code host that runs no scripts
still shows the figures), and save it with its outputs.

    .venv/bin/python scripts/regenerate_notebook.py            # the embedded model (about 2 min)
    WORKBENCH_NOTEBOOK_MODEL=tiny .venv/bin/python scripts/regenerate_notebook.py --no-run   # cells only
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().parent.parent / "experiments" / "example_notebook.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"

CELLS: list[tuple[str, str]] = [
    ("markdown", """# Workbench in a notebook

Run a probe into a result store, look at its result, then look inside one forward pass as the
model explorer does: next-token predictions, attention token by token, the logit lens, direct
logit attribution per head, and activation patching between a clean and a corrupted prompt.
Last, the dashboard itself, inside the notebook.

The stored outputs come from the embedded SmolLM2-135M. `WORKBENCH_NOTEBOOK_MODEL=tiny` runs the
same cells on a tiny random model in seconds (the tests do). Install the Jupyter extra with
`pip install -e '.[notebook]'` and open it with `jupyter lab experiments/example_notebook.ipynb`."""),
    ("code", """import os
import tempfile

from workbench.corpora import load_corpus
from workbench.models import load_model
from workbench.runner import run_probe
from workbench.store import ResultStore

MODEL = os.environ.get("WORKBENCH_NOTEBOOK_MODEL", "smollm2-135m")
store = ResultStore(tempfile.mkdtemp(prefix="wb-notebook-"))
model = load_model(MODEL, device="cpu")
outcome = run_probe("residual-norms", model, load_corpus("brown"), {"max_tokens": 2048, "seq_len": 128}, store=store)
outcome.result  # a Result shows its summary and main figure"""),
    ("markdown", """## Figures of the stored result

Every figure builder returns a Plotly `go.Figure`, so it renders inline; the same builders draw
the dashboard's pages and the report's figures."""),
    ("code", """from dashboards.figures.residual_norms import bos_ratio_figure, lens_figure

series = [(MODEL, outcome.result.table)]
lens_figure(series)"""),
    ("code", "bos_ratio_figure(series)"),
    ("markdown", "## One forward pass, as in the model explorer"),
    ("code", """from dashboards.figures.model_explorer import prompt_lens_figure, topk_figure
from workbench.prompt_analysis import analyse_prompt

a = analyse_prompt(model, "The capital of France is Paris. The capital of Germany is", MODEL)
tok = model.tokenizer
topk_figure(a.decode(a.topk_ids[-1, :10], tok), a.topk_probs[-1, :10].tolist(), "the last token")"""),
    ("markdown", "Attention token by token: hover a token to see where it attends (pick a head or the mean)."),
    ("code", """from dashboards.figures.attention_view import AttentionView

AttentionView(a, layer=min(3, a.n_layers - 1))"""),
    ("code", "prompt_lens_figure(a, tok)"),
    ("markdown", """## Direct logit attribution

What each head and MLP writes straight into the top prediction's logit at the last position; the
terms sum to the logit."""),
    ("code", """import torch

from dashboards.figures.model_explorer import dla_figure
from workbench.logit_attribution import direct_logit_attribution

top = int(a.topk_ids[-1, 0])
d = direct_logit_attribution(model, torch.tensor(a.token_ids), -1, top)
print(f"logit {d.logit:.3f}, sum of the terms {d.total():.3f}")
dla_figure(d.heads.numpy(), d.mlps.numpy(), repr(tok.decode([top])), d.logit, d.total())"""),
    ("markdown", """## Activation patching on an IOI pair

Copy the residual stream from the clean run into the corrupted one, one layer and position at a
time: 1 means the clean answer is fully restored."""),
    ("code", """from dashboards.figures import show_token
from dashboards.figures.model_explorer import patching_figure
from workbench.patching import patch_prompts

if MODEL == "tiny":  # a byte-level tokenizer: single-letter names
    clean, corrupted, answer, wrong = ("When M and J went to the store, J gave a drink to ",
                                       "When M and J went to the store, M gave a drink to ", "M", "J")
else:
    clean, corrupted, answer, wrong = ("When Mary and John went to the store, John gave a drink to",
                                       "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
result, tokens = patch_prompts(model, clean, corrupted, answer, wrong, "resid_pre")
patching_figure(result.effect.numpy(), [show_token(t) for t in tokens], "resid_pre",
                f"clean {result.clean_diff:+.2f}, corrupted {result.corrupted_diff:+.2f}")"""),
    ("markdown", """## The dashboard inside the notebook

`create_app` builds the same app as `workbench dashboard`; Dash's Jupyter mode shows it inline."""),
    ("code", """import socket

from dashboards.app import create_app

app = create_app(store=store, model=MODEL)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
app.run(jupyter_mode="inline", host="127.0.0.1", port=port)
[p.name for p in app.workbench_pages]"""),
    ("code", """import urllib.request

with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
    print("dashboard answers:", r.status)"""),
]


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src) for kind, src in CELLS]
    return nb


def add_pngs(nb: nbformat.NotebookNode) -> int:
    """A PNG beside each Plotly output, drawn offline in one browser session."""
    from dashboards.static_export import write_images

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if PLOTLY in o.get("data", {})]
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images([(o["data"][PLOTLY], Path(tmp) / f"{i}.png") for i, o in enumerate(outputs)], width=900, scale=1)
        for o, p in zip(outputs, paths):
            o["data"]["image/png"] = base64.b64encode(p.read_bytes()).decode()
    return len(outputs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-run", action="store_true", help="write the cells without outputs")
    args = ap.parse_args()
    nb = build()
    if not args.no_run:
        from nbclient import NotebookClient

        with tempfile.TemporaryDirectory() as tmp:
            NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": tmp}}).execute()
        print(f"{add_pngs(nb)} figures with a PNG beside them")
        for c in nb.cells:  # the run's timings and ids are noise in a diff
            c.metadata.pop("execution", None)
    nbformat.write(nb, NOTEBOOK)
    print(f"wrote {NOTEBOOK} ({os.path.getsize(NOTEBOOK) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
