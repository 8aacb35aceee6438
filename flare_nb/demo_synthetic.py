"""The default ``flare-nb demo``: the shipped tiny model on held-out synthetic scenes, beside the truth.

The tiny model was trained on small procedural scenes (:mod:`flare_nb.scenes.synthetic`), so that
is where its output means something. :func:`run_synthetic_demo` renders one forward walk and one
orbit (of the 20-90 degree spread the model was trained on, :data:`DEMO_ORBIT_ARC`) of a held-out seed (``>= HELD_OUT_SEED_START``, which training never uses) at the model's
working size, runs the usual reconstruction (:func:`flare_nb.pipeline.reconstruct_to_folder`) on
the rendered images and writes, into one ``--out`` folder::

    forward/                 the reconstruction folder (cameras.json, points.ply, scene.html, ...)
    forward/ground_truth/    cameras.json (the true cameras, in the same view order and frame
                             convention: view 0's camera frame, metres) and points.ply (the true points)
    orbit/, orbit/ground_truth/
    comparison.md / .json    per-view camera errors of the model and of the blind priors
    comparison.png           from above: predicted vs true cameras, predicted vs true points

Camera errors, per view ``i >= 1`` against view 0 (the reference), in degrees: the rotation
error is the angle of ``R_rel_gt^T R_rel_pred`` with ``R_rel = R_i^T R_0``; the translation
error is the angle between the directions ``R_i^T (c_0 - c_i)`` (view 0's centre seen from view
``i``), predicted and true, over the full 0-180 range (the pair ``(0, i)`` of
:func:`flare_nb.eval.metrics.relative_pose_errors` with ``sign_invariant=False``). Both are
unchanged by any similarity transform of either trajectory. The summary columns are the
evaluation's: AUC@30 over all view pairs (sign-invariant, the paper's protocol) and pose L1.

Rows: the model's exported cameras (``cameras.json``), its pose head's refined cameras, and the
three blind priors of :mod:`flare_nb.eval.priors` (never shown a pixel; ``constant`` and
``per_view`` fitted on the cameras of :data:`PRIOR_FIT_SCENES` training scenes of the same mode,
as ``python -m flare_nb.evaluate`` does). A model that beats them has learned something from
the images.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flare_nb.cameras import invert_pose
from flare_nb.eval.metrics import pose_auc, pose_l1, relative_pose_errors
from flare_nb.eval.priors import PRIORS, fit_synthetic_priors, prior_poses
from flare_nb.export import save_image, write_cameras_json
from flare_nb.inference import STAGES, checkpoint_native_size
from flare_nb.outdir import MANIFEST, StagedOutput
from flare_nb.pipeline import (Interrupted, _output_options, check_options,
                               default_size, planned_files,
                               precheck_checkpoint, reconstruct_to_folder)
from flare_nb.render.ply import load_points_ply, save_points_ply
from flare_nb.scenes.preprocess import check_size
from flare_nb.scenes.synthetic import HELD_OUT_SEED_START, make_scene, pointmaps
from flare_nb.viz import frustum_points

__all__ = ["run_synthetic_demo", "check_scene_seed", "per_view_errors", "camera_rows",
           "comparison_markdown", "save_comparison_figure", "DEMO_MODES", "DEMO_VIEWS", "SCENE_SEED",
           "PRIOR_FIT_SCENES", "DEMO_ORBIT_ARC", "REAL_PHOTOS_NOTE", "MAX_SEED", "figure_scale"]

DEMO_MODES = ("forward", "orbit")
DEMO_ORBIT_ARC = (20.0, 90.0)    # degrees, first to last orbit view: the spread the shipped tiny model was trained on
DEMO_VIEWS = 4
SCENE_SEED = HELD_OUT_SEED_START
MAX_SEED = 2 ** 63 - 1
PRIOR_FIT_SCENES = 512          # training scenes the constant / per-view priors are fitted on (as evaluate)
REAL_PHOTOS_NOTE = ("the bundled room photos are real photos, outside the tiny model's domain (it was trained on "
                    "small synthetic scenes); the released weights (--checkpoint geometry_pose.pth --config "
                    "official_geometry) are the ones for real photos")
FIGURE_POINTS = 20000           # points drawn per scene in comparison.png
MODEL_STAGE_TIMINGS = {name for _, name in STAGES}   # parts of the reconstruction's "forward" time
SCALE_FIT_POINTS = 1000         # points per set that fit the figure's scale (figure_scale)
PRIOR_LABELS = {"straight": "prior: straight ahead", "constant": "prior: one constant pose",
                "per_view": "prior: one pose per view index"}


def _say(msg: str = "") -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- options
def check_scene_seed(seed) -> int:
    """``--scene-seed``: an int in ``HELD_OUT_SEED_START .. MAX_SEED`` (never a training scene)."""
    try:
        s = int(str(seed).strip())
    except ValueError:
        raise ValueError(f"--scene-seed must be an integer >= {HELD_OUT_SEED_START} (a held-out synthetic "
                         f"scene), got {seed!r}") from None
    if not HELD_OUT_SEED_START <= s <= MAX_SEED:
        raise ValueError(f"--scene-seed must be between {HELD_OUT_SEED_START} and {MAX_SEED} (seeds below "
                         f"{HELD_OUT_SEED_START} are the training scenes), got {s}")
    return s


# ----------------------------------------------------------------------------- errors
def per_view_errors(c2w_pred, c2w_gt) -> tuple[list[float], list[float]]:
    """Rotation and translation errors in degrees of views ``1 .. V-1`` against view 0
    (module docstring): the pairs ``(0, i)`` of ``relative_pose_errors(sign_invariant=False)``."""
    rot, trans, pairs = relative_pose_errors(c2w_pred, c2w_gt, sign_invariant=False)
    first = pairs[:, 0] == 0
    return [float(x) for x in rot[first]], [float(x) for x in trans[first]]


def _row(method: str, cameras: str, c2w_pred, c2w_gt) -> dict:
    rot, trans = per_view_errors(c2w_pred, c2w_gt)
    r_all, t_all, _ = relative_pose_errors(c2w_pred, c2w_gt)
    return {"method": method, "cameras": cameras, "rot_err_deg": rot, "trans_err_deg": trans,
            "mean_rot_err_deg": float(np.mean(rot)), "mean_trans_err_deg": float(np.mean(trans)),
            "AUC@30": pose_auc(r_all, t_all, 30), "pose_L1": pose_l1(c2w_pred, c2w_gt)}


def camera_rows(cams: dict, c2w_gt: torch.Tensor, fitted: dict) -> list[dict]:
    """The comparison rows of one scene: ``cams`` is the model's ``cameras.json`` (a dict),
    ``c2w_gt (V, 4, 4)`` the true cameras in its view order, ``fitted`` from
    :func:`flare_nb.eval.priors.fit_priors` for the scene's mode. Rows: the exported cameras,
    the refined pose head's when the exported ones are PnP's, then the three priors."""
    V = len(cams["views"])
    pred = torch.tensor([v["c2w"] for v in cams["views"]], dtype=torch.float64)
    head = torch.tensor(cams["pose_head"]["refined_c2w"], dtype=torch.float64)
    rows = [_row("model", f"cameras.json ({cams['pose_source']})", pred, c2w_gt)]
    if not str(cams["pose_source"]).startswith("refined pose head"):     # PnP cameras: the pose head beside them
        rows.append(_row("model, pose head", "cameras.json pose_head.refined_c2w", head, c2w_gt))
    rows += [_row(PRIOR_LABELS[k], f"{k}: blind, never sees the images", prior_poses(k, V, fitted), c2w_gt)
             for k in PRIORS]
    return rows


def comparison_markdown(scenes: list[dict]) -> str:
    """The tables of ``comparison.md`` (also printed by the demo)."""
    L = []
    for sc in scenes:
        V = len(sc["rows"][0]["rot_err_deg"]) + 1
        L += [f"### {sc['mode']} scene, seed {sc['seed']} ({V} views, {sc['size'][0]}x{sc['size'][1]})", "",
              "Rotation / translation error in degrees of each view against view 0; AUC@30 over all view "
              "pairs (higher is better), pose L1 (lower is better). The model's cameras (`cameras.json`): "
              f"{sc['pose_source']}.", "",
              "| cameras | " + " | ".join(f"view {i}" for i in range(1, V)) + " | mean | AUC@30 | pose L1 |",
              "|---|" + "---|" * (V + 2)]
        for r in sc["rows"]:
            cells = [f"{a:.1f} / {b:.1f}" for a, b in zip(r["rot_err_deg"], r["trans_err_deg"])]
            L.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['mean_rot_err_deg']:.1f} / "
                     f"{r['mean_trans_err_deg']:.1f} | {r['AUC@30']:.3f} | {r['pose_L1']:.3f} |")
        L.append("")
    return "\n".join(L)


# ----------------------------------------------------------------------------- figure
def _to_world(c2w: torch.Tensor, scale: float, world_view0: torch.Tensor) -> torch.Tensor:
    """Cameras in view 0's frame (prediction units) -> the scene's world (metres)."""
    T = c2w.double().clone()
    T[:, :3, 3] *= scale
    return world_view0.double() @ T


def _points_world(P: torch.Tensor, scale: float, world_view0: torch.Tensor) -> np.ndarray:
    W = world_view0.double()
    return (P.double() * scale @ W[:3, :3].T + W[:3, 3]).numpy()


def _subsample(P: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if len(P) <= n:
        return P
    return P[np.random.default_rng(seed).choice(len(P), n, replace=False)]


def figure_scale(P_pred: torch.Tensor, P_true: torch.Tensor, n: int = SCALE_FIT_POINTS) -> float:
    """The scale that puts the predicted points (view 0's frame, prediction units) onto the true
    ones (view 0's frame, metres), for the figure only: the factor, on a grid of 33 values over
    x1/8 .. x8 of the ratio of median distances from view 0, with the smallest symmetric
    median nearest-neighbour distance (predicted to true plus true to predicted), measured on
    ``n`` random points of each set. 1.0 without points."""
    from scipy.spatial import cKDTree

    A = _subsample(P_pred.double().numpy(), n, 1)
    B = _subsample(P_true.double().numpy(), n, 0)
    A, B = A[np.isfinite(A).all(1)], B[np.isfinite(B).all(1)]
    if not len(A) or not len(B):
        return 1.0
    da, db = float(np.median(np.linalg.norm(A, axis=1))), float(np.median(np.linalg.norm(B, axis=1)))
    if not da > 0 or not db > 0:
        return 1.0
    tree_a, tree_b = cKDTree(A), cKDTree(B)
    best, best_cost = db / da, math.inf
    for s in db / da * 2.0 ** np.linspace(-3, 3, 33):       # |b - s a| = s |b / s - a|: one tree of A serves all s
        cost = np.median(tree_b.query(A * s)[0]) + s * np.median(tree_a.query(B / s)[0])
        if cost < best_cost:
            best, best_cost = float(s), cost
    return best


def _draw_cameras(ax, c2w, K, hw, scale, colour, label):
    F = frustum_points(c2w, K, hw, scale)
    for i in range(len(F)):
        for a, b in ((0, 1), (0, 2), (1, 2)):         # apex and the top edge, seen from above
            ax.plot(F[i, [a, b], 0], F[i, [a, b], 1], color=colour, lw=1.2,
                    label=label if (i, a, b) == (0, 0, 1) else None)
        ax.text(F[i, 0, 0], F[i, 0, 1], f" {i}", color=colour, fontsize=8)


def save_comparison_figure(path, scenes: list[dict]) -> Path:
    """``comparison.png``: per scene, from above (the world's +z is up), the true cameras
    (black) and the model's (red), then the true points (grey) and the model's pointmap
    (orange). The prediction lives in view 0's frame at its own scale: it is placed by the true
    pose of view 0 and scaled by :func:`figure_scale` (fitted on the points)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(11, 5.2 * len(scenes)))
    for k, sc in enumerate(scenes):
        wv0, s, K, hw = sc["world_view0"], sc["scale"], sc["K"], sc["hw"]
        gt = _to_world(sc["c2w_gt"], 1.0, wv0)
        pred = _to_world(sc["c2w_pred"], s, wv0)
        P_gt = _subsample(_points_world(sc["points_gt"], 1.0, wv0), FIGURE_POINTS)
        P_pred = _subsample(_points_world(sc["points_pred"], s, wv0), FIGURE_POINTS, 1)
        centres = gt[:, :3, 3].numpy()
        size = float(np.ptp(np.concatenate([centres, P_gt]), 0)[:2].max()) if len(P_gt) else 1.0
        fr = 0.08 * size
        ax = fig.add_subplot(len(scenes), 2, 2 * k + 1)
        _draw_cameras(ax, gt, K, hw, fr, "black", "true cameras")
        _draw_cameras(ax, pred, K, hw, fr, "tab:red", "model's cameras (cameras.json)")
        ax.set_title(f"{sc['mode']} (seed {sc['seed']}): cameras from above", fontsize=10)
        ax2 = fig.add_subplot(len(scenes), 2, 2 * k + 2)
        if len(P_gt):
            ax2.scatter(P_gt[:, 0], P_gt[:, 1], s=0.3, c="0.6", linewidths=0)
        if len(P_pred):
            ax2.scatter(P_pred[:, 0], P_pred[:, 1], s=0.3, c="tab:orange", linewidths=0)
        ax2.plot(centres[:, 0], centres[:, 1], "k^", ms=5)
        ax2.set_title(f"{sc['mode']}: points from above", fontsize=10)
        for a in (ax, ax2):
            a.set_aspect("equal", adjustable="datalim")
            a.set_xlabel("x (m)")
            a.set_ylabel("y (m)")
        ax.legend(fontsize=7, loc="best")
        ax2.legend(handles=[Line2D([], [], ls="", marker="o", ms=4, color=c, label=t) for c, t in
                            (("0.6", "true points"), ("tab:orange", "model's pointmap"))]
                   + [Line2D([], [], ls="", marker="^", ms=5, color="k", label="true camera centres")],
                   fontsize=7, loc="best")
    fig.suptitle("prediction placed by view 0's true pose, its scale fitted on the points (figure only; the errors "
                 "in comparison.md do not depend on it)", fontsize=9)
    height = 5.2 * len(scenes)                          # inches; fixed margins: tight_layout costs 0.4 s here
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.6 / height, top=1 - 0.75 / height, wspace=0.25, hspace=0.35)
    path = Path(path)
    fig.savefig(path, dpi=80)
    return path


# ----------------------------------------------------------------------------- the demo
def _model_size(checkpoint, config, model_kind):
    """The working size ``(W, H)`` of the model the demo will run: the size its checkpoint says it
    was trained at (read from the file, the model is not built), else the configuration's default."""
    fallback = default_size(config if isinstance(config, str) else "tiny")
    if model_kind != "geometry":
        return fallback
    if checkpoint not in (None, ""):
        precheck_checkpoint(Path(checkpoint))
    hw = checkpoint_native_size(checkpoint, config)
    return fallback if hw is None else check_size((int(hw[1]), int(hw[0])))


def _photo_names(mode: str, seed: int, views: int) -> list[str]:
    return [f"{mode}_{seed}_view{i}.png" for i in range(views)]


def _planned(seed: int, views: int, render: bool) -> list[str]:
    """Every relative path the demo may write into ``--out``."""
    names = ["comparison.md", "comparison.json", "comparison.png"]
    for m in DEMO_MODES:
        names += [f"{m}/ground_truth/cameras.json", f"{m}/ground_truth/points.ply"]
        names += [f"{m}/{n}" for n in planned_files(_photo_names(m, seed, views), render=render)]
    return names


def _scene_files(scene, mode: str, seed: int, folder: Path) -> list[Path]:
    """The rendered views as PNG files (the pipeline reads photos from files)."""
    folder.mkdir(parents=True)
    return [save_image(folder / n, scene.images[i]) for i, n in enumerate(_photo_names(mode, seed, scene.n_views))]


def _ground_truth(scene, cams: dict, folder: Path) -> dict:
    """Write ``ground_truth/`` for one scene in the model's view order; returns what the
    comparison needs."""
    order = list(cams["order"])
    c2w_world = scene.c2w.double()[order]
    world_view0 = c2w_world[0].clone()
    c2w_gt = invert_pose(world_view0)[None] @ c2w_world            # view 0's frame, metres
    K = scene.K[order]
    H, W = scene.hw
    names = [v["image"] for v in cams["views"]]
    gt_dir = folder / "ground_truth"
    gt_dir.mkdir()
    write_cameras_json(gt_dir / "cameras.json", c2w_gt, K, names, (H, W),
                       extra={"source": scene.source, "order": order, "units": "metres",
                              "world_c2w_of_view0": [[float(x) for x in r] for r in world_view0.tolist()],
                              "note": "the true cameras of the synthetic scene, in the view order and frame of "
                                      "../cameras.json (view 0's camera frame); world_c2w_of_view0 places them in "
                                      "the scene's world (+z up, floor at z = 0)"})
    valid = scene.depth > 0
    to_view0 = invert_pose(world_view0)
    pts = pointmaps(scene, "world").double()[valid] @ to_view0[:3, :3].T + to_view0[:3, 3]
    cols = scene.images.permute(0, 2, 3, 1)[valid]
    save_points_ply(gt_dir / "points.ply", pts, cols)
    return {"c2w_gt": c2w_gt, "world_view0": world_view0, "K": K.double(), "hw": (H, W), "points_gt": pts}


def run_synthetic_demo(out, scene_seed=SCENE_SEED, views: int = DEMO_VIEWS, size=None, force: bool = False,
                       checkpoint=None, config="tiny", device="auto", ref_view="auto", model: str = "geometry",
                       **kw) -> dict:
    """The default ``flare-nb demo`` (module docstring). ``kw`` go to
    :func:`flare_nb.pipeline.reconstruct_to_folder`. ``ref_view="auto"`` keeps the trajectory's
    first view as the reference (as in training). Returns ``{"out", "scenes": [comparison per
    scene], "files", "timings"}``. Bad options raise ValueError before any output exists; ``--out`` is
    staged as by the pipeline (:mod:`flare_nb.outdir`). ``timings``: seconds per step of the demo,
    summed over the two scenes; the entries indented by two spaces are the reconstruction's own
    stages (part of ``reconstruct``), as ``benchmarks/bench_demo_stages.py`` prints them."""
    seed = check_scene_seed(scene_seed)
    if isinstance(views, bool) or not isinstance(views, int) or not 2 <= views <= 8:
        raise ValueError(f"--views must be between 2 and 8 (FLARE is trained on 2-8 views), got {views!r}")
    check_options(kw.get("conf_threshold", 0.5), kw.get("pnp_iterations"), kw.get("max_views", 8))
    _output_options(model, config, checkpoint, kw.get("dtype", "fp32"), kw.get("geometry_checkpoint"))
    out = Path(out)
    folder = StagedOutput(out, force)
    folder.check(_planned(seed, views, kw.get("render", True)))
    size = _model_size(checkpoint, config, model) if size is None else check_size(tuple(size))
    Wd, Hd = size
    ref = 0 if str(ref_view) == "auto" else ref_view
    for old in folder.leftovers():
        print(f"flare-nb: warning: {old} is the INCOMPLETE output of an interrupted run (not used); delete it",
              file=sys.stderr, flush=True)
    stage = folder.begin()
    tmp = Path(tempfile.mkdtemp(prefix="flare-nb-demo-scenes-"))
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - t0
        return now

    try:
        scenes, results = [], []
        for mode in DEMO_MODES:
            t = time.perf_counter()
            _say(f"== {mode} scene, seed {seed} (held out: training uses seeds below {HELD_OUT_SEED_START}), "
                 f"{views} views rendered at {Wd}x{Hd} ==")
            arc = {"orbit_arc": DEMO_ORBIT_ARC} if mode == "orbit" else {}
            # the torch ray caster: the same scene as open3d's up to float32 rounding (identical once
            # saved as 8-bit PNG but for rare pixels), and no second of open3d import at start-up
            scene = make_scene(seed, views, (Wd, Hd), mode, raycast="torch", **arc)
            photos = _scene_files(scene, mode, seed, tmp / mode)
            t = lap("render the scenes", t)
            res = reconstruct_to_folder(photos, stage / mode, checkpoint=checkpoint, config=config, size=size,
                                        device=device, ref_view=ref, force=False, model=model,
                                        title=f"flare-nb demo: synthetic {mode} scene, seed {seed} (held out)", **kw)
            t = lap("reconstruct (flare-nb reconstruct)", t)
            for k, v in res["timings"].items():             # forward's four model stages are left out
                if k != "total" and k not in MODEL_STAGE_TIMINGS:
                    timings[f"  {k}"] = timings.get(f"  {k}", 0.0) + v
            (stage / mode / MANIFEST).unlink(missing_ok=True)         # one manifest, for the whole --out
            cams = json.loads((stage / mode / "cameras.json").read_text())
            gt = _ground_truth(scene, cams, stage / mode)
            t = lap("ground truth", t)
            fitted = fit_synthetic_priors(mode, views, PRIOR_FIT_SCENES, 0, **arc)
            rows = camera_rows(cams, gt["c2w_gt"], fitted)
            t = lap("priors and errors", t)
            P_pred = load_points_ply(stage / mode / "points.ply")["points"].double()
            scale = figure_scale(P_pred, gt["points_gt"])
            lap("comparison figure", t)
            pred_c2w = torch.tensor([v["c2w"] for v in cams["views"]], dtype=torch.float64)
            scenes.append({"mode": mode, "seed": seed, "folder": mode, "size": [Wd, Hd], "order": cams["order"],
                           "weights": cams["weights"], "pose_source": cams["pose_source"],
                           "figure_scale": scale, "rows": rows})
            results.append({**gt, "mode": mode, "seed": seed, "c2w_pred": pred_c2w, "points_pred": P_pred,
                            "scale": scale})
        t = time.perf_counter()
        table = comparison_markdown(scenes)
        doc = {"scene_seed": seed, "views": views, "size": [Wd, Hd], "prior_fit_scenes": PRIOR_FIT_SCENES,
               "errors": "per view i >= 1 against view 0, degrees: rotation = angle of R_rel_gt^T R_rel_pred, "
                         "R_rel = R_i^T R_0; translation = angle between the predicted and true directions of "
                         "R_i^T (c_0 - c_i), 0-180. AUC@30 over all view pairs (sign-invariant), pose L1 as "
                         "flare_nb.eval.metrics.pose_l1",
               "ground_truth": {m: f"{m}/ground_truth/cameras.json" for m in DEMO_MODES},
               "scenes": scenes}
        (stage / "comparison.json").write_text(json.dumps(doc, indent=1) + "\n")
        (stage / "comparison.md").write_text(
            f"# flare-nb demo: the model on held-out synthetic scenes (seed {seed})\n\n"
            f"Weights: {scenes[0]['weights']}. Each scene's folder holds the reconstruction and "
            "`ground_truth/` (the true cameras and points, same view order and frame). The priors never see "
            f"the images (`flare_nb.eval.priors`; constant and per-view fitted on {PRIOR_FIT_SCENES} training "
            "scenes of the same mode). `comparison.png`: cameras and points from above.\n\n" + table)
        save_comparison_figure(stage / "comparison.png", results)
        t = lap("comparison figure", t)
        files = folder.commit()
        lap("comparison files and commit", t)
    except KeyboardInterrupt:
        raise Interrupted(folder.abort()) from None
    except BaseException as e:
        e.out_note = folder.abort()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _say("")
    _say(table)
    _say(f"demo done: {out} ({', '.join(f'{m}/' for m in DEMO_MODES)} the reconstructions, each with ground_truth/; "
         "comparison.md, comparison.json, comparison.png)")
    return {"out": out, "scenes": scenes, "files": files, "timings": timings}
