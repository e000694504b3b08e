"""Headless Chromium settings for driving the dashboard (browser tests, latency benchmark).

Runs as root (no sandbox), offline (outside host names resolve to nothing, so Chromium does not
wait on DNS), without GPU, background networking or component updates.
"""

from __future__ import annotations

import os
import shutil

CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--window-size=1400,1000",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


def chromium_binary() -> str | None:
    return os.environ.get("DASH_TEST_CHROMEPATH") or shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_options():
    """Selenium ChromeOptions with the arguments above (and Debian's chromium when present)."""
    from selenium.webdriver.chrome.options import Options

    options = Options()
    binary = chromium_binary()
    if binary:
        options.binary_location = binary
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    return options
