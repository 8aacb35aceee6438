"""The torch ray caster against open3d's Embree: render time and agreement of 4-view 64x64 scenes.

For each mode and seed, renders the scene with ``raycast="open3d"`` (1 thread) and
``raycast="torch"`` (CPU, and CUDA where a GPU is visible) and prints wall and CPU seconds per
scene, then the agreement numbers of ``tests/test_raycast_torch.py`` (object-id differences,
those off silhouettes, depth beyond the float32 bound, largest relative depth and colour
differences). CPU seconds stay meaningful on a shared, busy machine. Figures only, no asserts.

    OMP_NUM_THREADS=1 python benchmarks/bench_raycast.py [--seeds 3] [--size 64] [--views 4]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flare_nb.scenes.synthetic import MODES, make_scene


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--views", type=int, default=4)
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_raycast_torch import agreement

    make_scene(10_000, 2, 64, "orbit", raycast="open3d", n_threads=1)          # warm-up
    make_scene(10_000, 2, 64, "orbit", raycast="torch")
    cuda = torch.cuda.is_available()
    print(f"{a.views} views of {a.size}x{a.size}, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    rows = {"open3d": [], "torch cpu": [], "torch cuda": []}
    for mode in MODES:
        for seed in range(a.seeds):
            (o, mo), w, c = timed(lambda: make_scene(seed, a.views, a.size, mode, return_masks=True,
                                                     raycast="open3d", n_threads=1))
            rows["open3d"].append((w, c))
            (t, mt), w, c = timed(lambda: make_scene(seed, a.views, a.size, mode, return_masks=True, raycast="torch"))
            rows["torch cpu"].append((w, c))
            if cuda:
                def on_gpu():
                    out = make_scene(seed, a.views, a.size, mode, raycast="torch", device="cuda")
                    torch.cuda.synchronize()
                    return out
                _, w, c = timed(on_gpu)
                rows["torch cuda"].append((w, c))
            r = agreement(o, mo, t, mt)
            print(f"{mode:>7} seed {seed}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in r.items()))
    for name, v in rows.items():
        if v:
            w, c = np.array(v).T
            print(f"{name:>10}: median {np.median(w):.3f} s wall, {np.median(c):.3f} s CPU per scene "
                  f"({len(v)} scenes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
