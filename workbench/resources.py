"""What a config field may name besides the model and the main corpus: other corpora, SAEs, and
(in a study's config) models.

A config declares such fields with `workbench.config.setting(names="corpus" | "sae" | "model")`.
The runner puts each named resource's identity in the result key (a corpus's name, version and
split; an SAE's weight digest or release, id and hub revision), so a result computed with other
data or other SAE weights is never reused. The dashboard accepts, for these fields, only what
`offered_corpora` and `offered_saes` list.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from transformer_lens import HookedTransformer

from workbench.errors import ConfigError
from workbench.identity import files_digest, hub_revision
from workbench.models import offline_identity
from workbench.saes.files import CFG_FILE, WEIGHTS_FILE, is_sae_dir
from workbench.saes.loading import TRAINED_PREFIX, trained_hook
from workbench.saes.recipes import find_trained

RESOURCE_KINDS = ("corpus", "sae", "model")


def resource_fields(config_cls: type) -> dict[str, str]:
    """Field name -> resource kind, for the fields of a config dataclass that name resources."""
    from workbench.config import (
        field_meta,  # a subclass that only changes a default keeps its base's declaration
    )

    out = {f.name: field_meta(config_cls, f.name).get("names") for f in dataclasses.fields(config_cls)}
    return {name: kind for name, kind in out.items() if kind}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def corpus_identity(name: str) -> str:
    """`name`'s id (name@version:split...) as `load_corpus` builds it: data changes, id changes."""
    from workbench.corpora import load_corpus

    return load_corpus(name).id


def sae_identity(source: str, model: HookedTransformer | None, corpus_name: str = "brown") -> str:
    """What identifies an SAE source's weights without loading them into a model.

    A directory or a workbench-trained SAE: SHA-256 of its config and weights (cached by path,
    size and mtime). An SAE Lens release: release, id and the cached hub revision.
    """
    s = str(source)
    if is_sae_dir(s) or s.startswith(TRAINED_PREFIX):
        if is_sae_dir(s):
            path = Path(s).expanduser()
        else:
            if model is None:
                raise ConfigError(f"{s!r} names a workbench-trained SAE; it needs the model it was trained on")
            path = find_trained(model, corpus_name, trained_hook(s, model))
        return f"sae-sha256:{files_digest([path / CFG_FILE, path / WEIGHTS_FILE])}"
    if ":" in s:
        release, sae_id = s.split(":", 1)
        repo = release_repo(release)
        rev = hub_revision(repo) if repo else None
        return f"release:{release}:{sae_id}@{rev or 'unknown-revision'}"
    raise ConfigError(f"Cannot resolve SAE {s!r}: expected an SAE directory, 'release:sae_id' or 'trained:<layer>'")


def release_repo(release: str) -> str | None:
    """The hub repository of an SAE Lens release, from SAE Lens's own directory (offline)."""
    try:
        from sae_lens.loading.pretrained_saes_directory import (
            get_pretrained_saes_directory,
        )

        entry = get_pretrained_saes_directory().get(release)
    except Exception:  # an SAE Lens without the directory; the release name alone then identifies it
        return None
    return getattr(entry, "repo_id", None) if entry is not None else None


def resource_identities(config: Any, model: HookedTransformer | None, corpus_name: str | None) -> dict[str, Any]:
    """field -> identity (or list of identities) of every resource the config names."""
    out: dict[str, Any] = {}
    for name, kind in resource_fields(type(config)).items():
        value = getattr(config, name)
        if kind == "corpus":
            ids = [corpus_identity(v) for v in _as_list(value)]
        elif kind == "model":
            ids = [offline_identity(v) for v in _as_list(value)]
        else:
            ids = [sae_identity(v, model, corpus_name or "brown") for v in _as_list(value)]
        out[name] = ids if isinstance(value, (list, tuple)) else (ids[0] if ids else None)
    return out


# ----- what the dashboard offers -----
_TRAINED = re.compile(r"^trained:L?(\d+)$")


def offered_corpora() -> list[str]:
    """The corpora a dashboard request may name: the built-in ones (no paths, no hub datasets)."""
    from workbench.corpora import known_corpora

    return known_corpora()


def offered_release_ids() -> dict[str, set[str]]:
    """SAE Lens releases and their SAE ids, from SAE Lens's bundled directory (no download)."""
    try:
        from sae_lens.loading.pretrained_saes_directory import (
            get_pretrained_saes_directory,
        )

        return {name: set(getattr(entry, "saes_map", {}) or {}) for name, entry in get_pretrained_saes_directory().items()}
    except Exception:
        return {}


def check_offered_sae(value: Any, n_layers: int | None) -> str:
    """`value` if the dashboard offers it as an SAE source, else ConfigError.

    Offered: "trained:<layer>" for a layer of the model (the workbench's own SAEs, found in its
    cache) and "<release>:<sae id>" of a release SAE Lens lists. Never a path.
    """
    if not isinstance(value, str) or len(value) > 200:
        raise ConfigError(f"an SAE is named by a string such as 'trained:15', got {str(value)[:40]!r}")
    m = _TRAINED.match(value)
    if m:
        layer = int(m.group(1))
        if n_layers is not None and not 0 <= layer < n_layers:
            raise ConfigError(f"{value!r}: the model has layers 0..{n_layers - 1}")
        return value
    if ":" in value:  # exact membership in SAE Lens's list, so no path can pass
        release, sae_id = value.split(":", 1)
        if sae_id in offered_release_ids().get(release, set()):
            return value
    raise ConfigError(f"SAE {value[:80]!r} is not offered here; use 'trained:<layer>' or '<release>:<sae id>' of a known SAE Lens release")
