"""Interpretability workbench: published analyses on hooked transformers, with a result store,
a CLI and a dashboard."""

__version__ = "0.1.0"
