#!/usr/bin/env bash
# Reproduce the shipped tiny models (data/checkpoints/tiny_geometry.pt and tiny_nvs.pt), 64x64 images
# with 8-pixel patches, on a CPU. One process and one thread per phase; the stops are deterministic.
#   phase 1: configs/tiny64_phase1.yaml, stopped at step 4000            -> runs/tiny64_phase1
#   phase 2: configs/tiny64_phase2.yaml from phase 1, stopped at STOP2   -> runs/tiny64_phase2
#   phase 3: configs/tiny64_phase3.yaml from phase 2 at STOP2            -> runs/tiny64_phase3 -> tiny_geometry.pt
#   stage 2: configs/tiny64_nvs_stage2.yaml from phase 2 at NVS_FROM     -> runs/tiny64_nvs    -> tiny_nvs.pt
# Each phase resumes after an interruption (run the script again). Wall time on a 2-core machine
# shared with other work: about 1.1-2.2 s per step of phases 1-3 and 1.4 s per step of stage 2.
#   bash scripts/train_tiny64.sh            # all three, then the exports
set -euo pipefail
cd "$(dirname "$0")/.."
STOP2="${STOP2:-4500}"
NVS_FROM="${NVS_FROM:-3000}"
NVS_STEPS="${NVS_STEPS:-1000}"
python -m flare_nb.train --config configs/tiny64_phase1.yaml --stop-at 4000
# phase 2 starts from phase 1's weights at step 4000 (init_from: runs/tiny64_phase1/checkpoint.pt);
# stage 2 starts from phase 2's weights at step NVS_FROM, kept aside as that run goes on
python -m flare_nb.train --config configs/tiny64_phase2.yaml --stop-at "$NVS_FROM"
cp runs/tiny64_phase2/checkpoint.pt "runs/tiny64_phase2_step$NVS_FROM.pt"
python -m flare_nb.train --config configs/tiny64_phase2.yaml --stop-at "$STOP2"
# phase 3 starts from phase 2's weights at STOP2 (init_from: runs/tiny64_phase2/checkpoint.pt) and runs its
# whole 3000-step schedule
python -m flare_nb.train --config configs/tiny64_phase3.yaml
python -m flare_nb.train --config configs/tiny64_nvs_stage2.yaml --set steps="$NVS_STEPS" \
    --set init_from="runs/tiny64_phase2_step$NVS_FROM.pt" --set run.threads=1 --set run.out_dir=runs/tiny64_nvs
python scripts/export_checkpoint.py runs/tiny64_phase3 data/checkpoints/tiny_geometry.pt
python scripts/export_checkpoint.py runs/tiny64_nvs data/checkpoints/tiny_nvs.pt
