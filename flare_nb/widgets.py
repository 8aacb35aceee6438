"""Interactive widgets of the notebooks, each built on a plain, tested callback (notebook 02).

* :func:`perturb_pose` -- rotate / translate one view's camera-to-world pose;
* :func:`pose_perturbation_view` -- the callback of the pose widget: perturb, draw the cameras
  (the unperturbed view as a grey frustum), and report what the pose loss would charge;
* :func:`make_pose_widget` -- ipywidgets sliders around that callback.

Poses are camera-to-world ``(V, 4, 4)``, OpenCV axes (README "Conventions").
"""
from __future__ import annotations

import math

import torch

from . import cameras

__all__ = ["euler_to_matrix", "perturb_pose", "pose_perturbation_view", "make_pose_widget"]


def euler_to_matrix(rx_deg: float, ry_deg: float, rz_deg: float, dtype=torch.float64) -> torch.Tensor:
    """``R = Rz @ Ry @ Rx`` (3, 3) from angles in degrees about the x, y and z axes (x applied first)."""
    a, b, c = (math.radians(float(v)) for v in (rx_deg, ry_deg, rz_deg))
    Rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=dtype)
    Ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]], dtype=dtype)
    Rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]], dtype=dtype)
    return Rz @ Ry @ Rx


def perturb_pose(c2w: torch.Tensor, view: int, rot_deg=(0.0, 0.0, 0.0), trans=(0.0, 0.0, 0.0),
                 frame: str = "camera") -> torch.Tensor:
    """A copy of ``c2w (V, 4, 4)`` with view ``view`` moved by ``D = [R(rot_deg) | trans]``.

    ``frame="camera"``: ``c2w_v @ D`` -- rotate about the camera's own centre and axes (x
    right, y down, z forward) and translate along them (``trans[2] > 0`` moves it forward);
    ``frame="world"``: ``D @ c2w_v`` -- rotate about the world origin and translate in world
    axes. Rotation ``R = Rz Ry Rx`` (:func:`euler_to_matrix`). Other views are untouched.
    ValueError for a bad view index, non-finite numbers or an unknown frame. Notebook 02.
    """
    if not isinstance(c2w, torch.Tensor) or c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4):
        raise ValueError(f"c2w must be a (V, 4, 4) tensor, got "
                         f"{tuple(c2w.shape) if isinstance(c2w, torch.Tensor) else type(c2w).__name__}")
    V = c2w.shape[0]
    if isinstance(view, bool) or not isinstance(view, int) or not -V <= view < V:
        raise ValueError(f"view must be an int in [0, {V}), got {view!r}")
    vals = [float(v) for v in (*rot_deg, *trans)]
    if len(vals) != 6 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"rot_deg and trans must be 3 finite numbers each, got {rot_deg!r} and {trans!r}")
    if frame not in ("camera", "world"):
        raise ValueError(f"frame must be 'camera' or 'world', got {frame!r}")
    D = torch.eye(4, dtype=torch.float64)
    D[:3, :3] = euler_to_matrix(*vals[:3])
    D[:3, 3] = torch.tensor(vals[3:], dtype=torch.float64)
    out = c2w.clone()
    P = c2w[view].to(torch.float64)
    out[view] = (P @ D if frame == "camera" else D @ P).to(c2w.dtype)
    return out


def pose_perturbation_view(c2w: torch.Tensor, view: int, rx: float = 0.0, ry: float = 0.0, rz: float = 0.0,
                           tx: float = 0.0, ty: float = 0.0, tz: float = 0.0, K=None, hw=None,
                           frame: str = "camera", ax=None, draw: bool = True):
    """Callback of the pose widget: perturb view ``view`` of ``c2w (V, 4, 4)`` and show it.

    Draws (``viz.plot_cameras``) all cameras after the perturbation plus the unperturbed
    view as a grey frustum, and computes what the released pose loss
    (:func:`flare_nb.losses.pose_loss`, one iteration) charges the perturbed trajectory
    when the original is the ground truth. Returns ``(ax or None, info)`` with ``info``:
    ``c2w`` the perturbed poses, ``rotation_deg`` (geodesic angle of the change),
    ``centre_shift`` (camera centre displacement), ``pose_loss``, ``loss_rot``,
    ``loss_trans``. ``draw=False`` skips the figure. Notebook 02.
    """
    from .inference import encode_c2w
    from .losses import pose_loss

    new = perturb_pose(c2w, view, (rx, ry, rz), (tx, ty, tz), frame)
    old_v, new_v = c2w[view].double(), new[view].double()
    dR = old_v[:3, :3].T @ new_v[:3, :3]
    cos = ((torch.trace(dR) - 1) / 2).clamp(-1, 1)
    enc = encode_c2w(new)[None]                                  # (1, V, 9)
    loss, parts = pose_loss([enc], c2w.double()[None])
    info = {"c2w": new, "rotation_deg": math.degrees(math.acos(float(cos))),
            "centre_shift": float((new_v[:3, 3] - old_v[:3, 3]).norm()), "pose_loss": float(loss),
            "loss_rot": float(parts["pose_rot"]), "loss_trans": float(parts["pose_trans"])}
    if not draw:
        return None, info
    import numpy as np
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    from .viz import _EDGES, frustum_points, plot_cameras

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
    :func:`pose_perturbation_view`; returns an ``ipywidgets.VBox`` (display it). Nothing is
    drawn until a control changes (so a headless run never waits on a frontend); after each
    change ``box.last_info`` holds the callback's ``info``. Notebook 02."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    V = c2w.shape[0]

    def slider(lo, hi, step, d):
        return W.FloatSlider(value=0.0, min=lo, max=hi, step=step, description=d, continuous_update=False)

    controls = {"view": W.IntSlider(value=min(1, V - 1), min=0, max=V - 1, description="view"),
                "rx": slider(-max_deg, max_deg, 1.0, "rx (deg)"), "ry": slider(-max_deg, max_deg, 1.0, "ry (deg)"),
                "rz": slider(-max_deg, max_deg, 1.0, "rz (deg)"), "tx": slider(-max_shift, max_shift, 0.01, "tx"),
                "ty": slider(-max_shift, max_shift, 0.01, "ty"), "tz": slider(-max_shift, max_shift, 0.01, "tz"),
                "frame": W.Dropdown(options=["camera", "world"], value="camera", description="frame")}
    out = W.Output()
    status = W.Label("move a slider to perturb the selected view")
    box = W.VBox([*controls.values(), status, out])
    box.last_info = None

    def update(_change=None):
        kw = {k: c.value for k, c in controls.items()}
        fig = plt.figure(figsize=(5, 5))
        ax = fig.add_subplot(projection="3d")
        _, info = pose_perturbation_view(c2w, K=K, hw=hw, ax=ax, **kw)
        box.last_info = info
        status.value = (f"rotation {info['rotation_deg']:.2f} deg, centre shift {info['centre_shift']:.3f}, "
                        f"pose loss {info['pose_loss']:.4f} (rot {info['loss_rot']:.4f}, trans {info['loss_trans']:.4f})")
        out.clear_output(wait=True)
        with out:
            display(fig)
        plt.close(fig)

    for c in controls.values():
        c.observe(update, names="value")
    return box
