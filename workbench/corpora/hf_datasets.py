"""Corpora from Hugging Face datasets: `hf:<dataset>[:<config>][@<split>]`.

Hub datasets need network access (or an already populated Hugging Face cache); without it we
raise MissingResourceError. `hf:<path>` where `<path>` is an existing directory written by
`Dataset.save_to_disk` / `DatasetDict.save_to_disk` loads offline via `load_from_disk`.
Each row becomes one document; the text comes from the column "text" or else the first string
column. The version is the dataset fingerprint, so different data gives a different corpus id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.corpora.base import Corpus, Document
from workbench.errors import ConfigError, MissingResourceError

PREFIX = "hf:"
DEFAULT_SPLIT = "train"
GENRE_COLUMNS = ("genre", "domain")
_STRING_DTYPES = ("string", "large_string")


@dataclass(frozen=True)
class HFSpec:
    """A parsed `hf:` corpus name."""

    dataset: str
    config: str | None = None
    split: str = DEFAULT_SPLIT
    local: bool = False

    @property
    def name(self) -> str:
        return PREFIX + self.dataset + (f":{self.config}" if self.config else "") + f"@{self.split}"


def is_hf_name(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_hf_name(name: str) -> HFSpec:
    """Parse `hf:<dataset>[:<config>][@<split>]`; an existing local directory is taken as a whole."""
    if not is_hf_name(name):
        raise ConfigError(f"{name!r} is not an hf: corpus name")
    rest = name[len(PREFIX) :]
    body, at, split = rest.rpartition("@")
    if not at:
        body, split = rest, DEFAULT_SPLIT
    if not body or not split:
        raise ConfigError(f"Malformed corpus name {name!r}; expected hf:<dataset>[:<config>][@<split>]")
    if Path(body).expanduser().is_dir():
        return HFSpec(str(Path(body).expanduser().resolve()), None, split, local=True)
    dataset, colon, config = body.partition(":")
    if colon and not config:
        raise ConfigError(f"Malformed corpus name {name!r}: empty config after ':'")
    return HFSpec(dataset, config or None, split)


def _load_dataset(spec: HFSpec) -> Any:
    """The `datasets.Dataset` for a spec; MissingResourceError when it cannot be had."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a declared dependency
        raise MissingResourceError("The `datasets` package is needed for hf: corpora: pip install datasets") from exc
    if spec.local:
        try:
            ds = datasets.load_from_disk(spec.dataset)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"{spec.dataset} is not a dataset saved with save_to_disk ({exc})") from exc
        if isinstance(ds, datasets.DatasetDict):
            if spec.split not in ds:
                raise ConfigError(f"{spec.dataset} has splits {sorted(ds)}, not {spec.split!r}")
            ds = ds[spec.split]
        return ds
    try:
        return datasets.load_dataset(spec.dataset, spec.config, split=spec.split)
    except Exception as exc:  # offline, unknown dataset, gated, bad config: all look alike from here
        raise MissingResourceError(
            f"Could not load Hugging Face dataset {spec.dataset!r}"
            + (f" (config {spec.config!r})" if spec.config else "")
            + f" split {spec.split!r}: {type(exc).__name__}: {exc}. "
            "hf: corpora need the Hugging Face hub (network access) unless the dataset is already "
            "in the local Hugging Face cache; offline, use 'brown', 'python-stdlib' or a local text path."
        ) from exc


def text_column(features: dict[str, Any]) -> str:
    """'text' if it is a string column, else the first string column."""
    def is_string(feature: Any) -> bool:
        return getattr(feature, "dtype", None) in _STRING_DTYPES

    if "text" in features and is_string(features["text"]):
        return "text"
    for column, feature in features.items():
        if is_string(feature):
            return column
    raise ConfigError(f"The dataset has no string column to use as text (columns: {list(features)})")


def rows_to_documents(ds: Any, genre: str, id_prefix: str = "") -> list[Document]:
    """One Document per row with non-blank text; doc_id is `<id_prefix><row index>`."""
    column = text_column(dict(ds.features))
    genre_column = next((c for c in GENRE_COLUMNS if c in ds.features and c != column), None)
    texts = ds[column]
    genres = ds[genre_column] if genre_column else [genre] * len(texts)
    return [
        Document(f"{id_prefix}{i}", text, str(g) if g is not None else genre)
        for i, (text, g) in enumerate(zip(texts, genres, strict=True))
        if isinstance(text, str) and text.strip()
    ]


def load_hf(name: str) -> Corpus:
    """Load an `hf:` corpus name as a Corpus."""
    spec = parse_hf_name(name)
    ds = _load_dataset(spec)
    genre = Path(spec.dataset).name or "hf"
    docs = rows_to_documents(ds, genre, id_prefix=f"{spec.split}/")
    version = str(getattr(ds, "_fingerprint", None) or "unknown")[:16]
    return Corpus(spec.name, version, docs)
