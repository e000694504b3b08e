"""Config dataclasses: building them from dicts, JSON files and `key=value` strings with clear
errors, and the fields every streaming probe shares."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from workbench.corpora.base import SPLITS
from workbench.corpora.tokenized import ChunkSpec
from workbench.errors import ConfigError

C = TypeVar("C")


@dataclasses.dataclass
class StreamConfig:
    """Which slice of a corpus a probe streams, and how it is cut into batches."""

    split: str = "all"
    max_tokens: int | None = 20_000
    seq_len: int = 128
    batch_size: int = 8
    prepend_bos: bool = True
    shuffle_docs: bool = True  # seeded document order, so a small slice spans the corpus's genres
    seed: int = 0

    def validate(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {self.split!r}")
        self.chunk_spec().validate()

    def chunk_spec(self) -> ChunkSpec:
        return ChunkSpec(seq_len=self.seq_len, batch_size=self.batch_size, prepend_bos=self.prepend_bos, max_tokens=self.max_tokens)


def config_fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def config_from_dict(cls: type[C], data: Mapping[str, Any] | None) -> C:
    """Build `cls` from a mapping; unknown keys and wrong types raise ConfigError naming the field."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__} config must be a mapping, got {type(data).__name__}")
    fields = config_fields(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"Unknown field(s) {unknown} for {cls.__name__}; valid fields: {sorted(fields)}")
    kwargs = {k: _coerce(cls.__name__, k, v, fields[k]) for k, v in data.items()}
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def config_from_file(cls: type[C], path: str | Path, overrides: Mapping[str, Any] | None = None) -> C:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"Config file {path} is not valid JSON: {e}") from None
    data.update(overrides or {})
    return config_from_dict(cls, data)


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'} (values are coerced later, by field type)."""
    out: dict[str, str] = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"Expected key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _coerce(owner: str, name: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_null and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(owner, name, value, a)
            except ConfigError:
                pass
        raise ConfigError(f"{owner}.{name}: cannot read {value!r} as {typ}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{owner}.{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{owner}.{name} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(owner, name, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{owner}.{name} must be a mapping, got {value!r}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{owner}.{name} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{owner}.{name} must be an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{owner}.{name} must be an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{owner}.{name} must be an integer, got {value!r}")
        return int(f)
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{owner}.{name} must be a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{owner}.{name} must be a string, got {value!r}")
        return value
    return value
