"""The full evaluation of a FLARE checkpoint against COLMAP (notebook 07, ``scripts/evaluate_tiny.sh``).

Two tables, built from :mod:`flare_nb.eval.evaluate`:

* held-out synthetic scenes (seeds >= 1 000 000), 2, 4 and 8 views, orbit and forward modes:
  FLARE's three kinds of cameras (``flare/stage1`` coarse pose head, ``flare/stage2`` refined
  pose head, ``flare/pnp`` PnP on the global pointmaps), ``colmap`` and the blind pose priors
  ``prior/*`` (:mod:`flare_nb.eval.priors`);
* the real sample scenes with ground-truth cameras (``fountain-P11``, ``flare_gt_cam``),
  same methods.

Command line::

    python -m flare_nb.eval_report --checkpoint data/checkpoints/tiny_geometry.pt \\
        --scenes 16 --out data/checkpoints/tiny_geometry_eval.md [--json rows.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from flare_nb import data_dir
from flare_nb.eval.evaluate import (POSE_SOURCES, colmap_method,
                                    evaluate_on_synthetic, evaluate_scene,
                                    flare_method, format_table, held_out_seeds,
                                    load_flare_for_eval)
from flare_nb.eval.priors import PRIORS, prior_method
from flare_nb.inference import native_size_wh
from flare_nb.scenes.scene import load_scene

__all__ = ["REAL_SCENES", "build_methods", "default_sizes", "synthetic_rows", "real_rows", "load_real_scene", "report_markdown",
           "main"]

#: the shipped real scenes with ground-truth cameras (folders of ``data/real``)
REAL_SCENES = ("fountain-P11", "flare_gt_cam")
REAL_GROUP = ("method", "scene", "n_views", "size")


def build_methods(checkpoint: str = "", sources: Sequence[str] = POSE_SOURCES, colmap: bool = True,
                  device: str = "cpu", pnp_iterations: int = 1000, model=None, priors: bool = True,
                  orbit_arc=None) -> dict[str, Callable]:
    """``{"flare/<source>": predict_fn, ..., "colmap": predict_fn}``: one FLARE model (loaded once
    with :func:`flare_nb.eval.evaluate.load_flare_for_eval` unless ``model`` is given) scored with each
    pose source of ``sources``, plus the COLMAP baseline and (``priors``) the blind pose priors
    ``prior/straight``, ``prior/constant``, ``prior/per_view`` (:mod:`flare_nb.eval.priors`, fitted on
    synthetic training cameras; scored on synthetic scenes only). The FLARE functions carry
    ``.weights_label``."""
    bad = [s for s in sources if s not in POSE_SOURCES]
    if bad:
        raise ValueError(f"build_methods: unknown pose source(s) {bad}; expected some of {POSE_SOURCES}")
    if model is None and sources:
        model = load_flare_for_eval(checkpoint, "tiny", device)
    out = {f"flare/{s}": flare_method(poses=s, device=device, pnp_iterations=pnp_iterations, model=model)
           for s in sources}
    if colmap:
        out["colmap"] = colmap_method()
    if priors:
        out.update({f"prior/{k}": prior_method(k, orbit_arc=orbit_arc) for k in PRIORS})
    return out


def default_sizes(native_wh=None) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(synthetic size, real size)``, both ``(W, H)``, for a model of native size ``native_wh``
    (W, H; :func:`flare_nb.inference.native_size_wh`; None: 128x128): the synthetic scenes at the
    native size, the real 4:3 photos at twice its width and 1.5 times its height, each rounded to
    a multiple of 64 (256x192 for a 128x128 model, 128x128 for a 64x64 one)."""
    W, H = native_wh or (128, 128)
    r64 = lambda v: max(64, int(v / 64 + 0.5) * 64)  # noqa: E731
    return (W, H), (r64(2 * W), r64(1.5 * H))


def synthetic_rows(methods: dict, n_views: Sequence[int] = (2, 4, 8), modes: Sequence[str] = ("orbit", "forward"),
                   scenes: int = 8, size=(128, 128), progress: Callable[[str], None] | None = None,
                   orbit_arc=None) -> list[dict]:
    """Rows of :func:`flare_nb.eval.evaluate.evaluate_on_synthetic` for every method x view count x
    mode, on the first ``scenes`` held-out seeds (the same scenes for every method)."""
    rows = []
    seeds = held_out_seeds(scenes)
    for nv in n_views:
        for name, fn in methods.items():
            t0 = time.perf_counter()
            r = evaluate_on_synthetic(fn, seeds, nv, tuple(size), list(modes), method=name, orbit_arc=orbit_arc)
            rows += r
            if progress is not None:
                progress(f"{name:>12s}  {nv} views  {len(r)} scenes  {time.perf_counter() - t0:.1f} s")
    return rows


def load_real_scene(name: str, size=(256, 192), max_views: int | None = 8):
    """A real scene of ``data/real/<name>`` at ``size (W, H)`` with at most ``max_views`` views
    (evenly spread), via :func:`flare_nb.scenes.scene.load_scene`."""

    path = data_dir() / "real" / name
    if not path.exists():
        raise FileNotFoundError(f"no real scene {name!r} at {path}; shipped: {list(REAL_SCENES)}")
    scene = load_scene(path, size=tuple(size), max_views=max_views)
    return scene


def real_rows(methods: dict, names: Sequence[str] = REAL_SCENES, size=(256, 192), max_views: int | None = 8,
              progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per method and real scene (:func:`flare_nb.eval.evaluate.evaluate_scene`); the
    ``scene`` column holds the folder name."""
    rows = []
    for name in names:
        scene = load_real_scene(name, size, max_views)
        for mname, fn in methods.items():
            if mname.startswith("prior/") and mname != "prior/straight":
                continue                     # fitted on synthetic trajectories: no prior for a real scene
            r = evaluate_scene(fn, scene, mname)
            r["scene"] = name
            rows.append(r)
            if progress is not None:
                progress(f"{mname:>12s}  {name}  RRA@15 {r['RRA@15']:.1f}  registered {r['registered_%']:.0f}%")
    return rows


def report_markdown(syn: Sequence[dict], real: Sequence[dict], title: str, notes: Sequence[str] = ()) -> str:
    """The report: title, notes (bullets), the synthetic table and the real-scene table."""
    parts = [f"# {title}", ""]
    parts += [f"* {n}" for n in notes]
    if syn:
        parts += ["", "## Held-out synthetic scenes", "", format_table(syn)]
    if real:
        parts += ["", "## Real scenes with ground-truth cameras", "", format_table(real, group_by=REAL_GROUP)]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m flare_nb.eval_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="", help="FLARE weights ('' = data/checkpoints/tiny_geometry.pt or random)")
    p.add_argument("--scenes", type=int, default=16, help="held-out synthetic scenes per mode and view count")
    p.add_argument("--n-views", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--modes", nargs="+", default=["orbit", "forward"])
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="synthetic size (default: the model's native size, from its checkpoint; else 128 128)")
    p.add_argument("--real-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="real-scene size (default: 2x the native width, 1.5x its height, multiples of 64; 256 192 "
                        "for a 128x128 model)")
    p.add_argument("--real-views", type=int, default=8)
    p.add_argument("--no-colmap", action="store_true")
    p.add_argument("--no-priors", action="store_true", help="leave out the blind pose priors")
    p.add_argument("--orbit-arc", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="orbit spread in degrees (default: the generator's 40 200)")
    p.add_argument("--pnp-iterations", type=int, default=1000)
    p.add_argument("--out", default=None, help="write the markdown report here")
    p.add_argument("--json", default=None, help="write all rows here")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    methods = build_methods(a.checkpoint, colmap=not a.no_colmap, pnp_iterations=a.pnp_iterations,
                            priors=not a.no_priors, orbit_arc=a.orbit_arc)
    label = next((getattr(f, "weights_label", "") for f in methods.values() if hasattr(f, "weights_label")), "")
    model = next((f.model for f in methods.values() if hasattr(f, "model")), None)
    syn_size, real_size = default_sizes(native_size_wh(model))
    a.size = list(a.size) if a.size is not None else list(syn_size)
    a.real_size = list(a.real_size) if a.real_size is not None else list(real_size)
    syn = synthetic_rows(methods, a.n_views, a.modes, a.scenes, a.size, progress=print, orbit_arc=a.orbit_arc)
    real = real_rows(methods, REAL_SCENES, a.real_size, a.real_views, progress=print)
    cmd = "python -m flare_nb.eval_report " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    notes = [f"command: `{cmd.strip()}`", f"weights: {label}",
             f"synthetic: {a.scenes} held-out scenes per mode (seeds from 1000000), {a.size[0]}x{a.size[1]}; "
             f"real: up to {a.real_views} evenly spread views at {a.real_size[0]}x{a.real_size[1]} (WxH)",
             "flare/stage1 = coarse pose head, flare/stage2 = refined pose head, flare/pnp = PnP (SQPnP, "
             f"{a.pnp_iterations} RANSAC iterations) on the global pointmaps with the focal estimated from view 0",
             "prior/* = blind pose priors that never look at the images (straight ahead; one pose for every "
             "source view; one pose per view index; the last two fitted on 512 synthetic training trajectories "
             "of the mode): a model has learned only where it beats all three",
             "RRA/RTA in % of view pairs under the threshold (degrees), AUC@30 in [0, 1], pose_L1 the pose "
             "loss's L1 (relative to view 0, mean-norm translations; 0 is perfect); unregistered views "
             "count as failed pairs; chamfer: Sim(3)-aligned global pointmaps vs. ground truth (scene units)",
             f"CPU, {platform.processor() or platform.machine()}; total {time.perf_counter() - t0:.0f} s"]
    md = report_markdown(syn, real, "FLARE evaluation", notes)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(md)
    if a.json:
        Path(a.json).write_text(json.dumps(syn + real, indent=1))
    print(md)
    return md


if __name__ == "__main__":
    main()
