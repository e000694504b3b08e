"""SAE feature pages: per-feature top contexts, activation histogram and density, firing tokens
and logit effects of one SAE (trained here, a local directory, or an SAE Lens release).

The public face of the analysis: everything outside this package uses these names."""

from probes.sae_features.probe import (
    SAEFeaturesConfig,
    SAEFeaturesResult,
    feature_activations,
)

__all__ = [
    "feature_activations",
    "SAEFeaturesConfig",
    "SAEFeaturesResult",
]
