"""Case study and steering at the last function token (arXiv 2510.08203, "memory retrieval").

Two prompts that differ in one content word and end in the same function token (":" or "\\n"):
- case study: the SAE features active at the shared final token of each prompt, and which of them
  the final token *reactivates*: features also active on that prompt's differing content word;
- steering: add one feature's contribution (its decoder output at `strength` x its activation at
  A's final token, for each of `strengths`) to prompt B's residual at the last function token only,
  and decode greedily; each continuation is checked for A's and B's content words;
- the control the paper's reviewers asked for: the same addition at a content-token position of B
  (by default the differing content word) instead.

The steering feature, unless given, is the one reactivated most strongly at A's final token that
is silent at B's final token (so it carries A's content word). Decoding recomputes the whole
sequence each step (no key-value cache), so the addition stays at its prompt position.

The sweep measures the same intervention as a number over many pairs: for each pair built from
`sweep_templates` x consecutive `sweep_words` (every template ends in a token of the probe's own
function-token set, checked), the target is the model's own top next token on prompt A, and each
row records the change of its log-probability on prompt B when the pair's feature is added at B's
final function token, or at B's content word, at each strength. The experiment reports the mean
change over pairs with a bootstrap interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from probes.function_tokens.probe import function_token_ids, token_stats
from workbench.config import ConfigBase, setting
from workbench.corpora.base import SPLITS, Corpus
from workbench.errors import ConfigError, PromptTooLongError
from workbench.probe_api import ProbeSpec, register
from workbench.results import Result
from workbench.saes import (
    check_fits,
    encode,
    hook_name,
    load_sae,
    source_of,
    special_token_ids,
)

MAX_PROMPT_CHARS = 2000
# Sweep pairs: every template ends in a frequent function token (" is", " of", " the" are in the
# function-token set of SmolLM2's tokenizer on Brown; the probe checks it for the model at hand).
SWEEP_TEMPLATES = ("The capital of {} is", "The official language of {} is", "The currency of {} is the",
                   "{} is a country in the continent of")
SWEEP_WORDS = ("Japan", "France", "Italy", "Germany", "Spain", "Egypt", "Russia", "China", "Greece", "Canada", "Brazil", "Mexico")


@dataclass
class FunctionTokenSteeringConfig(ConfigBase):
    sae: str = setting("trained:15", names="sae")
    prompt_a: str = setting("Q: What is the capital of Japan?\nA: The capital is", text=True, why="the prompt whose feature is added")
    prompt_b: str = setting("Q: What is the capital of France?\nA: The capital is", text=True, why="the prompt that is steered")
    feature: int = setting(-1, min=-1, max=10_000_000, why="an SAE feature index")  # -1: the strongest feature reactivated at A's final token and silent at B's
    strengths: list[float] = setting(default_factory=lambda: [2.0, 4.0, 8.0, 16.0, 32.0], min=-1000.0, max=1000.0, max_items=32,
                                     why="one generation per strength")  # multiples of the feature's activation at A's final token
    control_position: int = setting(-1, min=-1, max=8192, why="a prompt position")  # a content position of B for the control; -1: the differing word's last token
    max_new_tokens: int = setting(12, min=1, max=256, why="tokens generated per continuation")
    n_features: int = setting(12, min=1, max=1000, why="rows of a heatmap")  # features shown in the heatmaps
    mass: float = setting(0.4, min=0.0, max=1.0, why="a share of token occurrences")
    count_split: str = setting("all", text=True, why="the corpus split whose frequencies define the function tokens")
    sweep_templates: list[str] = setting(default_factory=lambda: list(SWEEP_TEMPLATES), max_items=16, text=True,
                                         why="every pair is one forward pass per strength and position")  # '{}' marks the content word
    sweep_words: list[str] = setting(default_factory=lambda: list(SWEEP_WORDS), max_items=64, text=True, why="consecutive words make the pairs")

    def validate(self) -> None:
        for name in ("prompt_a", "prompt_b"):
            text = getattr(self, name)
            if not text.strip():
                raise ConfigError(f"{name} is empty")
            if len(text) > MAX_PROMPT_CHARS:
                raise PromptTooLongError(f"{name} has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
        if self.prompt_a == self.prompt_b:
            raise ConfigError("prompt_a and prompt_b are identical; they must differ in one content word")
        if not 1 <= self.max_new_tokens <= 64:
            raise ConfigError(f"max_new_tokens must be in 1..64, got {self.max_new_tokens}")
        if not self.strengths or any(x <= 0 for x in self.strengths):
            raise ConfigError(f"strengths must be positive numbers, got {self.strengths}")
        if self.n_features < 1:
            raise ConfigError(f"n_features must be at least 1, got {self.n_features}")
        if not 0 < self.mass <= 1 or self.count_split not in SPLITS:
            raise ConfigError("mass must be in (0, 1] and count_split one of " + ", ".join(SPLITS))
        for t in self.sweep_templates:
            if t.count("{}") != 1:
                raise ConfigError(f"a sweep template needs exactly one '{{}}' for the content word, got {t!r}")
        if self.sweep_templates and len(set(self.sweep_words)) < 2:
            raise ConfigError("the sweep needs at least two different sweep_words")


@dataclass
class FunctionTokenSteeringResult(Result):
    heatmaps: pd.DataFrame = field(default_factory=pd.DataFrame)  # prompt, position, token, feature, activation
    features: pd.DataFrame = field(default_factory=pd.DataFrame)  # per feature active at either final token
    effects: pd.DataFrame = field(default_factory=pd.DataFrame)  # the sweep: one row per pair, strength and position
    generations: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per run
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        g = {f"{r.run}@{r.strength:g}": r.continuation for r in self.generations.itertuples()} if not self.generations.empty else {}
        return {"feature": self.info.get("feature"), **g}


def differing_spans(a: list[int], b: list[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """[start, end) of the differing token span in each sequence (common prefix and suffix removed)."""
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[-1 - s] == b[-1 - s]:
        s += 1
    return (p, len(a) - s), (p, len(b) - s)


def add_at_position(delta: torch.Tensor, position: int) -> Callable:
    """A forward hook adding `delta` to the activation at one sequence position (all batch rows)."""

    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
        if act.shape[1] > position:
            act = act.clone()
            act[:, position] += delta.to(act.dtype)
        return act

    return hook


@torch.no_grad()
def greedy(model: HookedTransformer, tokens: torch.Tensor, n: int, fwd_hooks: list | None = None) -> tuple[list[int], torch.Tensor]:
    """Greedy continuation of a [1, T] prompt, recomputing the full sequence each step (hooks stay
    at their positions); returns the new ids and the first step's next-token probabilities."""
    out, first = tokens, None
    eos = model.tokenizer.eos_token_id if model.tokenizer is not None else None
    for _ in range(n):
        logits = model.run_with_hooks(out, return_type="logits", fwd_hooks=fwd_hooks or [])[0, -1].float()
        if first is None:
            first = logits.softmax(-1)
        nxt = int(logits.argmax())
        out = torch.cat([out, torch.tensor([[nxt]], device=out.device)], dim=1)
        if nxt == eos:
            break
    return out[0, tokens.shape[1]:].tolist(), first


@torch.no_grad()
def feature_acts(model: HookedTransformer, sae, tokens: torch.Tensor) -> torch.Tensor:
    """[T, d_sae] SAE activations of a [1, T] prompt at the SAE's hook."""
    _, cache = model.run_with_cache(tokens, names_filter=[hook_name(sae)])
    return encode(sae, cache[hook_name(sae)][0]).float()


def feature_contribution(sae, feature: int, activation: float) -> torch.Tensor:
    """What `feature` at `activation` adds to the SAE's reconstruction (its decoder output)."""
    z = torch.zeros(1, sae.cfg.d_sae, dtype=sae.dtype, device=sae.W_dec.device)
    one = z.clone()
    one[0, feature] = activation
    with torch.no_grad():
        return (sae.decode(one) - sae.decode(z))[0].float()


def final_features(acts_a: torch.Tensor, acts_b: torch.Tensor, span_a: tuple[int, int], span_b: tuple[int, int]) -> pd.DataFrame:
    """Per feature active at either prompt's final token: its activation there and its largest
    activation on the prompt's differing content span, and whether the final token reactivates it."""
    fin = {"a": acts_a[-1], "b": acts_b[-1]}
    content = {"a": acts_a[span_a[0]:span_a[1]].max(0).values, "b": acts_b[span_b[0]:span_b[1]].max(0).values}
    active = ((fin["a"] > 0) | (fin["b"] > 0)).nonzero().squeeze(1).tolist()
    feats = pd.DataFrame({
        "feature": active,
        "final_a": fin["a"][active].tolist(), "final_b": fin["b"][active].tolist(),
        "content_a": content["a"][active].tolist(), "content_b": content["b"][active].tolist(),
    })
    feats["reactivated_a"] = (feats["final_a"] > 0) & (feats["content_a"] > 0)
    feats["reactivated_b"] = (feats["final_b"] > 0) & (feats["content_b"] > 0)
    return feats.sort_values("final_a", ascending=False, ignore_index=True)


def choose_feature(feats: pd.DataFrame) -> tuple[int, str]:
    """The strongest feature reactivated at A's final token and silent at B's (else the largest
    final-token gap A - B), and how it was chosen."""
    own = feats[feats["reactivated_a"] & (feats["final_b"] <= 0)]
    how = "strongest feature reactivated at A's final token and silent at B's"
    if own.empty:
        own = feats.assign(gap=feats["final_a"] - feats["final_b"]).sort_values("gap", ascending=False).head(1)
        how = "largest final-token activation gap A - B (no feature reactivated in A only)"
    if own.empty:
        raise ConfigError("no SAE feature is active at either final token; pick a feature by hand")
    return int(own.iloc[0]["feature"]), how


def sweep_pairs(templates: list[str], words: list[str]) -> list[tuple[str, str, str]]:
    """(template, word A, word B): each template with consecutive distinct words."""
    words = list(dict.fromkeys(words))
    return [(t, a, b) for t in templates for a, b in zip(words, words[1:] + words[:1])]


@torch.no_grad()
def steering_effects(model: HookedTransformer, sae, templates: list[str], words: list[str], strengths: list[float],
                     function_ids: set[int]) -> pd.DataFrame:
    """The sweep: one row per pair, strength and position ("function": B's final token, a function
    token; "content": B's content word's last token), with the target token's log-probability on
    B without and with the addition. Templates whose final token is not in `function_ids` are left
    out (listed in the frame's attrs["skipped_templates"]); none left is an error."""
    hook, device = hook_name(sae), str(next(model.parameters()).device)
    rows: list[dict] = []
    skipped: set[str] = set()
    for pair, (template, wa, wb) in enumerate(sweep_pairs(templates, words)):
        ta, tb = (model.to_tokens(template.format(w)).to(device) for w in (wa, wb))
        ia, ib = ta[0].tolist(), tb[0].tolist()
        (sa, ea), (sb, eb) = differing_spans(ia, ib)
        if ea == len(ia) or eb == len(ib) or sa == ea or sb == eb:
            raise ConfigError(f"sweep template {template!r}: {wa!r} and {wb!r} must differ before a shared final token")
        if ib[-1] not in function_ids:  # not a function token for this tokenizer and corpus: the pair is left out
            skipped.add(f"{template!r} (ends in {model.tokenizer.decode([ib[-1]])!r})")
            continue
        acts_a, acts_b = feature_acts(model, sae, ta), feature_acts(model, sae, tb)
        feature, _ = choose_feature(final_features(acts_a, acts_b, (sa, ea), (sb, eb)))
        base_act = float(acts_a[-1, feature]) or float(acts_a[:, feature].max()) or 1.0
        logits_a = model(ta, return_type="logits")[0, -1].float()
        target = int(logits_a.argmax())
        base_b = model(tb, return_type="logits")[0, -1].float().log_softmax(-1)
        for strength in strengths:
            delta = feature_contribution(sae, feature, strength * base_act)
            for where, pos in (("function", len(ib) - 1), ("content", eb - 1)):
                lp = model.run_with_hooks(tb, return_type="logits", fwd_hooks=[(hook, add_at_position(delta, pos))])[0, -1]
                lp = lp.float().log_softmax(-1)
                rows.append({"pair": pair, "template": template, "word_a": wa, "word_b": wb, "feature": feature,
                             "target": model.tokenizer.decode([target]), "target_is_b_top": target == int(base_b.argmax()),
                             "strength": strength, "position": where, "position_token": model.tokenizer.decode([ib[pos]]),
                             "logp_base": float(base_b[target]), "logp_steered": float(lp[target]),
                             "delta_logp": float(lp[target] - base_b[target]), "target_top": int(lp.argmax()) == target})
    if not rows:
        raise ConfigError("no sweep template ends in a token of the function-token set of this corpus ("
                          + ", ".join(sorted(skipped)) + "); end them in a frequent token such as ' of' or ' the'")
    out = pd.DataFrame(rows)
    out.attrs["skipped_templates"] = sorted(skipped)
    return out


def run(model: HookedTransformer, corpus: Corpus, config: FunctionTokenSteeringConfig) -> FunctionTokenSteeringResult:
    if model.tokenizer is None:
        raise ConfigError("function-token-steering needs a model with a tokenizer")
    device = str(next(model.parameters()).device)
    sae = load_sae(config.sae, model=model, corpus_name=corpus.name)  # on the model's device
    check_fits(sae, model)
    stats = token_stats(model.tokenizer, corpus, config.count_split, special_token_ids(model))
    f_ids = set(int(i) for i in function_token_ids(stats.counts, config.mass))

    toks = {k: model.to_tokens(getattr(config, f"prompt_{k}")).to(device) for k in ("a", "b")}
    for k, t in toks.items():
        if t.shape[1] > model.cfg.n_ctx - config.max_new_tokens:
            raise PromptTooLongError(f"prompt_{k} has {t.shape[1]} tokens; this model's context is {model.cfg.n_ctx}")
    ids = {k: t[0].tolist() for k, t in toks.items()}
    (sa, ea), (sb, eb) = differing_spans(ids["a"], ids["b"])
    if ea == len(ids["a"]) or eb == len(ids["b"]) or sa == ea or sb == eb:
        raise ConfigError("the prompts must differ in a word before a shared final token (e.g. both end in ':')")
    final = ids["a"][-1]
    strs = {k: [model.tokenizer.decode([i]) for i in v] for k, v in ids.items()}
    acts = {k: feature_acts(model, sae, t) for k, t in toks.items()}
    last = {k: len(ids[k]) - 1 for k in ids}
    spans = {"a": (sa, ea), "b": (sb, eb)}
    fin = {k: acts[k][last[k]] for k in acts}
    feats = final_features(acts["a"], acts["b"], spans["a"], spans["b"])

    feature, how = config.feature, "given"
    if feature < 0:
        feature, how = choose_feature(feats)
    elif feature >= sae.cfg.d_sae:
        raise ConfigError(f"feature {feature} out of range 0..{sae.cfg.d_sae - 1}")
    base_act = float(fin["a"][feature]) or float(acts["a"][:, feature].max()) or 1.0

    control = config.control_position if config.control_position >= 0 else eb - 1
    if not 0 < control < last["b"]:
        raise ConfigError(f"control_position must be a content position of prompt B in 1..{last['b'] - 1}, got {control}")
    hook = hook_name(sae)
    # (run, strength, position, tokens, hooks, norm of the added vector)
    runs: list[tuple[str, float, int, torch.Tensor, list, float]] = [("baseline_a", 0.0, -1, toks["a"], [], 0.0),
                                                                     ("baseline_b", 0.0, -1, toks["b"], [], 0.0)]
    for strength in config.strengths:
        delta = feature_contribution(sae, feature, strength * base_act)
        norm = float(delta.norm())
        runs += [("steer_function_b", strength, last["b"], toks["b"], [(hook, add_at_position(delta, last["b"]))], norm),
                 ("steer_content_b", strength, control, toks["b"], [(hook, add_at_position(delta, control))], norm)]
    word_a, word_b = "".join(strs["a"][sa:ea]).strip(), "".join(strs["b"][sb:eb]).strip()
    rows = []
    for name, strength, pos, t, hooks, norm in runs:
        new, probs = greedy(model, t, config.max_new_tokens, hooks)
        top = probs.topk(5)
        text = model.tokenizer.decode(new)
        rows.append({"run": name, "strength": strength, "position": pos, "continuation": text,
                     "mentions_a": word_a in text, "mentions_b": word_b in text, "added_norm": norm,
                     "top5": " · ".join(repr(model.tokenizer.decode([i])) for i in top.indices.tolist()),
                     "top5_prob": " · ".join(f"{p:.3f}" for p in top.values.tolist())})
    gens = pd.DataFrame(rows)

    shown = list(dict.fromkeys([feature] + feats["feature"].tolist()))[: config.n_features]
    heat = []
    special = set(special_token_ids(model))
    for k in ("a", "b"):
        m = acts[k][:, shown].cpu().numpy()
        for pos in range(m.shape[0]):
            if ids[k][pos] in special:  # BOS: its residual is an outlier the SAE was not trained on
                continue
            for j, f in enumerate(shown):
                heat.append({"prompt": k, "position": pos, "token": strs[k][pos], "feature": f, "activation": float(m[pos, j])})
    effects = steering_effects(model, sae, config.sweep_templates, config.sweep_words, config.strengths, f_ids) \
        if config.sweep_templates else pd.DataFrame()
    skipped = effects.attrs.get("skipped_templates", [])
    return FunctionTokenSteeringResult(
        heatmaps=pd.DataFrame(heat), features=feats, generations=gens, effects=effects,
        info={"sae": source_of(sae), "hook": hook, "feature": feature, "feature_choice": how, "strengths": list(config.strengths),
              "base_activation": base_act, "final_token": model.tokenizer.decode([final]),
              "final_is_function_token": final in f_ids, "span_a": [sa, ea], "span_b": [sb, eb],
              "word_a": word_a, "word_b": word_b,
              "steer_position": last["b"], "control_position": control, "control_token": strs["b"][control],
              "tokens_a": strs["a"], "tokens_b": strs["b"], "sweep_skipped_templates": skipped,
              "n_reactivated_a": int(feats["reactivated_a"].sum()), "n_reactivated_b": int(feats["reactivated_b"].sum()),
              "n_final_active_a": int((feats["final_a"] > 0).sum()), "n_final_active_b": int((feats["final_b"] > 0).sum())},
    )


SPEC = register(ProbeSpec(
    name="function-token-steering",
    description="Case study: features the shared final function token reactivates in two prompts differing in one word; "
    "steering with a feature at the last function token vs the same addition at a content token.",
    config_cls=FunctionTokenSteeringConfig,
    result_cls=FunctionTokenSteeringResult,
    run=run,
))
