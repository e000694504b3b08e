"""SAE Lens's on-disk format: the two files that make a directory an SAE."""

from __future__ import annotations

from pathlib import Path

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


def is_sae_dir(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return (p / CFG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()
