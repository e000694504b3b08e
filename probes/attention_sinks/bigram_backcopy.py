"""The Bigram-Backcopy (BB) task of Guo et al. (2024), "Active-Dormant Attention Heads", and the
small transformers trained on it.

Task (character level):
- vocabulary: the V characters of a corpus (Brown by default; the paper uses tiny Shakespeare),
  then ⟨s⟩ (id V) and an unused delimiter (id V+1, also the tokenizer's unknown/pad token);
- triggers: the k most frequent characters by unigram marginal (k = 3 by default);
- a sequence starts with ⟨s⟩; the first character is drawn from the unigram marginal with the
  triggers given probability 0; after that, if the previous token is a trigger the next token
  copies the token before the trigger (backcopy), otherwise it is drawn from the bigram row of
  the previous token. Inputs are positions 0..L-1 and targets 1..L (L = 256).

Risks: cross-entropy on backcopy positions (input token is a trigger) and on bigram positions
(input token is a character that is not a trigger; the ⟨s⟩ position is in neither). The Bayes
risk on bigram positions is the conditional entropy of the transition rows weighted by how often
each character occurs at a bigram position of a BB sequence; `BBTask.bigram_optimum` computes it
exactly by propagating the (previous, current) token distribution through all positions. On a
finite evaluation set the empirical risk of the true transition matrix varies by several percent
around that optimum (sequences fall into long loops), so a model's bigram risk is also compared,
paired, with the oracle risk on the very same positions (`BBTask.oracle_bigram_risk`,
`paired_gap`).

Model (the paper's): pre-LN, learned absolute positions, one head with d_head = d_model = 256,
ReLU MLP of width 4d, untied unembedding, no linear biases (b_Q, b_K, b_V, b_O, b_in, b_out and
b_U are zeroed and frozen; the LayerNorms keep a trainable bias, as nn.LayerNorm in the paper's
code; `layernorm_bias=False` freezes them at zero too, the workbench's earlier variant), token
and position embeddings drawn from N(0, 1) (PyTorch's nn.Embedding default, which the paper's
code uses). Other weights: TransformerLens's default init N(0, 0.8/√d_model) (`init="tl"`), or
the paper code's nn.Linear default U(±1/√fan_in) (`init="torch"`). With the smaller torch init
our 1-layer runs first parked the dormant attention on the trigger tokens instead of ⟨s⟩ (sink
mass 0.057 at step 709, batch 32, lr 3e-4), so "tl" is the default. Optimisers: AdamW (lr 3e-4,
wd 1e-4, betas 0.9/0.99), SGD (momentum 0.9, lr 0.03, wd 1e-4), and AdamW with ReLU attention
(weights ReLU(scores/√d_head)/i, i the 1-based query position). No gradient clipping, constant
learning rate, as in the paper.

A recipe fixes the data (each step's batch is a function of the seed and the step) and the init,
so training is repeatable on one machine with one thread count. Another thread count sums in
another order (after 20 AdamW steps W_Q differs in the 7th digit), and the training dynamics
amplify that: the 1-layer recipe at seed 1, batch 32, reached sink mass 0.817 at step 1700 on one
2-core machine and 0.745 at step 1759 on another. Read one run's sink mass as one draw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench import hooks
from workbench.corpora import load_corpus
from workbench.errors import ConfigError
from workbench.io import read_json, write_json
from workbench.models import load_model
from workbench.models.info import default_device
from workbench.models.patches import register_model_patch
from workbench.paths import cache_dir
from workbench.tokenizers import save_and_reload
from workbench.training import TrainConfig, log_spaced_steps, train

BOS_TOKEN, DELIM_TOKEN = "<s>", "<d>"
SEQ_LEN = 256
FROZEN_BIAS_SUFFIXES = (".b_Q", ".b_K", ".b_V", ".b_O", ".b_in", ".b_out", "unembed.b_U")
LAYERNORM_BIAS_SUFFIXES = ("ln1.b", "ln2.b", "ln_final.b")
BB_INITS = ("tl", "torch")  # see the module docstring
# Recipe fields added after models were cached, with the value those models were trained with: a
# recipe that has it leaves the field out of its key.
LEGACY_KEY_VALUES: dict[str, Any] = {"charset": "all", "init": "tl", "layernorm_bias": False}
TASK_FORMAT = 1


# ----------------------------------------------------------------------------- task


@dataclasses.dataclass(eq=False)
class BBTask:
    """Character statistics of a corpus plus the trigger count: everything that defines BB data."""

    corpus: str  # id of the corpus the statistics come from
    chars: tuple[str, ...]  # token id -> character
    unigram_counts: np.ndarray  # int64 [V]
    bigram_counts: np.ndarray  # int64 [V, V], within-document character pairs
    n_triggers: int = 3
    charset: str = "all"  # a key of CHARSETS: which characters of the corpus were kept

    def __post_init__(self) -> None:
        check_charset(self.charset)
        V = len(self.chars)
        if not 1 <= self.n_triggers < V - 1:
            raise ConfigError(f"n_triggers must be between 1 and {V - 2} for {V} characters, got {self.n_triggers}")
        if self.unigram_counts.shape != (V,) or self.bigram_counts.shape != (V, V):
            raise ConfigError("unigram/bigram counts do not match the character list")

    # ----- vocabulary
    @property
    def n_chars(self) -> int:
        return len(self.chars)

    @property
    def bos_id(self) -> int:
        return self.n_chars

    @property
    def delim_id(self) -> int:
        return self.n_chars + 1

    @property
    def d_vocab(self) -> int:
        return self.n_chars + 2

    @property
    def fingerprint(self) -> str:
        ident = [self.chars, self.n_triggers] + ([self.charset] if self.charset != "all" else [])
        h = hashlib.sha1(json.dumps(ident).encode())
        h.update(self.unigram_counts.tobytes())
        h.update(self.bigram_counts.tobytes())
        return h.hexdigest()[:12]

    # ----- distributions
    @property
    def unigram(self) -> np.ndarray:
        return self.unigram_counts / self.unigram_counts.sum()

    @property
    def transition(self) -> np.ndarray:
        """Row-stochastic [V, V] bigram matrix; a character never followed by another (it only ends
        documents) gets the unigram marginal as its row."""
        counts = self.bigram_counts.astype(np.float64)
        rows = counts.sum(1, keepdims=True)
        return np.where(rows > 0, counts / np.maximum(rows, 1), self.unigram[None, :])

    @property
    def triggers(self) -> tuple[int, ...]:
        order = np.argsort(-self.unigram_counts, kind="stable")
        return tuple(int(i) for i in order[: self.n_triggers])

    @property
    def is_trigger(self) -> np.ndarray:
        m = np.zeros(self.d_vocab, dtype=bool)
        m[list(self.triggers)] = True
        return m

    @property
    def first_token_dist(self) -> np.ndarray:
        p = self.unigram.copy()
        p[list(self.triggers)] = 0.0
        return p / p.sum()

    def row_entropies(self) -> np.ndarray:
        P = self.transition
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(P > 0, P * np.log(P), 0.0).sum(1)

    # ----- data
    def sample(self, n: int, seq_len: int = SEQ_LEN, seed: int | np.random.Generator = 0) -> torch.Tensor:
        """`n` BB sequences of `seq_len + 1` tokens (⟨s⟩ first), vectorised over the batch."""
        if n < 1 or seq_len < 2:
            raise ConfigError(f"need n >= 1 and seq_len >= 2, got n={n}, seq_len={seq_len}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        cdf = _safe_cdf(self.transition)
        cdf_first = _safe_cdf(self.first_token_dist[None, :])[0]
        trig = self.is_trigger
        u = rng.random((n, seq_len))
        x = np.empty((n, seq_len + 1), dtype=np.int64)
        x[:, 0] = self.bos_id
        x[:, 1] = (cdf_first[None, :] <= u[:, :1]).sum(1)
        for t in range(2, seq_len + 1):
            prev = x[:, t - 1]
            drawn = (cdf[prev] <= u[:, t - 1 : t]).sum(1)
            x[:, t] = np.where(trig[prev], x[:, t - 2], drawn)
        return torch.from_numpy(x)

    def batch_fn(self, batch_size: int, seq_len: int = SEQ_LEN, seed: int = 0) -> Callable[[int], torch.Tensor]:
        """Training batches, each fixed by (seed, step) so a resumed run sees the same data."""

        def fn(step: int) -> torch.Tensor:
            return self.sample(batch_size, seq_len, np.random.default_rng([seed, step]))

        return fn

    def position_masks(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(backcopy, bigram) masks over input positions: trigger inputs, and non-trigger characters."""
        trig = torch.from_numpy(self.is_trigger).to(inputs.device)[inputs]
        is_char = inputs < self.n_chars
        return trig, is_char & ~trig

    def bigram_optimum(self, seq_len: int = SEQ_LEN) -> float:
        """Exact Bayes risk on bigram positions of length-`seq_len` inputs (pooled over positions).

        At a bigram position the next token is drawn from the transition row of the current one,
        so the optimum is E[H(P[x_t])]; the expectation uses the exact marginal of x_t, obtained by
        propagating Q_t[a, b] = P(x_{t-1} = a, x_t = b) (a = V stands for ⟨s⟩)."""
        V = self.n_chars
        P, H = self.transition, self.row_entropies()
        trig = self.is_trigger[:V]
        Q = np.zeros((V + 1, V))
        Q[V] = self.first_token_dist
        num = den = 0.0
        for _ in range(1, seq_len):  # input positions 1..seq_len-1
            m = Q.sum(0)
            num += float((m * H)[~trig].sum())
            den += float(m[~trig].sum())
            nxt = np.zeros_like(Q)
            nxt[:V] = (m * ~trig)[:, None] * P  # bigram step from a non-trigger
            nxt[:V] += (Q[:V] * trig[None, :]).T  # backcopy: (a, trigger b) -> (b, a)
            Q = nxt
        return num / den

    def oracle_bigram_ce(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position cross-entropy of the true rule's next-token distribution on BB sequences
        `tokens` [N, T+1]: -log P[x_t, x_{t+1}] at input positions t = 0..T-1 (float64, [N, T]).
        Only bigram positions (`position_masks(inputs)[1]`) are meaningful; the others are NaN."""
        inputs, targets = tokens[:, :-1].cpu(), tokens[:, 1:].cpu()
        _, bigram = self.position_masks(inputs)
        with np.errstate(divide="ignore"):
            logP = torch.from_numpy(np.log(self.transition))  # -inf where a transition never occurs
        out = torch.full(inputs.shape, float("nan"), dtype=torch.float64)
        out[bigram] = -logP[inputs[bigram], targets[bigram]]
        return out

    def oracle_bigram_risk(self, tokens: torch.Tensor) -> float:
        """The true transition matrix's mean cross-entropy on exactly the bigram positions of
        `tokens` [N, T+1]: the paired reference for a model's bigram risk on the same sequences.

        BB sequences fall into long loops, so on a batch of a few dozen sequences this empirical
        risk of the Bayes predictor moves by several percent around `bigram_optimum` (its
        expectation); comparing a model's batch risk with it, rather than with the optimum,
        removes that sampling noise."""
        _, bigram = self.position_masks(tokens[:, :-1].cpu())
        if not bool(bigram.any()):
            raise ConfigError("these sequences have no bigram position")
        return float(self.oracle_bigram_ce(tokens)[bigram].mean())

    def dormancy_inputs(self) -> torch.Tensor:
        """The paper's active/dormant probe: one row per character tok, [⟨s⟩, all non-triggers, tok]."""
        non_trig = [i for i in range(self.n_chars) if not self.is_trigger[i]]
        rows = [[self.bos_id, *non_trig, tok] for tok in range(self.n_chars)]
        return torch.tensor(rows, dtype=torch.long)

    # ----- text
    def encode(self, text: str, prepend_bos: bool = True) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise ConfigError(f"characters {unknown!r} are not in this BB vocabulary ({self.corpus})")
        ids = ([self.bos_id] if prepend_bos else []) + [index[c] for c in text]
        return torch.tensor(ids, dtype=torch.long)

    def token_str(self, i: int) -> str:
        if i == self.bos_id:
            return BOS_TOKEN
        if i == self.delim_id:
            return DELIM_TOKEN
        return self.chars[i]

    def tokenizer(self):
        """A Hugging Face fast tokenizer: one token per character, ⟨s⟩ as BOS, the delimiter as
        EOS/pad/unknown. Cached on disk (TransformerLens reloads tokenizers from their path)."""
        from tokenizers import Tokenizer, decoders, models


        vocab = {c: i for i, c in enumerate(self.chars)}
        vocab[BOS_TOKEN], vocab[DELIM_TOKEN] = self.bos_id, self.delim_id
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=DELIM_TOKEN))
        tok.add_special_tokens([BOS_TOKEN, DELIM_TOKEN])
        tok.decoder = decoders.Fuse()
        path = cache_dir() / "tokenizers" / f"bb-chars-{self.fingerprint}"
        return save_and_reload(tok, path, bos_token=BOS_TOKEN, eos_token=DELIM_TOKEN, pad_token=DELIM_TOKEN,
                               unk_token=DELIM_TOKEN)

    # ----- persistence
    def to_json(self) -> dict[str, Any]:
        return {"format": TASK_FORMAT, "corpus": self.corpus, "chars": list(self.chars), "n_triggers": self.n_triggers,
                "charset": self.charset, "unigram_counts": self.unigram_counts.tolist(), "bigram_counts": self.bigram_counts.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any], n_triggers: int | None = None) -> "BBTask":
        return cls(d["corpus"], tuple(d["chars"]), np.asarray(d["unigram_counts"], dtype=np.int64),
                   np.asarray(d["bigram_counts"], dtype=np.int64), n_triggers if n_triggers is not None else d["n_triggers"],
                   d.get("charset", "all"))

    @classmethod
    def from_texts(cls, texts: list[str], corpus: str, n_triggers: int = 3, charset: str = "all") -> "BBTask":
        """Count characters and within-text character pairs (after `charset`'s normalisation)."""
        check_charset(charset)
        texts = [CHARSETS[charset](t) for t in texts]
        codes = [np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32) for t in texts if t]
        if not codes:
            raise ConfigError(f"corpus {corpus!r} has no text to take character statistics from")
        flat = np.concatenate(codes)
        alphabet, ids = np.unique(flat, return_inverse=True)
        V = len(alphabet)
        ends = np.cumsum([len(c) for c in codes])
        pair_ok = np.ones(len(flat) - 1, dtype=bool)
        pair_ok[ends[:-1] - 1] = False  # no pair across a document boundary
        pairs = ids[:-1][pair_ok] * V + ids[1:][pair_ok]
        bigram = np.bincount(pairs, minlength=V * V).reshape(V, V).astype(np.int64)
        unigram = np.bincount(ids, minlength=V).astype(np.int64)
        return cls(corpus, tuple(chr(int(c)) for c in alphabet), unigram, bigram, n_triggers, charset)


def _letters(text: str) -> str:
    """Lowercase a-z words separated by single spaces: every other character acts as a word break."""
    return " ".join(re.sub(r"[^a-z]+", " ", text.lower()).split())


# How a corpus's text is reduced before its characters are counted. "all" keeps every character
# (on Brown: V = 85). "letters" keeps lowercase a-z and space (V = 27): on Brown's full character
# set the pair ", " forms an almost absorbing BB loop (P(' ' | ',') = 0.987 and ' ' is a trigger,
# so ',' is copied back after every space) that fills about half of all non-trigger positions,
# and capitals, digits and symbols are too rare to be learnt within a CPU training budget.
CHARSETS: dict[str, Callable[[str], str]] = {"all": lambda text: text, "letters": _letters}


def check_charset(charset: str) -> None:
    if charset not in CHARSETS:
        raise ConfigError(f"unknown BB charset {charset!r}; choose one of {sorted(CHARSETS)}")


def _safe_cdf(P: np.ndarray) -> np.ndarray:
    """Row CDFs where every entry from a row's last non-zero probability on is exactly 1, so that
    `(cdf <= u).sum()` with u in [0, 1) never picks a zero-probability token."""
    cdf = np.cumsum(P, axis=1)
    V = P.shape[1]
    last = V - 1 - np.argmax((P > 0)[:, ::-1], axis=1)
    cdf[np.arange(V)[None, :] >= last[:, None]] = 1.0
    return cdf


def load_bb_task(corpus: str = "brown", n_triggers: int = 3, charset: str = "all") -> BBTask:
    """The BB task of a corpus (a built-in name or a path) reduced to `charset` (a key of
    CHARSETS), with its character counts cached."""

    check_charset(charset)
    key = hashlib.sha1((corpus if charset == "all" else f"{corpus}|{charset}").encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in corpus)[-40:]
    path = cache_dir() / "bb" / f"task-{safe}{'' if charset == 'all' else '-' + charset}-{key}.json"
    if path.exists():
        blob = read_json(path)
        if blob.get("format") == TASK_FORMAT:
            return BBTask.from_json(blob, n_triggers)
    c = load_corpus(corpus)
    task = BBTask.from_texts([d.text for d in c.documents], c.id, n_triggers, charset)
    write_json(path, task.to_json())
    return task


# ----------------------------------------------------------------------------- model


def bb_model_config(n_layers: int, d_vocab: int, d_model: int = 256, n_ctx: int = SEQ_LEN, seed: int = 0,
                    name: str = "bb") -> HookedTransformerConfig:
    """The paper's BB transformer as a TransformerLens config (1 head, pre-LN, ReLU MLP 4d)."""
    if n_layers < 1:
        raise ConfigError(f"n_layers must be >= 1, got {n_layers}")
    return HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=1, d_head=d_model, d_mlp=4 * d_model, act_fn="relu",
        normalization_type="LN", positional_embedding_type="standard", n_ctx=n_ctx, d_vocab=d_vocab,
        d_vocab_out=d_vocab, seed=seed, model_name=name, default_prepend_bos=True,
    )


def bb_model(task: BBTask, n_layers: int = 1, d_model: int = 256, seed: int = 0, device: str | None = None,
             name: str = "bb", init: str = "tl", layernorm_bias: bool = True) -> HookedTransformer:
    """A freshly initialised BB model: N(0,1) embeddings, linear biases zeroed and frozen (and the
    LayerNorm biases unless `layernorm_bias`), the other weights as `init` says (a key of
    BB_INITS; see the module docstring)."""
    check_init(init)
    cfg = bb_model_config(n_layers, task.d_vocab, d_model, seed=seed, name=name)
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=task.tokenizer(), move_to_device=False, default_padding_side="right")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.embed.W_E.copy_(torch.randn(model.embed.W_E.shape, generator=gen))
        model.pos_embed.W_pos.copy_(torch.randn(model.pos_embed.W_pos.shape, generator=gen))
        if init == "torch":
            for pname, p in model.named_parameters():
                fan_in = _linear_fan_in(pname, p)
                if fan_in:
                    torch.nn.init.uniform_(p, -fan_in ** -0.5, fan_in ** -0.5, generator=gen)
    freeze_biases(model, layernorm=not layernorm_bias)
    return model.to(device or default_device())


def check_init(init: str) -> None:
    if init not in BB_INITS:
        raise ConfigError(f"unknown BB init {init!r}; choose one of {list(BB_INITS)}")


def _linear_fan_in(name: str, p: torch.Tensor) -> int | None:
    """The fan-in the paper's nn.Linear layer would have for a TransformerLens weight (None for
    embeddings, norms and biases). W_Q/W_K/W_V are [head, d_model, d_head], W_O [head, d_head, d_model],
    W_in/W_out/W_U [in, out]."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("W_Q", "W_K", "W_V"):
        return p.shape[1]
    if leaf == "W_O":
        return p.shape[0] * p.shape[1]
    if leaf in ("W_in", "W_out", "W_U"):
        return p.shape[0]
    return None


def freeze_biases(model: HookedTransformer, layernorm: bool = False) -> list[str]:
    """Zero and freeze every linear bias (attention, MLP, unembedding), and the LayerNorm biases
    too if `layernorm`; returns their names."""
    suffixes = FROZEN_BIAS_SUFFIXES + (LAYERNORM_BIAS_SUFFIXES if layernorm else ())
    frozen = []
    for name, p in model.named_parameters():
        if name.endswith(suffixes):
            with torch.no_grad():
                p.zero_()
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def relu_attention_pattern(scores: torch.Tensor) -> torch.Tensor:
    """ReLU(scores) / i with i the 1-based query position and masked entries exactly 0.

    `scores` are TransformerLens's `hook_attn_scores` ([batch, head, query, key], already divided
    by √d_head, masked entries -inf); queries are the last `query` of the `key` positions."""
    n_q, n_k = scores.shape[-2], scores.shape[-1]
    q_pos = torch.arange(n_k - n_q, n_k, device=scores.device)
    k_pos = torch.arange(n_k, device=scores.device)
    keep = (k_pos[None, :] <= q_pos[:, None]) & torch.isfinite(scores)
    weights = torch.where(keep, scores, torch.zeros((), dtype=scores.dtype, device=scores.device)).relu()
    return weights / (q_pos + 1).to(scores.dtype)[:, None]


def install_relu_attention(model: HookedTransformer) -> HookedTransformer:
    """Make every layer use ReLU attention, with permanent hooks (they survive `reset_hooks()` and
    `model.hooks(...)` contexts): `hook_attn_scores` is read and `hook_pattern` replaced. Later hooks
    on `hook_pattern` see the ReLU weights; a later edit of `hook_attn_scores` does not change them."""
    if getattr(model, "workbench_attention", "softmax") == "relu":
        return model
    scores: dict[int, torch.Tensor] = {}

    def keep_scores(s: torch.Tensor, hook) -> None:
        scores[hook.layer()] = s

    def relu_pattern(_pattern: torch.Tensor, hook) -> torch.Tensor:
        return relu_attention_pattern(scores.pop(hook.layer()))

    for layer in range(model.cfg.n_layers):
        model.add_hook(hooks.attn_scores(layer), keep_scores, is_permanent=True)
        model.add_hook(hooks.attn_pattern(layer), relu_pattern, is_permanent=True)
    model.workbench_attention = "relu"
    return model


RELU_ATTENTION = "relu-attention"
register_model_patch(RELU_ATTENTION, install_relu_attention)


@torch.inference_mode()
def bos_self_scores(model: HookedTransformer, bos_id: int) -> list[float]:
    """Per layer, the attention score (already divided by √d_head) of ⟨s⟩ at position 0 on itself,
    head 0. Under ReLU attention ⟨s⟩'s weight on itself is ReLU(this score) / 1: unbounded, and its
    gradient is zero while the score is negative. Position 0 sees only itself, so one token is fed."""
    x = torch.tensor([[bos_id]], device=next(model.parameters()).device)
    wanted = {hooks.attn_scores(layer) for layer in range(model.cfg.n_layers)}
    _, cache = model.run_with_cache(x, names_filter=lambda n: n in wanted)
    return [float(cache[hooks.attn_scores(l)][0, 0, 0, 0]) for l in range(model.cfg.n_layers)]


def relu_inactive_seed(recipe: "BBRecipe", start: int = 1, tries: int = 64) -> int:
    """The first seed >= `start` whose freshly initialised model has a negative ⟨s⟩ self-score in
    block 0: under ReLU attention ⟨s⟩'s self-weight then starts at zero and gets no gradient, the case
    in which ReLU attention cannot grow ⟨s⟩'s residual through its own value. Block 0's scores come
    before any attention pattern, so the softmax model of the recipe's shape (same init) gives them."""
    task = load_bb_task(recipe.corpus, recipe.n_triggers, recipe.charset)
    for seed in range(start, start + tries):
        model = bb_model(task, recipe.n_layers, recipe.d_model, seed, init=recipe.init, layernorm_bias=recipe.layernorm_bias)
        if bos_self_scores(model, task.bos_id)[0] < 0:
            return seed
    raise ConfigError(f"no seed in [{start}, {start + tries}) starts with a negative block-0 <s> self-score")


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class BBRecipe:
    """Everything that determines a trained BB model (paper defaults: batch 512, 10k steps)."""

    n_layers: int = 1
    d_model: int = 256
    attention: Literal["softmax", "relu"] = "softmax"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    momentum: float = 0.9
    batch_size: int = 512
    steps: int = 10_000
    seq_len: int = SEQ_LEN
    corpus: str = "brown"
    charset: str = "all"  # a key of CHARSETS
    n_triggers: int = 3
    n_checkpoints: int = 16  # log-spaced, plus step 0 and the final step
    seed: int = 0
    init: str = "tl"  # a key of BB_INITS: weight init of the linear layers
    layernorm_bias: bool = True  # False: LayerNorm biases frozen at zero (the earlier variant)

    def validate(self) -> None:
        if self.attention not in ("softmax", "relu"):
            raise ConfigError(f"attention must be 'softmax' or 'relu', got {self.attention!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        check_charset(self.charset)
        check_init(self.init)
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")

    @property
    def variant(self) -> str:
        if self.attention == "relu":
            return "relu"
        return "sgd" if self.optimizer == "sgd" else "adam"

    @property
    def key(self) -> str:
        fields = dataclasses.asdict(self)
        for name, legacy in LEGACY_KEY_VALUES.items():  # recipes from before these options keep their keys
            if fields[name] == legacy:
                del fields[name]
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        cs = "" if self.charset == "all" else f"-{self.charset}"
        return f"bb-L{self.n_layers}{cs}-{self.variant}-b{self.batch_size}-s{self.steps}-seed{self.seed}-{self.key}"

    def checkpoint_steps(self) -> tuple[int, ...]:

        return tuple(sorted({0, *log_spaced_steps(self.steps, self.n_checkpoints), self.steps}))


# The paper's three training variants (AdamW, SGD with momentum, ReLU attention under AdamW).
BB_VARIANTS: dict[str, dict[str, Any]] = {
    "adam": {},
    "sgd": {"optimizer": "sgd", "lr": 0.03},
    "relu": {"attention": "relu"},
}


def bb_recipe(variant: str = "adam", **overrides: Any) -> BBRecipe:
    if variant not in BB_VARIANTS:
        raise ConfigError(f"unknown BB variant {variant!r}; choose one of {sorted(BB_VARIANTS)}")
    recipe = BBRecipe(**{**BB_VARIANTS[variant], **overrides})
    recipe.validate()
    return recipe


def bb_dir(recipe: BBRecipe) -> Path:
    return cache_dir() / "bb" / recipe.name


def bb_loss(task: BBTask) -> Callable[[HookedTransformer, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Cross-entropy over all positions, with the backcopy and bigram risks of the batch logged
    (as tensors: the trainer reads them only at logging steps, so a step costs no host sync)."""

    def fn(model: HookedTransformer, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = model(inputs, return_type="logits")
        per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").view_as(targets)
        backcopy, bigram = task.position_masks(inputs)
        d = per.detach()
        risk = lambda m: (d * m).sum() / m.sum()  # noqa: E731  (a masked mean without boolean indexing)
        return per.mean(), {"backcopy_risk": risk(backcopy), "bigram_risk": risk(bigram)}

    return fn


def train_bb(recipe: BBRecipe, device: str | None = None, progress: bool = True) -> Path:
    """Train (or resume, or reuse) a BB model with the workbench trainer; returns its directory
    (checkpoints under `checkpoints/step_N`, the loss/risk log in `train_log.csv`)."""
    device = device or default_device()
    recipe.validate()
    out = bb_dir(recipe)
    if (out / "checkpoints" / f"step_{recipe.steps:06d}" / "model.safetensors").exists():
        return out
    task = load_bb_task(recipe.corpus, recipe.n_triggers, recipe.charset)
    model = bb_model(task, recipe.n_layers, recipe.d_model, recipe.seed, device, name=recipe.name, init=recipe.init,
                     layernorm_bias=recipe.layernorm_bias)
    if recipe.attention == "relu":
        install_relu_attention(model)
    cfg = TrainConfig(
        steps=recipe.steps, lr=recipe.lr, optimizer=recipe.optimizer, weight_decay=recipe.weight_decay,
        betas=recipe.betas, momentum=recipe.momentum, grad_clip=None, checkpoint_steps=recipe.checkpoint_steps(),
        resume_every=max(25, min(200, recipe.steps // 10)), log_every=max(1, min(10, recipe.steps // 50)), seed=recipe.seed,
    )
    meta = {"bb": {"recipe": dataclasses.asdict(recipe), "task_fingerprint": task.fingerprint, "corpus": task.corpus},
            "attention": recipe.attention, "patches": [RELU_ATTENTION] if recipe.attention == "relu" else []}
    data = task.batch_fn(recipe.batch_size, recipe.seq_len, recipe.seed)
    result = train(model, lambda step: data(step).to(device), cfg, out, loss_fn=bb_loss(task), progress=progress, meta=meta)
    _record_time(out, recipe.steps - result.resumed_from, result.seconds, device)
    return out


def _record_time(out: Path, steps: int, seconds: float, device: str) -> None:
    """Accumulate the training wall time (over resumes) in `train_time.json`, for cost reports."""
    path = out / "train_time.json"
    prev = read_json(path) if path.exists() else {"steps": 0, "seconds": 0.0}
    steps, seconds = prev["steps"] + steps, prev["seconds"] + seconds
    write_json(path, {"steps": steps, "seconds": seconds, "seconds_per_step": seconds / max(steps, 1), "device": device,
                      "threads": torch.get_num_threads()})


def bb_train_time(recipe: BBRecipe) -> dict[str, Any] | None:
    """The recorded training time of a trained recipe (None if it was never trained here)."""
    path = bb_dir(recipe) / "train_time.json"
    return read_json(path) if path.exists() else None


def bb_checkpoints(recipe: BBRecipe) -> dict[int, Path]:
    """Saved checkpoints of a trained recipe, by step."""
    root = bb_dir(recipe) / "checkpoints"
    return {int(p.name.split("_")[1]): p for p in sorted(root.glob("step_*")) if (p / "model.safetensors").exists()}


def load_bb(recipe: BBRecipe, step: int | None = None, device: str | None = None) -> HookedTransformer:
    """A trained recipe's model at `step` (default: final), training it first if needed. Loaded
    through the standard loader, which restores ReLU attention from the checkpoint's metadata."""

    train_bb(recipe, device=device)
    ckpts = bb_checkpoints(recipe)
    step = recipe.steps if step is None else step
    if step not in ckpts:
        raise ConfigError(f"no checkpoint at step {step} for {recipe.name}; saved steps: {sorted(ckpts)}")
    return load_model(str(ckpts[step]), device=device)


def task_of_model(model: HookedTransformer) -> BBTask | None:
    """The BB task a loaded BB checkpoint was trained on (None for other models)."""
    info = getattr(model, "workbench_info", None)
    meta = (info.extra or {}).get("meta", {}) if info is not None else {}
    bb = meta.get("bb")
    if not bb:
        return None
    r = bb["recipe"]
    task = load_bb_task(r["corpus"], r["n_triggers"], r.get("charset", "all"))
    if bb.get("task_fingerprint") not in (None, task.fingerprint):
        raise ConfigError(f"the character statistics of {r['corpus']!r} changed since this BB model was trained")
    return task


def paired_gap(model_risk: float, oracle_risk: float) -> float:
    """Relative excess of a model's bigram risk over the oracle risk on the same positions."""
    return (model_risk - oracle_risk) / oracle_risk


@torch.inference_mode()
def bb_risks(model: HookedTransformer, task: BBTask, n_seqs: int = 256, seed: int = 10_000, batch_size: int = 64,
             seq_len: int = SEQ_LEN) -> dict[str, float]:
    """Backcopy and bigram risks (pooled over positions) on a fixed evaluation set, with the exact
    population optimum, the oracle risk (the true transition matrix's cross-entropy on the same
    bigram positions) and the paired gap (bigram_risk - oracle) / oracle."""
    data = task.sample(n_seqs, seq_len, seed)
    device = next(model.parameters()).device
    sums = {"backcopy": 0.0, "bigram": 0.0, "all": 0.0}
    counts = dict.fromkeys(sums, 0)
    for i in range(0, n_seqs, batch_size):
        tokens = data[i : i + batch_size].to(device)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = model(inputs, return_type="logits")
        per = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").double()
        backcopy, bigram = task.position_masks(inputs)
        for k, m in (("backcopy", backcopy), ("bigram", bigram), ("all", torch.ones_like(backcopy))):
            sums[k] += float(per[m].sum())
            counts[k] += int(m.sum())
    bigram_risk = sums["bigram"] / max(counts["bigram"], 1)
    oracle = task.oracle_bigram_risk(data)
    return {
        "backcopy_risk": sums["backcopy"] / max(counts["backcopy"], 1),
        "bigram_risk": bigram_risk,
        "loss": sums["all"] / max(counts["all"], 1),
        "bigram_optimum": task.bigram_optimum(seq_len),
        "bigram_oracle_risk": oracle,
        "bigram_paired_gap": paired_gap(bigram_risk, oracle),
    }
