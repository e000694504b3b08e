"""Tiny random-weight transformers models of every causal-LM family TransformerLens converts, saved as
local directories (with the workbench's byte tokenizer), for the conformance matrix.

Each family's config is small (2 layers, d_model 64) but keeps what makes the family itself:
GPT-Neo's alternating local/global layers with a window shorter than the test sequence and an
`intermediate_size` other than 4 x d_model, Mistral's and Phi-3's sliding windows, BLOOM's ALiBi,
Gemma-2's soft-capping and local layers, Gemma-3's q/k norms and two rotary bases, GPT-J's and
GPT-NeoX's partial rotary, Phi's parallel attention and MLP, OPT's learned positions.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SEQ = 40  # longer than every window below, so local layers really mask
WINDOW = 8


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: str
    model_cls: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    refused: str = ""  # the start of the one-line reason load_model gives, when the family is refused


_GQA = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
            max_position_embeddings=128)

FAMILIES = [
    Family("gpt2", "GPT2Config", "GPT2LMHeadModel", dict(n_layer=2, n_embd=64, n_head=4, n_positions=128)),
    Family("gpt-neo", "GPTNeoConfig", "GPTNeoForCausalLM",
           dict(num_layers=2, hidden_size=64, num_heads=4, max_position_embeddings=128,
                attention_types=[[["local", "global"], 1]], window_size=WINDOW, intermediate_size=128)),
    Family("gpt-j", "GPTJConfig", "GPTJForCausalLM", dict(n_layer=2, n_embd=64, n_head=4, n_positions=128, rotary_dim=8)),
    Family("gpt-neox", "GPTNeoXConfig", "GPTNeoXForCausalLM",
           dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                max_position_embeddings=128, rotary_pct=0.25)),
    Family("opt", "OPTConfig", "OPTForCausalLM",
           dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128, max_position_embeddings=128,
                word_embed_proj_dim=64)),
    Family("bloom", "BloomConfig", "BloomForCausalLM", dict(n_layer=2, hidden_size=64, n_head=4)),
    Family("llama", "LlamaConfig", "LlamaForCausalLM", dict(_GQA)),
    Family("mistral", "MistralConfig", "MistralForCausalLM", dict(_GQA, sliding_window=WINDOW)),
    Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM", dict(_GQA)),
    Family("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(_GQA, head_dim=16)),
    Family("gemma", "GemmaConfig", "GemmaForCausalLM", dict(_GQA, num_key_value_heads=1, head_dim=16)),
    Family("gemma-2", "Gemma2Config", "Gemma2ForCausalLM", dict(_GQA, head_dim=16, sliding_window=WINDOW)),
    Family("gemma-3", "Gemma3TextConfig", "Gemma3ForCausalLM", dict(_GQA, head_dim=16, sliding_window=WINDOW)),
    Family("phi", "PhiConfig", "PhiForCausalLM",
           dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, max_position_embeddings=128)),
    Family("phi-3", "Phi3Config", "Phi3ForCausalLM",
           dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=96,
                max_position_embeddings=128, sliding_window=WINDOW, pad_token_id=0)),
    Family("olmo", "OlmoConfig", "OlmoForCausalLM", dict(_GQA, num_key_value_heads=4, pad_token_id=0),
           refused="TransformerLens 3.9 converts OLMo only from its hub names"),
    Family("olmo-2", "Olmo2Config", "Olmo2ForCausalLM", dict(_GQA, num_key_value_heads=4, pad_token_id=0),
           refused="TransformerLens 3.9 converts OLMo-2 only from its hub names"),
    Family("stablelm", "StableLmConfig", "StableLmForCausalLM", dict(_GQA, num_key_value_heads=4),
           refused="TransformerLens 3.9 has no StableLM converter"),
]
BY_NAME = {f.name: f for f in FAMILIES}


def build(family: Family, root: Path, seed: int = 0):
    """Save a seeded random `family` model and the byte tokenizer under `root/<name>`; return
    (directory, the transformers model in float32, eval mode)."""
    import transformers

    from workbench.tokenizers import byte_tokenizer

    tok = byte_tokenizer()
    cfg = getattr(transformers, family.config_cls)(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                                   eos_token_id=tok.eos_token_id, **family.kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_cls)(cfg).eval()
    with torch.no_grad():  # random biases and norm weights too, so a dropped or misplaced one shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode()))))
    d = root / family.name
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model


def tokens(batch: int = 2, seq: int = SEQ, vocab: int = 259) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
