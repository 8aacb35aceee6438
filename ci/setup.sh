#!/usr/bin/env bash
# One-command setup on a fresh machine (Debian/Ubuntu, Python >= 3.10):
#   system libraries open3d needs and chromium (the book check), MathJax 2 from npm (the book),
#   the CPU build of torch, then this package with its tools.
# GPU users: install your CUDA torch build first and run with FLARE_NB_KEEP_TORCH=1.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libusb-1.0-0 libgl1 libgomp1 chromium >/dev/null
  if ! command -v npm >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
fi
# MathJax 2 for the offline HTML book (ci/build_book.py copies it next to the pages)
if command -v npm >/dev/null 2>&1 && [ ! -f ci/vendor/node_modules/mathjax/MathJax.js ]; then
  npm install --no-save --no-audit --no-fund --silent --prefix ci/vendor mathjax@2.7.9 >/dev/null
fi
if [ "${FLARE_NB_KEEP_TORCH:-0}" != 1 ]; then
  python -m pip install -q torch==2.13.0
fi
python -m pip install -q -e ".[dev]"
python -c "import flare_nb, torch, open3d, gsplat; print('flare_nb ready: torch', torch.__version__)"
