"""Small SAEs in SAE Lens's own format, for tests: random TopK SAEs for any hook of a tiny model."""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.corpora.base import Corpus


def random_topk_sae(hook: str = "blocks.0.hook_resid_post", d_in: int = 64, d_sae: int = 96, k: int = 6, seed: int = 0):
    """A TopK SAE with random weights (positive encoder bias so features fire often)."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=hook, model_name="tiny", prepend_bos=True))
    gen = torch.Generator().manual_seed(seed)
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=gen) / d_sae**0.5)
        sae.b_enc.copy_(torch.rand(d_sae, generator=gen) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=gen) * 0.01)
    return sae.eval()


def saved_sae(path: Path, **kwargs) -> Path:
    """Save a random TopK SAE to `path` with SAE Lens's own `save_model`."""
    random_topk_sae(**kwargs).save_model(path)
    return path


def mini_corpus(brown: Corpus, n_docs: int = 12, name: str = "brown-mini") -> Corpus:
    """The first `n_docs` Brown documents under a name of their own (tagged, small, fast)."""
    return Corpus(name, brown.version, list(brown.documents[:n_docs]), genre_names=brown.genre_names)
