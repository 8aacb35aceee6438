#!/usr/bin/env bash
# Cascade stage 2 for the shipped tiny model (configs/tiny_nvs_stage2.yaml): the tiny NVS model
# starts from data/checkpoints/tiny_geometry.pt (stage 1), the coarse pose predictor frozen, and
# learns to render 2 held-out target views of each 6-view synthetic sequence from the other 4.
# Resumable like scripts/train_tiny.sh, which it runs with this config (same NPROC and overrides).
#   bash scripts/train_tiny_nvs.sh                  # 2 DDP processes (gloo), one thread each
#   NPROC=1 bash scripts/train_tiny_nvs.sh          # one process, torch's default threads
#   bash scripts/train_tiny_nvs.sh --set steps=50   # extra overrides are passed through
# Outputs in runs/tiny_nvs_stage2/; ship with
#   python scripts/export_checkpoint.py runs/tiny_nvs_stage2 data/checkpoints/tiny_nvs.pt
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=configs/tiny_nvs_stage2.yaml exec bash scripts/train_tiny.sh "$@"
