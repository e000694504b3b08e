"""Sharded runs (torch.distributed, gloo on the CPU): every streaming accumulator and the per-head
loops give on 2 and 3 ranks what they give in one process (counts bit for bit, float sums within
the rounding of re-associating the per-batch sums), a killed rank fails the launch with a message
naming it and a rerun resumes from the ranks' checkpoints to the uninterrupted result, under the
same store key."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tolerances import rounding

from workbench import hooks
from workbench.distributed import World, merge_states
from workbench.errors import ConfigError
from workbench.launch import RankFailure, describe_failure, launch, ranks_for

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DISTKIT = str(TESTS / "distkit.py")
FAULTKIT = str(TESTS / "faultkit.py")


# ----------------------------------------------------------------------------- merge rules


def test_merge_rules_combine_rank_states_key_by_key():
    a = {"n": torch.tensor([1, 2]), "x": torch.tensor([0.5, -1.0]), "seen": torch.tensor([True, False]),
         "ex": torch.tensor([7.0]), "hi/top": torch.tensor([3.0, 1.0]), "lo": torch.tensor([2.0, 9.0])}
    b = {"n": torch.tensor([10, 20]), "x": torch.tensor([1.5, 4.0]), "seen": torch.tensor([False, False]),
         "ex": torch.tensor([8.0]), "hi/top": torch.tensor([2.0, 5.0]), "lo": torch.tensor([4.0, 1.0])}
    out = merge_states([a, b], {"ex": "first", "*/top": "max", "lo": "min"})
    assert torch.equal(out["n"], torch.tensor([11, 22]))  # sum by default
    assert torch.equal(out["x"], torch.tensor([2.0, 3.0]))
    assert torch.equal(out["seen"], torch.tensor([True, False]))  # booleans OR by default
    assert torch.equal(out["ex"], torch.tensor([7.0]))  # rank 0's
    assert torch.equal(out["hi/top"], torch.tensor([3.0, 5.0]))  # suffix rule
    assert torch.equal(out["lo"], torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match="unknown merge rule"):
        merge_states([a, b], {"n": "mean"})


def test_top_contexts_do_not_depend_on_how_candidates_were_split():
    """The top m by (value desc, earliest position) of a union is the top m of the parts' top m,
    ties included: folding the candidates in any chunking gives one answer."""
    from workbench.top_contexts import NO_POSITION, top_contexts

    g = torch.Generator().manual_seed(0)
    d, n, m = 5, 40, 4
    vals = torch.randint(0, 4, (d, n), generator=g).float()  # many ties
    pos = torch.randperm(1000, generator=g)[:n].repeat(d, 1)
    ctx = pos[..., None].repeat(1, 1, 3).to(torch.int32)
    whole = top_contexts(vals, pos, ctx, m)

    def folded(cuts):
        state = (torch.full((d, m), -1.0), torch.full((d, m), NO_POSITION), torch.full((d, m, 3), -1, dtype=torch.int32))
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            state = top_contexts(torch.cat([state[0], vals[:, lo:hi]], 1), torch.cat([state[1], pos[:, lo:hi]], 1),
                                 torch.cat([state[2], ctx[:, lo:hi]], 1), m)
        return state

    for cuts in ([0, n], [0, 7, 19, 33, n], [0, 1, 2, 3, n]):
        for x, y in zip(folded(cuts), whole):
            assert torch.equal(x, y)


def test_a_batchs_own_candidates_tie_break_by_position_at_every_micro_batch_size():
    """`merge_batch` keeps, of equal activations, the earliest positions, whether the batch comes
    whole or halved (as out-of-memory retries cut it): `topk` alone kept other ones."""
    from workbench.top_contexts import NO_POSITION, merge_batch

    g = torch.Generator().manual_seed(4)
    n, rows, m, w = 64, 6, 3, 2
    acts = torch.randint(0, 3, (n, rows), generator=g).float()  # values 0, 1, 2: ties everywhere
    positions = torch.arange(n, dtype=torch.int64) * 7 + 11
    windows = positions[:, None].repeat(1, w)

    def empty():
        return (torch.full((rows, m), -1.0), torch.full((rows, m), NO_POSITION), torch.full((rows, m, w), -1, dtype=torch.int32))

    def folded(parts: int):
        state = empty()
        for chunk in torch.arange(n).chunk(parts):
            state = merge_batch(state, acts[chunk], windows[chunk], positions[chunk], m)
        return state

    whole = folded(1)
    for col in range(rows):  # the brute force: highest value, then earliest position, among those that fire
        ranked = sorted((-float(acts[i, col]), int(positions[i])) for i in range(n) if acts[i, col] > 0)[:m]
        assert whole[1][col, : len(ranked)].tolist() == [p for _, p in ranked]
    for parts in (2, 4, 8, 64):
        for x, y in zip(folded(parts), whole):
            assert torch.equal(x, y), parts


def test_batch_ownership_is_fixed_by_index():
    owners = [[i for i in range(7) if World(r, 3).owns(i)] for r in range(3)]
    assert owners == [[0, 3, 6], [1, 4], [2, 5]]
    assert World().owns(5) and not World().sharded


# ----------------------------------------------------------------------------- launching


def test_nproc_values():
    assert ranks_for("3") == 3
    assert ranks_for("auto") >= 1
    for bad in ("0", "-1", "two"):
        with pytest.raises(Exception, match="--nproc takes a positive number"):
            ranks_for(bad)


def test_failure_message_names_the_first_failed_rank(tmp_path):
    summary = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
Root Cause (first observed failure):
[0]:
  time      : 2026-12-07_01:00:00
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 1234)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 1234
"""
    (tmp_path / "rank0.json").write_text(json.dumps({"rank": 0, "error": "KeyboardInterrupt: signal 15"}))
    msg = describe_failure(1, summary, tmp_path, 2)
    assert msg.startswith("rank 1 of 2 failed: killed by SIGKILL (exit code -9)")
    assert "rank 0: KeyboardInterrupt" in msg and "resume" in msg
    (tmp_path / "rank1.json").write_text(json.dumps({"rank": 1, "error": "ValueError: bad batch"}))
    assert describe_failure(1, summary, tmp_path, 2).startswith("rank 1 of 2 failed: ValueError: bad batch")


def test_ranks_and_gpus_are_checked_before_launch():
    """More ranks than GPUs (or than GPU groups) is refused in one line before any rank starts;
    --device cpu means CPU ranks on gloo with no GPU visible, whatever the machine has."""
    from workbench.launch import check_ranks, first_gpu_of, rank_env

    for nproc, n_dev, gpus, words in [(3, 1, 2, "3 ranks need 3 GPUs; this machine has 2"),
                                      (2, 2, 3, "2 ranks x 2 GPUs each need 4 GPUs; this machine has 3"),
                                      (2, 1, 0, "2 ranks need 2 GPUs; this machine has 0")]:
        with pytest.raises(Exception, match=words):
            check_ranks(nproc, "cuda", n_dev, gpus=gpus)
    assert check_ranks(4, "cuda", 2, gpus=8) == "cuda" and check_ranks(2, None, 1, gpus=2) == "cuda"
    assert check_ranks(2, None, 1, gpus=0) == "cpu"
    assert check_ranks(8, "cpu", 1, gpus=4) == "cpu"  # CPUs even where GPUs are present
    assert rank_env("cpu") == {"CUDA_VISIBLE_DEVICES": "", "WORKBENCH_DIST_BACKEND": "gloo"}
    assert rank_env("cuda", 2) == {"WORKBENCH_DEVICES_PER_RANK": "2"}
    with pytest.raises(Exception, match="cannot be combined with --device cpu"):
        check_ranks(2, "cpu", 2, gpus=4)
    assert [first_gpu_of(r, 2) for r in range(4)] == [0, 2, 4, 6]  # disjoint groups: 0-1, 2-3, 4-5, 6-7


def test_the_cli_refuses_more_ranks_than_gpus_without_launching(store, monkeypatch):
    from typer.testing import CliRunner

    import workbench.launch as launch_mod
    from workbench.cli import app

    launched = []
    monkeypatch.setattr(launch_mod, "launch", lambda *a, **k: launched.append(a))
    out = CliRunner().invoke(app, ["run", "residual-norms", "--model", "tiny", "--nproc", "3", "--device", "cuda"])
    assert out.exit_code == 2 and "3 ranks need 3 GPUs; this machine has 0" in out.output and not launched


# ----------------------------------------------------------------------------- placement over GPUs


def test_placement_plan_follows_transformer_lens():
    """The plan puts block i where TransformerLens's forward moves the residual before block i;
    embeddings on the first device, the final norm and unembedding on the last; contiguous and
    balanced within one layer."""
    from types import SimpleNamespace

    from transformer_lens.utilities.multi_gpu import get_device_for_block_index

    from workbench.models.placement import placement_plan

    for n_layers, n_dev in [(30, 2), (30, 4), (62, 8), (5, 5), (7, 3)]:
        cfg = SimpleNamespace(n_layers=n_layers, n_devices=n_dev, device="cuda:0")
        plan = placement_plan(cfg, n_dev)
        blocks = [plan[hooks.block(i)] for i in range(n_layers)]
        assert blocks == [get_device_for_block_index(i, cfg) for i in range(n_layers)]
        idx = [d.index for d in blocks]
        assert idx == sorted(idx) and set(idx) == set(range(n_dev))
        sizes = [idx.count(k) for k in range(n_dev)]
        assert max(sizes) - min(sizes) <= 1
        assert plan["embed"].index == 0 and plan["unembed"].index == plan["ln_final"].index == n_dev - 1
    with pytest.raises(ConfigError, match="more than the model's 2 layers"):
        placement_plan(SimpleNamespace(n_layers=2), 3)
    # a rank of a sharded run places its model on its own group (rank 1 of --n-devices 2: GPUs 2 and 3)
    group = placement_plan(SimpleNamespace(n_layers=6), 2, first="cuda:2")
    assert {str(d) for d in group.values()} == {"cuda:2", "cuda:3"} and str(group["embed"]) == "cuda:2"


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="the refusal is for machines without 2 GPUs")
def test_n_devices_beyond_this_machine_is_refused_before_loading():
    from workbench.models import load_model

    with pytest.raises(ConfigError, match="n_devices=2 needs 2 GPUs; this machine has"):
        load_model("tiny", device="cpu", n_devices=2)


# ----------------------------------------------------------------------------- 1 rank against N ranks


def _run_cases(out: Path, nproc: int, cases: list[str], env: dict[str, str] | None = None) -> None:
    env = {**os.environ, **(env or {})}
    subprocess.run([sys.executable, DISTKIT, str(out), *cases], check=True, env=env, cwd=ROOT, capture_output=True)
    launch([str(out), *cases], nproc, entry=[DISTKIT], env=env)


def _assert_same(single: dict[str, torch.Tensor], ranks: list[dict[str, torch.Tensor]], n_batches: int, case: str) -> None:
    assert single, case
    for rank_state in ranks:
        assert set(rank_state) == set(single), case
        for key, v in single.items():
            got = rank_state[key]
            assert got.shape == v.shape and got.dtype == v.dtype, (case, key)
            integral = not v.is_floating_point() or bool(torch.equal(v, v.round()))
            if integral:  # counts (integer tensors, or integer-valued float64) merge bit for bit
                assert torch.equal(got, v), (case, key)
            else:  # a float sum re-associated over the per-batch partial sums
                tol = rounding(float(v.abs().max()), n_batches)
                assert float((got - v).abs().max()) <= tol, (case, key, float((got - v).abs().max()), tol)
    for other in ranks[1:]:  # every rank holds the same merged state
        for key in single:
            assert torch.equal(other[key], ranks[0][key]), (case, key)


ALL_CASES = ["residual_norms", "head_survey", "bipartite", "loss_split", "class_stats", "centred", "heldout", "surprisal",
             "ridge", "sae_quality", "function_sink", "head_ablation", "head_patching", "sae_features"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two-ranks")
    _run_cases(out, 2, ALL_CASES)
    return out


@pytest.mark.parametrize("case", ALL_CASES)
def test_two_ranks_equal_one_process(two_ranks, case):
    """37 batches over 2 ranks (19 + 18: an uneven split)."""
    single = load_file(two_ranks / f"{case}.single.safetensors")
    ranks = [load_file(two_ranks / f"{case}.rank{r}of2.safetensors") for r in range(2)]
    _assert_same(single, ranks, 37, case)


def test_more_ranks_than_batches(tmp_path):
    """2 batches over 3 ranks: rank 2 streams nothing (and, with 4 heads, ablates one head)."""
    cases = ["residual_norms", "head_survey", "bipartite", "class_stats", "surprisal", "head_ablation", "head_patching",
             "sae_features", "merge_rules", "once_on_rank0"]
    _run_cases(tmp_path, 3, cases, env={"DISTKIT_MAX_TOKENS": "200"})
    for case in cases[:-2]:
        single = load_file(tmp_path / f"{case}.single.safetensors")
        ranks = [load_file(tmp_path / f"{case}.rank{r}of3.safetensors") for r in range(3)]
        _assert_same(single, ranks, 2, case)
    for r in range(3):  # every rule through the collectives equals the reference merge; bit masks 1|2|4 = 7
        state = load_file(tmp_path / f"merge_rules.rank{r}of3.safetensors")
        for key in [k for k in state if k.startswith("ref/")]:
            assert torch.equal(state["got/" + key[4:]], state[key]), key
        assert state["got/bits"].tolist() == [7, 56, 5] and state["got/flags"].tolist() == [True, True, False]
    single = load_file(tmp_path / "once_on_rank0.single.safetensors")
    ranks = [load_file(tmp_path / f"once_on_rank0.rank{r}of3.safetensors") for r in range(3)]
    assert [int(r["ran_here"]) for r in ranks] == [1, 0, 0]  # trained once, on rank 0
    for r in ranks:  # every rank holds rank 0's mask and log, never one of its own
        assert torch.equal(r["mask"], single["mask"]) and torch.equal(r["ce"], single["ce"]) and int(r["steps"]) == 2


# ----------------------------------------------------------------------------- a killed rank, then resume


def _registry(root: Path) -> list[tuple]:
    con = sqlite3.connect(root / "registry.sqlite")
    try:
        return con.execute("SELECT run_id, status, world_size, key FROM runs ORDER BY run_id").fetchall()
    finally:
        con.close()


def test_killed_rank_fails_the_launch_and_a_rerun_resumes(tmp_path):
    from probes.residual_norms.probe import ResidualNormsResult

    store, events = tmp_path / "store", tmp_path / "events"
    env = {"FAULTKIT_EVENTS": str(events), "FAULTKIT_FORWARD_SLEEP": "0.15", "FAULTKIT_CHECKPOINT_EVERY": "2"}
    killed: list[int] = []

    def kill_rank_1_after_two_checkpoints() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.05)
            lines = events.read_text().splitlines() if events.exists() else []
            pid = [int(line.split()[2]) for line in lines if line.startswith("r1 pid")]
            if pid and lines.count("r1 write-bytes-done") >= 2:
                os.kill(pid[0], signal.SIGKILL)
                killed.append(pid[0])
                return

    threading.Thread(target=kill_rank_1_after_two_checkpoints, daemon=True).start()
    t0 = time.time()
    with pytest.raises(RankFailure) as err:
        launch(["rank-probe", str(store)], 2, entry=[FAULTKIT], env=env)
    assert killed, "rank 1 was never killed"
    assert time.time() - t0 < 120
    msg = str(err.value)
    assert msg.startswith("rank 1 of 2 failed: killed by SIGKILL") and "resume" in msg
    kept = sorted(p.name for p in (store / "scratch").rglob("stream_state.rank*"))
    assert kept == ["stream_state.rank0of2.safetensors", "stream_state.rank1of2.safetensors"]
    assert _registry(store)[0][1:3] == ("interrupted", 2)

    first = events.read_text().splitlines()
    events.unlink()
    launch(["rank-probe", str(store)], 2, entry=[FAULTKIT], env={**env, "FAULTKIT_FORWARD_SLEEP": "0"})
    again = events.read_text().splitlines()
    # each rank resumed after its last checkpoint: together they stream fewer batches than the slice has
    n_batches = sum(1 for line in first if line.endswith(" batch")) + sum(1 for line in again if line.endswith(" batch"))
    resumed = sum(1 for line in again if line.endswith(" batch"))
    ref_store = tmp_path / "reference"
    subprocess.run([sys.executable, FAULTKIT, "probe", str(ref_store)], check=True, cwd=ROOT, capture_output=True,
                   env={**os.environ, "FAULTKIT_EVENTS": str(tmp_path / "ref-events")})
    total = sum(1 for line in (tmp_path / "ref-events").read_text().splitlines() if line == "batch")
    assert 0 < resumed < total <= n_batches

    rows, ref_rows = _registry(store), _registry(ref_store)
    assert rows[-1][1:3] == ("done", 2) and ref_rows[-1][1:3] == ("done", 1)
    assert rows[-1][3] == ref_rows[-1][3]  # one key for the sharded and the single run
    key = rows[-1][3]
    got = ResidualNormsResult.load(store / "results" / "residual-norms" / key).table
    ref = ResidualNormsResult.load(ref_store / "results" / "residual-norms" / key).table
    assert list(got.columns) == list(ref.columns) and len(got) == len(ref)
    for col in ref.columns:
        if ref[col].dtype.kind in "iub" or not pd.api.types.is_numeric_dtype(ref[col]):
            assert got[col].tolist() == ref[col].tolist(), col
        else:
            diff = (got[col] - ref[col]).abs().max()
            assert diff <= rounding(float(ref[col].abs().max()), total), col


# ----------------------------------------------------------------------------- the command line


def test_cli_nproc_stores_under_the_single_run_key(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "a quick brown fox jumps over the lazy dog while the cat sleeps".split()
    for i in range(8):
        (corpus / f"d{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(80)))
    env = {**os.environ, "WORKBENCH_STORE": str(tmp_path / "store")}
    args = ["run", "residual-norms", "--model", "tiny", "--corpus", str(corpus), "--device", "cpu",
            "--set", "max_tokens=1500", "--set", "seq_len=32", "--set", "batch_size=4"]
    cli = [sys.executable, "-m", "workbench.cli"]
    sharded = subprocess.run([*cli, *args, "--nproc", "2"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    assert "(computed on 2 ranks)" in sharded.stdout
    single = subprocess.run([*cli, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    assert "(reused stored result)" in single.stdout
    key = lambda out: out.split(" key ")[1].split()[0]  # noqa: E731
    assert key(sharded.stdout) == key(single.stdout)
    rows = _registry(tmp_path / "store")
    assert [(r[1], r[2]) for r in rows] == [("done", 2), ("reused", 1)]
