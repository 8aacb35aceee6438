#!/usr/bin/env bash
# Cascade stage 2 for the shipped tiny model (configs/tiny_nvs_stage2.yaml): the tiny NVS model
# starts from data/checkpoints/tiny_geometry.pt (stage 1), the coarse pose predictor frozen, and
# learns to render 2 held-out target views of each 6-view synthetic sequence from the other 4.
# Resumable like scripts/train_tiny.sh (run the same command again after an interruption).
#   bash scripts/train_tiny_nvs.sh                  # 2 DDP processes (gloo), one thread each
#   NPROC=1 bash scripts/train_tiny_nvs.sh          # one process, torch's default threads
#   bash scripts/train_tiny_nvs.sh --set steps=50   # extra overrides are passed through
# Outputs in runs/tiny_nvs_stage2/; ship with
#   python scripts/export_checkpoint.py runs/tiny_nvs_stage2 data/checkpoints/tiny_nvs.pt
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC="${NPROC:-2}"
if [ "$NPROC" -gt 1 ]; then
  exec python -m flare_nb.train --config configs/tiny_nvs_stage2.yaml --nproc "$NPROC" --set run.threads=1 "$@"
fi
exec python -m flare_nb.train --config configs/tiny_nvs_stage2.yaml "$@"
