"""The analyses: one package per analysis (`probes/<analysis>/`), each with a public `__init__`
that exports its configs, results and `run`, and registers its probes and studies with
`workbench.probe_api`. Importing this package imports every analysis package; an analysis that
fails to import raises here, with its traceback.
"""

from workbench.probe_api import import_analyses

ANALYSES = import_analyses(__name__, __path__)
