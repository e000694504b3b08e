"""The conformance matrix: every causal-LM family TransformerLens converts, as a tiny random-weight
transformers model in a local directory, loaded through `load_model(<dir>)` and checked against
transformers' own forward on the same weights, in float32 and bfloat16, on the fast path and the
explicit path; every hook point hooked equals none hooked; a smoke run of the streaming probes.
A family that cannot be converted faithfully is refused at load with a one-line reason.

Tolerances come from the dtype and the depth, not from constants (see `rounding_bound`).
`docs/MODELS.md` holds the matrix these tests produce (`test_the_models_page_is_the_matrix`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from conformance_models import BY_NAME, FAMILIES, SEQ, build, tokens

from workbench.errors import ConfigError
from workbench.models import load_model
from workbench.models.fast_path import explicit_path, uses_fast_path

CONVERTED = [f.name for f in FAMILIES if not f.refused]
REFUSED = [f.name for f in FAMILIES if f.refused]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PATHS = ("fast", "explicit")
FLAGGED_HOOKS = ("hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in", "attn.hook_result", "hook_mlp_in")
DEVICE = os.environ.get("WORKBENCH_TEST_DEVICE", "cpu")  # benchmarks.gpu_check runs this matrix with "cuda"
MODELS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "MODELS.md"


def rounding_bound(dtype: torch.dtype, n_layers: int) -> float:
    """Relative error (to the largest |logit|) that rounding alone can explain: the dtype's unit
    roundoff times the roundings on the way from the embedding to a logit (an embedding, a final
    norm and the unembedding, then per layer two norms, four in attention and three in the MLP),
    times 4 for the growth of sums over d_model terms taken in another order."""
    return torch.finfo(dtype).eps * (3 + 9 * n_layers) * 4


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (directory, transformers model in float32) for every family, built once."""
    root = tmp_path_factory.mktemp("conformance")
    return {f.name: build(f, root) for f in FAMILIES}


@pytest.fixture(scope="module")
def references(built):
    """name -> transformers logits in float64 (the truth) and in bfloat16 (its own rounding) for the test tokens."""
    out = {}
    toks = tokens()
    for name in CONVERTED:
        _, hf = built[name]
        with torch.no_grad():  # copies: a model cast to bfloat16 and back has lost its float32 weights
            out[name] = {"float32": hf(toks).logits, "float64": copy.deepcopy(hf).double()(toks).logits,
                         "bfloat16": copy.deepcopy(hf).to(torch.bfloat16)(toks).logits}
    return out


def _logits(model, toks: torch.Tensor, path: str) -> torch.Tensor:
    with torch.no_grad():
        if path == "explicit":
            with explicit_path(model):
                return model(toks)
        return model(toks)


@pytest.mark.parametrize("name", CONVERTED)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_logits_match_transformers_on_both_paths(built, references, name, dtype):
    d, _ = built[name]
    model = load_model(str(d), device=DEVICE, dtype=dtype)
    assert next(model.parameters()).dtype == DTYPES[dtype] and model.cfg.dtype == DTYPES[dtype]
    assert uses_fast_path(model)
    ref = references[name]
    toks = tokens().to(DEVICE)
    for path in PATHS:
        ours = _logits(model, toks, path).cpu()
        assert ours.dtype == DTYPES[dtype]
        if dtype == "float32":
            bound = rounding_bound(torch.float32, model.cfg.n_layers)
            err = rel(ours, ref["float32"])
            assert err < bound, f"{name} {path} float32: {err:.2e} from transformers (bound {bound:.1e})"
        else:
            # In bfloat16 both implementations round, mostly the same way (the weights are stored
            # rounded in both); each is measured against the float64 truth. Ours may be at most twice
            # as far from it as transformers' own bfloat16 forward, plus one unit roundoff of the
            # logits: an a-priori bound (rounding_bound: 0.66 here) would let a broken window (0.05) pass.
            theirs = rel(ref["bfloat16"], ref["float64"])
            err = rel(ours, ref["float64"])
            bound = 2 * theirs + torch.finfo(torch.bfloat16).eps
            assert err < bound, f"{name} {path} bfloat16: {err:.2e} from float64, transformers' own {theirs:.2e}"


@pytest.mark.parametrize("name", CONVERTED)
def test_every_hook_point_hooked_equals_none_hooked(built, name):
    d, _ = built[name]
    model = load_model(str(d), device=DEVICE)
    toks = tokens().to(DEVICE)
    seen: dict[str, list[str]] = {"explicit": [], "fast": []}

    def recorder(path: str):
        def identity(tensor, hook):
            seen[path].append(hook.name)
            return tensor
        return identity

    with torch.no_grad():
        plain_fast = model(toks)
        with explicit_path(model):
            plain_explicit = model(toks)
            hooked_explicit = model.run_with_hooks(toks, fwd_hooks=[(lambda n: True, recorder("explicit"))])
        hooked_fast = model.run_with_hooks(toks, fwd_hooks=[(lambda n: True, recorder("fast"))])
    # the same hook points fire on both paths: all of them but those TransformerLens fills only when a
    # flag asks for them (split q/k/v inputs, attention input, per-head results, the MLP input)
    assert seen["fast"] == seen["explicit"]
    silent = set(model.hook_dict) - set(seen["fast"])
    if model.cfg.positional_embedding_type == "alibi":
        silent.discard("hook_pos_embed")  # ALiBi adds no position embedding
    assert all(n.endswith(FLAGGED_HOOKS) for n in silent), sorted(silent)
    assert torch.equal(hooked_explicit, plain_explicit)  # identity hooks change nothing on TransformerLens's own path
    # on the fast path a hooked pattern sends its layer to the explicit computation: the same within round-off
    assert rel(hooked_fast, plain_fast) < rounding_bound(torch.float32, model.cfg.n_layers)


@pytest.mark.parametrize("name", REFUSED)
def test_a_family_that_cannot_be_converted_is_refused_in_one_line(built, name):
    d, _ = built[name]
    with pytest.raises(ConfigError) as info:
        load_model(str(d), device="cpu")
    msg = str(info.value)
    assert BY_NAME[name].refused in msg and "\n" not in msg and str(d) in msg


def test_a_path_that_names_another_family_is_converted_by_its_config(built, tmp_path):
    """TransformerLens's converter matches "llama" and "gemma" in a path before reading its config; a
    GPT-2 in a directory called my-llama-gemma must still load as the GPT-2 it is."""
    d, hf = built["gpt2"]
    alias = tmp_path / "my-llama-gemma"
    alias.symlink_to(d, target_is_directory=True)
    model = load_model(str(alias), device="cpu")
    with torch.no_grad():
        assert rel(model(tokens()), hf(tokens()).logits) < rounding_bound(torch.float32, 2)


def test_gpt_neo_keeps_its_intermediate_size_and_its_local_window(built):
    d, _ = built["gpt-neo"]
    model = load_model(str(d), device="cpu")
    assert model.cfg.d_mlp == 128 and model.cfg.d_model == 64  # not 4 x d_model
    assert [b.attn.attn_type for b in model.blocks] == ["local", "global"] and model.cfg.window_size < SEQ


# ----------------------------------------------------------------------------- the streaming probes on every family

SMOKE = {
    "residual-norms": {"max_tokens": 300, "seq_len": 32, "batch_size": 4},
    "attention-sinks": {"max_tokens": 256, "seq_len": 32, "batch_size": 4, "ablation_tokens": 64, "example_len": 16, "domains": []},
    "linguistic-collapse": {"max_tokens": 300, "heldout_max_tokens": 128, "seq_len": 32, "batch_size": 4, "top_classes": 8},
    "sae-features": {"max_tokens": 300, "seq_len": 32, "batch_size": 4, "top_contexts": 2},
    "function-tokens": {"max_tokens": 300, "seq_len": 32, "batch_size": 4},
}


@pytest.mark.parametrize("name", CONVERTED)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_streaming_probe_runs_on_every_family(built, name, dtype, store, brown, tmp_path):
    from sae_standins import saved_sae

    from workbench.runner import run_probe

    d, _ = built[name]
    model = load_model(str(d), device=DEVICE, dtype=dtype)
    from workbench.corpora.base import validation_document

    val = [doc for doc in brown.documents if validation_document(doc.doc_id)][:3]
    train = [doc for doc in brown.documents if not validation_document(doc.doc_id)][:4]
    corpus = type(brown)(f"brown-{name}", brown.version, train + val, genre_names=brown.genre_names)
    sae = str(saved_sae(tmp_path / "sae", hook=f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", d_in=model.cfg.d_model,
                        d_sae=48, k=4))
    for probe, cfg in SMOKE.items():
        cfg = dict(cfg)
        if probe == "sae-features":
            cfg["sae"] = sae
        if probe == "function-tokens":
            cfg["saes"] = [sae]
        out = run_probe(probe, model, corpus, cfg, store=store)
        assert f"|{dtype}|" in out.result.meta["model_key"]  # the precision is part of what the result is keyed by
        summary = out.result.summary()
        assert summary, (name, probe)
        assert all(v == v for v in _numbers(summary)), (name, probe, summary)  # no NaN anywhere in the summary


def _numbers(obj) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _numbers(v)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


# ----------------------------------------------------------------------------- the page that states the matrix


def matrix_markdown() -> str:
    """The matrix as docs/MODELS.md shows it, from FAMILIES and this module's checks."""
    rows = ["| family | transformers class | float32 fast | float32 explicit | bfloat16 fast | bfloat16 explicit | hooks | probes |",
            "|---|---|---|---|---|---|---|---|"]
    for f in FAMILIES:
        if f.refused:
            rows.append(f"| {f.name} | `{f.model_cls}` | refused: {f.refused} | | | | | |")
        else:
            rows.append(f"| {f.name} | `{f.model_cls}` | pass | pass | pass | pass | pass | pass |")
    return "\n".join(rows)


def test_the_models_page_is_the_matrix():
    """docs/MODELS.md states exactly the families and outcomes these tests check (regenerate it with
    WORKBENCH_WRITE_DOCS=1 python -m pytest tests/test_conformance.py -k models_page)."""
    begin, end = "<!-- conformance matrix: begin -->", "<!-- conformance matrix: end -->"
    text = MODELS_PAGE.read_text()
    table = matrix_markdown()
    if os.environ.get("WORKBENCH_WRITE_DOCS"):
        head, rest = text.split(begin, 1)
        MODELS_PAGE.write_text(f"{head}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}")
        text = MODELS_PAGE.read_text()
    assert f"{begin}\n{table}\n{end}" in text
