"""What is certainly wrong in a `workbench run` is answered in well under a second: the analysis
name, field names and option values checked against the cached catalogue (`workbench.catalogue`)
before torch is imported. What needs the analysis itself (a value's type and bounds, a model or
corpus that exists) is checked afterwards, when the config is built."""

from __future__ import annotations

from typing import Any

from workbench.arguments import parse_nproc, parse_overrides, read_config_file
from workbench.errors import ConfigError

NUMERICS = ("raw", "processed")
DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "fp32": "float32", "bf16": "bfloat16",
               "fp16": "float16", "half": "float16", "float": "float32"}


def known_analyses(rows: list[dict[str, Any]]) -> str:
    by_kind: dict[str, list[str]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r["name"])
    return "; ".join(f"{kind}s: {names}" for kind, names in by_kind.items())


def check_run(name: str, set_: list[str], config: str | None = None, model: str | None = None, corpus: str | None = None,
              numerics: str | None = None, dtype: str | None = None, nproc: str = "1",
              rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The catalogue row of analysis `name` when the arguments of `workbench run` can be right;
    ConfigError naming the first that cannot (an unknown name or field, a malformed override or
    config file, an option that does not apply to a study or report, an unknown numerics or dtype,
    a bad --nproc)."""
    from workbench.catalogue import catalogue

    rows = rows if rows is not None else catalogue()
    row = next((r for r in rows if r["name"] == name), None)
    if row is None:
        raise ConfigError(f"Unknown analysis {name!r}; known {known_analyses(rows)}")
    given = {**(read_config_file(config) if config else {}), **parse_overrides(set_)}
    fields = [f["name"] for f in row["fields"]]
    unknown = sorted(k for k in given if k not in fields)
    if unknown:
        raise ConfigError(f"Unknown field(s) {unknown} for {row.get('config', name)}; valid fields: {sorted(fields)}")
    if row["kind"] != "probe":
        flags = [flag for flag, v in (("--model", model), ("--corpus", corpus), ("--numerics", numerics)) if v is not None]
        if flags:
            raise ConfigError(f"{name!r} is a {row['kind']}: it names its models and corpora in its config (--set); "
                              f"{', '.join(flags)} does not apply")
    if row["kind"] == "probe" and not row.get("default_model") and model is None:
        raise ConfigError(f"{name!r} has no default model: --model must name {row.get('model_hint') or 'one'}")
    if numerics is not None and numerics not in NUMERICS:
        raise ConfigError(f"numerics must be one of {', '.join(NUMERICS)}, got {numerics[:40]!r}")
    if dtype is not None and str(dtype).lower() not in DTYPE_NAMES and \
            str(dtype).lower().removeprefix("torch.") not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype must be one of float32, bfloat16, float16, got {str(dtype)[:40]!r}")
    parse_nproc(nproc)
    return row
