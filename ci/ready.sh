#!/usr/bin/env bash
# Sets this checkout up on first use: runs ci/setup.sh unless flare_nb (from THIS checkout),
# torch, open3d, gsplat, papermill and trimesh already import and, when FLARE_NB_BOOK=1 (the
# test command), the book's tools (chromium, MathJax 2 in ci/vendor) are in place.
# Sourced by demo.sh and ci/test_all.sh.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ready=1
if ! python - <<'PY' >/dev/null 2>&1
import sys
from pathlib import Path
import flare_nb, torch, open3d, gsplat, papermill, trimesh  # noqa: F401
sys.exit(0 if Path(flare_nb.__file__).resolve().parents[1] == Path.cwd().resolve() else 1)
PY
then ready=0; fi
if [ "${FLARE_NB_BOOK:-0}" = 1 ]; then
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then ready=0; fi
  if [ ! -f ci/vendor/node_modules/mathjax/MathJax.js ]; then ready=0; fi
fi
if [ "$ready" = 0 ]; then
  echo "== first use: setting up (bash ci/setup.sh) =="
  bash ci/setup.sh
fi
