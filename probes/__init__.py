"""The analyses: one package per analysis (`probes/<analysis>/`), each with a public `__init__`
that exports its configs, results and `run`, and registers its probes and studies with
`workbench.probe_api`. Importing this package imports every analysis package; an analysis that
fails to import raises here, with its traceback.
"""

import importlib
import pkgutil

ANALYSES = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg and not m.name.startswith("_"))

for _name in ANALYSES:
    importlib.import_module(f"{__name__}.{_name}")
