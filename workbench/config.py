"""Config dataclasses: building them from dicts, JSON files and `key=value` strings with clear
errors, and the fields every streaming probe shares."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from workbench.arguments import parse_overrides, read_config_file  # noqa: F401 - parse_overrides is part of this module's face
from workbench.corpora.base import SPLITS
from workbench.corpora.tokenized import ChunkSpec
from workbench.errors import ConfigError

C = TypeVar("C")
INT_LIMIT = 2**63 - 1  # the largest integer a field may hold (torch and SQLite hold 64 bits)
MAX_TEXT_CHARS = 2000  # the longest string any request field may hold


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    names: str | None = None,
    min: float | None = None,
    max: float | None = None,
    max_items: int | None = None,
    text: bool = False,
    why: str = "",
) -> Any:
    """A config field with what the workbench must know about it besides its type.

    names: "corpus" or "sae" when the field names such resources (their identities go into the
        result key; the dashboard accepts only what it offers, see `workbench.resources`);
    min / max: the range of a number, or of each number in a list, that a request may ask for,
        with `why` (shown in the error) saying what the bound protects;
    max_items: the longest list a request may hold;
    text: the field holds plain text (a prompt, a split, a task name) and names no resource. Every
        string field must say which it is (`names=` or `text=True`): a registered config with an
        undeclared one is refused (`undeclared_string_fields`), so no resource escapes the key.
    """
    if names is not None and text:
        raise ValueError("a field either names a resource or holds plain text, not both")
    meta = {k: v for k, v in dict(names=names, min=min, max=max, max_items=max_items, why=why).items() if v not in (None, "")}
    if text:
        meta["text"] = True
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class ConfigBase:
    """What every config dataclass offers: `to_dict()` and `from_dict(data)` (which checks fields,
    types and values like `config_from_dict`)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None = None) -> C:
        return config_from_dict(cls, data)


@dataclasses.dataclass
class StreamConfig(ConfigBase):
    """Which slice of a corpus a probe streams, and how it is cut into batches."""

    split: str = setting("all", text=True, why="one of the corpus splits")
    max_tokens: int | None = setting(20_000, min=1, max=10_000_000, why="a dashboard run streams at most 10M tokens")
    seq_len: int = setting(128, min=2, max=8192, why="longer than any supported model's context")
    batch_size: int = setting(8, min=1, max=1024, why="larger batches do not fit in memory")
    prepend_bos: bool = True
    shuffle_docs: bool = True  # seeded document order, so a small slice spans the corpus's genres
    seed: int = setting(0, min=0, max=2**31 - 1, why="seeds are 31-bit")

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


def _holds_strings(typ: Any) -> bool:
    """Whether a field of this type can hold a free string (directly, in a list, or in a union)."""
    if typ is str:
        return True
    if typing.get_origin(typ) is typing.Literal:
        return False
    return any(_holds_strings(a) for a in typing.get_args(typ))


def undeclared_string_fields(cls: type) -> list[str]:
    """Fields of config `cls` that can hold a string but declare neither `names=` (a corpus, an SAE,
    a model: its identity goes into the result key) nor `text=True` (plain text). A path or an SAE
    id in such a field would change the result without changing its key."""
    return [name for name, typ in config_fields(cls).items()
            if _holds_strings(typ) and not ({"names", "text"} & set(field_meta(cls, name)))]


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
    data = {**read_config_file(path), **(overrides or {})}
    return config_from_dict(cls, data)


def field_meta(cls: type, name: str) -> Mapping[str, Any]:
    """The `setting` metadata of field `name`: its own, or that of the nearest base class that
    declares it (a subclass that only changes a default keeps its base's bounds)."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            for f in dataclasses.fields(klass):
                if f.name == name and f.metadata:
                    return f.metadata
    return {}


def check_bounds(cfg: Any) -> None:
    """ConfigError naming the field when a number or list in `cfg` is outside what its `setting`
    declares (or is not finite), or a string is longer than MAX_TEXT_CHARS."""
    owner = type(cfg).__name__
    for f in dataclasses.fields(cfg):
        value, meta = getattr(cfg, f.name), field_meta(type(cfg), f.name)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and "max_items" in meta and len(items) > meta["max_items"]:
            raise ConfigError(f"{owner}.{f.name} holds {len(items)} items; at most {meta['max_items']} are accepted"
                              + (f" ({meta['why']})" if meta.get("why") else ""))
        for v in items:
            if isinstance(v, str) and len(v) > MAX_TEXT_CHARS:
                raise ConfigError(f"{owner}.{f.name} is {len(v)} characters long; the limit is {MAX_TEXT_CHARS}")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{owner}.{f.name} must be a finite number, got {v!r}")
            lo, hi = meta.get("min"), meta.get("max")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                why = f" ({meta['why']})" if meta.get("why") else ""
                raise ConfigError(f"{owner}.{f.name} = {v!r} is outside the accepted range [{lo}, {hi}]{why}")


def _coerce(owner: str, name: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_null and type(None) in args:
            return None
        errors: list[ConfigError] = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(owner, name, value, a)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # Optional[X]: X's own message says more than the union's
            raise errors[0]
        raise ConfigError(f"{owner}.{name}: cannot read {_short(value)} as {typ}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{owner}.{name} must be one of {list(args)}, got {_short(value)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = _json_field(owner, name, value) if value.strip().startswith("[") else [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{owner}.{name} must be a list, got {_short(value)}")
        inner = args[0] if args else Any
        items = [_coerce(owner, name, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or typ is dict:
        if isinstance(value, str):
            value = _json_field(owner, name, value)
        if not isinstance(value, dict):
            raise ConfigError(f"{owner}.{name} must be a mapping, got {_short(value)}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{owner}.{name} must be true or false, got {_short(value)}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{owner}.{name} must be an integer, got {_short(value)}")
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,4300}\s*", value):
            value = int(value)  # exact: a long integer read as a float would lose its last digits
        if isinstance(value, int):
            if abs(value) > INT_LIMIT:
                raise ConfigError(f"{owner}.{name} = {_short(value)} is too large (integers are at most 2**63 - 1)")
            return value
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{owner}.{name} must be an integer, got {_short(value)}") from None
        if not f.is_integer():
            raise ConfigError(f"{owner}.{name} must be an integer, got {_short(value)}")
        return int(f)
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{owner}.{name} must be a number, got {_short(value)}")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{owner}.{name} must be a number, got {_short(value)}") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{owner}.{name} must be a string, got {_short(value)}")
        return value
    return value


def _json_field(owner: str, name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{owner}.{name}: {_short(text)} is not valid JSON ({e})") from None


def _short(value: Any, n: int = 60) -> str:
    r = repr(value)
    return r if len(r) <= n else r[: n - 1] + "…"
