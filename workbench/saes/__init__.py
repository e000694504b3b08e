"""Sparse autoencoders, shared by every probe that needs one: load them through SAE Lens (a local
directory in SAE Lens's format, an SAE Lens release by id, or a workbench-trained one), train new
ones with SAE Lens's own trainer on any hooked model, hook and corpus, and record their quality on
held-out text (explained variance, L0, dead-feature share, CE increase when spliced in).
"""

from workbench.saes.loading import (
    check_fits,
    decoder_direction,
    encode,
    expected_processing,
    hook_layer,
    hook_name,
    is_sae_dir,
    load_local,
    load_pretrained,
    load_sae,
    needs_centering,
    prepare,
    reconstruct,
    sae_input,
    source_of,
)
from workbench.saes.quality import SAEQuality, evaluate_sae, quality_badge, special_token_ids
from workbench.saes.recipes import (
    PRESETS,
    SAETrainSpec,
    find_trained,
    preset_spec,
    read_recipe,
    recipe_quality,
    trained_dir,
    trained_saes,
)
from workbench.saes.training import train_sae, train_saes

__all__ = [
    "PRESETS", "SAEQuality", "encode", "expected_processing", "needs_centering", "prepare", "reconstruct", "sae_input", "SAETrainSpec", "check_fits", "decoder_direction", "evaluate_sae", "find_trained", "hook_layer",
    "hook_name", "is_sae_dir", "load_local", "load_pretrained", "load_sae", "preset_spec", "read_recipe", "recipe_quality", "source_of", "quality_badge",
    "special_token_ids", "train_sae", "train_saes", "trained_dir", "trained_saes",
]
