#!/usr/bin/env bash
# Every evaluation of the shipped 64x64 tiny models that data/checkpoints/README.md quotes, in one go:
#   tiny_geometry_eval_arc20_90.{md,json}   32 held-out scenes per mode, 4 views, orbits of 20-90 degrees, priors
#   tiny_geometry_eval.{md,json}            16 scenes per mode, 2/4/8 views, the generator's 40-200 degree orbits,
#                                           priors and COLMAP (as scripts/evaluate_tiny.sh)
#   tiny_geometry_cascade_{orbit,forward}.{md,json}   the cascade checks (scripts/cascade_checks.py)
#   tiny_nvs_eval.{md,json}                 novel views of the NVS model against the nearest context view
#   GEO=... NVS=... OUT=... bash scripts/evaluate_tiny64.sh     (defaults: the shipped files, data/checkpoints)
# About 10 minutes on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
GEO="${GEO:-data/checkpoints/tiny_geometry.pt}"
NVS="${NVS:-data/checkpoints/tiny_nvs.pt}"
OUT="${OUT:-data/checkpoints}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$OUT"
python -m flare_nb.eval_report --checkpoint "$GEO" --scenes 32 --n-views 4 --orbit-arc 20 90 --no-colmap \
    --out "$OUT/tiny_geometry_eval_arc20_90.md" --json "$OUT/tiny_geometry_eval_arc20_90.json"
python -m flare_nb.eval_report --checkpoint "$GEO" --scenes 16 \
    --out "$OUT/tiny_geometry_eval.md" --json "$OUT/tiny_geometry_eval.json"
for mode in orbit forward; do
  python scripts/cascade_checks.py --checkpoint "$GEO" --scenes 32 --mode "$mode" --size 64 64 --orbit-arc 20 90 \
      --json "$OUT/tiny_geometry_cascade_$mode.json" > "$OUT/tiny_geometry_cascade_$mode.md"
done
python -m flare_nb.nvs_eval --nvs-checkpoint "$NVS" --geometry-checkpoint "$GEO" --scenes 16 --orbit-arc 20 90 \
    --out "$OUT/tiny_nvs_eval.md" --json "$OUT/tiny_nvs_eval.json"
