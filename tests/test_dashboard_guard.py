"""What the dashboard's server accepts: only its own host names (no DNS rebinding into the job
queue), bounded request bodies, and, for every malformed address or request, a message on the
page instead of an HTTP 500."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dashboards.guard import (
    LOOPBACK_NAMES,
    MAX_REQUEST_BYTES,
    allowed_hosts_for,
    host_name,
)

ROOT = Path(__file__).resolve().parent.parent


def _client(app):
    client = app.server.test_client()
    client.get("/")  # Dash finishes its setup on the first request
    return client


def _post(client, output: str, outputs: list, inputs: list, state: list | None = None, changed: list | None = None):
    body = {"output": output, "outputs": outputs, "inputs": inputs, "state": state or [],
            "changedPropIds": changed if changed is not None else [f"{i['id']}.{i['property']}" for i in inputs]}
    return client.post("/_dash-update-component", json=body)


@pytest.fixture
def app(store):
    from dashboards.app import create_app

    app = create_app(store=store, model="tiny")
    yield app
    app.workbench_ctx.jobs.shutdown()


# ----------------------------------------------------------------------------- host names


def test_host_names_parse_and_the_default_serves_loopback_only():
    assert host_name("127.0.0.1:8050") == "127.0.0.1" and host_name("[::1]:8050") == "::1"
    assert host_name("LocalHost") == "localhost" and host_name("evil.example:80") == "evil.example"
    assert allowed_hosts_for("127.0.0.1") == LOOPBACK_NAMES
    assert allowed_hosts_for("10.0.0.5") == LOOPBACK_NAMES | {"10.0.0.5"}
    assert allowed_hosts_for("0.0.0.0") is None  # the user exposed it; names are not known here
    assert allowed_hosts_for("0.0.0.0", ["lab.example.org"]) == LOOPBACK_NAMES | {"lab.example.org"}


def test_a_request_for_another_host_is_refused_before_any_callback(app, store):
    client = _client(app)
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 403
    queue = {"output": "..home-start-msg.children...home-kick.data..", "outputs": [], "inputs": [], "state": [],
             "changedPropIds": []}
    r = client.post("/_dash-update-component", json=queue, headers={"Host": "evil.example:8050"})
    assert r.status_code == 403 and b"answers only to" in r.data
    assert store.runs() == []  # nothing was queued
    for ok in ("127.0.0.1:8050", "localhost", "[::1]:8050"):
        assert client.get("/", headers={"Host": ok}).status_code == 200


def test_an_oversized_body_is_refused_without_reading_it(app):
    client = _client(app)
    r = client.post("/_dash-update-component", data=b"x" * (MAX_REQUEST_BYTES + 1), content_type="application/json")
    assert r.status_code == 413


@pytest.mark.timeout(180)
def test_a_real_server_refuses_a_200_mb_body_and_a_foreign_host_without_growing(tmp_path):
    """The running server (werkzeug, as `workbench dashboard` starts it): a 200 MB declared body is
    answered 413 after the headers, and the server's memory does not grow by what was sent."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import sys; sys.path[:0] = [%r]\n"
            "from dashboards.app import create_app\nfrom workbench.store import ResultStore\n"
            "app = create_app(store=ResultStore(%r), model='tiny')\n"
            "app.run(host='127.0.0.1', port=%d, debug=False, use_reloader=False)\n") % (str(ROOT), str(tmp_path / "s"), port)
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the dashboard did not start")
        assert _post_declared(port, 200 * 2**20, 8 * 2**20)[0] == 413  # warm-up: the first refusal allocates its buffers once
        before = psutil.Process(server.pid).memory_info().rss
        sent = 0
        for mb in (32, 32, 64):  # 128 MB sent of three declared 200 MB bodies
            status, n = _post_declared(port, 200 * 2**20, mb * 2**20)
            assert status == 413
            sent += n
        grown = psutil.Process(server.pid).memory_info().rss - before
        # reading the bodies would hold at least what was sent (128 MB); buffers and lazy imports stay well under
        assert grown < 48 * 2**20, f"the server grew by {grown / 2**20:.0f} MB after {sent / 2**20:.0f} MB sent"
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/", headers={"Host": "evil.example"})
        assert c.getresponse().status == 403
    finally:
        server.kill()
        server.wait(10)


def _post_declared(port: int, declared: int, send: int) -> tuple[int, int]:
    """POST with a declared body length, sending `send` bytes of it (the server may stop us sooner);
    the response status and the bytes sent."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.putrequest("POST", "/_dash-update-component")
    c.putheader("Content-Type", "application/json")
    c.putheader("Content-Length", str(declared))
    c.endheaders()
    sent = 0
    try:
        while sent < send:
            c.send(b"x" * 2**19)
            sent += 2**19
    except OSError:
        pass
    return c.getresponse().status, sent


# ----------------------------------------------------------------------------- malformed addresses and requests

BAD_RUNS = ["²", "99999999999999999999", "9" * 5000, "abc", "-1", "0", "1e3", " 1", "１"]


@pytest.mark.parametrize("bad", BAD_RUNS, ids=lambda b: repr(b[:12]))
def test_a_malformed_run_in_the_address_is_ignored_not_a_500(app, bad):
    client = _client(app)
    outputs = [{"id": "rn-run", "property": "options"}, {"id": "rn-run", "property": "value"}]
    r = _post(client, "..rn-run.options...rn-run.value..", outputs, [{"id": "url", "property": "pathname", "value": "/residual-norms"}],
              [{"id": "url", "property": "search", "value": f"?run={bad}"}])
    assert r.status_code == 200
    assert r.get_json()["response"]["rn-run"]["value"] is None
    r = _post(client, "rn-note.children", {"id": "rn-note", "property": "children"},
              [{"id": "rn-run", "property": "value", "value": bad}], [{"id": "url", "property": "search", "value": f"?run={bad}"}])
    assert r.status_code == 200


@pytest.mark.parametrize("bad", ["abc", 10**30, -3, None, [1]], ids=repr)
@pytest.mark.parametrize("button", ["home-cancel", "home-retry", "home-clear"])
def test_a_row_action_on_a_malformed_run_says_so(app, bad, button):
    client = _client(app)
    ident = {"run": bad, "type": button}
    groups = {b: ([{"id": ident, "property": "n_clicks", "value": 1}] if b == button else []) for b in ("home-cancel", "home-retry", "home-clear")}
    inputs = [groups["home-cancel"], groups["home-retry"], groups["home-clear"]]
    changed = [json.dumps(ident, sort_keys=True, separators=(",", ":")) + ".n_clicks"]
    outputs = [{"id": "home-row-msg", "property": "children"}, {"id": "home-cancelling", "property": "data"}]
    r = _post(client, "..home-row-msg.children...home-cancelling.data..", outputs, inputs, changed=changed)
    assert r.status_code == 200
    text = json.dumps(r.get_json())
    assert "not a run id" in text


def test_an_html_export_of_a_malformed_figure_shows_an_error_on_the_page(app):
    client = _client(app)
    ident = {"id": "rn-norms", "type": "export-html"}
    r = _post(client, '{"id":["MATCH"],"type":"export-download-html"}.data',
              {"id": {"id": "rn-norms", "type": "export-download-html"}, "property": "data"},
              [{"id": ident, "property": "n_clicks", "value": 1}],
              [{"id": {"id": "rn-norms", "type": "wb-graph"}, "property": "figure", "value": {"data": [{"type": "no-such-trace"}]}}],
              changed=[json.dumps(ident, sort_keys=True, separators=(",", ":")) + ".n_clicks"])
    assert r.status_code == 200
    body = r.get_json()
    assert "app-error" in json.dumps(body) and "no-such-trace" in json.dumps(body)


def test_a_feature_page_address_with_huge_numbers_opens(app):
    client = _client(app)
    outputs = [{"id": "feat-run", "property": "options"}, {"id": "feat-run", "property": "value"},
               {"id": "feat-index", "property": "value"}]
    r = _post(client, "..feat-run.options...feat-run.value...feat-index.value..", outputs,
              [{"id": "url", "property": "pathname", "value": "/sae-features"}],
              [{"id": "url", "property": "search", "value": "?run=" + "9" * 5000 + "&feature=" + "9" * 5000}])
    assert r.status_code == 200
    assert r.get_json()["response"]["feat-index"]["value"] is None
