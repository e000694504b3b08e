"""Shared fixtures: a temporary result store, tiny models, and the Brown corpus."""

from __future__ import annotations

import os

import pytest
import torch

# WORKBENCH_TEST_THREADS=1 runs the suite single-threaded (tolerances must hold with any count).
torch.set_num_threads(int(os.environ.get("WORKBENCH_TEST_THREADS") or max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh ResultStore in a temporary directory (also the default store for the test)."""
    from workbench.store import ResultStore

    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path / "store"))
    return ResultStore(tmp_path / "store")


@pytest.fixture
def tiny():
    """A seeded 2-layer GPT-2-style random model with the byte tokenizer, raw numerics."""
    from workbench.models import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture
def tiny_llama():
    """A seeded 2-layer Llama-style model (RMSNorm, rotary, GQA 4 query / 2 KV heads)."""
    from workbench.models import load_model

    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="session")
def brown():
    from workbench.corpora import load_corpus

    return load_corpus("brown")


@pytest.fixture(scope="session")
def smollm2():
    """The embedded model in raw numerics (slow on a cold cache: dequantises the GGUF once)."""
    from workbench.models import load_model

    return load_model("smollm2-135m", numerics="raw", device="cpu")


@pytest.hookimpl(optionalhook=True)
def pytest_setup_options():
    """Chromium options for Dash's browser fixtures (dash_duo): headless, offline, no sandbox (root)."""
    from dashboards.browser import chromium_options

    return chromium_options()
