"""Speed of the synthetic scene generator (flare_nb.scenes.synthetic), which feeds training on the fly.

Prints views/s and scenes/s at 128x128 and 256x256 for both camera modes: in one process
(open3d ray casting with 1 and 2 threads) and through a DataLoader with 2 worker processes.
"views/s per CPU-s" divides by the process's CPU time, which stays meaningful on a shared,
busy machine. Target: >= 200 views/s at 128x128 on 2 cores. No asserts: figures only.

    python benchmarks/bench_synthetic.py [--scenes 40] [--views 4]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from flare_nb.scenes.synthetic import SyntheticDataset, collate_scenes, make_scene


def in_process(size, mode, n_scenes, n_views, n_threads):
    make_scene(10_000, n_views, size, mode, n_threads=n_threads)            # warm-up (mesh cache)
    t, c = time.perf_counter(), time.process_time()
    for seed in range(n_scenes):
        make_scene(seed, n_views, size, mode, n_threads=n_threads)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return n_scenes * n_views / wall, n_scenes / wall, n_scenes * n_views / cpu


def loader(size, n_scenes, n_views, workers):
    ds = SyntheticDataset(seeds=range(n_scenes), n_views=n_views, size=size, n_threads=1)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_scenes,
                                     persistent_workers=False)
    t = time.perf_counter()
    n = sum(b["images"].shape[0] for b in dl)
    wall = time.perf_counter() - t
    return n * n_views / wall, n / wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=40, help="scenes per measurement")
    ap.add_argument("--views", type=int, default=4, help="views per scene")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"cores visible: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}, "
          f"{a.scenes} scenes x {a.views} views per measurement")
    print(f"{'size':>8} {'mode':>8} {'threads':>8} {'views/s':>9} {'scenes/s':>9} {'views/CPU-s':>12}")
    for size in (128, 256):
        n = a.scenes if size == 128 else max(a.scenes // 4, 4)
        for mode in ("orbit", "forward"):
            for nt in (1, 2):
                v, s, vc = in_process(size, mode, n, a.views, nt)
                print(f"{size:>8} {mode:>8} {nt:>8} {v:9.1f} {s:9.2f} {vc:12.1f}")
    print("\nDataLoader (orbit and forward alternating, batch 4, 1 ray-casting thread per worker):")
    print(f"{'size':>8} {'workers':>8} {'views/s':>9} {'scenes/s':>9}")
    for size in (128, 256):
        n = a.scenes if size == 128 else max(a.scenes // 4, 8)
        for workers in (0, 2):
            v, s = loader(size, n, a.views, workers)
            print(f"{size:>8} {workers:>8} {v:9.1f} {s:9.2f}")


if __name__ == "__main__":
    main()
