#!/usr/bin/env bash
# Sets this checkout up on first use: runs ci/setup.sh unless flare_nb (from THIS checkout),
# torch, open3d, gsplat, papermill and trimesh already import. Sourced by demo.sh and ci/test_all.sh.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! python - <<'PY' >/dev/null 2>&1
import sys
from pathlib import Path
import flare_nb, torch, open3d, gsplat, papermill, trimesh  # noqa: F401
sys.exit(0 if Path(flare_nb.__file__).resolve().parents[1] == Path.cwd().resolve() else 1)
PY
then
  echo "== first use: setting up (bash ci/setup.sh) =="
  bash ci/setup.sh
fi
