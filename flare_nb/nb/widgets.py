"""Interactive widgets of the notebooks, each built on a plain, tested callback (notebook 02).

* :func:`pose_perturbation_view` -- the callback of the pose widget: perturb, draw the cameras
  (the unperturbed view as a grey frustum), and report what the pose loss would charge;
* :func:`make_pose_widget` -- ipywidgets sliders around that callback (drawn once at the start).

Poses are camera-to-world ``(V, 4, 4)``, OpenCV axes (README "Conventions").
"""
from __future__ import annotations

import math

import torch

from flare_nb.model.pose_encoding import encode_c2w, move_camera
from flare_nb.panel import figure_panel
from flare_nb.train.losses import pose_loss
from flare_nb.viz import _EDGES, frustum_points, plot_cameras

__all__ = ["pose_perturbation_view", "make_pose_widget"]


def pose_perturbation_view(c2w: torch.Tensor, view: int, rx: float = 0.0, ry: float = 0.0, rz: float = 0.0,
                           tx: float = 0.0, ty: float = 0.0, tz: float = 0.0, K=None, hw=None,
                           frame: str = "camera", ax=None, draw: bool = True):
    """Callback of the pose widget: perturb view ``view`` of ``c2w (V, 4, 4)`` and show it.

    Draws (``viz.plot_cameras``) all cameras after the perturbation plus the unperturbed
    view as a grey frustum, and computes what the released pose loss
    (:func:`flare_nb.train.losses.pose_loss`, one iteration) charges the perturbed trajectory
    when the original is the ground truth. Returns ``(ax or None, info)`` with ``info``:
    ``c2w`` the perturbed poses, ``rotation_deg`` (geodesic angle of the change),
    ``centre_shift`` (camera centre displacement), ``pose_loss``, ``loss_rot``,
    ``loss_trans``. ``draw=False`` skips the figure. Notebook 02.
    """

    new = move_camera(c2w, view, (rx, ry, rz), (tx, ty, tz), frame)
    old_v, new_v = c2w[view].double(), new[view].double()
    dR = old_v[:3, :3].T @ new_v[:3, :3]
    # angle from atan2(sin, cos): acos of the trace alone turns float32 rounding of an unchanged
    # camera into a few hundredths of a degree
    skew = torch.stack([dR[2, 1] - dR[1, 2], dR[0, 2] - dR[2, 0], dR[1, 0] - dR[0, 1]])
    sin, cos = skew.norm() / 2, (torch.trace(dR) - 1) / 2
    enc = encode_c2w(new)[None]                                  # (1, V, 9)
    loss, parts = pose_loss([enc], c2w.double()[None])
    info = {"c2w": new, "rotation_deg": math.degrees(math.atan2(float(sin), float(cos))),
            "centre_shift": float((new_v[:3, 3] - old_v[:3, 3]).norm()), "pose_loss": float(loss),
            "loss_rot": float(parts["pose_rot"]), "loss_trans": float(parts["pose_trans"])}
    if not draw:
        return None, info
    import numpy as np
    from mpl_toolkits.mplot3d.art3d import Line3DCollection


    T = np.concatenate([new.detach().double().numpy(), c2w[view:view + 1].detach().double().numpy()])
    centres = T[:, :3, 3]
    size = float(np.linalg.norm(centres.max(0) - centres.min(0)))
    scale = 0.15 * size if size > 1e-9 else 0.3                 # one frustum depth for both drawings
    ax = plot_cameras(new, K, hw, ax=ax, scale=scale)
    Kv = None if K is None else torch.as_tensor(K)
    Kv = Kv if Kv is None or Kv.ndim == 2 else Kv[view]
    F_old = frustum_points(c2w[view:view + 1], Kv, hw, scale)
    ax.add_collection3d(Line3DCollection([F_old[0, [a, b]] for a, b in _EDGES], colors=["0.55"],
                                         linewidths=1.0, linestyles="dashed"))
    for i, get, put in ((0, ax.get_xlim, ax.set_xlim), (1, ax.get_ylim, ax.set_ylim), (2, ax.get_zlim, ax.set_zlim)):
        lo, hi = get()
        put(min(lo, F_old[0, :, i].min()), max(hi, F_old[0, :, i].max()))   # keep the ghost in view
    ax.set_title(f"view {view}: {info['rotation_deg']:.1f} deg, shift {info['centre_shift']:.2f} | "
                 f"pose loss {info['pose_loss']:.3f}", fontsize=9)
    return ax, info


def make_pose_widget(c2w: torch.Tensor, K=None, hw=None, max_deg: float = 45.0, max_shift: float = 1.0):
    """ipywidgets controls (view, 3 rotation and 3 translation sliders, frame) around
    :func:`pose_perturbation_view`, as a :func:`flare_nb.panel.figure_panel` (display it): it
    draws the unperturbed cameras now and again after each change, under a line with the
    rotation, centre shift and pose loss; ``box.last_info`` holds the latest ``info``. Notebook 02."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    V = c2w.shape[0]

    def slider(lo, hi, step, d):
        return W.FloatSlider(value=0.0, min=lo, max=hi, step=step, description=d, continuous_update=False)

    controls = {"view": W.IntSlider(value=min(1, V - 1), min=0, max=V - 1, description="view"),
                "rx": slider(-max_deg, max_deg, 1.0, "rx (deg)"), "ry": slider(-max_deg, max_deg, 1.0, "ry (deg)"),
                "rz": slider(-max_deg, max_deg, 1.0, "rz (deg)"), "tx": slider(-max_shift, max_shift, 0.01, "tx"),
                "ty": slider(-max_shift, max_shift, 0.01, "ty"), "tz": slider(-max_shift, max_shift, 0.01, "tz"),
                "frame": W.Dropdown(options=["camera", "world"], value="camera", description="frame")}
    latest = {}

    def draw(**kw):
        fig = plt.figure(figsize=(5, 5))
        ax = fig.add_subplot(projection="3d")
        _, info = pose_perturbation_view(c2w, K=K, hw=hw, ax=ax, **kw)
        latest["info"] = info
        if "box" in latest:
            latest["box"].last_info = info
        return [f"rotation {info['rotation_deg']:.2f} deg, centre shift {info['centre_shift']:.3f}, "
                f"pose loss {info['pose_loss']:.4f} (rot {info['loss_rot']:.4f}, trans {info['loss_trans']:.4f})", fig]

    box = figure_panel(draw, controls)
    box.last_info = latest["info"]
    latest["box"] = box
    return box
