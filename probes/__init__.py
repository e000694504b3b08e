"""One module per analysis (compute only, no plotting). Importing this package registers them."""

from probes import residual_norms  # noqa: F401
