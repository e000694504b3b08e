"""The dashboard in a real headless Chromium (Dash's dash_duo), on the tiny model and a temporary
store holding one residual-norms result. Screenshots go to tests/artifacts/screenshots/."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).parent / "artifacts" / "screenshots"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shot(dash_duo, name: str, full: bool = False) -> Path:
    """Save a screenshot (the whole page when `full`, else the window)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver = dash_duo.driver
    if full:
        size = driver.get_window_size()
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(int(height) + 20, 4000))
        time.sleep(0.5)
        driver.save_screenshot(str(path))
        driver.set_window_size(size["width"], size["height"])
    else:
        driver.save_screenshot(str(path))
    return path


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    """A store with one finished residual-norms run on the tiny model."""
    from workbench.corpora import load_corpus
    from workbench.models import load_model
    from workbench.runner import run_probe
    from workbench.store import ResultStore

    store = ResultStore(tmp_path_factory.mktemp("dash-store"))
    model = load_model("tiny", device="cpu")
    run_probe("residual-norms", model, load_corpus("brown"), {"max_tokens": 1024, "seq_len": 64}, store=store)
    return store


@pytest.fixture
def app(filled_store):
    from dashboards.app import create_app

    app = create_app(store=filled_store, model="tiny")
    yield app
    app.workbench_ctx.jobs.shutdown()


def start(dash_duo, app, path: str = "/"):
    dash_duo.start_server(app, port=free_port())
    if path != "/":
        dash_duo.wait_for_page(url=dash_duo.server_url + path)
    return dash_duo


def wait_page(dash_duo, path: str, timeout: float = 10):
    return dash_duo.wait_for_element(f'#page-root[data-page="{path}"]', timeout=timeout)


def test_every_page_loads_without_console_errors(dash_duo, app):
    """Every discovered page (probe pages included) renders, with nothing in the console."""
    assert not app.workbench_broken, [f"{b.module}: {b.error}" for b in app.workbench_broken]
    start(dash_duo, app)
    for page in app.workbench_pages:
        dash_duo.wait_for_page(url=dash_duo.server_url + page.path)
        wait_page(dash_duo, page.path)
        time.sleep(0.8)  # let the page's first callbacks run and render
        dash_duo.wait_for_no_elements("._dash-loading", timeout=20)
        shot(dash_duo, "page" + (page.path.replace("/", "_") if page.path != "/" else "_home"), full=True)
        logs = dash_duo.get_logs()
        assert logs == [], f"console errors on {page.path}: {logs}"
        assert not dash_duo.find_elements(".error"), f"error message on {page.path}"


def set_textarea(dash_duo, element_id: str, text: str) -> None:
    """Set a React-controlled textarea's value the way typing would (fast for long texts)."""
    dash_duo.driver.execute_script(
        """const el = document.getElementById(arguments[0]);
           const setter = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set;
           setter.call(el, arguments[1]); el.dispatchEvent(new Event('input', {bubbles: true}));""",
        element_id, text,
    )


def retype(element, text: str) -> None:
    """Select everything in an input, delete it and type `text` (real key presses)."""
    from selenium.webdriver.common.keys import Keys

    element.click()
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text)


def wait_for_downloads(folder: Path, names: set[str], timeout: float = 60) -> dict[str, Path]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = {p.name: p for p in folder.glob("*") if p.name in names}
        if set(found) == names:
            return found
        time.sleep(0.2)
    raise AssertionError(f"downloads missing: {names - {p.name for p in folder.glob('*')}}; found {sorted(p.name for p in folder.glob('*'))}")


def test_explorer_topk_and_graph_click(dash_duo, app):
    """A typed prompt gives its tokens and top-k; clicking a node of the flow graph shows its details."""
    start(dash_duo, app, "/model-explorer")
    wait_page(dash_duo, "/model-explorer")
    dash_duo.wait_for_element(".topk-row", timeout=30)  # the default prompt runs on load
    retype(dash_duo.find_element("#explorer-prompt"), "Hello world")
    retype(dash_duo.find_element("#explorer-k"), "7\t")
    dash_duo.find_element("#explorer-run").click()
    dash_duo.wait_for_contains_text("#explorer-topk-title", "Top-7 next tokens after position 11 'd'", timeout=20)
    assert len(dash_duo.find_elements(".topk-row")) == 7
    toks = [e.text for e in dash_duo.find_elements("#explorer-tokens .tok")]
    assert toks == ["<|bos|>", "H", "e", "l", "l", "o", "\u2423", "w", "o", "r", "l", "d"]
    # click a token: the top-k follows the selected position
    dash_duo.find_elements("#explorer-tokens .tok")[5].click()
    dash_duo.wait_for_contains_text("#explorer-topk-title", "after position 5 'o'", timeout=10)
    # the attention heatmap was drawn
    dash_duo.wait_for_element(".figure-card .heatmaplayer", timeout=10)
    shot(dash_duo, "explorer", full=True)

    # the attention-flow graph: click a node (real mouse click at its rendered position)
    graph_el = dash_duo.wait_for_element(".graph-card .graph-body > div:first-child", timeout=10)
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", graph_el)
    deadline = time.time() + 15
    pos = None
    while time.time() < deadline and pos is None:
        pos = dash_duo.driver.execute_script(
            """const c = arguments[0].querySelector('div[id]') || arguments[0];
               let host = c; while (host && !host._cyreg) host = host.querySelector('div');
               const reg = (c._cyreg || (host && host._cyreg)); if (!reg) return null;
               const n = reg.cy.getElementById('L1P5'); if (!n || n.empty()) return null;
               const r = reg.cy.container().getBoundingClientRect(), p = n.renderedPosition();
               return [r.left + p.x, r.top + p.y];""",
            graph_el,
        )
        if pos is None:
            time.sleep(0.3)
    assert pos is not None, "the flow graph did not render its nodes"
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(dash_duo.driver).move_to_location(int(pos[0]), int(pos[1])).click().perform()
    dash_duo.wait_for_contains_text(".graph-details", "layer", timeout=10)
    details = dash_duo.find_element(".graph-details").text
    assert "layer 1" in details and "position 5" in details and "incoming" in details
    shot(dash_duo, "explorer_graph_click")

    # exports: a figure as SVG (drawn by plotly.js in the page) and HTML, the graph as GraphML, downloaded by the browser.
    # One at a time, as a person would: Chromium holds back a download that arrives without a fresh
    # click while another is pending ("multiple automatic downloads" needs the user's permission).
    folder = Path(dash_duo.download_path)
    card = dash_duo.find_element(".figure-card")  # the attention pattern
    card.find_element("css selector", ".export-row button:nth-of-type(1)").click()  # SVG
    wait_for_downloads(folder, {"explorer-attn.svg"})
    card.find_element("css selector", ".export-row button:nth-of-type(2)").click()  # HTML
    wait_for_downloads(folder, {"explorer-attn.svg", "explorer-attn.html"})
    dash_duo.find_element(".graph-card .export-row button:nth-of-type(3)").click()  # GraphML
    files = wait_for_downloads(folder, {"explorer-flow.graphml", "explorer-attn.svg", "explorer-attn.html"})
    import networkx as nx

    g = nx.read_graphml(files["explorer-flow.graphml"])
    assert g.number_of_nodes() == 3 * 12 and g.has_edge("L0P2", "L1P5")
    assert files["explorer-attn.svg"].read_text().lstrip().startswith("<svg")
    assert "Attention, layer 0" in files["explorer-attn.html"].read_text()
    assert dash_duo.get_logs() == []


def test_start_run_from_ui_shows_result(dash_duo, app):
    """Home's form queues a run; the worker finishes it; its result opens on the probe page."""
    app.workbench_ctx.jobs.start_worker()  # as `serve` does: its imports overlap with the page load
    start(dash_duo, app)
    wait_page(dash_duo, "/")
    dash_duo.wait_for_element('input[id*="max_tokens"]', timeout=10)
    dash_duo.select_dcc_dropdown("#home-model", value="tiny-llama")
    retype(dash_duo.find_element('input[id*="max_tokens"]'), "768\t")
    retype(dash_duo.find_element('input[id*="seq_len"]'), "64\t")
    dash_duo.find_element("#home-start").click()
    queued = dash_duo.wait_for_element("#home-queued", timeout=10)
    run_id = queued.get_attribute("data-run")
    row = f"#run-row-{run_id}"
    dash_duo.wait_for_element(row, timeout=10)
    shot(dash_duo, "home_running")
    deadline = time.time() + 120  # the worker imports torch and loads the model first
    status = None
    read = "const r = document.querySelector(arguments[0]); return r ? [r.dataset.status, r.innerText] : [null, ''];"
    text = ""
    while time.time() < deadline:
        status, text = dash_duo.driver.execute_script(read, row)  # the table re-renders: no stale handles
        if status in ("done", "reused", "failed"):
            break
        time.sleep(0.5)
    assert status == "done", text
    assert "tiny-llama" in text and "max_tokens=768" in text
    shot(dash_duo, "home_done")
    dash_duo.find_element(f"#open-run-{run_id}").click()
    wait_page(dash_duo, "/residual-norms")
    dash_duo.wait_for_contains_text("#rn-summary", f"Run #{run_id}", timeout=15)
    assert "tiny-llama" in dash_duo.find_element("#rn-summary").text
    dash_duo.wait_for_element(".figure-card .scatterlayer .trace", timeout=10)
    shot(dash_duo, "residual_norms_from_ui", full=True)
    assert dash_duo.get_logs() == []


def test_bad_input_shows_errors_not_a_dead_app(dash_duo, app):
    """An over-long prompt and an unknown model name give messages; the app keeps working."""
    from dashboards.base import MAX_PROMPT_CHARS

    start(dash_duo, app, "/model-explorer?model=../../etc/passwd")
    wait_page(dash_duo, "/model-explorer")
    dash_duo.wait_for_contains_text("#explorer-error", "unknown model", timeout=15)
    set_textarea(dash_duo, "explorer-prompt", "x" * (MAX_PROMPT_CHARS + 1))
    dash_duo.wait_for_contains_text("#explorer-count", "too long", timeout=5)
    dash_duo.select_dcc_dropdown("#explorer-model", value="tiny")
    dash_duo.find_element("#explorer-run").click()
    dash_duo.wait_for_contains_text("#explorer-error", f"the limit is {MAX_PROMPT_CHARS}", timeout=15)
    shot(dash_duo, "explorer_error")
    # still alive: a short prompt works again, and other pages load
    set_textarea(dash_duo, "explorer-prompt", "ok then")
    dash_duo.find_element("#explorer-run").click()
    dash_duo.wait_for_contains_text("#explorer-topk-title", "after position 7", timeout=15)
    assert dash_duo.find_element("#explorer-error").text == ""
    dash_duo.wait_for_page(url=dash_duo.server_url + "/no-such-page")
    dash_duo.wait_for_contains_text("#page-root", "Page not found", timeout=10)
    assert dash_duo.get_logs() == []


def click_fresh(dash_duo, selector: str, timeout: float = 15) -> None:
    """Click the element `selector` names, found again at click time: Home's table re-renders every
    refresh, so a handle found a moment earlier may already be stale."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if dash_duo.driver.execute_script("const b = document.querySelector(arguments[0]); if (b) b.click(); return !!b;", selector):
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing to click at {selector}")


def test_cancel_a_running_job_and_retry_it(dash_duo, app):
    """Cancel stops a running job (its row says cancelled); Retry queues it again."""
    jobs = app.workbench_ctx.jobs
    jobs.start_worker()
    start(dash_duo, app)
    wait_page(dash_duo, "/")
    run_id = jobs.submit("residual-norms", "tiny", "brown", {"max_tokens": 2_000_000, "seq_len": 64})  # minutes of work
    store = app.workbench_ctx.store
    deadline = time.time() + 120
    while store.get_run(run_id)["progress"] in (None, 0) and time.time() < deadline:
        time.sleep(0.2)
    assert store.get_run(run_id)["status"] == "running"
    button = f'#run-row-{run_id} button[id*="home-cancel"]'
    click_fresh(dash_duo, button)
    read = "const r = document.querySelector(arguments[0]); return r ? r.dataset.status : null;"
    deadline = time.time() + 30
    while dash_duo.driver.execute_script(read, f"#run-row-{run_id}") != "cancelled" and time.time() < deadline:
        time.sleep(0.3)
    assert store.get_run(run_id)["status"] == "cancelled"
    assert dash_duo.driver.execute_script(read, f"#run-row-{run_id}") == "cancelled"
    dash_duo.wait_for_text_to_equal("#home-row-msg", f"Run #{run_id}: cancelled.", timeout=10)  # not "cancelling…" any more
    shot(dash_duo, "home_cancelled")
    click_fresh(dash_duo, f'#run-row-{run_id} button[id*="home-retry"]')
    dash_duo.wait_for_contains_text("#home-row-msg", "queued again", timeout=10)
    assert store.get_run(run_id)["status"] in ("queued", "running")
    jobs.cancel(run_id)  # do not leave minutes of work behind
    assert dash_duo.get_logs() == []


def figure_data(dash_duo, graph_id: str, timeout: float = 30) -> dict:
    """The drawn figure (data and layout title) of a figure card's graph, once it has data."""
    js = """const el = document.getElementById(JSON.stringify({id: arguments[0], type: "wb-graph"}));
            const p = el && el.querySelector('.js-plotly-plot');
            if (!p || !p.data || !p.data.length) return null;
            const plain = v => v == null ? null : (v._inputArray || v);  // plotly's typed arrays
            const rows = v => v == null ? null : Array.from(plain(v), r => (r && r.length !== undefined) ? Array.from(r) : r);
            return {data: p.data.map(t => ({type: t.type, z: rows(t.z), x: rows(t.x), y: rows(t.y)})),
                    title: (p.layout.title && p.layout.title.text) || ''};"""
    deadline = time.time() + timeout
    while time.time() < deadline:
        fig = dash_duo.driver.execute_script(js, graph_id)
        if fig and fig["data"][0]["z"] is not None:
            return fig
        time.sleep(0.3)
    raise AssertionError(f"no figure data in {graph_id}")


def test_explorer_dla_patching_and_attention_hover(dash_duo, app):
    """Per-head direct logit attribution, an IOI-style patching heatmap with the exact sign, and
    the token-level attention view answering a hover."""
    from selenium.webdriver.common.action_chains import ActionChains

    start(dash_duo, app, "/model-explorer")
    wait_page(dash_duo, "/model-explorer")
    dash_duo.wait_for_element(".topk-row", timeout=30)
    # direct logit attribution: layers x (heads + MLP), and the terms' sum is the logit
    fig = figure_data(dash_duo, "explorer-dla")
    z = fig["data"][0]["z"]
    assert len(z) == 2 and len(z[0]) == 4 + 1
    logit, total = map(float, re.search(r"logit (-?[\d.]+); the terms sum to (-?[\d.]+)", fig["title"]).groups())
    assert abs(logit - total) <= 0.011

    # activation patching on an IOI pair (single-letter names: the tiny model reads bytes)
    set_textarea(dash_duo, "patch-clean", "When M and J went to the store, J gave a drink to ")
    set_textarea(dash_duo, "patch-corrupted", "When M and J went to the store, M gave a drink to ")
    retype(dash_duo.find_element("#patch-answer"), "M")
    retype(dash_duo.find_element("#patch-wrong"), "J")
    dash_duo.find_element("#patch-run").click()
    fig = figure_data(dash_duo, "explorer-patch")
    z = np.array(fig["data"][0]["z"], dtype=float)
    s2 = 1 + len("When M and J went to the store, ")  # the changed name, after BOS
    assert z.shape == (2, 1 + len("When M and J went to the store, J gave a drink to "))
    assert abs(z[0, s2] - 1) < 1e-3  # the residual at the changed position carries the whole clean answer
    assert np.abs(np.delete(z[0], s2)).max() < 1e-3  # and nothing else does, at the embeddings
    assert dash_duo.find_element("#patch-error").text == ""
    card = dash_duo.driver.execute_script(
        "return document.getElementById(JSON.stringify({id: 'explorer-patch', type: 'wb-graph'})).closest('.figure-card');")
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", card)
    time.sleep(0.5)
    card.screenshot(str(SHOTS / "explorer_patching.png"))
    # unequal lengths: one line naming the problem
    set_textarea(dash_duo, "patch-corrupted", "When M and J went to the store, M gave a drink")
    dash_duo.find_element("#patch-run").click()
    dash_duo.wait_for_contains_text("#patch-error", "same number of tokens", timeout=15)

    # the attention view: hovering a token shows its weights over earlier tokens (they sum to 1)
    frame = dash_duo.wait_for_element("#explorer-attn-view", timeout=15)
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", frame)
    dash_duo.driver.switch_to.frame(frame)
    try:
        deadline = time.time() + 15
        while len(dash_duo.driver.find_elements("css selector", ".av-tok")) < 5 and time.time() < deadline:
            time.sleep(0.2)
        toks = dash_duo.driver.find_elements("css selector", ".av-tok")
        ActionChains(dash_duo.driver).move_to_element(toks[4]).perform()
        time.sleep(0.3)
        weights = [t.get_attribute("data-weight") for t in toks]
        assert all(w for w in weights[:5]) and not any(weights[5:])
        assert abs(sum(float(w) for w in weights[:5]) - 1) < 0.01
        assert "position 4" in dash_duo.driver.find_element("css selector", ".av-info").text
        assert "av-query" in toks[4].get_attribute("class")
    finally:
        dash_duo.driver.switch_to.default_content()
    assert dash_duo.get_logs() == []


def test_home_table_keeps_every_column_on_screen_at_1280px_with_a_long_error(dash_duo, app):
    """A failed run with a very long error, a long config and a long model name: at 1,280 px every
    column header and cell stays inside the table, and the table inside its card."""
    store = app.workbench_ctx.store
    cfg = {f"setting_{i}": "x" * 40 for i in range(12)}
    rid = store.start_run("long", "function-token-loss-over-training", "ckpt:step_000010@7869bcacd07b-a-long-model-name", "raw",
                          "brown@1.9.80:all", cfg, "v")
    store.finish_run(rid, "failed", error="RuntimeError: " + "a very long error message that goes on " * 40 + "\nTraceback ...")
    start(dash_duo, app)
    wait_page(dash_duo, "/")
    dash_duo.driver.set_window_size(1280, 900)
    dash_duo.wait_for_element(f"#run-row-{rid}", timeout=15)
    time.sleep(0.5)
    geometry = dash_duo.driver.execute_script("""
        const wrap = document.querySelector('.runs-table-wrap'), table = wrap.querySelector('table');
        const right = wrap.getBoundingClientRect().right;
        const row = document.getElementById(arguments[0]);
        const cells = Array.from(table.querySelectorAll('th')).concat(Array.from(row.querySelectorAll('td')));
        return {viewport: document.documentElement.clientWidth, wrapRight: right, tableWidth: table.scrollWidth,
                wrapWidth: wrap.clientWidth, pageScroll: document.documentElement.scrollWidth,
                offRight: cells.filter(c => c.getBoundingClientRect().right > right + 1).map(c => c.innerText.slice(0, 30))};""",
        f"run-row-{rid}")
    assert geometry["offRight"] == [], geometry
    assert geometry["tableWidth"] <= geometry["wrapWidth"] + 1, geometry
    assert geometry["pageScroll"] <= geometry["viewport"] + 1, geometry
    assert "failed" in dash_duo.find_element(f"#run-row-{rid}").get_attribute("data-status")
    shot(dash_duo, "home_long_error_1280")
    assert dash_duo.get_logs() == []


def test_an_empty_page_offers_run_with_defaults_and_its_estimate(dash_duo, tmp_path):
    """No key-space run in the store: the page says so, estimates the time from the probe's cost
    model on the model it would use, and one click queues the run."""
    from dashboards.app import create_app
    from workbench.store import ResultStore

    store = ResultStore(tmp_path / "empty-store")
    app = create_app(store=store, model="tiny")
    try:
        start(dash_duo, app, "/residual-norms")
        wait_page(dash_duo, "/residual-norms")
        note = dash_duo.wait_for_element("#rn-note-empty", timeout=60)
        text = note.text
        assert "No residual-norms run yet" in text and "here)" in text and "Run with defaults" in text, text
        assert re.search(r"about \d+ (s|min)", text), text
        note.find_element("css selector", "button").click()
        dash_duo.wait_for_contains_text('[id*="run-defaults-status"]', "Queued as run", timeout=15)
        runs = store.runs()
        assert [r["probe"] for r in runs] == ["residual-norms"] and runs[0]["status"] in ("queued", "running")  # a worker may take it at once
        app.workbench_ctx.jobs.cancel(runs[0]["run_id"])
        assert dash_duo.get_logs() == []
    finally:
        app.workbench_ctx.jobs.shutdown()
