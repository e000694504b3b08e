"""Loading sparse autoencoders through SAE Lens: from a local directory in SAE Lens's format
(`cfg.json` + `sae_weights.safetensors`), from an SAE Lens release by id (the hub, or a filled
Hugging Face cache), or a workbench-trained SAE by hook name (see `workbench.saes.training`).

Every loaded SAE records where it came from as `sae.workbench_source`, and `check_fits` tells
clearly when an SAE does not match a model (unknown hook, wrong width).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformer_lens import HookedTransformer

from workbench import hooks
from workbench.errors import ConfigError, MissingResourceError
from workbench.models.info import default_device
from workbench.saes.files import CFG_FILE, WEIGHTS_FILE, is_sae_dir
from workbench.saes.recipes import find_trained

if TYPE_CHECKING:
    from sae_lens import SAE

TRAINED_PREFIX = "trained:"
_LAYER_ONLY = re.compile(r"^L?(\d+)$")


def dir_fingerprint(path: str | Path) -> str:
    """Identity of an SAE directory's contents: hash of its config and weights."""
    p = Path(path)
    h = hashlib.sha1((p / CFG_FILE).read_bytes())
    h.update((p / WEIGHTS_FILE).read_bytes())
    return h.hexdigest()[:12]


def load_local(path: str | Path, device: str | None = None) -> "SAE":
    """An SAE saved in SAE Lens's format (by SAE Lens's trainer, `save_model`, or our training)."""
    from sae_lens import SAE

    device = device or default_device()
    p = Path(path).expanduser()
    if not is_sae_dir(p):
        raise MissingResourceError(f"{p} is not an SAE directory: it needs {CFG_FILE} and {WEIGHTS_FILE} (SAE Lens format)")
    sae = SAE.load_from_disk(str(p), device=device)
    sae.eval()
    sae.workbench_source = f"dir:{p.resolve().name}@{dir_fingerprint(p)}"
    sae.workbench_path = str(p.resolve())
    return sae


def load_pretrained(release: str, sae_id: str, device: str | None = None) -> "SAE":
    """An SAE Lens release by id, e.g. ("gpt2-small-res-jb", "blocks.8.hook_resid_pre").

    Needs the hub, or a Hugging Face cache that already holds the files (HF_HUB_OFFLINE=1 works then).
    """
    from sae_lens import SAE

    device = device or default_device()
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except ValueError as e:  # SAE Lens names unknown releases and ids this way
        raise ConfigError(str(e)) from None
    except OSError as e:  # network errors, offline mode without a cached copy, missing files
        raise MissingResourceError(
            f"Cannot load SAE {release}:{sae_id} ({type(e).__name__}: {e}). It needs the Hugging Face hub, "
            "or a cache that already holds it; or pass a local SAE directory instead."
        ) from None
    sae.eval()
    sae.workbench_source = f"release:{release}:{sae_id}"
    return sae


def trained_hook(spec: str, model: HookedTransformer | None) -> str:
    """'trained:15', 'trained:L15' or 'trained:blocks.15.hook_resid_post' -> the hook name."""
    rest = spec[len(TRAINED_PREFIX):]
    m = _LAYER_ONLY.match(rest)
    hook = hooks.resid_post(m.group(1)) if m else rest
    if model is not None and hook not in model.hook_dict:
        raise ConfigError(f"{spec!r}: the model has no hook {hook!r}")
    return hook


def load_sae(source: str | Path, device: str | None = None, model: HookedTransformer | None = None, corpus_name: str = "brown") -> "SAE":
    """Resolve an SAE source string.

    - a directory in SAE Lens format;
    - "release:sae_id", an SAE Lens pretrained release (needs the hub or its cache);
    - "trained:<layer or hook>", the workbench's own SAE for `model` on `corpus_name` with the CPU
      preset (see `workbench.saes.training`); it must have been trained already.
    """
    if device is None:  # where the model is; else the default device
        device = str(next(model.parameters()).device) if model is not None else default_device()
    s = str(source)
    if is_sae_dir(s):
        sae = load_local(s, device)
    elif s.startswith(TRAINED_PREFIX):
        if model is None:
            raise ConfigError(f"{s!r} names a workbench-trained SAE; it needs the model it was trained on")
        sae = load_local(find_trained(model, corpus_name, trained_hook(s, model)), device)
    elif ":" in s and not Path(s).expanduser().exists():
        release, sae_id = s.split(":", 1)
        sae = load_pretrained(release, sae_id, device)
    else:
        sae = None
    if sae is not None:
        return prepare(sae, model) if model is not None else sae
    raise ConfigError(
        f"Cannot resolve SAE {s!r}: expected a directory in SAE Lens format (cfg.json + sae_weights.safetensors), "
        "'release:sae_id' for an SAE Lens release, or 'trained:<layer>' for a workbench-trained SAE"
    )


# ----- the preprocessing an SAE was trained with -----
PROCESSING_KEYS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
TL_FROM_PRETRAINED = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
# activations that are writes into (or states of) the residual stream: fold_ln, center_unembed and
# fold_value_biases leave them unchanged; center_writing_weights removes each one's mean over d_model
RESIDUAL_HOOKS = hooks.RESIDUAL_WRITES


def expected_processing(sae: "SAE") -> dict[str, bool] | None:
    """The weight processing of the model an SAE was trained on, as its config declares it
    (SAE Lens's `model_from_pretrained_kwargs` over TransformerLens's from_pretrained defaults);
    None when it declares none (SAEs trained by the workbench, on the model as loaded)."""
    kw = getattr(sae.cfg.metadata, "model_from_pretrained_kwargs", None)
    if kw is None:
        return None
    return {**TL_FROM_PRETRAINED, **{k: bool(v) for k, v in dict(kw).items() if k in PROCESSING_KEYS}}


def needs_centering(sae: "SAE", model: HookedTransformer) -> bool:
    """Whether the SAE's inputs from `model` must be mean-centred over d_model to be what the SAE
    was trained on; ConfigError when the difference cannot be bridged (load the model to match)."""
    from workbench.models.info import PROCESSING_FLAGS, model_info

    want = expected_processing(sae)
    numerics = model_info(model).numerics
    have = PROCESSING_FLAGS[numerics]
    if want is None or want == have:
        return False
    hook = hook_name(sae)
    if hook.endswith(RESIDUAL_HOOKS):
        if want["center_writing_weights"] and not have["center_writing_weights"]:
            return True
        if want["center_writing_weights"] == have["center_writing_weights"]:
            return False
    raise ConfigError(
        f"SAE {source_of(sae)!r} at {hook!r} was trained on a model loaded with {want}; this model is loaded with "
        f"{numerics!r} numerics ({have}). Load the model with the matching numerics."
    )


def prepare(sae: "SAE", model: HookedTransformer) -> "SAE":
    """Record on the SAE how to honour its declared preprocessing when it reads `model`."""
    sae.workbench_center = needs_centering(sae, model)
    return sae


def sae_input(sae: "SAE", x: torch.Tensor) -> torch.Tensor:
    """What the SAE reads of activations `x` (mean-centred over d_model when it was trained on a
    model with centred writing weights and reads a raw one; see `prepare`)."""
    return x - x.mean(-1, keepdim=True) if getattr(sae, "workbench_center", False) else x


def encode(sae: "SAE", x: torch.Tensor) -> torch.Tensor:
    """Feature activations of `x`, with the SAE's preprocessing honoured."""
    return sae.encode(sae_input(sae, x).to(sae.dtype))


def reconstruct(sae: "SAE", x: torch.Tensor) -> torch.Tensor:
    """The SAE's reconstruction of `x` in the model's own space (a removed mean is added back)."""
    xin = sae_input(sae, x)
    return sae.decode(sae.encode(xin.to(sae.dtype))).to(x.dtype) + (x - xin)


def hook_name(sae: "SAE") -> str:
    name = sae.cfg.metadata.hook_name
    if not name:
        raise ConfigError("this SAE records no hook name (cfg.metadata.hook_name); it cannot be placed in a model")
    return name


def hook_layer(sae: "SAE") -> int | None:
    m = re.match(r"^blocks\.(\d+)\.", hook_name(sae))
    return int(m.group(1)) if m else None


def check_fits(sae: "SAE", model: HookedTransformer) -> None:
    """Raise ConfigError unless the SAE's hook exists in the model with the SAE's input width, and
    its declared preprocessing can be honoured on this model (see `needs_centering`)."""
    needs_centering(sae, model)
    name = hook_name(sae)
    if name not in model.hook_dict:
        raise ConfigError(f"SAE hook {name!r} does not exist in model {model.cfg.model_name!r}")
    if name.endswith(hooks.D_MODEL_WIDE) and sae.cfg.d_in != model.cfg.d_model:
        raise ConfigError(f"SAE input width {sae.cfg.d_in} does not match the model's d_model {model.cfg.d_model} at {name!r}")


def source_of(sae: "SAE") -> str:
    return getattr(sae, "workbench_source", f"unsaved:{hook_name(sae)}:{sae.cfg.d_sae}")


@torch.no_grad()
def decoder_direction(sae: "SAE", feature: int) -> torch.Tensor:
    """The decoder row of `feature` (the direction it writes into the model), as float32."""
    if not 0 <= feature < sae.cfg.d_sae:
        raise ConfigError(f"feature {feature} out of range 0..{sae.cfg.d_sae - 1}")
    return sae.W_dec[feature].detach().float()
