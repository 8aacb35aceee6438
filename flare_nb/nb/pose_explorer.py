"""The pose explorer: move one camera, see what changes (notebooks 02, 04 and 08).

Pick a view, rotate and translate its camera, and see at once

1. the **frusta**: every camera, the moved one and (dashed grey) where it was
   (:func:`flare_nb.nb.widgets.pose_perturbation_view`, which also reports the rotation angle,
   the centre shift and what the pose loss would charge);
2. the **reprojection** of the global pointmap into the moved camera, a z-buffered splat of
   every confident point's colour (:func:`reproject_pointmap`) next to the view's own photo;
3. the **model's response** when the same motion is applied to the pose that conditions the
   later stages: stage 3 (the global projector) or stage 2 (then re-run, and stage 3 after
   it), per view the mean displacement of the global pointmap divided by the scene size,
   against the naive rigid transform (:mod:`flare_nb.nb.explore`: ``run_to_stage2``,
   ``run_stage3``, ``naive_vs_learned``, ``naive_global``, ``plot_response``).

The motion is ``D = [R | t]`` in the camera's own frame (OpenCV: x right, y down, z forward),
``c2w_v' = c2w_v D``, ``R = Rz(rz) Ry(ry) Rx(rx)`` in degrees
(:func:`flare_nb.cameras.euler_to_matrix`) and ``t = (tx, ty, tz)`` in units of the **mean
distance of the cameras from view 0's camera** -- the unit FLARE's normalised translations
are in, so the cameras of the figures (pointmap units) and the pose encoding (network units)
move by the same relative amount. The pose encoding ``(V, 9) = [T, q (w x y z), focal
logits]`` is changed on the quaternion as ``q' = q dq`` (its unnormalised norm kept) and on
the translation as ``T' = T + m R(q) t`` (``m`` its mean translation norm), exactly as
:func:`flare_nb.model.pose_encoding.move_camera_in_encoding` does.

Everything is split into plain functions (``explore_pose`` -> a dict, ``plot_pose_explorer``
-> a figure) that the tests call without a browser; :func:`make_pose_explorer` only wires
ipywidgets to them.
"""
from __future__ import annotations

import math

import torch

from flare_nb import cameras
from flare_nb.export import colored_points, confident_mask, fov_K
from flare_nb.model.pose_encoding import (decode_c2w, move_camera,
                                          move_camera_in_encoding)
from flare_nb.nb import explore, widgets
from flare_nb.scenes.preprocess import to_model_input
from flare_nb.viz import plot_cameras
from flare_nb.panel import figure_panel

__all__ = ["prepare_explorer", "translation_unit", "reproject_pointmap", "explore_pose",
           "plot_pose_explorer", "make_pose_explorer"]


# ----------------------------------------------------------------------------- checks
def _check_view(view, V: int) -> int:
    if isinstance(view, bool) or not isinstance(view, int) or not 0 <= view < V:
        raise ValueError(f"view must be an int in [0, {V}), got {view!r}")
    return view


def _check_motion(vals) -> list[float]:
    out = [float(v) for v in vals]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"rx, ry, rz, tx, ty, tz must be finite numbers, got {list(vals)}")
    return out


# ----------------------------------------------------------------------------- poses
def translation_unit(c2w: torch.Tensor) -> float:
    """The unit of the translation sliders for cameras ``c2w (V, 4, 4)``: the mean distance of
    the camera centres from view 0's centre (view 0's own 0 included, as FLARE's mean
    translation norm). 1.0 when every camera sits at the same place."""
    c = c2w.detach().double().cpu()[:, :3, 3]
    m = float((c - c[:1]).norm(dim=-1).mean())
    return m if m > 1e-8 else 1.0


# ----------------------------------------------------------------------------- reprojection
def reproject_pointmap(points: torch.Tensor, images: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, hw,
                       mask: torch.Tensor | None = None, background: float = 1.0) -> dict:
    """Project world points into one camera and splat their colours with a z-buffer.

    Args:
        points: ``(V, H, W, 3)`` pointmaps in the world frame of ``c2w`` (FLARE: view 0's frame).
        images: ``(V, 3, H, W)`` in [0, 1], the colour of every point.
        c2w: ``(4, 4)`` camera-to-world of the target camera, OpenCV axes.
        K: ``(3, 3)`` its intrinsics, OpenCV pixel centres. ``hw``: its image size ``(H_t, W_t)``.
        mask: optional ``(V, H, W)`` bool, the points to use (e.g. the confident ones).

    Returns float32 CPU tensors: ``uv (V, H, W, 2)`` and ``z (V, H, W)`` of every point
    (:func:`flare_nb.cameras.project_points`), ``visible (V, H, W)`` (finite, in ``mask``,
    ``z > 0`` and inside the image), ``image (H_t, W_t, 3)`` (each pixel takes the nearest
    visible point whose rounded ``uv`` falls on it; ties: the lowest point index; empty =
    ``background``), ``depth (H_t, W_t)`` (0 = empty) and ``coverage`` (fraction of pixels
    hit). A view's own exact pointmap reprojected into its own camera lands on its pixel grid.
    """
    if not isinstance(points, torch.Tensor) or points.ndim != 4 or points.shape[-1] != 3:
        raise ValueError(f"points must be pointmaps (V, H, W, 3), got "
                         f"{tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__}")
    V, H, W = points.shape[:3]
    if tuple(images.shape) != (V, 3, H, W):
        raise ValueError(f"images must be ({V}, 3, {H}, {W}) to colour the points, got {tuple(images.shape)}")
    if tuple(c2w.shape) != (4, 4) or tuple(K.shape) != (3, 3):
        raise ValueError(f"c2w must be (4, 4) and K (3, 3) for one camera, got {tuple(c2w.shape)} and {tuple(K.shape)}")
    Ht, Wt = (int(s) for s in hw)
    if Ht <= 0 or Wt <= 0:
        raise ValueError(f"hw must be a positive (H, W), got {hw}")
    if mask is not None and tuple(mask.shape) != (V, H, W):
        raise ValueError(f"mask must be ({V}, {H}, {W}), got {tuple(mask.shape)}")
    X = points.detach().cpu().double()
    w2c = cameras.invert_pose(c2w.detach().cpu().double())
    uv, z = cameras.project_points(X, K.detach().cpu().double(), w2c)
    col = torch.floor(uv[..., 0] + 0.5)
    row = torch.floor(uv[..., 1] + 0.5)
    vis = torch.isfinite(X).all(-1) & torch.isfinite(uv).all(-1) & (z > 0)
    vis &= (col >= 0) & (col < Wt) & (row >= 0) & (row < Ht)
    if mask is not None:
        vis &= mask.detach().cpu().bool()
    flat = vis.reshape(-1)
    pid = torch.nonzero(flat).squeeze(1)                                   # point indices, ascending
    pix = (row.reshape(-1)[pid] * Wt + col.reshape(-1)[pid]).long()
    zz = z.reshape(-1)[pid]
    zmin = torch.full((Ht * Wt,), math.inf, dtype=torch.float64).scatter_reduce(0, pix, zz, "amin")
    win = zz == zmin[pix]
    first = torch.full((Ht * Wt,), flat.numel(), dtype=torch.long).scatter_reduce(0, pix[win], pid[win], "amin")
    hit = first < flat.numel()
    colors = images.detach().cpu().float().permute(0, 2, 3, 1).reshape(-1, 3)
    image = torch.full((Ht * Wt, 3), float(background))
    image[hit] = colors[first[hit]]
    depth = torch.zeros(Ht * Wt)
    depth[hit] = zmin[hit].float()
    return {"uv": uv.float(), "z": z.float(), "visible": vis, "image": image.reshape(Ht, Wt, 3),
            "depth": depth.reshape(Ht, Wt), "coverage": float(hit.float().mean())}


# ----------------------------------------------------------------------------- the state
@torch.no_grad()
def prepare_explorer(model, images: torch.Tensor, c2w: torch.Tensor | None = None, K: torch.Tensor | None = None,
                     points: torch.Tensor | None = None, conf_drop: float = 0.5, max_cloud: int = 4000,
                     seed: int = 0) -> dict:
    """Run the cascade once and gather what :func:`explore_pose` needs (the cache).

    Args:
        model: a ``FlareModel`` (e.g. ``flare_nb.inference.load_model``).
        images: ``(V, 3, H, W)`` in [0, 1], view 0 = the reference view.
        c2w: ``(V, 4, 4)`` cameras in the global pointmap's frame and units (e.g. the PnP cameras
            ``Reconstruction.c2w_pnp``, or exact ones). Default: the refined pose head,
            relative to view 0, translations multiplied by the ``tau`` of
            :func:`flare_nb.nb.explore.fit_naive_scales` (pointmap units; ``|tau|``, or 1 if 0).
        K: ``(3, 3)`` or ``(V, 3, 3)``. Default: the focal of view 0's global pointmap
            (:func:`flare_nb.cameras.estimate_focal`), else a 60 degree field of view.
        points: ``(V, H, W, 3)`` the pointmap to reproject (default: the model's global one);
            e.g. an exact pointmap of a synthetic scene.
        conf_drop: the least confident fraction of each view's points left out of the
            reprojection and the 3D plot (:func:`flare_nb.export.confident_mask`); with
            ``points`` given, every finite point is used.

    Returns :func:`flare_nb.nb.explore.run_to_stage2`'s cache plus ``images``, ``c2w (V, 4, 4)``,
    ``K (V, 3, 3)``, ``c2w_source``, ``points``, ``conf``, ``mask``, ``cloud`` / ``cloud_colors``
    (a fixed-seed subset of at most ``max_cloud`` points for the 3D plot) and ``_base3`` (stage
    3 with the unperturbed pose, shared with :func:`flare_nb.nb.explore.perturbation_response`).
    """

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (V, 3, H, W) in [0, 1], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    x01 = images.detach().cpu().float()
    if float(x01.min()) < 0 or float(x01.max()) > 1 + 1e-6:
        raise ValueError(f"images must be in [0, 1], got values in [{float(x01.min()):.3g}, {float(x01.max()):.3g}]")
    V, _, H, W = x01.shape
    p = next(model.parameters())
    cache = explore.run_to_stage2(model, to_model_input(x01)[None].to(p.device, p.dtype))
    base = cache["_base3"] = explore.run_stage3(model, cache)
    G = base["pts3d"].float().cpu()
    conf = base["conf"].float().cpu()
    if points is None:
        pts, mask = G, confident_mask(conf, conf_drop, G)
    else:
        if tuple(points.shape) != (V, H, W, 3):
            raise ValueError(f"points must be ({V}, {H}, {W}, 3) like the images, got {tuple(points.shape)}")
        pts = points.detach().cpu().float()
        mask = torch.isfinite(pts).all(-1)
    if K is None:
        try:
            K = cameras.intrinsics_from_focal(cameras.estimate_focal(pts[0]), H, W)
        except ValueError:
            K = fov_K(H, W, 60.0)
    K = torch.as_tensor(K).detach().cpu().float()
    K = K.expand(V, 3, 3).clone() if K.shape == (3, 3) else K
    if tuple(K.shape) != (V, 3, 3):
        raise ValueError(f"K must be (3, 3) or ({V}, 3, 3), got {tuple(K.shape)}")
    if c2w is None:
        rel = cameras.relative_to_view0(decode_c2w(cache["pose2"])).float()
        tau, _ = explore.fit_naive_scales(cache["pts3d_cam"].float().cpu(), rel, G)
        tau = abs(tau) if abs(tau) > 1e-8 else 1.0
        rel[:, :3, 3] *= tau
        c2w, source = rel, f"refined pose head, translations x tau = {tau:.4g} (pointmap units)"
    else:
        if tuple(c2w.shape) != (V, 4, 4):
            raise ValueError(f"c2w must be ({V}, 4, 4), got {tuple(c2w.shape)}")
        c2w, source = c2w.detach().cpu().float(), "given"
    P, C, _, _ = colored_points(pts, x01, mask, max_points=max_cloud, seed=seed)
    cache.update(images=x01, c2w=c2w, K=K, c2w_source=source, points=pts, conf=conf, mask=mask,
                 cloud=P, cloud_colors=C)
    return cache


@torch.no_grad()
def explore_pose(model, cache: dict, view: int, rx: float = 0.0, ry: float = 0.0, rz: float = 0.0,
                 tx: float = 0.0, ty: float = 0.0, tz: float = 0.0, stage: int = 3) -> dict:
    """The explorer's state for one setting of the controls (no drawing).

    ``cache``: :func:`prepare_explorer`. ``view``: the camera to move; ``rx, ry, rz``: degrees
    about its own x, y, z axes; ``tx, ty, tz``: along them, in units of
    :func:`translation_unit` (module docstring). ``stage``: 3 = the motion is applied to the
    refined pose that conditions the global projector; 2 = to the coarse pose that
    conditions stage 2, which is re-run before stage 3.

    Returns a dict with ``c2w_perturbed (V, 4, 4)`` (only ``view`` moved), ``c2w_base``,
    ``K (V, 3, 3)``, ``hw``, ``unit``, ``rotation_deg``, ``centre_shift``, ``pose_loss`` (the
    released pose loss of the moved trajectory against the original, None if undefined);
    the reprojection of ``cache["points"]`` into the moved camera: ``reprojection (H, W, 3)``,
    ``reprojection_depth (H, W)``, ``coverage``, ``uv (V, H, W, 2)``, ``z``, ``visible``;
    the model's response: ``response (V,)`` per view mean ``|X' - X|`` of the global
    pointmap over its mean ``|X|``, ``naive (V,)`` the same for the naive rigid transform,
    ``pts3d`` / ``pts3d_base (V, H, W, 3)``, ``pose_enc_base`` / ``pose_enc_new (V, 9)``; and
    the arguments. All zero: ``c2w_perturbed == c2w_base`` and both responses are 0.
    """
    V = cache["V"]
    _check_view(view, V)
    if stage not in (2, 3):
        raise ValueError(f"stage must be 2 (move the pose fed to stage 2) or 3 (fed to stage 3), got {stage!r}")
    motion = _check_motion((rx, ry, rz, tx, ty, tz))
    c2w, K, hw = cache["c2w"], cache["K"], cache["hw"]
    unit = translation_unit(c2w)
    rot, trans = motion[:3], [unit * t for t in motion[3:]]
    try:
        _, info = widgets.pose_perturbation_view(c2w, view, *rot, *trans, draw=False)
        new, loss = info["c2w"], info["pose_loss"]
    except ValueError:            # the pose loss needs cameras at distinct places
        new, loss = move_camera(c2w, view, rot, trans), None
    old_v, new_v = c2w[view].double(), new[view].double()
    dR = old_v[:3, :3].T @ new_v[:3, :3]
    sin = 0.5 * float(torch.stack([dR[2, 1] - dR[1, 2], dR[0, 2] - dR[2, 0], dR[1, 0] - dR[0, 1]]).norm())
    angle = math.degrees(math.atan2(sin, 0.5 * (float(torch.trace(dR)) - 1)))   # exact near 0 (acos is not)
    rep = reproject_pointmap(cache["points"], cache["images"], new[view], K[view], hw, cache["mask"])

    base = cache.get("_base3")
    if base is None:
        base = cache["_base3"] = explore.run_stage3(model, cache)
    pose_base = cache["pose2"] if stage == 3 else cache["pose1"]
    pose_new = move_camera_in_encoding(pose_base, view, motion[:3], motion[3:])
    out = (explore.run_stage3(model, cache, pose_enc=pose_new) if stage == 3
           else explore.run_stage3(model, cache, stage2_pose=pose_new))
    G0, G1 = base["pts3d"].float().cpu(), out["pts3d"].float().cpu()
    response = (G1 - G0).norm(dim=-1).flatten(1).mean(1) / G0.norm(dim=-1).mean().clamp_min(1e-12)
    fit = cache.get("_naive_fit")
    if fit is None:
        fit = cache["_naive_fit"] = explore.naive_vs_learned(cache["pts3d_cam"].float().cpu(),
                                                             decode_c2w(cache["pose2"]).float(), G0)
    N1 = explore.naive_global(out["pts3d_cam"].double().cpu(), decode_c2w(out["pose_in"]).float().double(), fit["tau"]).float()
    naive = (N1 - fit["naive"]).norm(dim=-1).flatten(1).mean(1) / fit["target"].norm(dim=-1).mean().clamp_min(1e-12)
    return {"view": view, "rx": motion[0], "ry": motion[1], "rz": motion[2], "tx": motion[3], "ty": motion[4],
            "tz": motion[5], "stage": stage, "unit": unit, "c2w_base": c2w, "c2w_perturbed": new, "K": K, "hw": hw,
            "rotation_deg": angle, "centre_shift": float((new_v[:3, 3] - old_v[:3, 3]).norm()),
            "pose_loss": loss, "reprojection": rep["image"], "reprojection_depth": rep["depth"],
            "coverage": rep["coverage"], "uv": rep["uv"], "z": rep["z"], "visible": rep["visible"],
            "response": response, "naive": naive, "pts3d": G1, "pts3d_base": G0,
            "pose_enc_base": pose_base.detach().cpu(), "pose_enc_new": pose_new.detach().cpu(),
            "image": cache["images"][view].permute(1, 2, 0), "cloud": cache["cloud"],
            "cloud_colors": cache["cloud_colors"]}


# ----------------------------------------------------------------------------- the figure
def plot_pose_explorer(state: dict, fig=None):
    """Draw :func:`explore_pose`'s state: (1) the frusta, the moved camera's old place dashed and
    the point cloud, (2) the view's photo next to the reprojection into the moved camera,
    (3) the response per view, learned vs naive. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    if fig is None:
        fig = plt.figure(figsize=(15, 4.6))
    v = state["view"]
    ax3 = fig.add_subplot(1, 3, 1, projection="3d")
    c2w = state["c2w_base"]
    rot, trans = (state["rx"], state["ry"], state["rz"]), [state["unit"] * state[k] for k in ("tx", "ty", "tz")]
    try:
        widgets.pose_perturbation_view(c2w, v, *rot, *trans, K=state["K"], hw=state["hw"], ax=ax3)
    except ValueError:                      # degenerate trajectory: no pose loss, plain frusta
        plot_cameras(state["c2w_perturbed"], state["K"], state["hw"], ax=ax3)
    P, C = state["cloud"].numpy(), state["cloud_colors"].numpy()
    if len(P):
        ax3.scatter(P[:, 0], P[:, 1], P[:, 2], c=C, s=1.0, depthshade=False, linewidths=0)
        lim = np.array([ax3.get_xlim(), ax3.get_ylim(), ax3.get_zlim()])
        lo = np.minimum(lim[:, 0], np.percentile(P, 2, axis=0))
        hi = np.maximum(lim[:, 1], np.percentile(P, 98, axis=0))
        c, r = 0.5 * (lo + hi), 0.5 * float((hi - lo).max())
        for i, put in enumerate((ax3.set_xlim, ax3.set_ylim, ax3.set_zlim)):
            put(c[i] - r, c[i] + r)
    ax3.set_title(f"view {v}: {state['rotation_deg']:.1f} deg, shift {state['centre_shift']:.3g}", fontsize=9)

    ax = fig.add_subplot(1, 3, 2)
    H, W = state["hw"]
    gap = torch.ones(H, max(2, W // 32), 3)
    ax.imshow(torch.cat([state["image"], gap, state["reprojection"]], dim=1).clamp(0, 1).numpy())
    ax.set_title(f"view {v} | global pointmap seen from the moved camera ({state['coverage']:.0%} covered)",
                 fontsize=9)
    ax.axis("off")

    axb = fig.add_subplot(1, 3, 3)
    explore.plot_response({"learned": state["response"], "naive": state["naive"], "view": v, "axis": "",
                           "rot_deg": 0.0, "trans": 0.0, "stage": state["stage"]}, ax=axb)
    axb.set_title(f"response: pose of view {v} moved, fed to stage {state['stage']}", fontsize=9)
    fig.tight_layout()
    return fig


def make_pose_explorer(model, cache: dict, max_deg: float = 30.0, max_shift: float = 0.5):
    """ipywidgets panel: a view dropdown, sliders ``rx ry rz`` (degrees, +-``max_deg``) and
    ``tx ty tz`` (+-``max_shift`` units of :func:`translation_unit`), and a dropdown for the
    stage the pose is fed to, around :func:`explore_pose` + :func:`plot_pose_explorer`.
    Returns a :func:`flare_nb.panel.figure_panel` (display it as a cell's last expression)."""
    import ipywidgets as W


    V = cache["V"]

    def slider(lim, step, d):
        return W.FloatSlider(value=0.0, min=-lim, max=lim, step=step, description=d, continuous_update=False)

    def update(view, rx, ry, rz, tx, ty, tz, stage):
        state = explore_pose(model, cache, view, rx, ry, rz, tx, ty, tz, stage)
        fig = plot_pose_explorer(state)
        return [fig, f"rotation {state['rotation_deg']:.2f} deg, centre shift {state['centre_shift']:.4g} "
                     f"(unit {state['unit']:.4g}); reprojection covers {state['coverage']:.1%}; response (learned) "
                     f"{[round(r, 4) for r in state['response'].tolist()]}"]

    return figure_panel(update, dict(
                         view=W.Dropdown(options=[(f"view {i}", i) for i in range(V)], value=min(1, V - 1),
                                         description="view"),
                         rx=slider(max_deg, 1.0, "rx (deg)"), ry=slider(max_deg, 1.0, "ry (deg)"),
                         rz=slider(max_deg, 1.0, "rz (deg)"), tx=slider(max_shift, 0.01, "tx"),
                         ty=slider(max_shift, 0.01, "ty"), tz=slider(max_shift, 0.01, "tz"),
                         stage=W.Dropdown(options=[("stage 3 (projector)", 3), ("stage 2", 2)], value=3,
                                          description="pose fed to")))
