"""Run every benchmark module's main() in turn (python -m benchmarks.run_all)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks


def main() -> None:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name not in ("run_all",) and not m.name.startswith("_"))
    for name in names:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        mod = importlib.import_module(f"benchmarks.{name}")
        saved = sys.argv
        sys.argv = [name]
        try:
            mod.main()
        finally:
            sys.argv = saved


if __name__ == "__main__":
    main()
