"""After a first look, every page shows real results: the first-look preset runs (on tiny
stand-ins here: the same steps and probes as on the embedded model, at tiny budgets), then a
headless Chromium visits every page and checks that each figure drawn has data, each analysis
page shows its first-look banner, and the console stays clean.

With WORKBENCH_FIRST_LOOK_STORE pointing at the store of a real `workbench figures --preset
first-look` run, the same test checks that store on the embedded model instead (and its
screenshots are the README's)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
SHOTS = Path(__file__).parent / "artifacts" / "screenshots" / "first_look"

# Figures that are empty until the user acts on the page (they say so, in words); hidden figures
# (a section for another kind of run) are not counted
WAITS_FOR_THE_USER = {"explorer-patch", "as-pattern"}

FIGURES = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).filter(p => p.offsetParent !== null).map(p => {
  const host = p.closest('[id]'); let id = host ? host.id : '';
  try { id = JSON.parse(id).id || id; } catch (e) {}
  const n = (p.data || []).reduce((s, t) => {
    const v = t.z || t.y || t.x || t.values || t.r || (t.cells && t.cells.values) || [];
    const arr = v._inputArray || v.bdata ? (v._inputArray || [1]) : v;
    return s + (arr.length || 0);
  }, 0);
  const title = (p.layout && p.layout.title && p.layout.title.text) || '';
  const notes = ((p.layout && p.layout.annotations) || []).map(a => a.text).join(' ');
  return {id: id, points: n, title: title, notes: notes};
});
"""


@pytest.fixture(scope="module")
def first_look_store(tmp_path_factory):
    from workbench.store import ResultStore

    given = os.environ.get("WORKBENCH_FIRST_LOOK_STORE")
    if given:
        return ResultStore(given), "smollm2-135m"
    from experiments import first_look

    store = ResultStore(tmp_path_factory.mktemp("first-look") / "store")
    took = first_look.main("cpu", store, quick=True)
    assert set(took) == {s.title for s in first_look.STEPS} | {"total"}
    return store, "tiny-llama"


@pytest.fixture
def app(first_look_store):
    from dashboards.app import create_app

    store, model = first_look_store
    app = create_app(store=store, model=model)
    yield app
    app.workbench_ctx.jobs.shutdown()


def _patch_ioi(dash_duo, byte_level: bool) -> None:
    """Patch the residual stream on an IOI pair (single-letter names for a byte-level tokenizer)
    and save the heatmap's card: its sign must be right at the changed name."""
    set_text = ("const s = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set;"
                "s.call(arguments[0], arguments[1]); arguments[0].dispatchEvent(new Event('input', {bubbles: true}));")
    if byte_level:
        for el, text in (("patch-clean", "When M and J went to the store, J gave a drink to "),
                         ("patch-corrupted", "When M and J went to the store, M gave a drink to ")):
            dash_duo.driver.execute_script(set_text, dash_duo.find_element(f"#{el}"), text)
        from selenium.webdriver.common.keys import Keys

        for el, text in (("patch-answer", "M"), ("patch-wrong", "J")):  # real key presses: React sees them
            box = dash_duo.find_element(f"#{el}")
            box.click()
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(Keys.DELETE)
            box.send_keys(text)
    dash_duo.find_element("#patch-run").click()
    js = ("const p = document.getElementById(JSON.stringify({id: 'explorer-patch', type: 'wb-graph'})).querySelector('.js-plotly-plot');"
          "if (!p || !p.data || !p.data.length || !p.data[0].z) return null; const z = p.data[0].z;"
          "return Array.from(z._inputArray || z, r => Array.from(r));")
    deadline, z = time.time() + 120, None
    while z is None and time.time() < deadline:
        time.sleep(0.5)
        z = dash_duo.driver.execute_script(js)
    assert z is not None, f"no patching heatmap: {dash_duo.find_element('#patch-error').text}"
    tokens_before_s2 = len("When M and J went to the store, ") + 1 if byte_level else 10  # BOS included
    assert abs(z[0][tokens_before_s2] - 1) < 1e-2  # the changed name carries the clean answer at the embeddings
    card = dash_duo.driver.execute_script(
        "return document.getElementById(JSON.stringify({id: 'explorer-patch', type: 'wb-graph'})).closest('.figure-card');")
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", card)
    time.sleep(0.5)
    card.screenshot(str(SHOTS / "patching.png"))


# Each visible figure's title and axis titles inside its figure, and the Plotly toolbar off the title
BOUNDS = """
const inside = (a, b) => a.left >= b.left - 1 && a.right <= b.right + 1 && a.top >= b.top - 1 && a.bottom <= b.bottom + 1;
const meet = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
const bad = [];
for (const p of document.querySelectorAll('.js-plotly-plot')) {
  if (p.offsetParent === null) continue;
  const host = p.closest('[id]'); const id = host ? host.id : '?';
  const box = p.getBoundingClientRect();
  const bar = p.querySelector('.modebar');
  for (const t of p.querySelectorAll('.gtitle, .xtitle, .ytitle, .g-gtitle text, .g-xtitle text, .g-ytitle text')) {
    const r = t.getBoundingClientRect();
    if (!r.width || !t.textContent.trim()) continue;
    if (!inside(r, box)) bad.push(`${id}: '${t.textContent.slice(0, 40)}' leaves its figure`);
    if (bar && t.classList.contains('gtitle') && meet(r, bar.getBoundingClientRect())) bad.push(`${id}: the toolbar covers '${t.textContent.slice(0, 40)}'`);
  }
}
return bad;
"""


def test_every_page_has_figures_with_data_after_a_first_look(dash_duo, app, first_look_store):
    import socket

    store, _ = first_look_store
    labels = {r["probe"]: r.get("label") or "" for r in store.runs()}
    assert all(v.startswith("first-look") for v in labels.values()), labels
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dash_duo.start_server(app, port=port)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for page in app.workbench_pages:
        dash_duo.wait_for_page(url=dash_duo.server_url + page.path)
        dash_duo.wait_for_element(f'#page-root[data-page="{page.path}"]', timeout=15)
        deadline, figures = time.time() + 90, []
        while page.path != "/" and time.time() < deadline:  # callbacks fill the figures one after another
            time.sleep(1.0)
            figures = dash_duo.driver.execute_script(FIGURES)
            waiting = [f for f in figures if f["points"] == 0 and f["id"] not in WAITS_FOR_THE_USER]
            if figures and not waiting and not dash_duo.find_elements("._dash-loading"):
                break
        print(f"{page.path}: {len(figures)} figures in {time.time() - deadline + 90:.1f} s")
        if page.path == "/model-explorer":
            _patch_ioi(dash_duo, byte_level=first_look_store[1] != "smollm2-135m")
        name = page.path.strip("/").replace("/", "_") or "home"
        driver = dash_duo.driver
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 20, 6000))
        time.sleep(0.5)
        driver.save_screenshot(str(SHOTS / f"{name}.png"))
        driver.set_window_size(1280, 900)  # a laptop's width: no title or axis title outside its figure, no toolbar over a title
        time.sleep(1.0)
        misplaced = driver.execute_script(BOUNDS)
        driver.set_window_size(1400, 900)
        assert misplaced == [], f"{page.path}: {misplaced}"
        if page.path == "/":
            dash_duo.wait_for_element("tr[id^='run-row-']", timeout=20)  # Home lists the first look's runs
            continue
        empty = [f"{f['id']}: {f['title'] or f['notes']}" for f in figures if f["points"] == 0 and f["id"] not in WAITS_FOR_THE_USER]
        assert figures and not empty, f"{page.path}: figures without data: {empty}"
        assert not dash_duo.find_elements(".error"), f"{page.path}: {[e.text for e in dash_duo.find_elements('.error')]}"
        if page.probe:
            assert dash_duo.find_elements(".first-look"), f"{page.path} does not say it shows a first look"
        logs = [e for e in dash_duo.get_logs() or [] if e.get("level") == "SEVERE"]
        assert logs == [], f"console errors on {page.path}: {logs}"
