"""The GPU check script without a GPU: it says so and writes nothing; its summaries keep what matters."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU answer is for machines without CUDA")
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "RESULTS", tmp_path / "gpu_check.txt")
    assert gpu_check.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().out and not (tmp_path / "gpu_check.txt").exists()


def test_each_steps_summary_keeps_its_outcome_lines():
    pytest_out = "....F\nFAILED tests/test_conformance.py::test_x[gpt2] - AssertionError\n1 failed, 80 passed in 30s\n"
    assert gpu_check.summarise("conformance matrix on cuda", pytest_out) == [
        "FAILED tests/test_conformance.py::test_x[gpt2] - AssertionError", "1 failed, 80 passed in 30s"]
    bench = "loading\n  8x128: hf 9000 tok/s, stream 8800 (0.98x), explicit attention 0.70x\n  device: NVIDIA H100\n"
    assert gpu_check.summarise("core benchmark float32", bench)[0].startswith("8x128: hf 9000 tok/s")
    figures = "\n=== attention_sinks ===\nstuff\n**Failed**: boom\nreport: /tmp/x/REPORT.md\n"
    assert gpu_check.summarise("figures --quick on cuda", figures) == ["=== attention_sinks ===", "**Failed**: boom",
                                                                       "report: /tmp/x/REPORT.md"]
    step = gpu_check.run_step("t", ["python", "-c", "import time; time.sleep(5)"], 0.5)
    assert step["rc"] == "timeout" and step["wall_s"] < 4
