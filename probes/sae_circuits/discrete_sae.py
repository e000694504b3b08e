"""The discrete SAE of O'Neill & Bui (2024) and its node and edge scores.

SAE (one, shared by all heads): f = ReLU(W_enc (x - b)), x_hat = W_dec f + b, with the rows of
W_enc and the columns of W_dec (one dictionary vector per feature) kept at unit norm, and the tied
bias b starting at 0. Loss: MSE + lambda * mean over inputs of ||f||_1. Adam, full batch.
Unit norm is kept the way the paper's code keeps it: the gradient component along each unit
vector is removed before the step, and the vectors are renormalised after it.

Deviations from the public code, stated: its encoder has an extra bias inside the ReLU and its
decoder normalises the other axis of the weight (per output dimension); this follows the method
note (ReLU(W_enc (x - b)), unit-norm dictionary vectors). Its scores go through a softmax before
the ROC curve; a softmax is monotone, so AUCs are unchanged and it is left out.

Codes: the argmax feature of each (example, head); a row with no active feature gets code 0.

Scores, on all examples (positives and negatives):
- node: for each head, the number of distinct codes seen on positives and never on negatives;
- edge: U[h1, h2] = number of distinct code pairs (c1, c2) that co-occur on heads (h1, h2) in
  some positive and in no negative (h1 != h2). Pairs are sorted by U (descending; ties in a random
  order drawn from the trial's seed), flattened to (h1, h2, h1, h2, ...), and a head's edge score
  is how often it appears among the first heads^2 / 2 entries.
Both are computed exactly with sorted integer keys instead of dense (heads, heads, codes, codes)
tensors, which for 270 heads and 200 codes would hold 2.9e9 entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.distributed import once_on_rank0


@dataclass
class SAESettings:
    n_features: int = 200
    l1: float = 0.02
    lr: float = 1e-3
    epochs: int = 500
    n_train: int = 10


class DiscreteSAE(torch.nn.Module):
    """A one-layer ReLU autoencoder with unit-norm encoder rows and decoder columns and a tied bias."""

    def __init__(self, d_in: int, n_features: int, generator: torch.Generator):
        super().__init__()
        self.W_enc = torch.nn.Parameter(F.normalize(torch.randn(n_features, d_in, generator=generator), dim=1))
        self.W_dec = torch.nn.Parameter(F.normalize(torch.randn(d_in, n_features, generator=generator), dim=0))
        self.b = torch.nn.Parameter(torch.zeros(d_in))
        # remove the radial part of each unit vector's gradient (the step then moves along the sphere)
        self.W_enc.register_hook(lambda g: g - (g * self.W_enc.detach()).sum(1, keepdim=True) * self.W_enc.detach())
        self.W_dec.register_hook(lambda g: g - (g * self.W_dec.detach()).sum(0, keepdim=True) * self.W_dec.detach())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # W_enc (x - b) written as W_enc x - W_enc b: the same value, but autograd then needs no
        # [inputs, d_in] gradient for x - b (one of the six large matmuls of a training step)
        return F.relu(x @ self.W_enc.T - self.W_enc @ self.b)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return f, f @ self.W_dec.T + self.b

    @torch.no_grad()
    def renormalise(self) -> None:
        self.W_enc.copy_(F.normalize(self.W_enc, dim=1))
        self.W_dec.copy_(F.normalize(self.W_dec, dim=0))


def sae_loss(x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor, l1: float) -> torch.Tensor:
    return F.mse_loss(x_hat, x) + l1 * f.abs().sum(-1).mean()


def train_sae(acts: torch.Tensor, settings: SAESettings, seed: int) -> tuple[DiscreteSAE, torch.Tensor, list[float]]:
    """Train on `n_train` examples drawn with `seed` from acts [examples, heads, d_model].

    Returns the SAE, the indices of the training examples and the loss every 50 epochs.
    """
    g = torch.Generator().manual_seed(seed)
    train_idx = torch.randperm(acts.shape[0], generator=g)[: settings.n_train]
    x = acts[train_idx].reshape(-1, acts.shape[-1]).float()
    sae = DiscreteSAE(acts.shape[-1], settings.n_features, g)
    opt = torch.optim.Adam(sae.parameters(), lr=settings.lr)
    losses = []
    for epoch in range(settings.epochs):
        f, x_hat = sae(x)
        loss = sae_loss(x, f, x_hat, settings.l1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sae.renormalise()
        if epoch % 50 == 0 or epoch == settings.epochs - 1:
            losses.append(float(loss.detach()))
    return sae, train_idx, losses


def train_sae_once(acts: torch.Tensor, settings: SAESettings, seed: int) -> tuple[DiscreteSAE, torch.Tensor, list[float]]:
    """`train_sae`, on rank 0 only in a sharded run, every rank getting rank 0's SAE (ranks must
    score heads with one SAE; a GPU's training is not bitwise reproducible across processes)."""

    def pack(out: tuple[DiscreteSAE, torch.Tensor, list[float]]) -> tuple[dict[str, torch.Tensor], list[float]]:
        sae, idx, losses = out
        return {**{f"sae/{k}": v for k, v in sae.state_dict().items()}, "train_idx": idx}, losses

    def unpack(tensors: dict[str, torch.Tensor], losses: list[float]) -> tuple[DiscreteSAE, torch.Tensor, list[float]]:
        sae = DiscreteSAE(acts.shape[-1], settings.n_features, torch.Generator().manual_seed(seed))
        sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae/")})
        return sae.to(acts.device), tensors["train_idx"], list(losses)

    return once_on_rank0(lambda: train_sae(acts, settings, seed), pack, unpack)


@torch.no_grad()
def sae_codes(sae: DiscreteSAE, acts: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Argmax code of every (example, head) as int64 [examples, heads]; all-zero rows get 0."""
    out = []
    for i in range(0, acts.shape[0], chunk):
        f = sae.encode(acts[i : i + chunk].float())
        code = f.argmax(-1)
        code[f.max(-1).values <= 0] = 0
        out.append(code)
    return torch.cat(out)


def node_scores(codes: torch.Tensor, is_pos: torch.Tensor, n_codes: int) -> torch.Tensor:
    """[heads] number of distinct codes a head emits on positives and never on negatives."""
    n_heads = codes.shape[1]
    keys = torch.arange(n_heads) * n_codes + codes  # [examples, heads]
    pos = torch.unique(keys[is_pos])
    neg = torch.unique(keys[~is_pos])
    only_pos = pos[~torch.isin(pos, neg)]
    return torch.bincount(only_pos // n_codes, minlength=n_heads)


def unique_cooccurrence(codes: torch.Tensor, is_pos: torch.Tensor, n_codes: int) -> torch.Tensor:
    """U [heads, heads]: distinct (c1, c2) pairs on heads (h1, h2) seen on positives and never on negatives.

    U is symmetric (a pair on (h1, h2) is the swapped pair on (h2, h1)); it is computed for h1 < h2
    and mirrored. The diagonal is 0, as in the paper (a head with itself is not an edge).
    """
    n_heads = codes.shape[1]
    h1, h2 = torch.triu_indices(n_heads, n_heads, offset=1)
    pair_id = torch.arange(h1.numel())

    def keys(c: torch.Tensor) -> torch.Tensor:
        k = (pair_id * n_codes + c[:, h1]) * n_codes + c[:, h2]  # [examples, pairs]
        return torch.unique(k)

    pos, neg = keys(codes[is_pos]), keys(codes[~is_pos])
    only_pos = pos[~torch.isin(pos, neg)]
    counts = torch.bincount(only_pos // (n_codes * n_codes), minlength=h1.numel())
    U = torch.zeros(n_heads, n_heads, dtype=torch.long)
    U[h1, h2] = counts
    U[h2, h1] = counts
    return U


def edge_scores(U: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """[heads] appearances of each head among the first heads^2 // 2 entries of the sorted pair list."""
    n_heads = U.shape[0]
    flat = U.flatten()
    g = torch.Generator().manual_seed(seed)
    shuffle = torch.randperm(flat.numel(), generator=g)  # random order among ties
    order = shuffle[torch.sort(flat[shuffle], descending=True, stable=True).indices]
    k = n_heads * n_heads // 2
    pairs = order[: (k + 1) // 2]
    entries = torch.stack([pairs // n_heads, pairs % n_heads], dim=1).flatten()[:k]
    return torch.bincount(entries, minlength=n_heads)
