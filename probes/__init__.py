"""One module per analysis (compute only, no plotting). Importing this package registers every
probe module in it (each calls `workbench.probe_api.register` at import)."""

import importlib
import pkgutil

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")
