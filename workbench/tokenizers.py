"""Tokenizers the workbench builds itself: a byte-level tokenizer for tiny models and a BPE
trained on a corpus for the small language models the workbench trains.

Both are Hugging Face fast tokenizers (`PreTrainedTokenizerFast`), so offsets, batching and
`save_pretrained` work as for any pretrained tokenizer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from workbench.paths import cache_dir

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD]


def save_and_reload(tok: Tokenizer, path: Path, **special_tokens: str) -> PreTrainedTokenizerFast:
    """Save as a Hugging Face tokenizer directory (once, atomically) and load it back from there.

    Loading from a directory matters: TransformerLens re-opens tokenizers by `name_or_path`.
    `special_tokens` (bos_token=..., eos_token=...) default to the workbench's BOS, EOS and PAD.
    """
    if not (path / "tokenizer.json").exists():
        specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, **special_tokens}
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fast.save_pretrained(str(tmp))
        if path.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(path)
    return AutoTokenizer.from_pretrained(str(path))


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens plus BOS/EOS/PAD (ids 256-258). Needs no training data."""
    byte_map = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_map))}
    for j, s in enumerate(SPECIAL_TOKENS):
        vocab[s] = 256 + j
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return save_and_reload(tok, cache_dir() / "tokenizers" / "bytes-v1")


def train_bpe_tokenizer(texts: list[str], vocab_size: int, path: Path) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`, saved at `path` (deterministic for the same input)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return save_and_reload(tok, path)


def corpus_bpe_tokenizer(corpus_name: str = "brown", vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on a corpus's train split, cached under the workbench cache."""
    from workbench.corpora import load_corpus

    corpus = load_corpus(corpus_name, split="train")
    key = hashlib.sha1(f"{corpus.id}|{vocab_size}".encode()).hexdigest()[:10]
    path = cache_dir() / "tokenizers" / f"bpe-{corpus_name}-{vocab_size}-{key}"
    if (path / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    return train_bpe_tokenizer([d.text for d in corpus.documents], vocab_size, path)


def load_tokenizer(spec: str) -> PreTrainedTokenizerFast:
    """Resolve a tokenizer spec: 'bytes', 'bpe:<corpus>:<vocab>', or a directory with tokenizer files."""
    if spec == "bytes":
        return byte_tokenizer()
    if spec.startswith("bpe:"):
        _, corpus_name, size = spec.split(":")
        return corpus_bpe_tokenizer(corpus_name, int(size))
    if Path(spec).is_dir():
        return AutoTokenizer.from_pretrained(spec)
    raise ValueError(f"Unknown tokenizer spec {spec!r}: use 'bytes', 'bpe:<corpus>:<vocab>' or a directory")
