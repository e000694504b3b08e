"""The function-token page in headless Chromium: pick a run and an SAE, hover a token for its
features, click a feature for its top contexts, look a token up; on the tiny model with random SAEs."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from sae_standins import mini_corpus, saved_sae

from workbench import hooks

pytestmark = pytest.mark.browser
SHOTS = Path(__file__).parent / "artifacts" / "screenshots"

NODE_POSITION = """
const root = arguments[0]; const want = arguments[1];
let host = root; while (host && !host._cyreg) host = host.querySelector('div');
if (!host) return null;
const cy = host._cyreg.cy; const n = cy.nodes(want)[0]; if (!n) return null;
const r = cy.container().getBoundingClientRect(), p = n.renderedPosition();
return [r.left + p.x, r.top + p.y, n.data('feature') === undefined ? null : n.data('feature')];
"""


@pytest.fixture(scope="module")
def ft_store(tmp_path_factory):
    from workbench.corpora import load_corpus
    from workbench.models import load_model
    from workbench.runner import run_probe
    from workbench.store import ResultStore

    d = tmp_path_factory.mktemp("ft-dash")
    store = ResultStore(d / "store")
    model = load_model("tiny", device="cpu")
    corpus = mini_corpus(load_corpus("brown"), 8)
    saes = [str(saved_sae(d / f"s{i}", hook=hooks.resid_post(i), seed=i)) for i in (0, 1)]
    run_probe("function-tokens", model, corpus, {"saes": saes, "max_tokens": 1024, "seq_len": 64}, store=store)
    run_probe("function-token-loss", model, corpus, {"max_tokens": 512, "seq_len": 64}, store=store)
    run_probe("sae-features", model, corpus, {"sae": saes[1], "max_tokens": 1024, "seq_len": 64}, store=store)
    return store


@pytest.fixture
def app(ft_store):
    from dashboards.app import create_app

    app = create_app(store=ft_store, model="tiny")
    yield app
    app.workbench_ctx.jobs.shutdown()


def _node(dash_duo, selector: str, timeout: float = 15):
    graph_el = dash_duo.find_element(".graph-card")
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", graph_el)
    deadline, pos = time.time() + timeout, None
    while time.time() < deadline and pos is None:
        pos = dash_duo.driver.execute_script(NODE_POSITION, graph_el, selector)
        if pos is None:
            time.sleep(0.3)
    assert pos is not None, "the bipartite graph did not render its nodes"
    return pos


def _act_on_node_until(dash_duo, selector: str, click: bool, target: str, text: str, timeout: float = 20):
    """Hover (or click) the first node matching `selector` until `target` shows `text`. The node's
    position is read again on every try: the graph may still be laid out again after it first
    renders (a preselected layer redraws it), and a pointer sent to the old position misses."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains

    deadline = time.time() + timeout
    while True:
        x, y, feature = _node(dash_duo, selector)
        chain = ActionChains(dash_duo.driver).move_to_location(1, 1).move_to_location(int(x), int(y))
        (chain.click() if click else chain).perform()
        try:
            dash_duo.wait_for_contains_text(target, text(feature) if callable(text) else text, timeout=2)
            return
        except TimeoutException:
            if time.time() > deadline:
                raise


def test_graph_hover_click_and_lookups(dash_duo, app):
    from selenium.webdriver.common.keys import Keys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dash_duo.start_server(app, port=port)
    dash_duo.wait_for_page(url=dash_duo.server_url + "/function-tokens")
    dash_duo.wait_for_element('#page-root[data-page="/function-tokens"]', timeout=15)
    dash_duo.wait_for_contains_text("#ft-summary", "function tokens", timeout=20)
    dash_duo.wait_for_contains_text("#ft-layer", "L1", timeout=10)  # the middle SAE is preselected

    _act_on_node_until(dash_duo, '[kind = "token"]', click=False, target=".graph-hover", text="strongest")
    _act_on_node_until(dash_duo, '[kind = "feature"]', click=True, target="#ft-contexts", text=lambda feature: f"feature {feature}")
    assert dash_duo.find_elements("#ft-contexts li"), "no top contexts listed"

    box = dash_duo.find_element("#ft-token")
    box.send_keys(" the" + Keys.TAB)  # the byte tokenizer has no ' the': a clear message, not an error
    dash_duo.wait_for_contains_text("#ft-token-features", "no token", timeout=10)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys("e" + Keys.TAB)
    dash_duo.wait_for_contains_text("#ft-token-features", "activates", timeout=10)
    assert dash_duo.find_elements(".js-plotly-plot")
    assert not dash_duo.find_elements(".error")
    assert not [e for e in dash_duo.get_logs() or [] if e.get("level") == "SEVERE"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    dash_duo.driver.save_screenshot(str(SHOTS / "function_tokens.png"))

    # the clicked feature's own page: top contexts with the firing token, its histogram, own text
    feature = int(dash_duo.find_element("#ft-contexts h4").text.split("feature ")[1].split(":")[0])
    dash_duo.find_element("#ft-feature-link").click()
    dash_duo.wait_for_element('#page-root[data-page="/sae-features"]', timeout=15)
    dash_duo.wait_for_contains_text("#feat-summary", f"Feature {feature} of", timeout=20)
    badge = dash_duo.find_element("#feat-sae-badge")  # the SAE's quality beside it
    assert badge.get_attribute("data-weak") in ("weak", "ok", "unknown") and "SAE" in badge.text
    rows = dash_duo.find_elements("#feat-contexts .context-row")
    assert rows and all(r.find_elements("css selector", ".ctx-focus") for r in rows)
    hist = dash_duo.driver.execute_script(
        "const p = document.getElementById(JSON.stringify({id: 'feat-hist', type: 'wb-graph'})).querySelector('.js-plotly-plot');"
        "return p && p.data ? p.data.length : 0;")
    assert hist == 1
    box = dash_duo.find_element("#feat-text")
    dash_duo.driver.execute_script(
        "const s = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set;"
        "s.call(arguments[0], 'the end of the day'); arguments[0].dispatchEvent(new Event('input', {bubbles: true}));", box)
    dash_duo.find_element("#feat-text-run").click()
    dash_duo.wait_for_contains_text("#feat-text-summary", "Strongest at", timeout=20)
    assert len(dash_duo.find_elements("#feat-text-out .act-tok")) == 1 + len("the end of the day")
    dash_duo.driver.save_screenshot(str(SHOTS / "sae_feature_page.png"))
    assert not dash_duo.find_elements(".error")
    assert not [e for e in dash_duo.get_logs() or [] if e.get("level") == "SEVERE"]

    # a dead feature typed in: said so, with live ones nearby, instead of empty axes
    res = app.workbench_ctx.result(app.workbench_ctx.finished_runs("sae-features")[0]["run_id"])
    dead = [i for i, n in enumerate(res.tensors["fired"].tolist()) if n == 0]
    assert dead, "the stand-in SAE has no dead feature to type in"
    box = dash_duo.find_element("#feat-index")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(dead[0]) + Keys.TAB)
    dash_duo.wait_for_contains_text("#feat-summary-text", f"Feature {dead[0]} never fired on this slice", timeout=20)
    near = res.nearest_live(dead[0])
    links = [a.text for a in dash_duo.find_elements("#feat-summary-text a")]
    assert links == [str(i) for i in near]
    assert not dash_duo.find_elements(".error")
