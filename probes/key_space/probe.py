"""Key-space correlation and in-context navigation (ICN).

Paper: "Correlation and Navigation in the Vocabulary Key Representation Space of Language
Models" (arXiv 2410.02284). A next-token logit is the dot product of a query (the normalised final
residual at the last position) with a fixed key (a row of the unembedding). Keys that lie close
together are ranked together, so the middle ranks of a prediction fill with tokens resembling the
top ones, right or wrong. ICN lists the answers already explored in the prompt, which moves the
query away from their keys.

What this probe computes, and where it departs from the paper (also in the experiment report):
- Keys: rows of the RAW unembedding (`W_U.T`; TransformerLens processing would centre them),
  with the model's tied/untied state recorded and checked numerically (`W_U.T == W_E`).
- Clusters: scikit-learn `KMeans` (Lloyd, k-means++ init, one init, seeded, `kmeans_max_iter`
  iterations, tol 1e-4) on the float32 keys, Euclidean, default about vocab/125 clusters (the paper
  used the `kmeans_pytorch` package: Euclidean, 1024 clusters for Llama-3's 128,256 keys). Token
  families (single capital letters, digits, leading-space variants) are checked against them.
- Cosine nearest neighbours per token; a 2-D map of the keys by PCA (no UMAP library is pinned).
- Knowledge probing: prompt `"{instruction}\\n\\nAnswer:\\n1. \\""` (raw) or the same answer
  scaffold after the tokenizer's chat template (chat). The top `top_n` first tokens each get a
  greedy continuation from the prompt plus that token, batched with a KV cache (the paper
  re-tokenised the prompt string plus the decoded token; here the token id is appended, so no
  re-tokenisation changes the forced token). Decoding stops at a token containing `"` (the answer's
  end), and also at a token containing a newline or after `max_new_tokens` (paper: 64) new tokens:
  such answers have no closing quote on their line, which the paper's regex extraction also
  rejects, so these extra stops never change a judgement. The answer is the text before the
  quote; it is judged against a closed gold list (`probes.key_space.gold`) instead of GPT-4o.
- Middle-rank bias: the clusters of the top `top_k` first tokens are the main clusters; ranks
  top_k+1..top_n split into in-main-cluster and other, with precision, mean rank and proportion.
- ICN: round r lists every answer explored so far (`1. "x1"\\n2. "x2"\\n...k+1. "`), takes the
  `icn_per_round` best first tokens of the new distribution not yet tried (paper's script: 10 per
  round; default here 1, so every answer is fed back before the next is chosen), and decodes them
  from the ORIGINAL prompt plus the token. Baseline: the top `n_explore` first tokens of the
  original distribution. Reported: correct-and-distinct answers against the number explored, and
  the query's dot product with every explored key, round by round.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from probes.key_space.gold import GoldList, get_gold, gold_lists
from workbench import hooks
from workbench.config import ConfigBase, config_from_dict, setting
from workbench.corpora.base import Corpus
from workbench.errors import ConfigError, PromptTooLongError
from workbench.generation import greedy_continue
from workbench.models.info import model_info
from workbench.paths import cache_dir
from workbench.probe_api import ProbeSpec, register
from workbench.progress import ProgressBar, progress_bar
from workbench.results import Result
from workbench.statefile import load_state, save_state

DEFAULT_NEIGHBOUR_TOKENS = ["A", "1", " the", " Paris", " Monday", " red", " Texas", " January"]
STOP_STRINGS = ('"', "\n")
PromptStyle = Literal["auto", "chat", "raw"]


@dataclass
class KeySpaceConfig(ConfigBase):
    categories: list[str] = setting(default_factory=list, max_items=100, text=True, why="the gold lists hold fewer")  # gold categories to probe; empty = all
    prompt_style: PromptStyle = "auto"  # auto = chat when the tokenizer has a chat template
    n_clusters: int = setting(0, min=0, max=100_000, why="at most one cluster per key")  # 0 = round(d_vocab / 125)
    kmeans_max_iter: int = setting(100, min=1, max=10_000, why="k-means iterations")
    seed: int = setting(0, min=0, max=2**31 - 1, why="seeds are 31-bit")
    top_n: int = setting(100, min=1, max=10_000, why="first tokens probed per category")  # first tokens probed per category
    top_k: int = setting(10, min=1, max=1000, why="main clusters per category")  # their clusters are the main clusters
    max_new_tokens: int = setting(24, min=1, max=256, why="tokens generated per answer")  # cap per answer (answers are a few tokens; the paper allowed 64)
    n_explore: int = setting(20, min=1, max=1000, why="answers generated per category")  # answers explored by ICN and by the baseline
    icn_per_round: int = setting(1, min=1, max=100, why="answers added per round")
    batch_size: int = setting(50, min=1, max=1024, why="larger batches do not fit in memory")  # continuations decoded together
    n_neighbours: int = setting(10, min=1, max=1000, why="neighbours listed per token")
    neighbour_tokens: list[str] = setting(default_factory=lambda: list(DEFAULT_NEIGHBOUR_TOKENS), max_items=200, text=True, why="tokens listed")

    def validate(self) -> None:
        for name in ("top_n", "top_k", "max_new_tokens", "n_explore", "icn_per_round", "batch_size", "n_neighbours", "kmeans_max_iter"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_clusters < 0 or self.n_clusters == 1:
            raise ConfigError(f"n_clusters must be 0 (automatic) or >= 2, got {self.n_clusters}")
        if self.top_k >= self.top_n:
            raise ConfigError(f"top_k ({self.top_k}) must be smaller than top_n ({self.top_n})")
        if self.n_explore > self.top_n:
            raise ConfigError(f"n_explore ({self.n_explore}) must not exceed top_n ({self.top_n}): the baseline reuses the top-n answers")
        known = gold_lists()
        bad = [c for c in self.categories if c not in known]
        if bad:
            raise ConfigError(f"Unknown categories {bad}; known: {sorted(known)}")


@dataclass
class KeySpaceResult(Result):
    geometry: dict = field(default_factory=dict)  # tied state, k-means settings and fit, map, family/pair statistics
    prompts: dict = field(default_factory=dict)  # category -> instruction, prompt text, style
    cluster_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [d_vocab]
    centroids: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [n_clusters, d_model]
    key_map: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [d_vocab, 2] PCA coordinates
    vocab: list = field(default_factory=list)  # decoded token strings, by id
    families: pd.DataFrame = field(default_factory=pd.DataFrame)  # family, token, token_id, cluster
    family_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    neighbours: pd.DataFrame = field(default_factory=pd.DataFrame)  # query token, rank, neighbour, cosine
    candidates: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (category, rank)
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)  # precision / mean rank / proportion per group
    icn: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (category, method, step)
    icn_dots: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (category, round, explored token)

    def summary(self) -> dict:
        out: dict = {"n_clusters": self.geometry.get("n_clusters"), "tied_embeddings": self.geometry.get("tied_embeddings"),
                     "prompt_style": self.geometry.get("prompt_style")}
        fs = self.family_summary
        for fam in ("capital letters", "digits"):
            row = fs[fs["family"] == fam] if not fs.empty else fs
            if len(row):
                out[f"{fam.replace(' ', '_')}_clusters"] = int(row["n_clusters"].iloc[0])
        g = self.groups
        if not g.empty:
            pooled = g[g["category"] == "ALL"].set_index("group")
            for grp in ("main", "other"):
                v = float(pooled.loc[grp, "precision"]) if grp in pooled.index else float("nan")
                out[f"middle_precision_{grp}"] = round(v, 4) if v == v else None  # None: no token in this group
        if not self.icn.empty:
            last = self.icn[self.icn["step"] == self.icn["step"].max()]
            for method, v in last.groupby("method")["distinct_correct"].mean().items():
                out[f"{method}_distinct_correct_mean"] = round(float(v), 3)
        return out


# ----- key geometry -----

def unembedding_keys(model: HookedTransformer) -> torch.Tensor:
    """Keys [d_vocab, d_model]: rows of the raw unembedding."""
    if model_info(model).numerics != "raw":
        raise ConfigError("key geometry needs raw numerics (processing centres W_U); load the model with numerics='raw'")
    return model.W_U.detach().T.float().contiguous().cpu()


def tie_state(model: HookedTransformer) -> dict:
    """Recorded tie flag, and whether the keys equal the input embeddings numerically."""
    W_E = model.W_E.detach()
    equal = W_E.shape == model.W_U.T.shape and bool(torch.equal(W_E, model.W_U.detach().T))
    return {"tied_embeddings": model_info(model).tied_embeddings, "keys_equal_embeddings": equal}


def default_n_clusters(d_vocab: int) -> int:
    """About one cluster per 125 keys, as in the paper (1024 for 128,256)."""
    return max(2, round(d_vocab / 125))


@dataclass
class KMeansFit:
    labels: torch.Tensor  # [n] int64
    centers: torch.Tensor  # [k, d]
    inertia: float
    n_iter: int
    settings: dict


def cluster_keys(keys: torch.Tensor, n_clusters: int, seed: int = 0, max_iter: int = 100) -> KMeansFit:
    """Seeded k-means over the key rows (scikit-learn KMeans, Lloyd, k-means++, one init)."""
    from sklearn.cluster import KMeans

    n = keys.shape[0]
    if not 2 <= n_clusters <= n:
        raise ConfigError(f"n_clusters must lie in [2, {n}], got {n_clusters}")
    settings = dict(n_clusters=n_clusters, init="k-means++", n_init=1, max_iter=max_iter, tol=1e-4, algorithm="lloyd", random_state=seed)
    km = KMeans(**settings)
    labels = km.fit_predict(keys.float().numpy())
    return KMeansFit(torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(km.cluster_centers_.astype(np.float32)),
                     float(km.inertia_), int(km.n_iter_), {"library": "scikit-learn KMeans", **settings, "dtype": "float32"})


def cached_cluster_keys(keys: torch.Tensor, n_clusters: int, seed: int = 0, max_iter: int = 100) -> KMeansFit:
    """`cluster_keys`, cached on disk by a hash of the keys themselves and every setting.

    k-means over a full vocabulary takes minutes on a CPU; runs that differ only in their probing
    settings (prompt style, categories) reuse one fit.
    """
    import hashlib
    import json

    import sklearn


    h = hashlib.sha1(keys.float().contiguous().numpy().tobytes())
    h.update(json.dumps([n_clusters, seed, max_iter, sklearn.__version__]).encode())
    path = cache_dir() / "key_space" / f"{h.hexdigest()[:20]}.safetensors"
    saved = load_state(path)
    if saved is not None:
        t, m = saved
        return KMeansFit(t["labels"], t["centers"], m["inertia"], m["n_iter"], {**m["settings"], "cached": True})
    fit = cluster_keys(keys, n_clusters, seed, max_iter)
    save_state(path, {"labels": fit.labels, "centers": fit.centers}, {"inertia": fit.inertia, "n_iter": fit.n_iter, "settings": fit.settings})
    return fit


def nearest_neighbours(keys: torch.Tensor, token_id: int, k: int = 10) -> list[tuple[int, float]]:
    """The k keys with the highest cosine similarity to `token_id`'s key (itself excluded)."""
    if not 0 <= token_id < keys.shape[0]:
        raise ConfigError(f"token id {token_id} is outside [0, {keys.shape[0]})")
    unit = torch.nn.functional.normalize(keys.float(), dim=-1)
    cos = unit @ unit[token_id]
    cos[token_id] = -float("inf")
    top = cos.topk(min(k, keys.shape[0] - 1))
    return [(int(i), float(c)) for c, i in zip(top.values, top.indices)]


def key_map(keys: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """2-D PCA coordinates of the keys, and the explained-variance ratio of the two axes."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, svd_solver="full")
    xy = pca.fit_transform(keys.float().numpy())
    return torch.from_numpy(xy.astype(np.float32)), [float(v) for v in pca.explained_variance_ratio_]


def token_strings(model: HookedTransformer) -> list[str]:
    """Each vocabulary id decoded alone (ids beyond the tokenizer read as '<id>')."""
    V = model.cfg.d_vocab
    tok = model.tokenizer
    n = min(V, len(tok)) if tok is not None else 0
    texts = tok.batch_decode([[i] for i in range(n)]) if n else []
    return texts + [f"<{i}>" for i in range(n, V)]


def single_token_id(tokenizer, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


FAMILIES: dict[str, list[str]] = {
    "capital letters": [chr(c) for c in range(ord("A"), ord("Z") + 1)],
    "space + capital letters": [" " + chr(c) for c in range(ord("A"), ord("Z") + 1)],
    "lowercase letters": [chr(c) for c in range(ord("a"), ord("z") + 1)],
    "space + lowercase letters": [" " + chr(c) for c in range(ord("a"), ord("z") + 1)],
    "digits": [str(d) for d in range(10)],
    "space + digits": [f" {d}" for d in range(10)],
}


def family_table(tokenizer, labels: torch.Tensor) -> pd.DataFrame:
    """Cluster of every family member that is a single token (families with none are left out)."""
    rows = []
    for fam, members in FAMILIES.items():
        for s in members:
            tid = single_token_id(tokenizer, s)
            if tid is not None and tid < len(labels):
                rows.append({"family": fam, "token": s, "token_id": tid, "cluster": int(labels[tid])})
    return pd.DataFrame(rows, columns=["family", "token", "token_id", "cluster"])


def expected_distinct(n: int, sizes: np.ndarray) -> float:
    """Expected number of distinct clusters among n tokens drawn uniformly without replacement."""
    V = sizes.sum()
    # P(cluster c is missed) = C(V - n_c, n) / C(V, n), as a running product
    j = np.arange(n)[:, None]
    miss = np.prod((V - sizes[None, :] - j) / (V - j), axis=0)
    miss = np.where(V - sizes >= n, miss, 0.0)
    return float((1 - miss).sum())


def family_summary(families: pd.DataFrame, labels: torch.Tensor) -> pd.DataFrame:
    sizes = np.bincount(labels.numpy()).astype(np.float64)
    rows = []
    for fam, g in families.groupby("family", sort=False):
        counts = g["cluster"].value_counts()
        rows.append({
            "family": fam, "n_tokens": len(g), "n_clusters": int(counts.size),
            "largest_cluster": int(counts.index[0]), "largest_share": float(counts.iloc[0] / len(g)),
            "expected_clusters_if_random": expected_distinct(len(g), sizes),
        })
    return pd.DataFrame(rows)


def leading_space_pairs(vocab: Sequence[str], labels: torch.Tensor) -> dict:
    """How often "word" and " word" (both single alphabetic tokens of 2+ letters) share a cluster."""
    first: dict[str, int] = {}
    for i, s in enumerate(vocab):
        first.setdefault(s, i)
    pairs = [(first[s[1:]], i) for s, i in first.items() if s.startswith(" ") and len(s) > 2 and s[1:].isalpha() and s[1:] in first]
    lab = labels.numpy()
    same = float(np.mean([lab[a] == lab[b] for a, b in pairs])) if pairs else float("nan")
    sizes = np.bincount(lab).astype(np.float64)
    V = sizes.sum()
    chance = float((sizes * (sizes - 1)).sum() / (V * (V - 1)))
    return {"n_pairs": len(pairs), "same_cluster_fraction": same, "chance_fraction": chance}


# ----- prompts -----

def numbered_answers(explored: Sequence[str]) -> str:
    """`1. "x1"\\n2. "x2"\\n...k+1. "`: the explored answers and the opening of the next one."""
    return "".join(f'{i + 1}. "{a}"\n' for i, a in enumerate(explored)) + f'{len(explored) + 1}. "'


def resolve_style(style: str, tokenizer) -> str:
    has_template = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if style == "auto":
        return "chat" if has_template else "raw"
    if style == "chat" and not has_template:
        raise ConfigError("prompt_style='chat' needs a tokenizer with a chat template; use 'raw'")
    if style not in ("chat", "raw"):
        raise ConfigError(f"prompt_style must be auto, chat or raw, got {style!r}")
    return style


def build_prompt(instruction: str, explored: Sequence[str] = (), style: str = "raw", tokenizer=None) -> str:
    """The probing prompt as text. raw: `{instruction}\\n\\nAnswer:\\n1. "`; chat: the tokenizer's
    template with the instruction as the user turn, then `Answer:\\n1. "` opening the assistant turn."""
    if not instruction.strip():
        raise ConfigError("the instruction is empty")
    body = "Answer:\n" + numbered_answers(explored)
    if style == "raw":
        return f"{instruction}\n\n{body}"
    if style == "chat":
        head = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False)
        return head + body
    raise ConfigError(f"prompt style must be 'raw' or 'chat' here, got {style!r}")


def prompt_tokens(tokenizer, text: str, style: str) -> list[int]:
    """Token ids: raw prompts get the tokenizer's own special tokens; chat text already holds them."""
    return list(tokenizer(text, add_special_tokens=(style == "raw"))["input_ids"])


@torch.inference_mode()
def final_query(model: HookedTransformer, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(query [d_model], logits [d_vocab]) at the last position, float32 on the model's device.
    query = ln_final(final residual)."""
    if len(tokens) > model.cfg.n_ctx:
        raise PromptTooLongError(f"prompt of {len(tokens)} tokens exceeds the model's context of {model.cfg.n_ctx}")
    name = hooks.resid_post(model.cfg.n_layers - 1)
    logits, cache = model.run_with_cache(torch.tensor([list(tokens)], device=model.cfg.device), names_filter=name)
    resid = cache[name][:, -1:, :]
    ln = getattr(model, "ln_final", None)
    q = ln(resid) if ln is not None else resid
    return q[0, 0].float(), logits[0, -1].float()


def extract_answer(text: str) -> tuple[str, bool]:
    """(answer, terminated): the text before the first `"`; unterminated without one on its line."""
    i = text.find('"')
    if i < 0 or "\n" in text[:i]:
        return text.split("\n")[0].replace('"', "").strip(), False
    return text[:i].strip(), True


# ----- knowledge probing and ICN -----

@dataclass
class InstructionProbe:
    """Everything measured for one instruction."""

    prompt: str
    style: str
    n_prompt_tokens: int
    candidates: pd.DataFrame
    icn: pd.DataFrame
    dots: pd.DataFrame


class _Answers:
    """Continuations from the original prompt, memoised by first token (decoded in batches)."""

    def __init__(self, model: HookedTransformer, prefix: list[int], cfg: KeySpaceConfig, gold: GoldList | None, bar: ProgressBar):
        self.model, self.prefix, self.cfg, self.gold, self.bar = model, prefix, cfg, gold, bar
        self.memo: dict[int, dict] = {}

    def decode(self, first_tokens: Sequence[int]) -> None:
        """Decode the first tokens not seen yet; the bar advances one unit per requested token."""
        wanted = list(dict.fromkeys(first_tokens))
        todo = [t for t in wanted if t not in self.memo]
        self.bar.update(len(wanted) - len(todo))
        if not todo:
            return
        conts = greedy_continue(self.model, self.prefix, todo, self.cfg.max_new_tokens, STOP_STRINGS,
                                batch_size=self.cfg.batch_size, progress=self.bar)
        for t, c in zip(todo, conts):
            answer, ok = extract_answer(c.text)
            match = self.gold.match(answer) if (ok and self.gold is not None) else None
            correct = (match is not None) if self.gold is not None else None  # None: no gold list to judge with
            self.memo[t] = {"answer": answer, "terminated": ok, "match": match, "correct": correct,
                            "n_tokens": len(c.tokens), "continuation": c.text}

    def __getitem__(self, t: int) -> dict:
        return self.memo[t]


def _distinct_running(matches: Sequence[str | None]) -> list[int]:
    """Running count of distinct gold entries. Anything but a string is "no match": a pandas column
    mixing strings and None reads None back as NaN (pandas >= 3 string dtype), which is not None."""
    seen: set[str] = set()
    out = []
    for m in matches:
        if isinstance(m, str):
            seen.add(m)
        out.append(len(seen))
    return out


def probe_instruction(
    model: HookedTransformer,
    instruction: str,
    labels: torch.Tensor,
    cfg: KeySpaceConfig,
    gold: GoldList | None = None,
    category: str = "custom",
    vocab: Sequence[str] | None = None,
    show_progress: bool = True,
    progress: ProgressBar | None = None,
) -> InstructionProbe:
    """Top-N ranking with judged continuations, main-cluster groups, and ICN against the baseline.

    `progress`: an open bar to advance by top_n + n_explore units (one per answer) instead of a new one.
    """
    if progress is None:
        with progress_bar(cfg.top_n + cfg.n_explore, f"{category}: answers", unit="ans", enabled=show_progress) as bar:
            return probe_instruction(model, instruction, labels, cfg, gold, category, vocab, show_progress, bar)
    tok = model.tokenizer
    if tok is None:
        raise ConfigError("knowledge probing needs a model with a tokenizer")
    style = resolve_style(cfg.prompt_style, tok)
    name = (lambda t: vocab[t]) if vocab is not None else (lambda t: tok.decode([t]))
    prompt = build_prompt(instruction, [], style, tok)
    prefix = prompt_tokens(tok, prompt, style)
    answers = _Answers(model, prefix, cfg, gold, progress)
    q0, logits0 = final_query(model, prefix)
    W_U = model.W_U.detach().float()  # on the model's device; only small results come back to the host
    top = logits0.topk(cfg.top_n)
    top_ids = top.indices.tolist()
    top_dots = (q0 @ W_U[:, top_ids]).tolist()
    answers.decode(top_ids)

    main = {int(labels[t]) for t in top_ids[: cfg.top_k]}
    rows = []
    for r, (t, lg, dot) in enumerate(zip(top_ids, top.values.tolist(), top_dots), start=1):
        cl = int(labels[t])
        group = "top" if r <= cfg.top_k else ("main" if cl in main else "other")
        rows.append({"category": category, "rank": r, "token_id": t, "token": name(t), "logit": lg,
                     "dot": dot, "cluster": cl, "group": group, **answers[t]})
    candidates = pd.DataFrame(rows)

    # baseline: the top n_explore first tokens of the original distribution
    base = candidates.iloc[: cfg.n_explore]
    base_rows = [{"category": category, "method": "baseline", "step": i + 1, "round": 0, "token_id": int(t), "token": name(int(t)),
                  "rank_in_round": i + 1, **{k: answers[int(t)][k] for k in ("answer", "terminated", "match", "correct")}}
                 for i, t in enumerate(base["token_id"])]

    # ICN: feed explored answers back, take new first tokens from the updated distribution
    tried: set[int] = set()
    fed: list[str] = []
    queries = [q0]
    icn_rows: list[dict] = []
    rnd = 0
    logits = logits0
    while len(icn_rows) < cfg.n_explore:
        if rnd > 0:
            text = build_prompt(instruction, fed, style, tok)
            q, logits = final_query(model, prompt_tokens(tok, text, style))
            queries.append(q)
        want = min(cfg.icn_per_round, cfg.n_explore - len(icn_rows))
        order = logits.topk(min(len(tried) + want, logits.numel())).indices.tolist()
        picks = [(pos + 1, t) for pos, t in enumerate(order) if t not in tried][:want]
        answers.decode([t for _, t in picks])
        for rank, t in picks:
            tried.add(t)
            a = answers[t]
            fed.append(a["answer"])
            icn_rows.append({"category": category, "method": "icn", "step": len(icn_rows) + 1, "round": rnd, "token_id": t,
                             "token": name(t), "rank_in_round": rank, **{k: a[k] for k in ("answer", "terminated", "match", "correct")}})
        rnd += 1
    final_text = build_prompt(instruction, fed, style, tok)
    queries.append(final_query(model, prompt_tokens(tok, final_text, style))[0])

    icn = pd.DataFrame(base_rows + icn_rows)
    icn["distinct_correct"] = 0
    for method in ("baseline", "icn"):
        sel = icn["method"] == method
        icn.loc[sel, "distinct_correct"] = _distinct_running(list(icn.loc[sel, "match"]))

    # the query of every round (and the final one) against every explored key
    ids = [r["token_id"] for r in icn_rows]
    Q = torch.stack(queries)  # [rounds + 1, d_model]
    dots = (Q @ W_U[:, ids]).cpu()
    all_logits = Q @ W_U + model.b_U.detach().float()
    ranks = ((all_logits[:, None, :] > all_logits[:, ids][:, :, None]).sum(-1) + 1).cpu()
    dot_rows = []
    for r in range(Q.shape[0]):
        for j, row in enumerate(icn_rows):
            dot_rows.append({"category": category, "round": r, "step": row["step"], "token_id": row["token_id"], "token": row["token"],
                             "explored_round": row["round"], "in_prompt": row["round"] < r, "dot": float(dots[r, j]),
                             "logit_rank": int(ranks[r, j])})
    return InstructionProbe(prompt, style, len(prefix), candidates, icn, pd.DataFrame(dot_rows))



def probe_typed_instruction(model: HookedTransformer, stored: "KeySpaceResult", instruction: str, top_n: int, n_explore: int,
                            judge: str | None = None, max_top_n: int = 200, max_explore: int = 30):
    """One typed instruction on the model of a stored run, with that run's clusters and settings
    (top-N candidates, `n_explore` answers explored), judged against the gold list `judge` if given."""
    if not (11 <= top_n <= max_top_n and 1 <= n_explore <= min(max_explore, top_n)):
        raise ConfigError(f"top-N must lie in [11, {max_top_n}] and explored in [1, min({max_explore}, top-N)]")
    kept = dict(stored.meta.get("config", {}))
    fields = {f.name for f in dataclasses.fields(KeySpaceConfig)}
    cfg = config_from_dict(KeySpaceConfig, {**{k: v for k, v in kept.items() if k in fields}, "categories": [], "top_n": top_n,
                                            "n_explore": n_explore, "top_k": min(int(kept.get("top_k", 10)), top_n - 1)})
    gold = get_gold(judge) if judge else None
    return probe_instruction(model, instruction, stored.cluster_ids, cfg, gold, "typed", stored.vocab or None, show_progress=False), cfg


def group_table(candidates: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """Precision, mean rank and proportion per group and category, plus pooled ("ALL") and
    per-category-mean ("MEAN") rows. Proportion is the share of the middle ranks (top_k+1..N)."""
    rows = []
    for cat, c in candidates.groupby("category", sort=False):
        middle = c[c["rank"] > top_k]
        for grp in ("top", "main", "other"):
            g = c[c["group"] == grp]
            rows.append({"category": cat, "group": grp, "n": len(g),
                         "precision": float(g["correct"].mean()) if len(g) else float("nan"),
                         "mean_rank": float(g["rank"].mean()) if len(g) else float("nan"),
                         "proportion": (len(g) / len(middle) if len(middle) else float("nan")) if grp != "top" else float("nan")})
    per = pd.DataFrame(rows)
    middle_all = candidates[candidates["rank"] > top_k]
    for grp in ("top", "main", "other"):
        g = candidates[candidates["group"] == grp]
        rows.append({"category": "ALL", "group": grp, "n": len(g),
                     "precision": float(g["correct"].mean()) if len(g) else float("nan"),
                     "mean_rank": float(g["rank"].mean()) if len(g) else float("nan"),
                     "proportion": len(g) / len(middle_all) if (grp != "top" and len(middle_all)) else float("nan")})
        pg = per[(per["group"] == grp) & (per["n"] > 0)]
        rows.append({"category": "MEAN", "group": grp, "n": len(pg), "precision": float(pg["precision"].mean()) if len(pg) else float("nan"),
                     "mean_rank": float(pg["mean_rank"].mean()) if len(pg) else float("nan"),
                     "proportion": float(pg["proportion"].mean()) if (grp != "top" and len(pg)) else float("nan")})
    return pd.DataFrame(rows)


def neighbour_table(keys: torch.Tensor, tokenizer, tokens: Sequence[str], k: int, vocab: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    rows, missing = [], []
    for s in tokens:
        tid = single_token_id(tokenizer, s)
        if tid is None or tid >= keys.shape[0]:
            missing.append(s)
            continue
        for r, (j, c) in enumerate(nearest_neighbours(keys, tid, k), start=1):
            rows.append({"query": s, "query_id": tid, "rank": r, "neighbour_id": j, "neighbour": vocab[j], "cosine": c})
    return pd.DataFrame(rows, columns=["query", "query_id", "rank", "neighbour_id", "neighbour", "cosine"]), missing


def key_geometry(model: HookedTransformer, cfg: KeySpaceConfig) -> dict:
    """Clusters, map, families, pairs and neighbours of the unembedding keys."""
    keys = unembedding_keys(model)
    V = keys.shape[0]
    k = cfg.n_clusters or default_n_clusters(V)
    with progress_bar(2, f"k-means ({k} clusters over {V} keys), then PCA", unit="step") as bar:
        fit = cached_cluster_keys(keys, k, cfg.seed, cfg.kmeans_max_iter)
        bar.update(1)
        xy, evr = key_map(keys)
        bar.update(1)
    vocab = token_strings(model)
    fams = family_table(model.tokenizer, fit.labels) if model.tokenizer is not None else pd.DataFrame(columns=["family", "token", "token_id", "cluster"])
    neigh, missing = (neighbour_table(keys, model.tokenizer, cfg.neighbour_tokens, cfg.n_neighbours, vocab)
                      if model.tokenizer is not None else (pd.DataFrame(), list(cfg.neighbour_tokens)))
    geometry = {**tie_state(model), "n_clusters": k, "d_vocab": V, "d_model": keys.shape[1], "kmeans": fit.settings,
                "kmeans_inertia": fit.inertia, "kmeans_n_iter": fit.n_iter, "map": "PCA", "map_explained_variance": evr,
                "leading_space_pairs": leading_space_pairs(vocab, fit.labels), "neighbour_tokens_missing": missing,
                "families_missing": [f for f in FAMILIES if f not in set(fams["family"])]}
    return {"geometry": geometry, "cluster_ids": fit.labels, "centroids": fit.centers, "key_map": xy, "vocab": vocab,
            "families": fams, "family_summary": family_summary(fams, fit.labels) if len(fams) else pd.DataFrame(), "neighbours": neigh}


def run(model: HookedTransformer, corpus: Corpus | None, config: KeySpaceConfig) -> KeySpaceResult:
    geo = key_geometry(model, config)
    style = resolve_style(config.prompt_style, model.tokenizer) if model.tokenizer is not None else None
    geo["geometry"]["prompt_style"] = style
    geo["geometry"]["stop_strings"] = list(STOP_STRINGS)
    cats = config.categories or list(gold_lists())
    probes, prompts = [], {}
    with progress_bar(len(cats) * (config.top_n + config.n_explore), f"key-space: answers for {len(cats)} categories", unit="ans") as bar:
        for cat in cats:
            gold = get_gold(cat)
            p = probe_instruction(model, gold.instruction, geo["cluster_ids"], config, gold, cat, geo["vocab"], progress=bar)
            probes.append(p)
            prompts[cat] = {"instruction": gold.instruction, "prompt": p.prompt, "style": p.style, "n_prompt_tokens": p.n_prompt_tokens,
                            "gold_size": len(gold)}
    candidates = pd.concat([p.candidates for p in probes], ignore_index=True)
    return KeySpaceResult(
        prompts=prompts, candidates=candidates, groups=group_table(candidates, config.top_k),
        icn=pd.concat([p.icn for p in probes], ignore_index=True), icn_dots=pd.concat([p.dots for p in probes], ignore_index=True), **geo,
    )


PROMPT_TOKENS = 48  # a category prompt in the chat template, roughly


def cost(config: KeySpaceConfig, model_cfg) -> float | None:
    """Forward token-passes: every probed first token and every explored answer is generated token by
    token (the prompt re-read at each step), per category (all gold categories when none is named)."""
    n_cat = len(config.categories) or len(gold_lists())
    per_answer = sum(PROMPT_TOKENS + i for i in range(config.max_new_tokens))
    return float(n_cat * (config.top_n + 2 * config.n_explore) * per_answer)


SPEC = register(ProbeSpec(
    name="key-space",
    description="Unembedding key clusters and neighbours; middle-rank precision of in-cluster first tokens on closed "
    "gold lists; in-context navigation against top-k sampling.",
    config_cls=KeySpaceConfig,
    result_cls=KeySpaceResult,
    run=run,
    cost=cost,
    needs_corpus=False,
    default_corpus=None,
))
