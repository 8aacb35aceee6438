"""Evaluation toolkit of notebook 07 and the command ``python -m flare_nb.evaluate``.

* :func:`evaluate_poses` -- RRA / RTA / AUC over all view pairs (:mod:`flare_nb.eval.metrics`), with
  views a method failed to register counted as failed pairs (error 180 degrees), never dropped;
* :func:`evaluate_on_synthetic` -- run any method on held-out synthetic scenes, one row (a dict)
  per scene;
* :func:`format_table` -- mean and std per method as a markdown table;
* :data:`METHODS` -- the registry ``name -> factory``; ``factory(**options)`` returns a
  ``predict_fn``. FLARE and the COLMAP baseline plug in the same way.

A ``predict_fn`` maps a :class:`~flare_nb.scenes.scene.Scene` to either a ``c2w (V, 4, 4)`` tensor or
a dict with ``"c2w"`` (required; camera-to-world, OpenCV axes, any world frame and scale),
optionally ``"registered" (V,)`` bool (default: views with a finite pose), ``"K" (V, 3, 3)``
(adds the focal error) and ``"pointmaps" (V, H, W, 3)`` in the same world frame as ``c2w``
(adds accuracy / completion against the ground-truth depth). The scene it receives holds the
images only: ``K`` and ``c2w`` are NaN and ``depth`` is None, so a method cannot peek.

Held-out seeds: synthetic scenes with ``seed >= HELD_OUT_SEED_START`` (1 000 000) are reserved
for evaluation; training (``flare_nb.scenes.synthetic.SyntheticDataset``) must use seeds below it.
:func:`evaluate_on_synthetic` refuses seeds below it unless told otherwise.

Command line (prints the table)::

    python -m flare_nb.evaluate --method flare --opt poses=stage2 checkpoint=data/checkpoints/tiny_geometry.pt
    python -m flare_nb.evaluate --method flare --given-poses --scenes 16 --size 128 128 --mode orbit forward
    python -m flare_nb.evaluate --method colmap --n-views 4 --scenes 10 [--mode orbit]
        [--size 256 256] [--first-seed 1000000] [--opt key=value ...] [--per-scene] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np
import torch

from flare_nb.eval.baselines import colmap_poses
from flare_nb.eval.metrics import (pointcloud_metrics, pose_l1, pose_summary,
                                   relative_pose_errors)
from flare_nb.eval.priors import prior_method
from flare_nb.inference import load_model, native_size_wh, reconstruct
from flare_nb.model.config import FlareConfig
from flare_nb.scenes.preprocess import check_size
from flare_nb.scenes.scene import Scene
from flare_nb.scenes.synthetic import HELD_OUT_SEED_START, MODES, make_scene
from flare_nb.scenes.synthetic import pointmaps as gt_pointmaps

__all__ = ["FAILED_DEG", "HELD_OUT_SEED_START", "held_out_seeds", "evaluate_poses", "evaluate_pointmaps",
           "evaluate_prediction", "evaluate_on_synthetic", "evaluate_scene", "format_table", "METHODS",
           "register_method", "colmap_method", "flare_method", "load_flare_for_eval", "POSE_SOURCES", "main",
           "given_pose_comparison"]

FAILED_DEG = 180.0                # rotation and translation error of a pair with an unregistered view
THRESHOLDS = (5, 15, 30)
AUC_THRESHOLD = 30
DEFAULT_COLUMNS = ("RRA@5", "RRA@15", "RTA@5", "RTA@15", "AUC@30", "pose_L1", "registered_%", "focal_err_%",
                   "chamfer", "time_s")
GROUP_KEYS = ("method", "mode", "n_views", "size")


def held_out_seeds(n: int, start: int = HELD_OUT_SEED_START) -> list[int]:
    """The ``n`` evaluation seeds ``start, start + 1, ...`` (all ``>= HELD_OUT_SEED_START``)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"held_out_seeds: n must be a positive int, got {n!r}")
    if start < HELD_OUT_SEED_START:
        raise ValueError(f"held_out_seeds: start must be >= {HELD_OUT_SEED_START} (the held-out range), got {start}")
    return list(range(int(start), int(start) + int(n)))


# --------------------------------------------------------------------------------------- poses


def evaluate_poses(pred_c2w, gt_c2w, registered=None, thresholds=THRESHOLDS,
                   auc_threshold: int = AUC_THRESHOLD) -> dict:
    """Pose metrics of a prediction that may have failed on some views (notebook 07).

    ``pred_c2w, gt_c2w (V, 4, 4)`` camera-to-world, OpenCV axes; the prediction may live in any
    frame and scale (relative poses are compared, :func:`flare_nb.eval.metrics.relative_pose_errors`).
    ``registered (V,)`` bool: the views the method produced a pose for; default: the views whose
    ``pred_c2w`` is finite (NaN rows = not registered). A view marked registered must have a
    finite pose. Every pair touching an unregistered view gets rotation and translation error
    ``FAILED_DEG`` = 180, so it fails every threshold: a method is not rewarded for dropping
    the hard views.

    Returns the keys of :func:`flare_nb.eval.metrics.pose_metrics` (``RRA@t``, ``RTA@t`` in percent,
    ``AUC@T`` in [0, 1], ``rot_err (P,)``, ``trans_err (P,)``, ``pairs (P, 2)``) plus
    ``n_views``, ``n_registered``, ``registered_%``, ``n_pairs``, ``n_failed_pairs``.
    """
    pred = torch.as_tensor(pred_c2w).detach().double().cpu()
    gt = torch.as_tensor(gt_c2w).detach().double().cpu()
    if pred.ndim != 3 or tuple(pred.shape[1:]) != (4, 4):
        raise ValueError(f"evaluate_poses: pred_c2w must be (V, 4, 4), got {tuple(pred.shape)}")
    if gt.shape != pred.shape:
        raise ValueError(f"evaluate_poses: gt_c2w must be {tuple(pred.shape)} like pred_c2w, got {tuple(gt.shape)}")
    if not torch.isfinite(gt).all():
        raise ValueError("evaluate_poses: gt_c2w contains non-finite values")
    V = pred.shape[0]
    finite = torch.isfinite(pred).flatten(1).all(1)
    if registered is None:
        registered = finite
    else:
        registered = torch.as_tensor(registered).detach().cpu()
        if registered.dtype != torch.bool or tuple(registered.shape) != (V,):
            raise ValueError(f"evaluate_poses: registered must be a ({V},) bool tensor, got "
                             f"{tuple(registered.shape)} {registered.dtype}")
        bad = torch.nonzero(registered & ~finite).flatten().tolist()
        if bad:
            raise ValueError(f"evaluate_poses: views {bad} are marked registered but their predicted "
                             "pose has non-finite values")
    # unregistered views get a placeholder pose; their pairs are overwritten below
    filled = torch.where(registered[:, None, None], torch.nan_to_num(pred), gt)
    rot, trans, pairs = relative_pose_errors(filled, gt)
    failed = ~(registered[pairs[:, 0]] & registered[pairs[:, 1]])
    rot = torch.where(failed, torch.full_like(rot, FAILED_DEG), rot)
    trans = torch.where(failed, torch.full_like(trans, FAILED_DEG), trans)
    out = pose_summary(rot, trans, thresholds, auc_threshold)
    out.update(n_views=V, n_registered=int(registered.sum()),
               **{"registered_%": 100.0 * float(registered.double().mean())},
               n_pairs=len(pairs), n_failed_pairs=int(failed.sum()),
               rot_err=rot, trans_err=trans, pairs=pairs)
    return out


# ------------------------------------------------------------------------------------ pointmaps


def evaluate_pointmaps(pred_pointmaps, gt_pointmaps, valid, max_points: int = 20000, seed: int = 0) -> dict:
    """Accuracy / completion of predicted pointmaps against the ground truth (notebook 07).

    ``pred_pointmaps, gt_pointmaps (V, H, W, 3)``; ``valid (V, H, W)`` bool (gt depth > 0).
    Pixels where either is invalid or non-finite are dropped; at most ``max_points`` random
    pixels (seeded) are used. The prediction is mapped by the least-squares Sim(3) on the
    pixel correspondences (:func:`flare_nb.eval.metrics.pointcloud_metrics` with ``pred_corr``),
    so any frame and scale is fine. Returns ``accuracy_mean``, ``completion_mean``,
    ``chamfer`` (gt units) and ``n_points``; NaNs when fewer than 3 points are usable.
    """
    P = torch.as_tensor(pred_pointmaps).detach().double().cpu()
    G = torch.as_tensor(gt_pointmaps).detach().double().cpu()
    valid = torch.as_tensor(valid).detach().cpu()
    if P.shape != G.shape or P.ndim != 4 or P.shape[-1] != 3:
        raise ValueError(f"evaluate_pointmaps: pred and gt pointmaps must both be (V, H, W, 3), got "
                         f"{tuple(P.shape)} and {tuple(G.shape)}")
    if tuple(valid.shape) != tuple(G.shape[:3]):
        raise ValueError(f"evaluate_pointmaps: valid must be {tuple(G.shape[:3])}, got {tuple(valid.shape)}")
    m = valid.bool() & torch.isfinite(P).all(-1) & torch.isfinite(G).all(-1)
    p, g = P[m], G[m]
    if len(p) > max_points:
        idx = torch.randperm(len(p), generator=torch.Generator().manual_seed(seed))[:max_points]
        p, g = p[idx], g[idx]
    nan = float("nan")
    if len(p) < 3:
        return dict(accuracy_mean=nan, completion_mean=nan, chamfer=nan, n_points=len(p))
    try:
        r = pointcloud_metrics(p, g, align="sim3", pred_corr=g)
    except ValueError:   # degenerate (collinear / coincident) prediction
        return dict(accuracy_mean=nan, completion_mean=nan, chamfer=nan, n_points=len(p))
    return dict(accuracy_mean=r["accuracy_mean"], completion_mean=r["completion_mean"],
                chamfer=r["chamfer"], n_points=len(p))


# ------------------------------------------------------------------------------------ methods

PredictFn = Callable[[Scene], "torch.Tensor | dict"]


def _images_only(scene: Scene, keep_poses: bool = False) -> Scene:
    """The scene a method sees: images and names; K and c2w NaN (c2w kept with ``keep_poses``),
    no depth."""
    V = scene.n_views
    c2w = scene.c2w if keep_poses else torch.full((V, 4, 4), float("nan"))
    return replace(scene, K=torch.full((V, 3, 3), float("nan")), c2w=c2w, depth=None)


def _as_prediction(out, V: int, hw, where: str) -> dict:
    if isinstance(out, torch.Tensor):
        out = {"c2w": out}
    if not isinstance(out, dict) or "c2w" not in out:
        raise ValueError(f"{where}: a predict_fn must return a (V, 4, 4) c2w tensor or a dict with 'c2w', "
                         f"got {type(out).__name__}")
    pred = dict(out)
    pred["c2w"] = torch.as_tensor(pred["c2w"]).detach().double().cpu()
    if tuple(pred["c2w"].shape) != (V, 4, 4):
        raise ValueError(f"{where}: predicted c2w must be ({V}, 4, 4), got {tuple(pred['c2w'].shape)}")
    if pred.get("K") is not None and tuple(torch.as_tensor(pred["K"]).shape) != (V, 3, 3):
        raise ValueError(f"{where}: predicted K must be ({V}, 3, 3), got {tuple(torch.as_tensor(pred['K']).shape)}")
    if pred.get("pointmaps") is not None and tuple(torch.as_tensor(pred["pointmaps"]).shape) != (V, *hw, 3):
        raise ValueError(f"{where}: predicted pointmaps must be ({V}, {hw[0]}, {hw[1]}, 3), "
                         f"got {tuple(torch.as_tensor(pred['pointmaps']).shape)}")
    return pred


def evaluate_prediction(pred: dict, scene: Scene) -> dict:
    """Metrics of one prediction dict (see module docstring) against a ground-truth scene:
    :func:`evaluate_poses` scalars, plus ``focal_err_%`` (mean relative error of ``fx`` over
    registered views) when ``pred["K"]`` is given and ``accuracy_mean / completion_mean /
    chamfer`` when ``pred["pointmaps"]`` is given and the scene has depth."""
    pred = _as_prediction(pred, scene.n_views, scene.hw, "evaluate_prediction")
    m = evaluate_poses(pred["c2w"], scene.c2w, pred.get("registered"))
    reg = pred.get("registered")
    reg = torch.isfinite(pred["c2w"]).flatten(1).all(1) if reg is None else torch.as_tensor(reg).bool().cpu()
    row = {k: v for k, v in m.items() if not isinstance(v, torch.Tensor)}
    row["pose_L1"] = pose_l1(pred["c2w"], scene.c2w) if bool(reg.all()) else float("nan")
    if pred.get("K") is not None:
        fx = torch.as_tensor(pred["K"]).double()[:, 0, 0]
        fx_gt = scene.K.double()[:, 0, 0]
        ok = reg & torch.isfinite(fx)
        row["focal_err_%"] = (100.0 * ((fx[ok] - fx_gt[ok]).abs() / fx_gt[ok]).mean().item()
                              if ok.any() else float("nan"))
    if pred.get("pointmaps") is not None and scene.depth is not None:

        pm = torch.as_tensor(pred["pointmaps"]).double()
        pm = torch.where(reg[:, None, None, None], pm, torch.full_like(pm, float("nan")))
        row.update(evaluate_pointmaps(pm, gt_pointmaps(scene, "world"), scene.depth > 0))
    return row


def colmap_method(seed: int = 0, camera_model: str = "SIMPLE_RADIAL") -> PredictFn:
    """Factory of the COLMAP baseline's ``predict_fn`` (:func:`flare_nb.eval.baselines.colmap_poses`):
    returns ``c2w``, ``registered`` and the estimated ``K``."""

    def predict(scene: Scene) -> dict:
        r = colmap_poses(scene.images, seed=int(seed), camera_model=camera_model)
        return {"c2w": r.c2w, "registered": r.registered, "K": r.K, "n_points": r.n_points}

    return predict


POSE_SOURCES = ("stage1", "stage2", "pnp")


def load_flare_for_eval(checkpoint=None, config="tiny", device="cpu", seed: int = 0):
    """``FlareModel`` for evaluation via :func:`flare_nb.inference.load_model`; a
    ``flare_nb.train`` checkpoint brings its own model config (e.g. an ablation's
    ``pose_conditioning=False``), which then replaces ``config``."""
    from pathlib import Path


    if checkpoint not in (None, "") and Path(checkpoint).is_file() and str(checkpoint).endswith((".pt", ".pth")):
        try:
            ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception:       # not a plain torch file: load_model reports what is wrong
            ck = None
        if isinstance(ck, dict) and isinstance(ck.get("model_config"), dict):
            mc = {k: tuple(v) if isinstance(v, list) else v for k, v in ck["model_config"].items()}
            config = FlareConfig(**mc)
    return load_model(checkpoint, config=config, device=device, seed=seed)


def flare_method(checkpoint: str = "", config="tiny", poses: str = "stage2", device: str = "cpu",
                 seed: int = 0, pnp_iterations: int = 1000, model=None, given_poses: bool = False) -> PredictFn:
    """Factory of FLARE's ``predict_fn`` (:func:`flare_nb.inference.reconstruct`), notebook 07.

    Args:
        checkpoint: weights (``""``: the default of :func:`flare_nb.inference.load_model`, i.e.
            ``data/checkpoints/tiny_geometry.pt`` if present, else RANDOM weights).
        config: ``"tiny"`` | ``"official_geometry"`` | a ``FlareConfig`` (a training
            checkpoint's own model config takes precedence, :func:`load_flare_for_eval`).
        poses: which cameras are scored: ``"stage1"`` (coarse pose head), ``"stage2"``
            (refined pose head, the default) or ``"pnp"`` (PnP on the global pointmaps with
            the focal estimated from view 0's pointmap, as FLARE's demo; a scene where PnP
            fails counts as nothing registered but view 0).
        device: ``"cpu"`` | ``"auto"`` | ``"cuda"``.
        seed: seed of random tiny weights and of the PnP RANSAC.
        pnp_iterations: RANSAC iterations (only ``poses="pnp"``).
        model: an already built ``FlareModel`` (then ``checkpoint``/``config`` are ignored).
        given_poses: pass the scene's camera-to-world poses to the model (the release's
            known-pose mode, ``reconstruct(camera_poses=...)``); the scene must carry them
            (:func:`evaluate_on_synthetic` with ``give_poses=True``).

    The returned ``predict_fn(scene)`` gives ``c2w (V, 4, 4)`` (view 0 = identity),
    ``registered``, ``K`` (focal from the global pointmap, when estimated) and ``pointmaps``
    (the global head's, view 0's frame). It also has ``predict_fn.model`` and
    ``predict_fn.weights_label``.
    """

    if poses not in POSE_SOURCES:
        raise ValueError(f"flare_method: poses must be one of {POSE_SOURCES}, got {poses!r}")
    if isinstance(pnp_iterations, bool) or not isinstance(pnp_iterations, int) or pnp_iterations < 1:
        raise ValueError(f"flare_method: pnp_iterations must be a positive int, got {pnp_iterations!r}")
    if model is None:
        model = load_flare_for_eval(checkpoint, config, device, seed)

    given_poses = str(given_poses).lower() in ("1", "true", "yes") if isinstance(given_poses, str) else given_poses

    def predict(scene: Scene) -> dict:
        V = scene.n_views
        kw = {}
        if given_poses:
            if not torch.isfinite(scene.c2w).all():
                raise ValueError("flare_method(given_poses=True) needs the scene's poses: evaluate with give_poses=True")
            kw["camera_poses"] = scene.c2w
        r = reconstruct(model, scene.images, device=device, pnp=(poses == "pnp"),
                        pnp_iterations=pnp_iterations, seed=int(seed), **kw)
        if poses == "pnp":
            if r.c2w_pnp is None:          # PnP impossible: only the reference view has a pose
                c2w = torch.full((V, 4, 4), float("nan"))
                c2w[0] = torch.eye(4)
            else:
                c2w = r.c2w_pnp
        else:
            c2w = r.c2w_coarse if poses == "stage1" else r.c2w_refined
        reg = torch.isfinite(c2w).flatten(1).all(1)
        out = {"c2w": c2w, "registered": reg, "pointmaps": r.pts3d_global}
        if r.K is not None:
            out["K"] = r.K.expand(V, 3, 3)
        return out

    predict.model = model
    predict.weights_label = getattr(model, "weights_label", "")
    return predict


def evaluate_scene(predict_fn: PredictFn, scene: Scene, method: str = "method") -> dict:
    """One row of metrics for ``predict_fn`` on a posed scene (e.g. a real one from
    :func:`flare_nb.scenes.scene.load_scene`): the method sees the images only; the row has
    ``method, scene, n_views, size``, the scalars of :func:`evaluate_prediction` (pointmap
    metrics only if the scene has depth) and ``time_s``. Notebook 07."""
    if not callable(predict_fn):
        raise TypeError(f"evaluate_scene: predict_fn must be callable, got {type(predict_fn).__name__}")
    if not isinstance(scene, Scene):
        raise TypeError(f"evaluate_scene: scene must be a flare_nb.scenes.scene.Scene, got {type(scene).__name__}")
    t0 = time.perf_counter()
    out = predict_fn(_images_only(scene))
    dt = time.perf_counter() - t0
    H, W = scene.hw
    row = dict(method=method, scene=scene.source or "scene", n_views=scene.n_views, size=f"{W}x{H}")
    row.update(evaluate_prediction(_as_prediction(out, scene.n_views, scene.hw, f"{method} on {row['scene']}"),
                                   scene))
    row["time_s"] = dt
    return row


# name -> factory(**options) -> predict_fn; FLARE and the COLMAP baseline plug in the same way.
def _prior_factory(kind: str):
    def factory(mode: str | None = None, fit_scenes: int = 512, orbit_arc=None) -> PredictFn:
        return prior_method(kind, mode, fit_scenes=fit_scenes, orbit_arc=orbit_arc)
    factory.__doc__ = (f"The blind '{kind}' pose prior (:mod:`flare_nb.eval.priors`), fitted on ``fit_scenes`` "
                       "synthetic training scenes of the scored scene's mode; it never looks at the images.")
    return factory


METHODS: dict[str, Callable[..., PredictFn]] = {"colmap": colmap_method, "flare": flare_method,
                                                "straight": _prior_factory("straight"),
                                                "constant": _prior_factory("constant"),
                                                "per_view": _prior_factory("per_view")}


def register_method(name: str, factory: Callable[..., PredictFn], overwrite: bool = False) -> None:
    """Add ``factory(**options) -> predict_fn`` to :data:`METHODS` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_method: name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"register_method: factory for {name!r} must be callable")
    if name in METHODS and not overwrite:
        raise ValueError(f"register_method: {name!r} is already registered (pass overwrite=True)")
    METHODS[name] = factory


# --------------------------------------------------------------------------------- synthetic


def evaluate_on_synthetic(predict_fn: PredictFn, seeds: int | Iterable[int] = 10, n_views: int = 4,
                          size=(256, 256), mode: str | Sequence[str] = "orbit", method: str = "method",
                          allow_training_seeds: bool = False, progress: Callable[[dict], None] | None = None,
                          orbit_arc=None, give_poses: bool = False) -> list[dict]:
    """Run ``predict_fn`` on held-out synthetic scenes; one row (dict) per scene and mode.

    ``seeds``: a count ``n`` (the first ``n`` :func:`held_out_seeds`) or explicit seeds, all
    ``>= HELD_OUT_SEED_START`` unless ``allow_training_seeds``. ``n_views``, ``size (W, H)``
    and ``mode`` (``"orbit"``, ``"forward"`` or a list of both) go to
    :func:`flare_nb.scenes.synthetic.make_scene`; ``orbit_arc (lo, hi)`` degrees replaces the default
    orbit spread (the rows' mode then reads ``"orbit lo-hi"``). The method sees the images only (module
    docstring). Each row: ``method, mode, n_views, size, seed``, the scalars of
    :func:`evaluate_prediction` and ``time_s`` (wall time of ``predict_fn``).
    ``progress(row)`` is called after each scene. ``give_poses``: the method also receives the
    true camera-to-world poses in ``scene.c2w`` (for known-pose methods; their pose scores are
    then not a pose estimate). Notebook 07.
    """

    if not callable(predict_fn):
        raise TypeError(f"evaluate_on_synthetic: predict_fn must be callable, got {type(predict_fn).__name__}")
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seeds = held_out_seeds(int(seeds))
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("evaluate_on_synthetic: no seeds given")
    low = [s for s in seeds if s < HELD_OUT_SEED_START]
    if low and not allow_training_seeds:
        raise ValueError(f"evaluate_on_synthetic: seeds {low[:5]} are below {HELD_OUT_SEED_START}, the "
                         "training range; use held_out_seeds(n) or pass allow_training_seeds=True")
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"evaluate_on_synthetic: mode must be one of {MODES} (or a list of them), got {mode!r}")
    W, H = check_size(size)
    rows = []
    for m in modes:
        for s in seeds:
            scene = make_scene(s, n_views, (W, H), m, **({} if orbit_arc is None else {"orbit_arc": tuple(orbit_arc)}))
            t0 = time.perf_counter()
            out = predict_fn(_images_only(scene, keep_poses=give_poses))
            dt = time.perf_counter() - t0
            row = dict(method=method, mode=m, n_views=n_views, size=f"{W}x{H}", seed=s)
            if orbit_arc is not None and m == "orbit":
                row["mode"] = f"orbit {orbit_arc[0]:g}-{orbit_arc[1]:g}"
            row.update(evaluate_prediction(_as_prediction(out, scene.n_views, scene.hw, f"{method} on seed {s}"),
                                           scene))
            row["time_s"] = dt
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


# ------------------------------------------------------------------------------------- table


def _fmt(column: str, x: float) -> str:
    """Percentages 1 decimal, times 2, everything else (AUC, distances) 3."""
    if column.startswith(("RRA", "RTA")) or column.endswith("%"):
        return f"{x:.1f}"
    return f"{x:.2f}" if column.endswith("_s") else f"{x:.3f}"


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None,
                 group_by: Sequence[str] = GROUP_KEYS) -> str:
    """Markdown table of ``rows`` (dicts, e.g. from :func:`evaluate_on_synthetic`): one line per
    group (same values of the ``group_by`` keys present in the rows), each metric as
    ``mean ± std`` over the group's rows (population std, ``ddof=0``; a group of one row shows
    its value alone), plus a ``scenes`` count.

    ``columns`` default: those of ``DEFAULT_COLUMNS`` present in the rows. Missing or NaN
    values are left out of a cell's mean; the cell then says ``(n=k)`` with the number used,
    or ``-`` when none. Percentages (``RRA``, ``RTA``, ``..._%``) get 1 decimal, ``..._s``
    times 2, the rest (AUC, distances) 3.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("format_table: no rows")
    if not all(isinstance(r, dict) for r in rows):
        raise TypeError("format_table: rows must be dicts")
    keys = [k for k in group_by if any(k in r for r in rows)]
    if columns is None:
        columns = [c for c in DEFAULT_COLUMNS if any(c in r for r in rows)]
    else:
        missing = [c for c in columns if not any(c in r for r in rows)]
        if missing:
            raise ValueError(f"format_table: no row has column(s) {missing}; available: "
                             f"{sorted({k for r in rows for k in r})}")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k, "") for k in keys), []).append(r)
    header = [*keys, "scenes", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for gkey, grows in groups.items():
        cells = [str(v) for v in gkey] + [str(len(grows))]
        for c in columns:
            vals = [float(r[c]) for r in grows if c in r and r[c] is not None and math.isfinite(float(r[c]))]
            if not vals:
                cells.append("-")
                continue
            cell = _fmt(c, float(np.mean(vals)))
            if len(grows) > 1:
                cell += f" ± {_fmt(c, float(np.std(vals)))}"
            if len(vals) < len(grows):
                cell += f" (n={len(vals)})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- CLI


def _parse_opts(items: Sequence[str]) -> dict:
    opts = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--opt expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            opts[k] = json.loads(v)
        except json.JSONDecodeError:
            opts[k] = v
    return opts


def given_pose_comparison(predicted: Sequence[dict], given: Sequence[dict], key: str = "chamfer") -> str:
    """A few lines comparing ``key`` (default the chamfer distance of the Sim(3)-aligned global
    pointmaps) per mode between rows with predicted poses and rows of the same scenes with the
    true poses given: mean, median of the per-scene ratio given / predicted, scenes improved."""
    lines = []
    pairs: dict = {}
    for r in predicted:
        pairs.setdefault((r["mode"], r["n_views"], r["size"], r["seed"]), [None, None])[0] = r.get(key)
    for r in given:
        k = (r["mode"], r["n_views"], r["size"], r["seed"])
        if k in pairs:
            pairs[k][1] = r.get(key)
    groups: dict = {}
    for (mode, n, size, _), (a, b) in pairs.items():
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            groups.setdefault((mode, n, size), []).append((a, b))
    for (mode, n, size), ab in sorted(groups.items()):
        a = np.array([x for x, _ in ab])
        b = np.array([y for _, y in ab])
        lines.append(f"{key} {mode}, {n} views, {size}, {len(ab)} scenes: predicted poses {a.mean():.4f}, "
                     f"true poses given {b.mean():.4f} (median ratio given/predicted {np.median(b / a):.3f}; "
                     f"lower with given poses in {int((b < a).sum())} of {len(ab)} scenes)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """``python -m flare_nb.evaluate``: evaluate a registered method on held-out synthetic
    scenes and print the markdown table; returns the rows."""
    p = argparse.ArgumentParser(prog="python -m flare_nb.evaluate",
                                description="Pose (and pointmap) metrics of a method on held-out synthetic scenes.")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(sorted(METHODS))}")
    p.add_argument("--n-views", type=int, default=4)
    p.add_argument("--scenes", type=int, default=10, help="number of held-out scenes per mode")
    p.add_argument("--mode", nargs="+", default=["orbit"], help="orbit and/or forward")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="scene size (default: the FLARE model's native size, from its checkpoint; else 256 256)")
    p.add_argument("--first-seed", type=int, default=HELD_OUT_SEED_START)
    p.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE", help="options for the method's factory")
    p.add_argument("--orbit-arc", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="orbit spread in degrees (default: the generator's 40 200); priors are fitted on it too")
    p.add_argument("--priors", action="store_true",
                   help="also score the blind pose priors (straight, constant, per_view) on the same scenes")
    p.add_argument("--per-scene", action="store_true", help="also print one line per scene")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    p.add_argument("--given-poses", action="store_true",
                   help="flare only: run every scene twice, with predicted and with the true camera poses given "
                        "(the release's known-pose mode), and compare the global pointmaps' chamfer distance")
    a = p.parse_args(argv)
    if a.method not in METHODS:
        p.error(f"unknown method {a.method!r}; registered: {', '.join(sorted(METHODS))}")
    try:
        predict_fn = METHODS[a.method](**_parse_opts(a.opt))
    except (TypeError, ValueError) as e:
        p.error(f"cannot build method {a.method!r} with options {a.opt}: {e}")
    if a.given_poses and a.method != "flare":
        p.error(f"--given-poses works with --method flare only, got {a.method!r}")
    size = tuple(a.size) if a.size is not None else native_size_wh(getattr(predict_fn, "model", None), (256, 256))
    methods = [(a.method, predict_fn)]
    if a.priors:
        methods += [(k, METHODS[k](orbit_arc=a.orbit_arc)) for k in ("straight", "constant", "per_view")
                    if k != a.method]
    rows = []
    try:
        seeds = held_out_seeds(a.scenes, a.first_seed)
        for name, fn in methods:
            rows += evaluate_on_synthetic(fn, seeds, a.n_views, size, a.mode, method=name,
                                          orbit_arc=a.orbit_arc)
        given_rows = []
        if a.given_poses:
            given_fn = flare_method(**{**_parse_opts(a.opt), "model": predict_fn.model, "given_poses": True})
            given_rows = evaluate_on_synthetic(given_fn, seeds, a.n_views, size, a.mode,
                                               method=f"{a.method} (true poses given)", give_poses=True,
                                               orbit_arc=a.orbit_arc)
    except ValueError as e:
        p.error(str(e))
    pred_rows, rows = [r for r in rows if r["method"] == a.method], rows + given_rows
    if a.per_scene:
        print(format_table(rows, group_by=(*GROUP_KEYS, "seed")))
        print()
    print(format_table(rows))
    if a.given_poses:
        print()
        print(f"weights: {getattr(predict_fn, 'weights_label', '')}")
        print(given_pose_comparison(pred_rows, given_rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
