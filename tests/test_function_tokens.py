"""Function tokens: the mass rule, the streamed bipartite graph against a brute-force loop, coverage,
save/load and graph export, the loss decomposition, and the steering hook."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sae_standins import mini_corpus, random_topk_sae, saved_sae

from probes.function_tokens import (
    FunctionTokensConfig,
    FunctionTokensResult,
    export_graph,
    function_token_ids,
)
from probes.function_tokens.loss import GROUPS, FunctionTokenLossConfig
from probes.function_tokens.loss import run as run_loss
from probes.function_tokens.probe import coverage_curve, rank_tokens, run
from probes.function_tokens.steering import (
    FunctionTokenSteeringConfig,
    add_at_position,
    differing_spans,
)
from probes.function_tokens.steering import run as run_steering
from workbench.errors import ConfigError
from workbench.saes import encode, load_sae, special_token_ids
from workbench.slices import corpus_batches

HOOK0, HOOK1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


# ----- the mass rule -----

def test_forty_percent_rule_on_a_hand_made_table():
    #              id: 0   1   2   3   4   5   6
    counts = np.array([5, 50, 0, 20, 15, 10, 0])  # total 100
    assert rank_tokens(counts).tolist() == [1, 3, 4, 5, 0]
    assert function_token_ids(counts, 0.4).tolist() == [1]  # 50 >= 40
    assert function_token_ids(counts, 0.5).tolist() == [1]  # exactly reached
    assert function_token_ids(counts, 0.51).tolist() == [1, 3]
    assert function_token_ids(counts, 0.85).tolist() == [1, 3, 4]
    assert function_token_ids(counts, 1.0).tolist() == [1, 3, 4, 5, 0]  # zero-count types never enter
    ties = np.array([10, 10, 10, 10])  # ties break by smaller id
    assert function_token_ids(ties, 0.4).tolist() == [0, 1]
    with pytest.raises(ConfigError):
        function_token_ids(counts, 0.0)


def test_closed_class_overlap_on_a_hand_made_table():
    from probes.function_tokens.probe import TokenStats, closed_class_overlap

    #                 ids: 0    1    2    3   4   5
    counts = np.array([100, 80, 60, 10, 5, 5])
    tagged = np.array([100, 80, 0, 10, 5, 4])  # id 2: whitespace, in no word
    closed = np.array([90, 10, 0, 10, 0, 2])  # 0 closed, 1 open, 3 closed, 4 open, 5 closed (2 of 4 = 50%)
    stats = TokenStats(counts, closed, tagged, "tok", "corpus", True)
    f = function_token_ids(counts, 0.6)  # 100 + 80 + 60 = 240 of 260 >= 156 -> ids 0, 1
    assert f.tolist() == [0, 1]
    cc = closed_class_overlap(stats, np.array([0, 1, 2]), str)
    assert cc["n_function_closed_class"] == 1 and cc["function_closed_class_share"] == pytest.approx(1 / 3)
    assert cc["function_closed_class_share_of_tagged"] == pytest.approx(1 / 2)
    assert cc["function_open_class"] == ["1"] and cc["function_untagged"] == ["2"]
    assert cc["n_closed_class_types"] == 3  # ids 0, 3, 5
    assert cc["closed_class_mass_covered_by_function_set"] == pytest.approx(100 / 115)
    assert cc["function_occurrences_in_closed_class_words"] == pytest.approx(100 / 180)
    assert closed_class_overlap(TokenStats(counts, closed, tagged, "t", "c", False), f, str) is None


# ----- the bipartite graph against brute force -----

@pytest.fixture(scope="module")
def graph_run(tmp_path_factory, brown):
    from workbench.models import load_model

    tiny = load_model("tiny", device="cpu")
    d = tmp_path_factory.mktemp("saes")
    corpus = mini_corpus(brown, 12)
    s0 = saved_sae(d / "l0", hook=HOOK0, seed=0)
    s1 = saved_sae(d / "l1", hook=HOOK1, d_sae=80, k=5, seed=1)
    cfg = FunctionTokensConfig(saes=[str(s0), str(s1)], max_tokens=1500, seq_len=64, batch_size=4, weighted_tokens=30,
                               graph_tokens=6, graph_features=3, top_contexts=3, context_before=4, context_after=2)
    return tiny, corpus, cfg, run(tiny, corpus, cfg)


def brute_force(tiny, corpus, cfg, saes):
    """Per-position loops: edges, token counts, feature counts, activation sums, top activation."""
    special = set(special_token_ids(tiny))
    edges = {label: set() for label in saes}
    tok_count: dict[int, int] = {}
    act_count = {label: np.zeros(s.cfg.d_sae, dtype=int) for label, s in saes.items()}
    wsum = {label: {} for label in saes}
    top = {label: np.full(s.cfg.d_sae, -1.0) for label, s in saes.items()}
    with torch.no_grad():
        for b in corpus_batches(tiny, corpus, cfg):
            _, cache = tiny.run_with_cache(b.tokens, names_filter=[HOOK0, HOOK1])
            for r in range(b.tokens.shape[0]):
                for t in range(b.tokens.shape[1]):
                    tok = int(b.tokens[r, t])
                    if not b.valid[r, t] or b.is_bos[r, t] or tok in special:
                        continue
                    tok_count[tok] = tok_count.get(tok, 0) + 1
                    for label, sae in saes.items():
                        f = sae.encode(cache[sae.cfg.metadata.hook_name][r, t][None])[0]
                        for j in (f > 0).nonzero().flatten().tolist():
                            edges[label].add((tok, j))
                            act_count[label][j] += 1
                            wsum[label][(tok, j)] = wsum[label].get((tok, j), 0.0) + float(f[j])
                        top[label] = np.maximum(top[label], f.numpy())
    return edges, tok_count, act_count, wsum, top


def test_bipartite_accumulator_matches_brute_force(graph_run):
    tiny, corpus, cfg, res = graph_run
    saes = {"L0": random_topk_sae(hook=HOOK0, seed=0), "L1": random_topk_sae(hook=HOOK1, d_sae=80, k=5, seed=1)}
    edges, tok_count, act_count, wsum, top = brute_force(tiny, corpus, cfg, saes)
    rows = res.tensors["row_ids"].tolist()
    t = res.tokens.set_index("token_id")
    assert {i for i in rows if t.loc[i, "slice_count"] > 0} == set(tok_count)
    assert all(t.loc[i, "slice_count"] == c for i, c in tok_count.items())
    weighted = res.tensors["weighted_ids"].tolist()
    for label in saes:
        e = res.edges(label)
        got = {(rows[r], f) for r, f in e.nonzero().tolist()}
        assert got == edges[label]
        assert res.features.query("sae == @label")["active_count"].tolist() == act_count[label].tolist()
        deg = {tok: sum(1 for (a, _) in edges[label] if a == tok) for tok in tok_count}
        assert all(t.loc[i, f"degree_{label}"] == deg[i] for i in tok_count)
        ws = res.tensors[f"{label}/wsum"]
        for (tok, j), v in wsum[label].items():
            if tok in weighted:
                assert float(ws[weighted.index(tok), j]) == pytest.approx(v, rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(res.tensors[f"{label}/top_vals"][:, 0].numpy(), np.where(top[label] > 0, top[label], -1.0),
                                   rtol=1e-5, atol=1e-6)


def test_function_set_and_closed_class_overlap(graph_run):
    tiny, corpus, cfg, res = graph_run
    fs = res.function_set
    counts = np.zeros(tiny.cfg.d_vocab, dtype=np.int64)
    special = special_token_ids(tiny)
    for d in corpus.documents:
        ids = np.array(tiny.tokenizer(d.text, add_special_tokens=False)["input_ids"])
        counts += np.bincount(ids[~np.isin(ids, special)], minlength=tiny.cfg.d_vocab)
    assert fs["ids"] == function_token_ids(counts, 0.4).tolist()
    assert fs["covered_mass"] >= 0.4 and fs["corpus"] == corpus.id and fs["tokenizer"].startswith("bytes")
    cc = fs["closed_class"]
    assert cc["n_function"] == fs["size"] and 0 <= cc["function_closed_class_share"] <= 1


def test_coverage_is_monotone_and_ends_at_all_active_features(graph_run):
    _, _, _, res = graph_run
    for label in res.labels:
        c = res.coverage.query("sae == @label")
        assert (np.diff(c["covered"]) >= 0).all() and (np.diff(c["cov_active"]) >= 0).all()
        n_active = int((res.features.query("sae == @label")["active_count"] > 0).sum())
        assert c["covered"].iloc[-1] == n_active and c["cov_active"].iloc[-1] == pytest.approx(1.0)
        assert c["cov_all"].iloc[-1] == pytest.approx(n_active / res.saes[label]["d_sae"])
        assert (c["token_id"].map(res.tokens.set_index("token_id")["rank"]).diff().dropna() > 0).all()  # frequency order
        e = res.edges(label)
        rows = res.tensors["row_ids"].tolist()
        k3 = [rows.index(i) for i in c["token_id"].iloc[:3]]
        assert c["covered"].iloc[2] == int(e[k3].any(0).sum())  # the union of the top-3 neighbourhoods
    table = res.coverage_table()
    assert list(table["k"]) == list(range(1, 11)) and "L0 (active)" in table and "L1 (all)" in table


def test_coverage_curve_small_example():
    e = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    curve, n_active = coverage_curve(e)
    assert curve.tolist() == [2, 3, 3, 4] and n_active == 4


def test_save_load_round_trip_and_graph_export(graph_run, tmp_path):
    _, _, _, res = graph_run
    res.save(tmp_path / "r")
    back = FunctionTokensResult.load(tmp_path / "r")
    assert back.coverage_table().equals(res.coverage_table())
    assert back.function_set == res.function_set and back.comparison == res.comparison
    for k, v in res.tensors.items():
        assert torch.equal(back.tensors[k], v), k
    assert torch.equal(back.edges("L1"), res.edges("L1"))
    first = int(res.tensors["row_ids"][0])
    assert back.token_features("L1", first) == res.edges("L1")[0].nonzero().squeeze(1).tolist() != []
    assert back.top_contexts("L0", 0) == res.top_contexts("L0", 0)
    g = res.layer_graph("L0")
    assert g.number_of_edges() > 0 and {a["kind"] for _, a in g.nodes(data=True)} == {"token", "feature"}
    assert nx.utils.graphs_equal(nx.Graph(back.graph), nx.Graph(res.graph))
    for name in ("g.graphml", "g.json"):
        export_graph(g, tmp_path / name)
    gm = nx.read_graphml(tmp_path / "g.graphml")
    assert set(gm.nodes) == set(g.nodes) and gm.number_of_edges() == g.number_of_edges()
    u, v, w = max(g.edges(data="weight"), key=lambda x: x[2])
    assert gm.edges[u, v]["weight"] == pytest.approx(w)
    with pytest.raises(ConfigError):
        export_graph(g, tmp_path / "g.png")


def test_graph_edges_are_the_strongest_features(graph_run):
    _, _, cfg, res = graph_run
    g = res.layer_graph("L1")
    weighted = res.tensors["weighted_ids"].tolist()
    t = res.tokens.set_index("token_id")
    for node, a in g.nodes(data=True):
        if a["kind"] != "token":
            continue
        row = weighted.index(a["token_id"])
        strength = res.tensors["L1/wsum"][row] / t.loc[a["token_id"], "slice_count"]
        want = set(torch.topk(strength, cfg.graph_features).indices.tolist())
        got = {g.nodes[n]["feature"] for n in g.neighbors(node)}
        assert got == {f for f in want if strength[f] > 0}


def test_config_errors(tiny, brown, tmp_path):
    with pytest.raises(ConfigError, match="saes is empty"):
        FunctionTokensConfig(saes=[]).validate()
    with pytest.raises(ConfigError, match="mass"):
        FunctionTokensConfig(saes=["x"], mass=1.5).validate()
    narrow = saved_sae(tmp_path / "narrow", d_in=32)
    with pytest.raises(ConfigError, match="d_model"):
        run(tiny, mini_corpus(brown, 3), FunctionTokensConfig(saes=[str(narrow)], max_tokens=200))


# ----- loss decomposition -----

def test_loss_decomposition_matches_brute_force(tiny, brown):
    corpus = mini_corpus(brown, 8)
    cfg = FunctionTokenLossConfig(max_tokens=700, seq_len=64, batch_size=4)
    res = run_loss(tiny, corpus, cfg)
    is_f = set(res.function_set["ids"])
    special = set(special_token_ids(tiny))
    sums, counts = np.zeros(4), np.zeros(4)
    per_group: list[list[float]] = [[], [], [], []]
    with torch.no_grad():
        for b in corpus_batches(tiny, corpus, cfg):
            logits = tiny(b.tokens)
            for r in range(b.tokens.shape[0]):
                for t in range(b.tokens.shape[1] - 1):
                    cur, tgt = int(b.tokens[r, t]), int(b.tokens[r, t + 1])
                    ok = (b.valid[r, t] and b.valid[r, t + 1] and not b.is_bos[r, t] and cur not in special and tgt not in special)
                    if ok:
                        g = GROUPS.index(("F" if cur in is_f else "C") + "->" + ("F" if tgt in is_f else "C"))
                        ce = float(F.cross_entropy(logits[r, t][None], torch.tensor([tgt])))
                        sums[g] += ce
                        counts[g] += 1
                        per_group[g].append(ce)
    table = res.table.set_index("group")
    assert table["n"].tolist() == counts.astype(int).tolist()
    np.testing.assert_allclose(table["mean_ce"].to_numpy(), sums / counts, rtol=1e-4)
    np.testing.assert_allclose(table["loss_share"].to_numpy(), sums / sums.sum(), rtol=1e-4)
    assert table["count_share"].sum() == pytest.approx(1.0)
    sem = [float(np.std(x, ddof=1) / np.sqrt(len(x))) for x in per_group]  # the standard error, computed directly
    np.testing.assert_allclose(table["ce_se"].to_numpy(), sem, rtol=1e-3)


# ----- case study and steering -----

def test_steering_hook_changes_activations_only_at_the_chosen_position(tiny):
    tokens = torch.randint(0, 256, (2, 12))
    delta = torch.randn(tiny.cfg.d_model)
    pos = 5
    names = ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    with torch.no_grad():
        _, clean = tiny.run_with_cache(tokens, names_filter=names)
        with tiny.hooks(fwd_hooks=[(HOOK0, add_at_position(delta, pos))]):
            _, steered = tiny.run_with_cache(tokens, names_filter=names)
    diff = steered["blocks.1.hook_resid_pre"] - clean["blocks.1.hook_resid_pre"]  # the same point as HOOK0's output
    torch.testing.assert_close(diff[:, pos], delta.expand(2, -1), rtol=1e-5, atol=1e-5)
    others = [t for t in range(12) if t != pos]
    assert diff[:, others].abs().max() == 0
    later = (steered["blocks.1.hook_resid_post"] - clean["blocks.1.hook_resid_post"]).abs().amax(dim=(0, 2))
    assert later[:pos].max() == 0 and (later[pos:] > 0).all()  # causal: only this and later positions move downstream


def test_differing_spans():
    assert differing_spans([1, 2, 3, 9, 5], [1, 2, 7, 8, 9, 5]) == ((2, 3), (2, 4))
    assert differing_spans([1, 2, 3], [1, 4, 3]) == ((1, 2), (1, 2))


def test_case_study_and_steering_on_a_tiny_model(tiny, brown, tmp_path):
    path = saved_sae(tmp_path / "sae", hook=HOOK1, seed=2)
    cfg = FunctionTokenSteeringConfig(sae=str(path), prompt_a="The capital of Russia is:", prompt_b="The capital of Japan is:",
                                      max_new_tokens=3, strengths=[50.0], n_features=5)
    res = run_steering(tiny, mini_corpus(brown, 6), cfg)
    info = res.info
    assert info["final_token"] == ":" and info["word_a"].startswith("Rus") and info["control_token"] != ":"
    assert set(res.generations["run"]) == {"baseline_a", "baseline_b", "steer_function_b", "steer_content_b"}
    assert set(res.heatmaps["prompt"]) == {"a", "b"} and res.heatmaps["feature"].nunique() <= 5
    f = res.features.set_index("feature")
    chosen = info["feature"]
    assert f.loc[chosen, "final_a"] > 0
    g = res.generations.set_index("run")
    assert g.loc["steer_function_b", "top5_prob"] != g.loc["baseline_b", "top5_prob"]  # a large push changes the answer distribution
    assert g.loc["steer_function_b", "strength"] == 50.0 and g.loc["baseline_b", "strength"] == 0.0
    added = 50.0 * info["base_activation"] * load_sae(str(path)).W_dec[chosen].norm().item()  # |strength x act x decoder row|
    assert g.loc["steer_function_b", "added_norm"] == pytest.approx(added, rel=1e-5) == g.loc["steer_content_b", "added_norm"]
    assert g.loc["baseline_a", "added_norm"] == 0.0
    with pytest.raises(ConfigError):
        FunctionTokenSteeringConfig(prompt_a="same", prompt_b="same").validate()
    with pytest.raises(ConfigError, match="strengths"):
        FunctionTokenSteeringConfig(strengths=[]).validate()


@pytest.mark.slow
def test_smollm2_function_set_on_brown(smollm2, brown):
    from probes.function_tokens import token_stats

    stats = token_stats(smollm2.tokenizer, brown, "all", special_token_ids(smollm2))
    ids = function_token_ids(stats.counts, 0.4)
    toks = smollm2.tokenizer.batch_decode([[i] for i in ids])
    assert {" the", ",", ".", " of", " and"} <= set(toks[:10])
    assert 20 <= len(ids) <= 80


def test_steering_sweep_rows_match_a_direct_computation(tiny, brown, tmp_path):
    """The sweep's rows: pairs x strengths x {function, content}; a row's log-probability change
    equals the same addition made by hand; templates that do not end in a function token are left out."""
    from probes.function_tokens.probe import function_token_ids, token_stats
    from probes.function_tokens.steering import (
        add_at_position,
        feature_contribution,
        steering_effects,
    )

    corpus = mini_corpus(brown, 6)
    sae = load_sae(str(saved_sae(tmp_path / "sae", hook=HOOK1, seed=2)), model=tiny)
    f_ids = set(int(i) for i in function_token_ids(token_stats(tiny.tokenizer, corpus, "all", special_token_ids(tiny)).counts, 0.4))
    templates = ["The capital of {} is the", "Where is {}? zq"]
    eff = steering_effects(tiny, sae, templates, ["Russia", "Japan", "Peru"], [10.0, 50.0], f_ids)
    assert len(eff) == 3 * 2 * 2 and set(eff["position"]) == {"function", "content"}
    assert eff.attrs["skipped_templates"] == ["'Where is {}? zq' (ends in 'q')"]
    assert (eff.loc[eff["position"] == "function", "position_token"] == "e").all()
    assert np.allclose(eff["delta_logp"], eff["logp_steered"] - eff["logp_base"], atol=1e-6)
    row = eff[(eff["position"] == "content") & (eff["strength"] == 50.0)].iloc[0]
    ta, tb = (tiny.to_tokens(templates[0].format(w)) for w in (row["word_a"], row["word_b"]))
    with torch.no_grad():
        logits_a = tiny(ta)[0, -1]
        acts_a = encode(sae, tiny.run_with_cache(ta, names_filter=[HOOK1])[1][HOOK1][0]).float()
        target = int(logits_a.argmax())
        base = tiny(tb)[0, -1].log_softmax(-1)[target]
        pos = tb.shape[1] - len(" is the") - 1  # the content word's last byte (a byte-level tokenizer)
        delta = feature_contribution(sae, int(row["feature"]), 50.0 * float(acts_a[-1, int(row["feature"])]))
        steered = tiny.run_with_hooks(tb, fwd_hooks=[(HOOK1, add_at_position(delta, pos))])[0, -1].log_softmax(-1)[target]
    assert row["logp_base"] == pytest.approx(float(base), abs=1e-4)
    assert row["logp_steered"] == pytest.approx(float(steered), abs=1e-4)
    with pytest.raises(ConfigError, match="function-token set"):
        steering_effects(tiny, sae, ["Where is {}? zq"], ["Russia", "Japan"], [10.0], f_ids)
