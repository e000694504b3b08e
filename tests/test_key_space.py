"""Key-space probe: clustering and neighbours against brute force, the judge on tricky strings,
the ICN prompt format, a small end-to-end run on a tiny model checked against independent
recomputations, save/load, figures and the dashboard page."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from probes.key_space import (
    KeySpaceConfig,
    KeySpaceResult,
    build_prompt,
    nearest_neighbours,
    numbered_answers,
    prompt_tokens,
    unembedding_keys,
)
from probes.key_space.gold import GoldList, gold_lists, judge, normalise
from probes.key_space.probe import (
    cluster_keys,
    expected_distinct,
    extract_answer,
    family_table,
    final_query,
    leading_space_pairs,
)
from workbench.errors import ConfigError

SMALL = {"categories": ["planets", "months"], "top_n": 16, "top_k": 4, "n_explore": 5, "max_new_tokens": 6, "icn_per_round": 2,
         "batch_size": 8, "n_clusters": 6, "neighbour_tokens": ["A", "1", "zz"]}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """(model, store, outcome) of a small key-space run on the Llama-style tiny model."""
    from workbench.models import load_model
    from workbench.runner import run_probe
    from workbench.store import ResultStore

    model = load_model("tiny-llama", device="cpu")
    store = ResultStore(tmp_path_factory.mktemp("ks-store"))
    out = run_probe("key-space", model, None, SMALL, store=store)
    return model, store, out


# ----- key geometry -----

def test_clustering_deterministic_and_a_lloyd_fixed_point(tiny):
    keys = unembedding_keys(tiny)
    a = cluster_keys(keys, 5, seed=3, max_iter=50)
    b = cluster_keys(keys, 5, seed=3, max_iter=50)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)
    d = torch.cdist(keys.double(), a.centers.double())
    assert torch.equal(d.argmin(1), a.labels)  # every key sits in its nearest centre's cluster
    assert a.settings["random_state"] == 3 and a.settings["library"] == "scikit-learn KMeans"


def test_cached_clustering_equals_fresh(tiny, tmp_path, monkeypatch):
    from probes.key_space import cached_cluster_keys

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    keys = unembedding_keys(tiny)
    fresh = cluster_keys(keys, 4, seed=1, max_iter=30)
    first = cached_cluster_keys(keys, 4, seed=1, max_iter=30)
    again = cached_cluster_keys(keys, 4, seed=1, max_iter=30)
    assert "cached" not in first.settings and again.settings["cached"] is True
    assert torch.equal(fresh.labels, again.labels) and torch.equal(fresh.centers, again.centers) and fresh.n_iter == again.n_iter
    other = cached_cluster_keys(keys + 1.0, 4, seed=1, max_iter=30)  # other keys: another cache entry
    assert "cached" not in other.settings and len(list((tmp_path / "key_space").glob("*.safetensors"))) == 2


def test_clustering_recovers_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    truth = torch.arange(3).repeat_interleave(40)
    pts = centres[truth] + 0.3 * torch.randn(120, 3, generator=g)
    fit = cluster_keys(pts, 3, seed=0)
    # same partition up to relabelling
    assert all(len(set(fit.labels[truth == t].tolist())) == 1 for t in range(3))
    assert len(set(fit.labels.tolist())) == 3


def test_nearest_neighbours_brute_force(tiny):
    keys = unembedding_keys(tiny)
    tid = 65
    got = nearest_neighbours(keys, tid, 5)
    cos = [(float(torch.dot(keys[tid], keys[j]) / (keys[tid].norm() * keys[j].norm())), j) for j in range(keys.shape[0]) if j != tid]
    want = sorted(cos, reverse=True)[:5]
    assert [j for j, _ in got] == [j for _, j in want]
    assert np.allclose([c for _, c in got], [c for c, _ in want], atol=1e-5)
    with pytest.raises(ConfigError):
        nearest_neighbours(keys, keys.shape[0], 3)


def test_expected_distinct_closed_form():
    assert expected_distinct(1, np.array([3.0, 5.0])) == pytest.approx(1.0)
    assert expected_distinct(2, np.array([2.0, 2.0])) == pytest.approx(1 + 4 / 6)  # P(two draws differ) = 4/6
    assert expected_distinct(3, np.array([1.0, 1.0, 1.0])) == pytest.approx(3.0)


def test_leading_space_pairs_and_families(tiny):
    vocab = ["cat", " cat", "dog", " dog", "a", " a", " zebra"]
    labels = torch.tensor([0, 0, 1, 2, 0, 0, 1])
    s = leading_space_pairs(vocab, labels)
    assert s["n_pairs"] == 2 and s["same_cluster_fraction"] == 0.5  # " a" is too short; " zebra" has no partner
    sizes = np.array([4, 2, 1])
    assert s["chance_fraction"] == pytest.approx((sizes * (sizes - 1)).sum() / (7 * 6))
    labels = torch.arange(tiny.cfg.d_vocab) % 7
    fams = family_table(tiny.tokenizer, labels)
    caps = fams[fams["family"] == "capital letters"]
    assert len(caps) == 26 and (caps["cluster"] == [int(labels[i]) for i in caps["token_id"]]).all()
    assert tiny.tokenizer.decode([int(caps["token_id"].iloc[0])]) == "A"


# ----- gold lists and judge -----

def test_gold_lists_are_complete():
    g = gold_lists()
    assert len(g) >= 8
    sizes = {k: len(v) for k, v in g.items()}
    assert sizes["us_states"] == 50 and sizes["chemical_elements"] == 118 and sizes["planets"] == 8
    assert sizes["days_of_week"] == 7 and sizes["months"] == 12 and sizes["continents"] == 7 and sizes["countries"] >= 195
    assert set(g["planets"].entries) == {"Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"}
    for gl in g.values():
        assert len(set(gl.entries)) == len(gl.entries) and gl.instruction.endswith(".")


@pytest.mark.parametrize("answer,category,expected", [
    ("new york", "us_states", "New York"),
    ("  NEW-YORK. ", "us_states", "New York"),
    ("New York City", "us_states", None),
    ("Kansas", "us_states", "Kansas"),
    ("Arkansas", "us_states", "Arkansas"),
    ("West Virginia", "us_states", "West Virginia"),
    ("Virginia", "us_states", "Virginia"),
    ("Washington D.C.", "us_states", None),
    ("CA", "us_states", None),
    ("Côte d’Ivoire", "countries", "Côte d'Ivoire"),
    ("Ivory Coast", "countries", "Côte d'Ivoire"),
    ("U.S.A.", "countries", "United States"),
    ("the Gambia", "countries", "Gambia"),
    ("The", "countries", None),
    ("Niger", "countries", "Niger"),
    ("Nigeria", "countries", "Nigeria"),
    ("Congo", "countries", "Republic of the Congo"),
    ("Hydrogen (H)", "chemical_elements", "Hydrogen"),
    ("H", "chemical_elements", None),
    ("Cesium", "chemical_elements", "Caesium"),
    ("Sky Blue", "colours", "skyblue"),
    ("dark grey", "colours", "darkgray"),
    ("Theta", "greek_letters", "Theta"),
    ("Α", "greek_letters", "Alpha"),  # capital Greek alpha, case-folded to the glyph alias
    ("Pluto", "planets", None),
    ("earth", "planets", "Earth"),
    ("", "months", None),
    ("Mayday", "months", None),
])
def test_judge_tricky_strings(answer, category, expected):
    assert judge(answer, category) == expected


def test_normalise_and_collisions():
    assert normalise(" Guinea-Bissau ") == normalise("guinea bissau") == "guineabissau"
    assert normalise("São Tomé & Príncipe") == normalise("Sao Tome and Principe")
    with pytest.raises(ConfigError):
        GoldList("bad", "x.", "", ["New York", "Newyork"])
    with pytest.raises(ConfigError):
        judge("x", "no_such_category")


# ----- prompts -----

def test_icn_prompt_format(tiny):
    assert numbered_answers([]) == '1. "'
    assert numbered_answers(["Ohio", "Texas"]) == '1. "Ohio"\n2. "Texas"\n3. "'
    assert build_prompt("Please show me some US states.") == 'Please show me some US states.\n\nAnswer:\n1. "'
    assert build_prompt("List planets.", ["Mars"], "raw") == 'List planets.\n\nAnswer:\n1. "Mars"\n2. "'
    with pytest.raises(ConfigError):
        build_prompt("   ")


def test_chat_prompt_uses_template_without_doubled_specials(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.tokenizer.name_or_path)
    tok.chat_template = "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}<|bos|>assistant{{ '\\n' }}"
    text = build_prompt("Name a planet.", ["Mars"], "chat", tok)
    assert text == '<|bos|>user\nName a planet.<|eos|>\n<|bos|>assistant\nAnswer:\n1. "Mars"\n2. "'
    ids = prompt_tokens(tok, text, "chat")
    assert ids.count(tok.convert_tokens_to_ids("<|bos|>")) == 2 and tok.decode(ids) == text


@pytest.mark.parametrize("text,expected", [
    ('Mars" is', ("Mars", True)),
    (' New York",', ("New York", True)),
    ("Mars\n2.", ("Mars", False)),
    ('Mars\n2. "Venus"', ("Mars", False)),
    ("Marsxxxx", ("Marsxxxx", False)),
    ('"', ("", True)),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_query_times_keys_gives_logits(fixture, request):
    model = request.getfixturevalue(fixture)
    ids = model.tokenizer.encode("Answer:\n1. \"", add_special_tokens=False)
    q, logits = final_query(model, ids)
    assert torch.allclose(q @ model.W_U.detach() + model.b_U.detach(), logits, atol=1e-4)


# ----- the probe end to end -----

def test_run_candidates_match_independent_computation(small_run):
    model, _, out = small_run
    r = out.result
    cfg = KeySpaceConfig(**{**SMALL})
    for cat in SMALL["categories"]:
        c = r.candidates[r.candidates["category"] == cat].sort_values("rank")
        ids = prompt_tokens(model.tokenizer, r.prompts[cat]["prompt"], r.prompts[cat]["style"])
        with torch.inference_mode():
            logits = model(torch.tensor([ids]))[0, -1]
        assert c["token_id"].tolist() == logits.topk(cfg.top_n).indices.tolist()
        assert np.allclose(c["logit"], logits.topk(cfg.top_n).values.numpy(), atol=1e-4)
        main = {int(r.cluster_ids[t]) for t in c["token_id"][: cfg.top_k]}
        want = ["top" if k <= cfg.top_k else ("main" if int(r.cluster_ids[t]) in main else "other") for k, t in zip(c["rank"], c["token_id"])]
        assert c["group"].tolist() == want
        assert (c["cluster"] == [int(r.cluster_ids[t]) for t in c["token_id"]]).all()
        for _, row in c.iterrows():
            ans, ok = extract_answer(row["continuation"])
            assert (row["answer"], row["terminated"]) == (ans, ok)
            assert row["correct"] == (ok and judge(ans, cat) is not None)
            first = model.tokenizer.decode([row["token_id"]])
            if "\ufffd" not in first:  # a lone byte of a multi-byte character decodes differently alone
                assert row["continuation"].startswith(first)


def test_group_table_by_hand(small_run):
    r = small_run[2].result
    g = r.groups.set_index(["category", "group"])
    c = r.candidates
    for cat in SMALL["categories"]:
        sub = c[c["category"] == cat]
        middle = sub[sub["rank"] > SMALL["top_k"]]
        for grp in ("main", "other"):
            rows = middle[middle["group"] == grp]
            assert g.loc[(cat, grp), "n"] == len(rows)
            assert g.loc[(cat, grp), "proportion"] == pytest.approx(len(rows) / len(middle))
            if len(rows):
                assert g.loc[(cat, grp), "precision"] == pytest.approx(rows["correct"].mean())
                assert g.loc[(cat, grp), "mean_rank"] == pytest.approx(rows["rank"].mean())
    pooled = c[c["group"] == "main"]
    assert g.loc[("ALL", "main"), "n"] == len(pooled)


def test_icn_rounds_follow_the_updated_distribution(small_run):
    model, _, out = small_run
    r = out.result
    k = SMALL["icn_per_round"]
    for cat in SMALL["categories"]:
        icn = r.icn[(r.icn["category"] == cat) & (r.icn["method"] == "icn")].sort_values("step")
        base = r.icn[(r.icn["category"] == cat) & (r.icn["method"] == "baseline")].sort_values("step")
        cand = r.candidates[r.candidates["category"] == cat].sort_values("rank")
        assert len(icn) == len(base) == SMALL["n_explore"]
        assert base["token_id"].tolist() == cand["token_id"].tolist()[: SMALL["n_explore"]]
        assert icn["token_id"].is_unique
        assert icn["token_id"].tolist()[:k] == cand["token_id"].tolist()[:k]  # round 0 is the original prompt
        # round 1, recomputed: the prompt lists round 0's answers; take the best untried first tokens
        fed = icn[icn["round"] == 0]["answer"].tolist()
        text = build_prompt(r.prompts[cat]["instruction"], fed, r.prompts[cat]["style"], model.tokenizer)
        with torch.inference_mode():
            logits = model(torch.tensor([prompt_tokens(model.tokenizer, text, r.prompts[cat]["style"])]))[0, -1]
        tried = set(icn[icn["round"] == 0]["token_id"])
        want = [t for t in logits.argsort(descending=True).tolist() if t not in tried][:k]
        assert icn[icn["round"] == 1]["token_id"].tolist() == want
        # answers come from the original prompt: the same first token gives the same answer as in the ranking
        by_tok = cand.set_index("token_id")["answer"]
        for t, a in zip(icn["token_id"], icn["answer"]):
            if t in by_tok.index:
                assert by_tok[t] == a
        for method, g in ((m, r.icn[(r.icn["category"] == cat) & (r.icn["method"] == m)].sort_values("step")) for m in ("icn", "baseline")):
            seen, want_dc = set(), []
            for ok, m in zip(g["correct"], g["match"]):
                if ok:
                    seen.add(m)
                want_dc.append(len(seen))
            assert g["distinct_correct"].tolist() == want_dc, method


def test_distinct_running_reads_a_mixed_pandas_column():
    """None next to strings in a DataFrame column reads back as NaN under pandas' string dtype:
    a wrong answer must not count as a distinct correct one."""
    from probes.key_space.probe import _distinct_running

    df = pd.DataFrame([{"match": None}, {"match": "Ohio"}, {"match": None}, {"match": "Ohio"}, {"match": "Utah"}])
    assert _distinct_running(list(df["match"])) == [0, 1, 1, 1, 2]
    assert _distinct_running([None, None]) == [0, 0]
    assert _distinct_running([float("nan"), "Ohio"]) == [0, 1]


def test_dots_are_query_key_products(small_run):
    model, _, out = small_run
    r = out.result
    for cat in SMALL["categories"]:
        d = r.icn_dots[r.icn_dots["category"] == cat]
        cand = r.candidates[r.candidates["category"] == cat].set_index("token_id")
        r0 = d[d["round"] == 0]
        for _, row in r0.iterrows():
            if row["token_id"] in cand.index:
                assert row["dot"] == pytest.approx(cand.loc[row["token_id"], "dot"], abs=1e-4)
                assert row["logit_rank"] == cand.loc[row["token_id"], "rank"]
        n_rounds = int(r.icn[(r.icn["category"] == cat) & (r.icn["method"] == "icn")]["round"].max()) + 1
        assert sorted(d["round"].unique()) == list(range(n_rounds + 1))  # every round plus the final prompt
        assert (d["in_prompt"] == (d["explored_round"] < d["round"])).all()


def test_save_load_round_trip(small_run):
    _, store, out = small_run
    loaded = KeySpaceResult.load(out.path)
    r = out.result
    for f in dataclasses.fields(KeySpaceResult):
        a, b = getattr(r, f.name), getattr(loaded, f.name)
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), f.name
        elif isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)
        elif f.name in ("geometry", "prompts", "vocab"):
            assert a == b or f.name == "geometry", f.name
    assert loaded.geometry["n_clusters"] == 6 and loaded.geometry["tied_embeddings"] is False
    a_id = loaded.families.set_index("token").loc["A", "token_id"]
    assert loaded.vocab[a_id] == "A" and len(loaded.vocab) == len(loaded.cluster_ids) == loaded.key_map.shape[0]
    assert loaded.summary()["n_clusters"] == 6
    assert set(loaded.neighbours["query"]) == {"A", "1"} and loaded.geometry["neighbour_tokens_missing"] == ["zz"]


def test_config_and_numerics_errors(tiny):
    from workbench.config import config_from_dict
    from workbench.models import load_model
    from workbench.runner import run_probe

    for bad in ({"top_k": 20, "top_n": 20}, {"categories": ["nope"]}, {"n_explore": 200}, {"n_clusters": 1}, {"prompt_style": "fancy"}):
        with pytest.raises(ConfigError):
            config_from_dict(KeySpaceConfig, bad)
    processed = load_model("tiny", numerics="processed", device="cpu")
    with pytest.raises(ConfigError):
        unembedding_keys(processed)
    with pytest.raises(ConfigError):
        run_probe("key-space", processed, None, SMALL)


# ----- figures and page -----

def test_figures_build_on_a_real_result(small_run):
    from dashboards.figures import key_space as figs

    r = small_run[2].result
    built = [
        figs.key_map_figure(r.key_map.numpy(), r.cluster_ids.numpy(), r.vocab, 65, [66, 67], explained=r.geometry["map_explained_variance"]),
        figs.family_figure(r.families, r.family_summary),
        figs.ranking_figure(r.candidates, "planets", top_k=SMALL["top_k"]),
        figs.precision_figure(r.groups),
        figs.discovery_figure(r.icn),
        figs.query_key_figure(r.icn_dots, "months", current_round=1),
    ]
    assert all(isinstance(f, go.Figure) and len(f.data) > 0 for f in built)
    assert sum(len(t.x) for t in built[2].data if isinstance(t, go.Bar)) == SMALL["top_n"]
    assert len(built[4].data) == 2 * len(SMALL["categories"])


def test_page_layout_and_views(small_run):
    from dash import Dash

    from dashboards.base import AppState
    from dashboards.pages import key_space as page

    model, store, out = small_run
    layout = page.PAGE.layout()
    assert "ks-run" in str(layout) and "ks-instruction" in str(layout)
    app = Dash(__name__, suppress_callback_exceptions=True)
    app.layout = layout
    ctx = AppState(store=store, default_model="tiny-llama", model_loader=lambda name, numerics="raw": model)
    page.PAGE.register(app, ctx)
    assert len(app.callback_map) >= 5
    options, value, judges, prec, fam, _ = page.run_view(ctx, out.run_id, None, None)
    assert value == "planets" and {o["value"] for o in options} == set(SMALL["categories"]) and len(judges) >= 8
    ranking, discovery, last, _ = page.category_view(ctx, out.run_id, "months", None)
    assert last >= 1 and len(ranking.data) > 0
    fig, view = page.rounds_view(ctx, out.run_id, "months", None, 1)
    assert len(fig.data) > 0 and '1. "' in str(view)
    fig, table = page.token_view(ctx, out.run_id, "A")
    assert len(fig.data) >= 3 and "ks-neighbour-table" in str(table)
    live = page.live_probe(ctx, out.run_id, "Please show me some planets of the solar system.", "planets", 12, 3)
    assert len(live["candidates"]) == 12 and len(live["icn"]) == 6
    options, value, *_ = page.run_view(ctx, out.run_id, live, "planets", show_typed=True)
    assert value == page.TYPED
    ranking, *_ = page.category_view(ctx, out.run_id, page.TYPED, live)
    assert len(ranking.data) > 0
    unjudged = page.live_probe(ctx, out.run_id, "Name some colours.", None, 12, 2)
    assert all(c["correct"] is None for c in unjudged["candidates"])
    ranking, *_ = page.category_view(ctx, out.run_id, page.TYPED, unjudged)
    assert not any(t.name in ("answer correct", "answer wrong") for t in ranking.data)
    with pytest.raises(ConfigError):
        page.live_probe(ctx, out.run_id, "x" * 5000, None, 12, 3)
    with pytest.raises(ConfigError):
        page.token_view(ctx, out.run_id, "not one token")


# ----- the embedded model (cheap checks only) -----

@pytest.mark.slow
def test_smollm2_keys_prompts_and_query(smollm2):
    from probes.key_space import resolve_style
    from probes.key_space.probe import tie_state

    t = tie_state(smollm2)
    assert t["tied_embeddings"] is True and t["keys_equal_embeddings"] is True
    tok = smollm2.tokenizer
    assert resolve_style("auto", tok) == "chat"
    text = build_prompt("Please show me some US states.", ["Ohio"], "chat", tok)
    ids = prompt_tokens(tok, text, "chat")
    assert tok.convert_ids_to_tokens(ids[:2]) == ["<|im_start|>", "system"] and text.endswith('Answer:\n1. "Ohio"\n2. "')
    q, logits = final_query(smollm2, ids)
    assert torch.allclose(q @ smollm2.W_U.detach(), logits, atol=1e-3)


def test_middle_rank_test_reports_difference_interval_permutation_p_and_power():
    import pandas as pd

    from experiments.key_space import _middle_rank_test_md, middle_rank_test

    rows = []
    for c in range(6):
        rows += [{"category": f"c{c}", "group": "main", "correct": i % 10 == 0, "rank": 20} for i in range(40)]  # 10% correct
        rows += [{"category": f"c{c}", "group": "other", "correct": i % 2 == 0, "rank": 60} for i in range(40)]  # 50% correct
        rows += [{"category": f"c{c}", "group": "top", "correct": True, "rank": 1}]
    t = middle_rank_test(pd.DataFrame(rows), n_boot=300)
    assert t["n_main"] == t["n_other"] == 240 and t["n_categories"] == 6
    assert t["diff"] == pytest.approx(0.1 - 0.5) and t["p"] < 0.001
    assert t["lo"] == pytest.approx(-0.4) and t["hi"] == pytest.approx(-0.4)  # every category is the same: no spread
    assert t["n_needed"] < 240 and t["mde"] < 0.4
    md = _middle_rank_test_md(t)
    assert "significant" in md and "not significant" not in md
