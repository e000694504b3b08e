"""Closed gold lists and the answer judge for the key-space probe's knowledge probing.

The paper judged answers with GPT-4o ("Is X among the correct answers?"). Offline and
deterministic instead: each category (US states, chemical elements, countries, ...) is a complete
list shipped in `probes/data/key_space_gold.json`, and an answer is correct when its normalised
form equals the normalised form of an entry's name or one of its aliases. Exact matching after
normalisation (never substring matching), so "New York City" is not "New York" and "Kansas" is not
"Arkansas".

Normalisation (`normalise`): Unicode compatibility decomposition with accents dropped, case
folding, "&" read as "and", parenthetical remarks dropped ("Hydrogen (H)"), a leading article
"the" dropped ("The Gambia"), and then everything that is not a letter or digit removed, so
spacing, hyphens, dots and apostrophes do not matter ("U.S.A." = "USA", "Guinea-Bissau" =
"Guinea Bissau", "Côte d'Ivoire" = "cote divoire").
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from workbench.errors import ConfigError

GOLD_PATH = Path(__file__).parent / "data" / "key_space_gold.json"
_PAREN = re.compile(r"\([^()]*\)")
_WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    """The comparison key of an answer or a gold name (see the module docstring)."""
    t = unicodedata.normalize("NFKD", text)
    t = "".join(c for c in t if not unicodedata.combining(c)).casefold()
    t = t.replace("&", " and ")
    t = _PAREN.sub(" ", t)
    words = [w.replace("_", "") for w in _WORD.findall(t)]
    words = [w for w in words if w]
    if len(words) > 1 and words[0] == "the":
        words = words[1:]
    return "".join(words)


@dataclass
class GoldList:
    """One closed category: the instruction that asks for it and its accepted answers."""

    name: str
    instruction: str
    note: str
    entries: list[str]  # canonical names
    aliases: dict[str, list[str]] = field(default_factory=dict)  # canonical name -> other accepted forms

    def __post_init__(self) -> None:
        self._index: dict[str, str] = {}
        for entry in self.entries:
            for form in [entry, *self.aliases.get(entry, [])]:
                key = normalise(form)
                if not key:
                    raise ConfigError(f"gold list {self.name!r}: {form!r} normalises to nothing")
                other = self._index.get(key)
                if other is not None and other != entry:
                    raise ConfigError(f"gold list {self.name!r}: {form!r} ({entry}) collides with {other!r}")
                self._index[key] = entry

    def match(self, answer: str) -> str | None:
        """The canonical entry `answer` names, or None when it names none."""
        return self._index.get(normalise(answer))

    def __len__(self) -> int:
        return len(self.entries)


@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, GoldList]:
    try:
        blob = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read gold lists from {path}: {e}") from None
    out = {}
    for name, cat in blob["categories"].items():
        entries = [e["name"] for e in cat["entries"]]
        aliases = {e["name"]: list(e.get("aliases", [])) for e in cat["entries"]}
        out[name] = GoldList(name, cat["instruction"], cat.get("note", ""), entries, aliases)
    return out


def gold_lists(path: str | Path = GOLD_PATH) -> dict[str, GoldList]:
    """All categories, by name, in file order."""
    return _load(str(path))


def get_gold(category: str, path: str | Path = GOLD_PATH) -> GoldList:
    lists = gold_lists(path)
    if category not in lists:
        raise ConfigError(f"Unknown gold category {category!r}; known: {sorted(lists)}")
    return lists[category]


def judge(answer: str | None, category: str | GoldList) -> str | None:
    """Canonical gold entry matched by `answer` (None: wrong, or no answer)."""
    if answer is None:
        return None
    gold = category if isinstance(category, GoldList) else get_gold(category)
    return gold.match(answer)
