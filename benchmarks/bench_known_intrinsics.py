"""Does knowing the intrinsics or the poses help? Chamfer distance of FLARE's pointmaps on
held-out synthetic scenes, predicted vs. with known intrinsics / known poses, beside a blind prior.

    python benchmarks/bench_known_intrinsics.py [--scenes 4] [--views 4] [--modes orbit forward]

Held-out scenes: :func:`flare_nb.scenes.synthetic.make_scene` with seeds from 1 000 000 (as
``flare_nb.eval_report``) at the shipped tiny geometry model's native size (``model.native_size``,
128x128 when unknown). Every variant is scored as
``flare_nb.eval.evaluate.evaluate_pointmaps`` (Sim(3)-aligned on the pixel correspondences,
chamfer in scene units):

* ``predicted``: the global pointmaps as they come out;
* ``known K``: each view's global points moved into its PnP camera (PnP with the known K),
  their depth kept and re-cast along the known K's rays, moved back -- how ``flare-nb`` can
  use known intrinsics with a model that has no intrinsics input;
* ``known poses``: the release's known-pose mode (``camera_poses`` = the ground truth);
* ``known K + poses``: both;
* ``prior``: blind: every pixel at the same depth along a 60-degree camera's rays, all
  cameras at the identity (what a method that learned nothing gets).
"""
from __future__ import annotations

import argparse
import statistics

import torch

from flare_nb import cameras
from flare_nb.eval.evaluate import evaluate_pointmaps
from flare_nb.export import fov_K
from flare_nb.inference import load_model, native_size_wh, reconstruct
from flare_nb.scenes.synthetic import make_scene, pointmaps

HELD_OUT_SEED = 1_000_000


def rerayed(rec, K: torch.Tensor) -> torch.Tensor:
    """Global points of each view re-cast along the rays of ``K (V, 3, 3)`` at their depth in the
    view's PnP camera (solved with ``K``), in view 0's frame."""
    c2w = rec.c2w_pnp.double()
    X = rec.pts3d_global.double()
    Xc = cameras.transform_points(cameras.invert_pose(c2w), X)            # (V, H, W, 3) per camera
    depth = Xc[..., 2]
    Y = cameras.unproject_depth(depth, K.double())
    return cameras.transform_points(c2w, Y)


def prior_pointmaps(V: int, H: int, W: int) -> torch.Tensor:
    K = fov_K(H, W, 60.0).double().expand(V, 3, 3)
    return cameras.unproject_depth(torch.ones(V, H, W, dtype=torch.float64), K)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=["orbit", "forward"])
    a = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(device="cpu")
    size = native_size_wh(model, (128, 128))
    print(f"weights: {model.weights_label}")
    rows = {}
    for mode in a.modes:
        for k in range(a.scenes):
            sc = make_scene(HELD_OUT_SEED + k, n_views=a.views, size=size, mode=mode)
            V, _, H, W = sc.images.shape
            gt = pointmaps(sc, "view0")
            valid = sc.depth > 0
            K = sc.K.float().expand(V, 3, 3)
            res = {}
            r = reconstruct(model, sc.images, device="cpu", seed=0)
            res["predicted"] = evaluate_pointmaps(r.pts3d_global, gt, valid)["chamfer"]
            rk = reconstruct(model, sc.images, device="cpu", seed=0, intrinsics=K)
            res["known K"] = (evaluate_pointmaps(rerayed(rk, K), gt, valid)["chamfer"]
                              if rk.c2w_pnp is not None else float("nan"))
            rp = reconstruct(model, sc.images, device="cpu", seed=0, camera_poses=sc.c2w)
            res["known poses"] = evaluate_pointmaps(rp.pts3d_global, gt, valid)["chamfer"]
            rkp = reconstruct(model, sc.images, device="cpu", seed=0, camera_poses=sc.c2w, intrinsics=K)
            res["known K + poses"] = (evaluate_pointmaps(rerayed(rkp, K), gt, valid)["chamfer"]
                                      if rkp.c2w_pnp is not None else float("nan"))
            res["prior"] = evaluate_pointmaps(prior_pointmaps(V, H, W), gt, valid)["chamfer"]
            for name, v in res.items():
                rows.setdefault((mode, name), []).append(v)
    print(f"chamfer (scene units, Sim(3)-aligned; lower is better), {a.scenes} held-out scenes per mode, "
          f"{a.views} views, {size[0]}x{size[1]}, seeds from {HELD_OUT_SEED}")
    print(f"{'mode':8s} {'variant':16s} {'mean':>7s} {'median':>7s}")
    for (mode, name), vals in rows.items():
        print(f"{mode:8s} {name:16s} {statistics.fmean(vals):7.4f} {statistics.median(vals):7.4f}")


if __name__ == "__main__":
    main()
