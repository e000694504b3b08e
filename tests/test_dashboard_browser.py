"""The dashboard in a real headless Chromium (Dash's dash_duo), on the tiny model and a temporary
store holding one residual-norms result. Screenshots go to tests/artifacts/screenshots/."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).parent / "artifacts" / "screenshots"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shot(dash_duo, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    dash_duo.driver.save_screenshot(str(path))
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
        shot(dash_duo, "page" + (page.path.replace("/", "_") if page.path != "/" else "_home"))
        logs = dash_duo.get_logs()
        assert logs == [], f"console errors on {page.path}: {logs}"
        assert not dash_duo.find_elements(".error"), f"error message on {page.path}"
