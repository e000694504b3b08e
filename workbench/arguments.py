"""A run's arguments as text, read without importing torch: `key=value` overrides, a config
file's JSON object, `--nproc`. `workbench.precheck` checks them against the cached catalogue;
`workbench.config` builds the config from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'} (values are coerced later, by field type)."""
    out: dict[str, str] = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"Expected key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object in a config file; ConfigError naming the file and what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"Config file {path} is not valid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"Config file {path} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a JSON object of field names to values, not a {type(data).__name__}")
    return data


def parse_nproc(nproc: str | int) -> int | None:
    """`--nproc`: a positive count of ranks, or None for "auto" (one rank per GPU)."""
    if str(nproc) == "auto":
        return None
    try:
        n = int(nproc)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--nproc takes a positive number of ranks or 'auto', got {str(nproc)[:40]!r}")
    return n
