"""Activation streaming: run a model over corpus batches with hooks on the names a probe asks
for, and hand each batch's activations to the probe's accumulator.

Nothing of size tokens x d_model is kept beyond one batch. The run shows a progress bar with
tokens/s and ETA, checks its memory estimate before starting, halves the micro-batch on
out-of-memory, and checkpoints the accumulator so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import psutil
import torch
from transformer_lens import HookedTransformer

from workbench import hooks
from workbench.corpora.tokenized import TokenBatch, TokenBatches
from workbench.distributed import World, merge_accumulator, world
from workbench.errors import MemoryBudgetError
from workbench.progress import progress_bar
from workbench.statefile import load_state, save_state


class Accumulator(Protocol):
    """What a probe gives the streamer.

    hook_names: TransformerLens hook names whose activations `update` receives.
    needs_logits: whether `update` needs the logits (forces a full forward pass).
    update: called once per batch (or micro-batch) with activations on the model's device.
    state_dict / load_state_dict: tensors only, for checkpoints.
    """

    hook_names: Sequence[str]
    needs_logits: bool

    def update(self, batch: TokenBatch, acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


@dataclass
class StreamStats:
    tokens: int
    batches: int
    seconds: float
    resumed_from_batch: int
    micro_batch_size: int
    world_size: int = 1  # with more than one rank, tokens and batches are this rank's share

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


CHECKPOINT_FILE = "stream_state.safetensors"  # one verified file: accumulator state + next batch
CHECKPOINT_EVERY = 20  # batches between checkpoints when the caller does not say


def stop_layer(model: HookedTransformer, hook_names: Sequence[str], needs_logits: bool) -> int | None:
    """The layer after the deepest hooked block, so the forward pass can stop early; None = full pass."""
    if needs_logits:
        return None
    deepest = -1
    for name in hook_names:
        layer = hooks.layer_of(name)
        if layer is None:
            if name in (hooks.EMBED, hooks.POS_EMBED, hooks.TOKENS):
                continue
            return None  # ln_final.*, unembed: need the whole model
        deepest = max(deepest, layer)
    if deepest + 1 >= model.cfg.n_layers:
        return None
    return deepest + 1


def estimate_memory_bytes(model: HookedTransformer, batch_size: int, seq_len: int, hook_names: Sequence[str], needs_logits: bool) -> int:
    """Rough peak memory one streamed batch adds to the loaded model: transient forward activations
    (attention scores included: the explicit path materialises them), logits and captures. The
    weights are not counted: they are already resident, and the available memory excludes them."""
    cfg = model.cfg
    return transient_bytes(cfg.d_model, cfg.d_mlp or 0, cfg.n_heads, cfg.d_vocab, torch.finfo(cfg.dtype).bits // 8,
                           batch_size, seq_len, hook_names, needs_logits)


def transient_bytes(d_model: int, d_mlp: int, n_heads: int, d_vocab: int, itemsize: int, batch_size: int, seq_len: int,
                    hook_names: Sequence[str] = (), needs_logits: bool = True) -> int:
    """`estimate_memory_bytes` from a model's shape alone (for plans made before loading anything)."""
    bt = batch_size * seq_len
    per_layer = bt * (4 * d_model + 3 * d_mlp) + batch_size * n_heads * seq_len * seq_len * 2
    transient = per_layer * itemsize * 2
    logits = bt * d_vocab * itemsize * (2 if needs_logits else 0)
    captured = 0
    for name in hook_names:
        width = d_model
        if hooks.is_attention_weights(name):
            width = n_heads * seq_len
        elif hooks.is_mlp(name):
            width = d_mlp or d_model
        captured += bt * width * itemsize
    return int(transient + logits + captured)


def available_memory_bytes(device: torch.device) -> int:
    """Memory a new allocation can use: on a GPU the driver's free memory plus what torch's caching
    allocator holds reserved but unused (it hands that out first); on the CPU, the OS's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    return int(psutil.virtual_memory().available)


def check_memory(model: HookedTransformer, batch_size: int, seq_len: int, hook_names: Sequence[str], needs_logits: bool) -> int:
    """Raise MemoryBudgetError (with the numbers) if one batch will not fit; return the estimate."""
    device = next(model.parameters()).device
    need = estimate_memory_bytes(model, batch_size, seq_len, hook_names, needs_logits)
    have = available_memory_bytes(device)
    if need > 0.9 * have:
        raise MemoryBudgetError(
            f"Estimated peak {need / 2**30:.2f} GiB for batch {batch_size} x {seq_len} on {device} exceeds the "
            f"{have / 2**30:.2f} GiB available; lower batch_size or seq_len."
        )
    return need


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def forward_with_hooks(
    model: HookedTransformer, tokens: torch.Tensor, hook_names: Sequence[str], needs_logits: bool
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward pass capturing only `hook_names` (no full cache)."""
    acts: dict[str, torch.Tensor] = {}
    home = tokens.device  # a model spread over several GPUs: every capture comes back to the input's device

    def capture(tensor: torch.Tensor, hook) -> None:
        acts[hook.name] = tensor if tensor.device == home else tensor.to(home)

    stop = stop_layer(model, hook_names, needs_logits)
    fwd_hooks = [(name, capture) for name in hook_names]
    with model.hooks(fwd_hooks=fwd_hooks):
        out = model(tokens, return_type="logits" if needs_logits else None, stop_at_layer=stop)
    if needs_logits and out.device != home:
        out = out.to(home)
    return acts, (out if needs_logits else None)


def _slice_batch(batch: TokenBatch, start: int, end: int) -> TokenBatch:
    return TokenBatch(batch.index, batch.tokens[start:end], batch.valid[start:end], batch.is_bos[start:end],
                      batch.word_index[start:end], batch.doc_index[start:end])


def stream(
    model: HookedTransformer,
    batches: TokenBatches,
    accumulator: Accumulator,
    *,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    progress: bool = True,
    check_memory_first: bool = True,
    desc: str = "streaming",
) -> StreamStats:
    """Feed every batch's hooked activations to `accumulator`.

    With `checkpoint_dir`, the accumulator state and the next batch index are saved every
    `checkpoint_every` batches; a later call with the same model, batches and hooks resumes
    from there and yields the same final state as an uninterrupted run.

    Inside a process group (`workbench.distributed`), each rank streams the batches it owns
    (index mod world size), checkpoints to a file of its own, and at the end the ranks' states are
    merged, so every rank returns with the state a single process would have reached.
    """
    w = world()
    device = next(model.parameters()).device
    hook_names = list(accumulator.hook_names)
    checkpoint_every = checkpoint_every or CHECKPOINT_EVERY
    if check_memory_first:
        check_memory(model, batches.spec.batch_size, batches.spec.seq_len, hook_names, accumulator.needs_logits)

    start = 0
    ckpt = None
    fingerprint = _fingerprint(model, batches, accumulator)
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir) / (CHECKPOINT_FILE if not w.sharded else f"stream_state.rank{w.rank}of{w.size}.safetensors")
        saved = load_state(ckpt, device=str(device), expect={"fingerprint": fingerprint})
        if saved is not None:
            state, meta = saved
            accumulator.load_state_dict(state)
            start = int(meta["next_batch"])

    micro = batches.spec.batch_size
    done_tokens = 0
    t0 = time.perf_counter()
    total = batches.n_positions if not w.sharded else _positions_owned(batches, w, len(batches))
    positions_before = _positions_before(batches, start) if not w.sharded else _positions_owned(batches, w, start)
    bar = progress_bar(total, desc if not w.sharded else f"{desc} [rank 0 of {w.size}]", unit="tok",
                       enabled=progress and w.is_main, initial=positions_before)
    n_batches = 0
    try:
        with torch.inference_mode():
            for batch in batches.iter_from(start):
                if not w.owns(batch.index):
                    continue
                batch = batch.to(device)
                i = 0
                while i < batch.tokens.shape[0]:
                    part = _slice_batch(batch, i, i + micro)
                    try:
                        acts, logits = forward_with_hooks(model, part.tokens, hook_names, accumulator.needs_logits)
                    except RuntimeError as e:  # only the forward pass retries: an update may have half-run
                        if not _is_oom(e) or micro == 1:
                            raise
                        micro = max(1, micro // 2)
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    accumulator.update(part, acts, logits)
                    i += part.tokens.shape[0]
                n = batch.n_tokens
                done_tokens += n
                n_batches += 1
                bar.update(n)
                if ckpt is not None and n_batches % checkpoint_every == 0 and batch.index + 1 < len(batches):
                    save_state(ckpt, accumulator.state_dict(), {"fingerprint": fingerprint, "next_batch": batch.index + 1})
    finally:
        bar.close()
    merge_accumulator(accumulator)  # every rank's state, merged in rank order (a no-op in one process)
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)  # only after the merge: a rank that fails before it leaves the others resumable
    return StreamStats(done_tokens, n_batches, time.perf_counter() - t0, start, micro, w.size)


def _positions_owned(batches: TokenBatches, w: "World", end: int) -> int:
    return sum(batches.batch(i).n_tokens for i in range(end) if w.owns(i))


def _positions_before(batches: TokenBatches, start: int) -> int:
    if start == 0:
        return 0
    return sum(batches.batch(i).n_tokens for i in range(start))


def _fingerprint(model: HookedTransformer, batches: TokenBatches, acc: Accumulator) -> str:
    from workbench.models.info import model_key

    w = world()
    blob = json.dumps({
        "world": [w.rank, w.size],
        "model": model_key(model),
        "batches": batches.describe(),
        "hooks": list(acc.hook_names),
        "acc": type(acc).__name__,
        "acc_id": getattr(acc, "identity", lambda: "")(),
    }, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def bare_forward(model: HookedTransformer, batches: TokenBatches, progress: bool = False) -> StreamStats:
    """A forward pass over the same batches with no hooks (the baseline for throughput ratios)."""
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    tokens = n = 0
    with torch.inference_mode():
        for batch in batches:
            model(batch.tokens.to(device), return_type="logits")
            tokens += batch.n_tokens
            n += 1
    return StreamStats(tokens, n, time.perf_counter() - t0, 0, batches.spec.batch_size)
