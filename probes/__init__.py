"""One module per analysis (compute only, no plotting). Importing this package registers every
probe module in it (each calls `workbench.probe_api.register` at import).

A module that fails to import does not take the others down: its error is kept in
`IMPORT_ERRORS` (and the test suite asserts that this stays empty).
"""

import importlib
import pkgutil

IMPORT_ERRORS: dict[str, str] = {}

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod.startswith("_"):
        continue
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except Exception as _e:  # noqa: BLE001 - reported, and failed by tests/test_probe_registry.py
        IMPORT_ERRORS[_mod] = f"{type(_e).__name__}: {_e}"
