"""The dashboard's job-request check: only what the server offers passes, and anything else, of
any type, ends in a ConfigError that names the problem (never another exception)."""

from __future__ import annotations

import dataclasses
import math
import random
import typing

import pytest

from dashboards.jobs import check_request
from workbench.config import MAX_TEXT_CHARS, config_fields, field_meta
from workbench.errors import ConfigError
from workbench.probe_api import list_probes
from workbench.resources import offered_corpora, offered_release_ids, resource_fields

HOSTILE_STRINGS = [
    "/etc", "/etc/passwd", "../../secrets", "~/.ssh", "hf:some/dataset", "hf:/tmp/x", "C:\\Windows", "file:///etc",
    "trained:999", "trained:-1", "trained:../x", "gpt2-small-res-jb:../../etc", "release:id", "x" * 5000, "",
    "[1, 2", "{\"a\": ", "null", "NaN", "1e400", "-1e400", "[[[[[[]]]]]]", "\x00", "🙂" * 3, "brown/../..",
]
HOSTILE_NUMBERS = [0, -1, 1, 2, 10**15, -10**15, 1e10, 1e300, float("inf"), float("-inf"), float("nan"), 0.5, 2**63, True, False]


def _value(rng: random.Random) -> typing.Any:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(HOSTILE_STRINGS)
    if pick < 0.6:
        return rng.choice(HOSTILE_NUMBERS)
    if pick < 0.75:
        return [_value(rng) for _ in range(rng.randint(0, 4))]
    if pick < 0.85:
        return {"k": _value(rng)}
    if pick < 0.9:
        return None
    return rng.choice(["python-stdlib", "brown", "trained:1", "trained:0", "gpt2-small-res-jb:blocks.8.hook_resid_pre"])


def _benign(rng: random.Random, spec, name: str) -> typing.Any:
    """A plausible value: the default, the default as text, or a number inside the declared range."""
    f = next(f for f in dataclasses.fields(spec.config_cls) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    meta = field_meta(spec.config_cls, name)
    if isinstance(default, (int, float)) and not isinstance(default, bool) and "max" in meta and rng.random() < 0.5:
        lo, hi = meta.get("min", 0), min(meta["max"], 10 * max(abs(default), 1))
        return type(default)(rng.uniform(lo, hi)) if isinstance(default, float) else rng.randint(int(lo), int(hi))
    return str(default) if isinstance(default, (int, float)) and rng.random() < 0.3 else default


def _request(rng: random.Random, probes: list) -> tuple:
    spec = rng.choice(probes)
    fields = [f.name for f in dataclasses.fields(spec.config_cls)]
    if rng.random() < 0.2:
        return spec.name, "tiny", "brown", {n: _benign(rng, spec, n) for n in rng.sample(fields, min(3, len(fields)))}
    config: typing.Any = {}
    for _ in range(rng.randint(1, 4)):
        name = rng.choice(fields) if rng.random() < 0.9 else rng.choice(["nope", "__class__", "", "max_tokens "])
        config[name] = _value(rng)
    r = rng.random()
    probe = spec.name if r < 0.85 else rng.choice([None, 3, "nope", "../probes", ["residual-norms"], "x" * 300])
    model = "tiny" if rng.random() < 0.7 else rng.choice(["smollm2-135m", "gpt2", "/tmp/model", None, 7, "tiny-llama"])
    corpus = "brown" if rng.random() < 0.7 else rng.choice(["python-stdlib", "/etc", "hf:wikitext", None, ["brown"], 1.5])
    if rng.random() < 0.05:
        config = rng.choice(["{}", [("a", 1)], 5, None])
    return probe, model, corpus, config


def _accepted_is_within_the_whitelist(req) -> None:
    """What a request that passed must satisfy (checked independently of check_request)."""
    from workbench.probe_api import get_probe

    spec = get_probe(req.probe)
    assert req.model in ("tiny", "tiny-llama", "tiny-attn-only", "smollm2-135m")
    assert req.corpus is None or req.corpus in offered_corpora()
    cfg = spec.config_cls(**req.config)
    kinds = resource_fields(spec.config_cls)
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        items = list(v) if isinstance(v, (list, tuple)) else [v]
        meta = field_meta(spec.config_cls, f.name)
        if kinds.get(f.name) == "corpus":
            assert all(x in offered_corpora() for x in items), (f.name, v)
        if kinds.get(f.name) == "sae":
            for x in items:
                if x.startswith("trained:"):
                    assert x.removeprefix("trained:").removeprefix("L").isdigit()
                else:
                    release, sae_id = x.split(":", 1)
                    assert sae_id in offered_release_ids()[release]
        if "max_items" in meta:
            assert len(items) <= meta["max_items"]
        for x in items:
            if isinstance(x, str):
                assert len(x) <= MAX_TEXT_CHARS
            elif isinstance(x, (int, float)) and not isinstance(x, bool):
                assert math.isfinite(x)
                assert meta.get("min", -math.inf) <= x <= meta.get("max", math.inf), (f.name, x)


def test_fuzzed_requests_pass_only_inside_the_whitelist():
    rng = random.Random(20261206)
    probes = list_probes()
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(1500):
        probe, model, corpus, config = _request(rng, probes)
        try:
            req = check_request(probe, model, corpus, config)
        except ConfigError as e:
            assert str(e).strip(), "an error must say what is wrong"
            outcomes["refused"] += 1
            continue
        _accepted_is_within_the_whitelist(req)
        outcomes["accepted"] += 1
    assert outcomes["refused"] >= 500 and outcomes["accepted"] >= 20, outcomes


def test_every_numeric_field_declares_an_upper_bound():
    missing = []
    for spec in list_probes():
        for name, typ in config_fields(spec.config_cls).items():
            args = [a for a in typing.get_args(typ) if a is not type(None)] or [typ]
            base = args[0]
            inner = typing.get_args(base)[0] if typing.get_origin(base) in (list, tuple) and typing.get_args(base) else base
            if inner in (int, float) and "max" not in field_meta(spec.config_cls, name):
                missing.append(f"{spec.name}.{name}")
    assert not missing, f"numeric fields without a declared bound: {missing}"


@pytest.mark.parametrize("probe,field,value,words", [
    ("attention-sinks", "domains", ["/etc"], "not offered"),
    ("attention-sinks", "domains", ["hf:some/dataset"], "not offered"),
    ("function-tokens", "saes", ["/tmp/sae"], "not offered"),
    ("function-tokens", "saes", ["trained:40"], "layers 0..1"),
    ("function-token-steering", "sae", "nope:blocks.0", "not offered"),
    ("residual-norms", "max_tokens", 10**15, "accepted range"),
    ("residual-norms", "seq_len", 10**7, "accepted range"),
    ("key-space", "categories", "[1, 2", "not valid JSON"),
    ("bigram-subnetworks", "lambdas", "[1e400]", "finite"),
])
def test_named_refusals_say_what_and_which_field(probe, field, value, words):
    with pytest.raises(ConfigError, match=words) as e:
        check_request(probe, "tiny", "brown", {field: value})
    assert field in str(e.value)


def test_offered_resources_pass():
    req = check_request("function-tokens", "tiny", "brown", {"saes": ["trained:1", "gpt2-small-res-jb:blocks.8.hook_resid_pre"]})
    assert req.config["saes"] == ["trained:1", "gpt2-small-res-jb:blocks.8.hook_resid_pre"]
    assert check_request("attention-sinks", "tiny", "brown", {"domains": ["python-stdlib"]}).config["domains"] == ["python-stdlib"]


def test_the_queue_has_a_limit(store):
    from dashboards.jobs import JobManager

    jobs = JobManager(store, python="/bin/true", max_active=3)
    for seed in range(3):
        jobs.submit("residual-norms", "tiny", "brown", {"seed": seed})
    with pytest.raises(ConfigError, match="queue is full"):
        jobs.submit("residual-norms", "tiny", "brown", {"seed": 9})
    assert jobs.cancel(store.runs(limit=1)[0]["run_id"]) == "cancelled"
    jobs.submit("residual-norms", "tiny", "brown", {"seed": 9})  # room again
    jobs.shutdown()


# ----------------------------------------------------------------------------- every field of every probe and study

HOSTILE_RESOURCES = ["/etc/passwd", "../../secrets", "~/.cache/workbench", "file:///etc/passwd", "hf:some/dataset",
                     "gpt2-small-res-jb:nonexistent", "trained:../x", "trained:999", "release:id", "gpt2", "x" * 300]


def _all_specs():
    from workbench.probe_api import list_studies

    return list_probes() + list_studies()


def test_every_string_field_of_every_probe_and_study_declares_what_it_holds():
    """A string field either names a resource (it is keyed and whitelisted) or holds plain text."""
    from workbench.config import undeclared_string_fields

    specs = _all_specs()
    assert len(specs) >= 15
    assert {s.name: undeclared_string_fields(s.config_cls) for s in specs} == {s.name: [] for s in specs}
    assert resource_fields(get_probe_cfg("sae-features")) == {"sae": "sae"}


def get_probe_cfg(name: str):
    from workbench.probe_api import get_spec

    return get_spec(name).config_cls


def test_registering_a_config_with_an_undeclared_string_field_is_refused():
    from workbench.probe_api import REGISTRY, ProbeSpec, register
    from workbench.results import Result

    @dataclasses.dataclass
    class Sneaky:
        sae: str = "trained:1"  # would name an SAE without its identity entering the key

    with pytest.raises(ConfigError, match=r"\['sae'\]"):
        register(ProbeSpec("undeclared-demo", "", Sneaky, Result, lambda m, c, cfg: Result()))
    assert "undeclared-demo" not in REGISTRY


@pytest.mark.parametrize("spec", _all_specs(), ids=lambda s: s.name)
def test_every_resource_field_of_every_probe_and_study_refuses_paths_and_unknown_ids(spec):
    from dashboards.jobs import check_config

    fields = resource_fields(spec.config_cls)
    types = config_fields(spec.config_cls)
    for name in fields:
        listed = typing.get_origin(types[name]) in (list, tuple)
        for bad in HOSTILE_RESOURCES:
            with pytest.raises(ConfigError, match=name):
                check_config(spec, {name: [bad] if listed else bad}, 2)


def test_the_sae_feature_page_probe_takes_no_path_through_the_queue():
    for bad in ("/etc/passwd", "gpt2-small-res-jb:nonexistent"):
        with pytest.raises(ConfigError, match="SAEFeaturesConfig.sae"):
            check_request("sae-features", "tiny", "brown", {"sae": bad})
    assert check_request("sae-features", "tiny", "brown", {"sae": "trained:1"}).config["sae"] == "trained:1"
