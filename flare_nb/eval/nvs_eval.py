"""Novel-view evaluation of cascade stage 2 (notebook 07; ``python -m flare_nb.nvs_eval``).

Protocol (FLARE's is not released; ours, stated once here): a held-out synthetic sequence of
``n_views + n_targets`` views (seeds >= 1 000 000, never trained on) is split with
:func:`flare_nb.scenes.sample.split_context_target`: the interior target views are hidden, the
methods see the ``n_views`` context images (and, for the NVS model, their intrinsics). Each
method renders the targets in their ground-truth cameras, moved into the prediction's frame
(view 0's camera, prediction units) by :func:`flare_nb.render.targets.render_targets`; the scale comes
from the context views' ground-truth depth. (The paper instead refines the target poses by
100 Adam steps of test-time alignment.) Scores: PSNR and SSIM (:mod:`flare_nb.eval.metrics`) over
the whole image (black background where nothing is rendered), LPIPS when local weights are
given.

Methods:

* ``flare-nvs``: the NVS model's own Gaussians (stage 2, ``FlareOutput.gaussians``);
* ``pointmap-splats``: a geometry model's global pointmap turned into one isotropic Gaussian
  per pixel with the context colours (:func:`flare_nb.render.splats.gaussians_from_pointmap`): what
  stage 1 alone gives;
* ``nearest-view``: the context image whose camera centre is nearest the target's, unchanged
  (a floor any method should beat).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from flare_nb.eval.evaluate import (HELD_OUT_SEED_START, format_table,
                                    held_out_seeds, load_flare_for_eval)
from flare_nb.eval.metrics import psnr, ssim
from flare_nb.inference import native_size_wh
from flare_nb.render.splats import gaussians_from_pointmap
from flare_nb.render.targets import render_targets
from flare_nb.scenes.preprocess import check_size
from flare_nb.scenes.sample import as_sample
from flare_nb.scenes.synthetic import make_scene

__all__ = ["NVS_METHODS", "evaluate_novel_views", "main"]

NVS_METHODS = ("flare-nvs", "pointmap-splats", "nearest-view")


def _scores(pred: torch.Tensor, target: torch.Tensor, lpips=None) -> dict:

    pred = pred.clamp(0, 1)
    out = {"PSNR": float(psnr(pred, target)), "SSIM": float(ssim(pred, target))}
    if lpips is not None:
        out["LPIPS"] = float(lpips(pred, target).mean())
    return out


@torch.no_grad()
def evaluate_novel_views(nvs_model=None, geometry_model=None, seeds: Sequence[int] = (1_000_000,), n_views: int = 4,
                         n_targets: int = 2, size=(128, 128), modes: Sequence[str] = ("orbit", "forward"),
                         lpips=None, device="cpu", orbit_arc=None) -> list[dict]:
    """One row per (scene, method): ``{"method", "mode", "n_views", "size", "seed", "PSNR",
    "SSIM"[, "LPIPS"], "time_s"}`` averaged over the scene's target views.

    ``nvs_model``: a ``FlareModel`` of kind ``"nvs"`` (or None to skip ``flare-nvs``);
    ``geometry_model``: kind ``"geometry"`` (or None to skip ``pointmap-splats``);
    ``nearest-view`` always runs. Scenes of every mode in ``modes`` for every seed;
    ``orbit_arc`` ``(lo, hi)`` degrees sets the orbit spread (None: the generator's default).
    """

    if nvs_model is not None and nvs_model.cfg.kind != "nvs":
        raise ValueError(f"nvs_model must be an NVS model (kind 'nvs'), got kind {nvs_model.cfg.kind!r}")
    if geometry_model is not None and geometry_model.cfg.kind != "geometry":
        raise ValueError(f"geometry_model must be a geometry model, got kind {geometry_model.cfg.kind!r}")
    bad = [s for s in seeds if s < HELD_OUT_SEED_START]
    if bad:
        raise ValueError(f"seeds {bad[:3]} are below {HELD_OUT_SEED_START}: training seeds are not evaluated")
    W, H = check_size(size)
    rows = []
    for mode in modes:
        for seed in seeds:
            kw = {"orbit_arc": tuple(orbit_arc)} if orbit_arc is not None and mode == "orbit" else {}
            scene = make_scene(int(seed), n_views + n_targets, (W, H), mode, **kw)
            s = as_sample(scene, scene.source, n_views, torch.Generator(), n_targets)
            s = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            tgt = s["target_images"]
            images = s["images"][None] * 2 - 1
            base = {"mode": mode, "n_views": n_views, "size": f"{W}x{H}", "seed": int(seed)}
            if nvs_model is not None:
                t0 = time.perf_counter()
                out = nvs_model(images, intrinsics=s["K"][None])
                rend, *_ = render_targets(out.gaussians[0], out.pts3d_global[0], s)
                rows.append({"method": "flare-nvs", **base, **_scores(rend.rgb, tgt, lpips),
                             "time_s": time.perf_counter() - t0})
            if geometry_model is not None:
                t0 = time.perf_counter()
                out = geometry_model(images)
                pts = out.pts3d_global[0].float()
                z = out.pts3d_cam[0][..., 2].float().clamp_min(1e-6)
                scale = pts.norm(dim=-1).mean() / out.pts3d_cam[0].float().norm(dim=-1).mean()
                g = gaussians_from_pointmap(pts, s["images"], z * scale, s["K"], valid=torch.ones_like(z, dtype=torch.bool))
                rend, *_ = render_targets(g, pts, s)
                rows.append({"method": "pointmap-splats", **base, **_scores(rend.rgb, tgt, lpips),
                             "time_s": time.perf_counter() - t0})
            t0 = time.perf_counter()
            centres = s["c2w"][:, :3, 3]
            near = torch.cdist(s["target_c2w"][:, :3, 3], centres).argmin(1)
            rows.append({"method": "nearest-view", **base, **_scores(s["images"][near], tgt, lpips),
                         "time_s": time.perf_counter() - t0})
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:

    p = argparse.ArgumentParser(prog="python -m flare_nb.nvs_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--nvs-checkpoint", default="data/checkpoints/tiny_nvs.pt", help="stage-2 (NVS) weights")
    p.add_argument("--nvs-config", default="tiny_nvs")
    p.add_argument("--geometry-checkpoint", default="data/checkpoints/tiny_geometry.pt",
                   help="stage-1 weights for the pointmap-splats baseline ('' to skip it)")
    p.add_argument("--scenes", type=int, default=16, help="held-out scenes per mode")
    p.add_argument("--n-views", type=int, default=4)
    p.add_argument("--n-targets", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=["orbit", "forward"])
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="scene size (default: the NVS model's native size, from its checkpoint; else 128 128)")
    p.add_argument("--orbit-arc", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="orbit spread in degrees, first to last view (default: the generator's 40 200)")
    p.add_argument("--out", default=None, help="write the markdown table here")
    p.add_argument("--json", default=None, help="write the rows here")
    a = p.parse_args(argv)
    t0 = time.time()
    for path in (a.nvs_checkpoint, a.geometry_checkpoint):
        if path and not Path(path).is_file():
            raise SystemExit(f"error: checkpoint not found: {path}")
    nvs = load_flare_for_eval(a.nvs_checkpoint, a.nvs_config, "cpu")
    geo = load_flare_for_eval(a.geometry_checkpoint, "tiny", "cpu") if a.geometry_checkpoint else None
    a.size = list(a.size) if a.size is not None else list(native_size_wh(nvs, (128, 128)))
    rows = evaluate_novel_views(nvs, geo, held_out_seeds(a.scenes), a.n_views, a.n_targets, tuple(a.size), a.modes,
                                orbit_arc=a.orbit_arc)
    cols = ["PSNR", "SSIM"] + (["LPIPS"] if any("LPIPS" in r for r in rows) else []) + ["time_s"]
    table = format_table(rows, columns=cols, group_by=("method", "mode", "n_views", "size"))
    cmd = "python -m flare_nb.nvs_eval " + " ".join(argv if argv is not None else sys.argv[1:])
    md = (f"# Novel views: stage 2 (NVS model) against stage-1 pointmap splats\n\n* command: `{cmd.strip()}`\n"
          f"* protocol: flare_nb/eval/nvs_eval.py docstring; {a.scenes} held-out scenes per mode (seeds from 1000000), "
          f"{a.n_views} context + {a.n_targets} target views, PSNR (dB) / SSIM of the target views\n"
          f"* total {time.time() - t0:.0f} s on CPU\n\n{table}\n")
    print(md)
    if a.out:
        Path(a.out).write_text(md)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
