"""Speed and memory of ``flare_nb.render.rasterize`` (backend "torch") beside a dense PyTorch peer.

Scene: the garden structure-from-motion points of ``data/gaussians/garden.npz`` cropped to
[-2, 2]^3, N of them drawn at random (seeded), with random unit quaternions, scales
``U(0, 0.02)`` and opacities ``U(0, 1)`` as gsplat's own tests do; camera 0, intrinsics
rescaled to each resolution. For each N and resolution: forward and forward+backward wall
time (median of several runs after a warm-up) and the peak resident memory added by the run.

The peer is a straightforward dense PyTorch renderer with the same maths (our projection,
then for every 16x16 block of pixels all Gaussians whose box touches the block, evaluated
densely as a ``[pixels, Gaussians]`` matrix, transmittance by ``cumprod``, autograd with one
checkpoint per block so memory stays bounded). No public implementation is copied here.

Every measurement runs in a fresh subprocess so that peak memory is its own. The script
prints; it asserts nothing. ``--quick`` runs a small grid. Notebook 05 shows the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flare_nb.render.rasterize import project_gaussians, rasterize  # noqa: E402

GARDEN = ROOT / "data" / "gaussians" / "garden.npz"
SIZES = [(160, 104), (324, 210), (648, 420)]
COUNTS = [10_000, 50_000, 100_000]


# ------------------------------------------------------------------------------- scene
def load_scene(n, width, seed=0):
    """N garden Gaussians (seeded) and camera 0 with intrinsics scaled to ``width``."""
    if not GARDEN.exists():
        raise FileNotFoundError(f"{GARDEN} is missing: it ships with the repository (data/README.md)")
    d = np.load(GARDEN)
    means = torch.from_numpy(d["means3d"]).float()
    colors = torch.from_numpy(d["colors"] / 255.0).float()
    inside = ((means >= -2) & (means <= 2)).all(-1)
    means, colors = means[inside], colors[inside]
    if n > len(means):
        raise ValueError(f"asked for {n} Gaussians, the cropped garden scene has {len(means)}")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(means), generator=g)[:n]
    means, colors = means[pick], colors[pick]
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    scales = torch.rand(n, 3, generator=g) * 0.02
    opacities = torch.rand(n, generator=g)
    viewmats = torch.from_numpy(d["viewmats"][:1]).float()
    Ks = torch.from_numpy(d["Ks"][:1]).float().clone()
    Ks[:, :2] *= width / float(d["width"])
    return [means, quats, scales, opacities, colors], viewmats, Ks


# -------------------------------------------------------------------------------- peer
def dense_peer(means, quats, scales, opacities, colors, viewmats, Ks, width, height, block=16):
    """Straightforward dense renderer, same rules as ``rasterize`` (one camera, RGB)."""
    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height)
    vis = torch.nonzero(proj.visible[0]).squeeze(1)
    order = vis[torch.argsort(proj.depths[0, vis].detach(), stable=True)]
    m2, con = proj.means2d[0, order], proj.conics[0, order]
    op, col, z = opacities[order], colors[order], proj.depths[0, order]
    r = proj.radii[0, order].float()
    lo, hi = (m2.detach() - r), (m2.detach() + r)
    feats = torch.cat([col, z[:, None]], 1)

    def shade(px, m2b, conb, opb, featb):
        d = m2b[None] - px[:, None]  # (P, G, 2)
        sigma = 0.5 * (conb[:, 0] * d[..., 0] ** 2 + conb[:, 2] * d[..., 1] ** 2) \
            + conb[:, 1] * d[..., 0] * d[..., 1]
        alpha = torch.clamp(opb * torch.exp(-sigma), max=0.999)
        alpha = alpha * (alpha >= 1 / 255)
        T_incl = torch.cumprod(1 - alpha, 1)
        T = torch.cat([torch.ones_like(T_incl[:, :1]), T_incl[:, :-1]], 1)
        w = alpha * T * (T_incl > 1e-4)
        return torch.cat([w @ featb, w.sum(1, keepdim=True)], 1)  # (P, D + 1)

    rows = []
    for y0 in range(0, height, block):
        cols = []
        for x0 in range(0, width, block):
            y1, x1 = min(y0 + block, height), min(x0 + block, width)
            hit = (hi[:, 0] > x0) & (lo[:, 0] < x1) & (hi[:, 1] > y0) & (lo[:, 1] < y1)
            ids = torch.nonzero(hit).squeeze(1)
            yy, xx = torch.meshgrid(torch.arange(y0, y1) + 0.5, torch.arange(x0, x1) + 0.5, indexing="ij")
            px = torch.stack([xx, yy], -1).reshape(-1, 2)
            args = (px, m2[ids], con[ids], op[ids], feats[ids])
            out = checkpoint(shade, *args, use_reentrant=False) if torch.is_grad_enabled() else shade(*args)
            cols.append(out.reshape(y1 - y0, x1 - x0, -1))
        rows.append(torch.cat(cols, 1))
    img = torch.cat(rows, 0)
    a = img[..., -1:]
    return img[..., :3], img[..., 3:4] / a.clamp(min=1e-10), a


# ------------------------------------------------------------------------- measurement
def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(impl, n, width, height, reps, threads):
    if threads:
        torch.set_num_threads(threads)
    params, viewmats, Ks = load_scene(n, width)
    params = [p.requires_grad_() for p in params]
    render = (lambda: rasterize(*params, viewmats, Ks, width, height, backend="torch")) if impl == "ours" \
        else (lambda: dense_peer(*params, viewmats, Ks, width, height))

    def fwd():
        with torch.no_grad():
            render()

    def fwd_bwd():
        rgb, depth, alpha = render()
        (rgb.sum() + 0.1 * depth.sum() + alpha.sum()).backward()

    rss0 = _rss_mb()
    res = {}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        fn()  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        res[name] = statistics.median(times)
    res["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    print(json.dumps(res))


def run_one(impl, n, width, height, reps, threads):
    cmd = [sys.executable, __file__, "--worker", impl, str(n), str(width), str(height), str(reps),
           str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two configurations: 10k at 160x104, 50k at 324x210")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per measurement (ours)")
    ap.add_argument("--peer-reps", type=int, default=3, help="timed runs per measurement (peer)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, n, w, h, reps, threads = args.worker
        return worker(impl, int(n), int(w), int(h), int(reps), int(threads))
    configs = [(10_000, SIZES[0]), (50_000, SIZES[1])] if args.quick else [(n, s) for n in COUNTS for s in SIZES]
    reps = 3 if args.quick else args.reps
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    head = (f"{'N':>7} {'size':>8} | {'ours fwd':>9} {'ours f+b':>9} {'ours MB':>8} | "
            f"{'peer fwd':>9} {'peer f+b':>9} {'peer MB':>8} | {'x fwd':>6} {'x f+b':>6}")
    print(head)
    print("-" * len(head))
    for n, (w, h) in configs:
        o = run_one("ours", n, w, h, reps, threads)
        p = {} if args.no_peer else run_one("peer", n, w, h, 2 if args.quick else args.peer_reps, threads)
        if "error" in o:
            print(f"{n:>7} {w}x{h}: ours failed: {o['error']}")
            continue

        def f(r, k, fmt="{:9.3f}"):
            return fmt.format(r[k]) if k in r else f"{'-':>{len(fmt.format(0.0))}}"

        ratio_f = f"{p['fwd'] / o['fwd']:6.1f}" if "fwd" in p else f"{'-':>6}"
        ratio_b = f"{p['fwd_bwd'] / o['fwd_bwd']:6.1f}" if "fwd_bwd" in p else f"{'-':>6}"
        print(f"{n:>7} {f'{w}x{h}':>8} | {f(o, 'fwd')} {f(o, 'fwd_bwd')} {f(o, 'peak_mb', '{:8.0f}')} | "
              f"{f(p, 'fwd')} {f(p, 'fwd_bwd')} {f(p, 'peak_mb', '{:8.0f}')} | {ratio_f} {ratio_b}",
              flush=True)
        if "error" in p:
            print(f"    peer failed: {p['error']}")
    print(f"seconds (median of {reps} ours / {2 if args.quick else args.peer_reps} peer after a warm-up); "
          f"MB = peak RSS added by the run; x = peer time / ours")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
