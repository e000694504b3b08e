"""Runs sharded over processes, GPUs and nodes with torch.distributed.

A run is data-parallel: every rank streams its share of the batches (batch i belongs to rank
i mod world size, a fixed assignment that does not depend on timing), keeps its own checkpoint,
and at the end the accumulators' states are gathered and merged in rank order, so every rank holds
the same merged state. Most states are sums (counts exact, float sums equal to a single process's
within float64 round-off); others say how they merge (`merge_rules`: "or", "max", "min", "first",
or an accumulator's own `merge_states`). Rank 0 alone writes the result store and the registry.

Processes are started by `torch.distributed.run` (`workbench run PROBE --nproc N`, or a user's
own `torchrun --nnodes ...`); `init_from_env` joins the group torchrun describes in the
environment (gloo on the CPU, nccl on GPUs).
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

DEFAULT_TIMEOUT_S = 600  # a collective that waits longer than this fails (a dead rank does not hang the others)
MERGE_RULES = ("sum", "or", "max", "min", "first")
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def sharded(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, batch_index: int) -> bool:
        """Whether this rank streams batch `batch_index` (i mod size: fixed, timing-independent)."""
        return batch_index % self.size == self.rank


def world() -> World:
    """This process's place in the process group (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def init_from_env(backend: str | None = None, timeout_s: float | None = None) -> World:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...): nccl
    when this process has a GPU, else gloo; with GPUs, each local rank takes its own device."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", 0))
        if backend is None:
            backend = os.environ.get("WORKBENCH_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":  # this rank's own group of GPUs starts here (workbench.launch.first_gpu_of)
            per_rank = int(os.environ.get("WORKBENCH_DEVICES_PER_RANK", "1"))
            torch.cuda.set_device((local * per_rank) % torch.cuda.device_count())
        timeout = datetime.timedelta(seconds=timeout_s or float(os.environ.get("WORKBENCH_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        dist.init_process_group(backend=backend, timeout=timeout)
    return world()


def rank_device(default: str | None = None) -> str | None:
    """The device of this rank: its own GPU under nccl, else `default`."""
    w = world()
    if w.sharded and torch.cuda.is_available() and dist.get_backend() == "nccl":
        return f"cuda:{torch.cuda.current_device()}"
    return default


# ----- merging accumulator states -----


def merge_states(states: Sequence[Mapping[str, torch.Tensor]], rules: Mapping[str, str | Callable] | None = None) -> dict[str, torch.Tensor]:
    """Merge per-rank states (in rank order) key by key. A key's rule is `rules[key]`, else the rule
    of the longest suffix in `rules` it ends with (keys like "*/top_vals" name a suffix), else
    "or" for boolean tensors and "sum" for the rest. A callable rule gets the list of values."""
    rules = dict(rules or {})
    out: dict[str, torch.Tensor] = {}
    for key in states[0]:
        values = [s[key] for s in states]
        out[key] = _merge_one(_rule_for(key, values[0], rules), values, key)
    return out


def _rule_for(key: str, value: torch.Tensor, rules: Mapping[str, str | Callable]) -> str | Callable:
    """`rules[key]`, else the rule of the longest "*suffix" the key ends with, else "or" for
    booleans and "sum" for the rest."""
    if key in rules:
        return rules[key]
    suffixes = [k for k in rules if k.startswith("*") and key.endswith(k[1:])]
    if suffixes:
        return rules[max(suffixes, key=len)]
    return "or" if value.dtype == torch.bool else "sum"


def _merge_one(rule: str | Callable, values: list[torch.Tensor], key: str) -> torch.Tensor:
    if callable(rule):
        return rule(values)
    if rule not in MERGE_RULES:
        raise ValueError(f"unknown merge rule {rule!r} for {key!r}; known: {MERGE_RULES}")
    if rule == "first":
        return values[0].clone()
    acc = values[0].clone()
    for v in values[1:]:
        if rule == "sum":
            acc = acc + v
        elif rule == "or":
            acc = acc | v
        elif rule == "max":
            acc = torch.maximum(acc, v)
        else:
            acc = torch.minimum(acc, v)
    return acc


def merged(acc: Any, states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`acc`'s own `merge_states` if it has one, else `merge_states` with its `merge_rules` (the
    reference the collectives of `merge_accumulator` are tested against)."""
    own = getattr(acc, "merge_states", None)
    if callable(own):
        return own(states)
    return merge_states(states, getattr(acc, "merge_rules", None))


def _comm_device() -> torch.device:
    """Where collective tensors live: this rank's GPU under nccl, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_bytes(blob: bytes) -> list[bytes]:
    """Every rank's bytes, in rank order, through tensor collectives (no pickling of peers' data)."""
    dev = _comm_device()
    n = torch.tensor([len(blob)], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = max(int(s.item()) for s in sizes)
    mine = torch.zeros(longest, dtype=torch.uint8, device=dev)
    if blob:
        mine[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(dev)
    out = [torch.zeros_like(mine) for _ in sizes]
    dist.all_gather(out, mine)
    return [bytes(t[: int(s.item())].cpu().numpy().tobytes()) for t, s in zip(out, sizes)]


def gather_states(state: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Every rank's state, in rank order, on every rank (CPU tensors, sent as safetensors bytes)."""
    local = {k: v.detach().cpu().clone() for k, v in state.items()}  # clone: safetensors refuses shared storage
    if not world().sharded:
        return [local]
    return [dict(st_load(b)) for b in _all_gather_bytes(st_save(local))]


def reduce_states(state: Mapping[str, torch.Tensor], rules: Mapping[str, str | Callable] | None = None) -> dict[str, torch.Tensor]:
    """The merge of every rank's `state` under `rules` (as `merge_states`), by collectives: sums,
    ORs, maxima and minima by one all_reduce each, "first" by a broadcast from rank 0, and a
    callable rule by gathering that key's values. Integer-valued counts come out exact; float
    sums equal a single process's within float64 round-off. Every rank gets the same tensors."""
    if not world().sharded:
        return {k: v for k, v in state.items()}
    dev = _comm_device()
    out: dict[str, torch.Tensor] = {}
    for key in sorted(state):  # the same order on every rank
        value = state[key]
        rule = _rule_for(key, value, rules or {})
        t = value.detach().to(dev).contiguous().clone()
        if callable(rule):
            values = [s[key] for s in gather_states({key: value})]
            out[key] = rule(values).to(value.device)
            continue
        if rule not in MERGE_RULES:
            raise ValueError(f"unknown merge rule {rule!r} for {key!r}; known: {MERGE_RULES}")
        if rule == "first":
            dist.broadcast(t, src=0)
        elif rule == "or" and value.dtype == torch.bool:
            u = t.to(torch.uint8)
            dist.all_reduce(u, op=dist.ReduceOp.MAX)  # the or of booleans is their maximum
            t = u.to(value.dtype)
        elif rule == "or":  # integer bit masks: a real bitwise or (a maximum would merge 1 and 2 to 2)
            parts = [torch.empty_like(t) for _ in range(world().size)]
            dist.all_gather(parts, t)  # nccl has no bitwise-or reduction; these masks are small
            t = parts[0]
            for p in parts[1:]:
                t = t | p
        else:
            op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[rule]
            dist.all_reduce(t, op=op)
        out[key] = t.to(value.device)
    return out


def merge_accumulator(acc: Any) -> None:
    """Replace `acc`'s state by the merge of every rank's (a no-op without a process group):
    its own `merge_states` over the gathered states if it has one, else `reduce_states` with its
    `merge_rules`."""
    if not world().sharded:
        return
    state = acc.state_dict()
    own = getattr(acc, "merge_states", None)
    if callable(own):
        acc.load_state_dict(own(gather_states(state)))
    else:
        acc.load_state_dict(reduce_states(state, getattr(acc, "merge_rules", None)))


def broadcast(value: Any) -> Any:
    """Rank 0's JSON-able `value` on every rank."""
    if not world().sharded:
        return value
    blob = json.dumps(value).encode() if world().is_main else b""
    return json.loads(_all_gather_bytes(blob)[0])


def broadcast_tensors(state: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Rank 0's tensors on every rank (CPU tensors; other ranks pass None)."""
    if not world().sharded:
        return dict(state or {})
    blob = st_save({k: v.detach().cpu().contiguous().clone() for k, v in (state or {}).items()}) if world().is_main else b""
    return dict(st_load(_all_gather_bytes(blob)[0]))


def once_on_rank0(compute: Callable[[], T], pack: Callable[[T], tuple[dict[str, torch.Tensor], Any]],
                  unpack: Callable[[dict[str, torch.Tensor], Any], T]) -> T:
    """`compute()` on rank 0 only, its value on every rank: for the parts of a sharded run that are
    trained inside it (bigram masks, circuit SAEs). Training on every rank would need bitwise
    determinism that a GPU does not give, and ranks could then stream with different masks.
    `pack` splits the value into tensors and JSON-able meta; `unpack` rebuilds it on the others."""
    w = world()
    if not w.sharded:
        return compute()
    value = compute() if w.is_main else None
    tensors, meta = pack(value) if w.is_main else (None, None)
    tensors, meta = broadcast_tensors(tensors), broadcast(meta)
    return value if w.is_main else unpack(tensors, meta)


def barrier() -> None:
    if world().sharded:
        dist.barrier()


def shard(items: Sequence[Any]) -> list[Any]:
    """This rank's share of `items` (item i to rank i mod size), for per-head or per-pair loops."""
    w = world()
    return [x for i, x in enumerate(items) if w.owns(i)]
