#!/usr/bin/env bash
# The full evaluation of the shipped tiny FLARE model (notebook 07): held-out synthetic scenes
# (16 per mode and view count; 2, 4 and 8 views; orbit and forward; at the checkpoint's native size,
# e.g. 128x128) and the real sample scenes (fountain-P11, flare_gt_cam; up to 8 views at twice the
# native width and 1.5 times its height, e.g. 256x192; flare_nb.eval.report.default_sizes), FLARE's stage-1 / stage-2 / PnP
# cameras and the COLMAP baseline on the same images. About 10 minutes on 2 CPU cores.
#   bash scripts/evaluate_tiny.sh                                  # -> data/checkpoints/tiny_geometry_eval.md
#   bash scripts/evaluate_tiny.sh --scenes 4                       # extra arguments go to flare_nb.eval.report
# Writes the markdown report and all per-scene rows (tiny_geometry_eval.json) next to the checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT="${CKPT:-data/checkpoints/tiny_geometry.pt}"
if [ ! -f "$CKPT" ]; then
  echo "no checkpoint at $CKPT: train it first (bash scripts/train_tiny64.sh)" >&2
  exit 1
fi
OUT="${CKPT%.pt}_eval"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # one thread: faster than oversubscribing shared cores
exec python -m flare_nb.eval_report --checkpoint "$CKPT" --scenes 16 --out "$OUT.md" --json "$OUT.json" "$@"
