#!/usr/bin/env bash
# One command for the demo on a fresh machine: sets up on first use, then runs `flare-nb demo`
# (held-out synthetic scenes beside their ground truth -> ./flare_nb_demo; --real: the bundled room
# photos). Options are passed on: bash demo.sh --force
set -euo pipefail
cd "$(dirname "$0")"
source ci/ready.sh
python -m flare_nb.cli demo "$@"
