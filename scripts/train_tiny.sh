#!/usr/bin/env bash
# Train the shipped tiny FLARE model on synthetic scenes (configs/tiny_synthetic.yaml):
# 5000 steps of 4 scenes x 4 views at 128x128, about 35-50 min on 2 CPU cores (0.37 s/step
# measured with 2 processes). Resumable: after an interruption run the same command again and
# it continues from runs/tiny_synthetic/checkpoint.pt.
#   bash scripts/train_tiny.sh                      # 2 DDP processes (gloo), one thread each
#   NPROC=1 bash scripts/train_tiny.sh              # one process, torch's default threads
#   bash scripts/train_tiny.sh --set steps=500      # extra overrides are passed through
# Outputs in runs/tiny_synthetic/: checkpoint.pt, log.jsonl, loss_curves.png, config.yaml.
# The last line printed is the final validation (RRA@15 etc. on 32 held-out 4-view scenes,
# half orbit, half forward; per-mode values as RRA@15/orbit, RRA@15/forward).
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC="${NPROC:-2}"
CONFIG="${CONFIG:-configs/tiny_synthetic.yaml}"   # scripts/train_tiny_nvs.sh sets the stage-2 config
if [ "$NPROC" -gt 1 ]; then
  exec python -m flare_nb.train --config "$CONFIG" --nproc "$NPROC" --set run.threads=1 "$@"
fi
exec python -m flare_nb.train --config "$CONFIG" "$@"
