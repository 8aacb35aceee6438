#!/usr/bin/env bash
# One command for every test on a fresh machine: sets up on first use (ci/ready.sh), then
# ci/test.sh (pytest, every notebook under papermill, the recorded numbers). Options go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
FLARE_NB_BOOK=1 source ci/ready.sh
echo "setup check took $(( $(date +%s) - start )) s"
bash ci/test.sh "$@"
echo "setup + tests took $(( $(date +%s) - start )) s"
