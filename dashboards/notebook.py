"""Each result's main figure, for Jupyter (the `workbench.figures` plugin of `workbench.display`):
`result` as the last line of a cell, or `result.show()`, draws the summary and this figure."""

from __future__ import annotations

from typing import Any, Callable

import plotly.graph_objects as go


def _residual_norms(r) -> go.Figure:
    from dashboards.figures.residual_norms import norms_figure

    return norms_figure([(str(r.meta.get("model", {}).get("id", "run")), r.table)])


def _sinks(r) -> go.Figure:
    from dashboards.figures.attention_sinks import sink_heatmap

    return sink_heatmap(r.heads, r.domains[0])


def _function_tokens(r) -> go.Figure:
    from dashboards.figures.function_tokens import coverage_figure

    return coverage_figure(r)


def _sae_features(r) -> go.Figure:
    from dashboards.figures.sae_features import density_figure

    return density_figure(r.density().numpy())


def _bigram_subnetworks(r) -> go.Figure:
    from dashboards.figures.bigram_subnetworks import r_vs_sparsity

    return r_vs_sparsity(r)


def _linguistic_collapse(r) -> go.Figure:
    from dashboards.figures.linguistic_collapse import cosine_heatmap

    return cosine_heatmap(r)


def _key_space(r) -> go.Figure:
    from dashboards.figures.key_space import precision_figure

    return precision_figure(r.groups)


def _sae_circuits(r) -> go.Figure:
    from dashboards.figures.sae_circuits import roc_figure

    return roc_figure({"run": r})


BUILDERS: dict[str, Callable[[Any], go.Figure]] = {
    "ResidualNormsResult": _residual_norms,
    "AttentionSinksResult": _sinks,
    "BigramBackcopyResult": _sinks,
    "FunctionTokensResult": _function_tokens,
    "SAEFeaturesResult": _sae_features,
    "BigramSubnetworksResult": _bigram_subnetworks,
    "LinguisticCollapseResult": _linguistic_collapse,
    "KeySpaceResult": _key_space,
    "SAECircuitsResult": _sae_circuits,
}


def main_figure(result: Any) -> go.Figure | None:
    """The figure a page would lead with for this result (None for result types without one)."""
    build = BUILDERS.get(type(result).__name__)
    return build(result) if build is not None else None
