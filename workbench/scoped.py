"""A context variable set for the duration of a block (the run in progress, its label, its
progress callback, the precision of models loaded by name, the study collecting its parts)."""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator, TypeVar

T = TypeVar("T")


@contextmanager
def scoped(var: contextvars.ContextVar[T], value: T) -> Iterator[None]:
    """`var` holds `value` inside the block and its previous value after it, however the block ends."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)
