"""Widgets of notebook 05 (Gaussians and rasterization), each built on a plain, tested callback.

* :func:`toy_gaussians` -- three Gaussians in front of a camera at the origin; the first one
  (red, in front) is set by scale / opacity / rotation;
* :func:`toy_view` -- the callback of the parameter widget: render them, draw the red one's
  2D covariance ellipse (2 sigma) and gsplat's extent box, and return the numbers;
* :func:`orbit_view` -- the callback of the novel-view widget: render a Gaussian set from a
  camera on a sphere around the scene (:func:`flare_nb.render.splats.orbit_c2w`);
* :func:`make_toy_widget`, :func:`make_orbit_widget` -- ipywidgets sliders around them.

Cameras follow the README "Conventions" (``c2w`` camera-to-world, OpenCV axes, ``K`` with
OpenCV pixel centres); the rasterizer conversions happen in :func:`flare_nb.render.splats.render_views`.
"""
from __future__ import annotations

import math

import torch

from flare_nb import cameras
from flare_nb.cameras import euler_to_matrix
from flare_nb.render.rasterize import covariance_3d, project_gaussians
from flare_nb.render.splats import covariance_2d, orbit_c2w, render_views
from flare_nb.panel import figure_panel

__all__ = ["toy_camera", "toy_gaussians", "toy_view", "orbit_view", "make_toy_widget", "make_orbit_widget"]

_TOY_COLOURS = ((0.9, 0.15, 0.1), (0.1, 0.75, 0.2), (0.15, 0.3, 0.95))
_TOY_MEANS = ((0.0, 0.0, 3.0), (-0.5, -0.2, 4.0), (0.5, 0.25, 4.0))


def toy_camera(size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """The toy scene's camera: ``c2w (1, 4, 4)`` identity and ``K (1, 3, 3)`` with ``f = size``
    pixels and the principal point at the image centre (OpenCV centres), float64."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"toy_camera: size must be an int >= 8 pixels, got {size!r}")
    K = torch.tensor([[size, 0.0, (size - 1) / 2], [0.0, size, (size - 1) / 2], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    return torch.eye(4, dtype=torch.float64)[None], K[None]


def toy_gaussians(scale=(0.3, 0.1, 0.1), opacity: float = 0.8, rotation_deg=(0.0, 0.0, 0.0)) -> dict:
    """Three Gaussians (float64, RGB colours): the controlled red one at (0, 0, 3) in front,
    a green and a blue one (scale 0.2, opacity 0.9) behind it at z = 4, partly covered.

    ``scale`` (3,) standard deviations in metres along the red Gaussian's own axes, each > 0;
    ``opacity`` in [0, 1]; ``rotation_deg`` (rx, ry, rz) Euler angles, ``R = Rz Ry Rx``
    (:func:`flare_nb.cameras.euler_to_matrix`), turned into a (w, x, y, z) quaternion.
    ValueError on non-positive scales, an opacity outside [0, 1] or non-finite numbers.
    """
    s = [float(v) for v in scale]
    r = [float(v) for v in rotation_deg]
    if len(s) != 3 or len(r) != 3 or not all(math.isfinite(v) for v in s + r + [float(opacity)]):
        raise ValueError(f"toy_gaussians: scale and rotation_deg must be 3 finite numbers each, got {scale!r}, "
                         f"{rotation_deg!r}")
    if min(s) <= 0:
        raise ValueError(f"toy_gaussians: scales must be > 0 metres, got {scale!r}")
    if not 0 <= float(opacity) <= 1:
        raise ValueError(f"toy_gaussians: opacity must lie in [0, 1], got {opacity!r}")
    dt = torch.float64
    q = cameras.matrix_to_quat(euler_to_matrix(*r, dtype=dt))
    return {
        "means": torch.tensor(_TOY_MEANS, dtype=dt),
        "quats": torch.stack([q, torch.tensor([1.0, 0, 0, 0], dtype=dt), torch.tensor([1.0, 0, 0, 0], dtype=dt)]),
        "scales": torch.tensor([s, [0.2] * 3, [0.2] * 3], dtype=dt),
        "opacities": torch.tensor([float(opacity), 0.9, 0.9], dtype=dt),
        "colors": torch.tensor(_TOY_COLOURS, dtype=dt),
        "sh_degree": None,
    }


def toy_view(scale_x: float = 0.3, scale_y: float = 0.1, scale_z: float = 0.1, opacity: float = 0.8,
             rx: float = 0.0, ry: float = 0.0, rz: float = 0.0, size: int = 96, ax=None, draw: bool = True):
    """Callback of the parameter widget: render :func:`toy_gaussians` with these settings.

    Returns ``(ax or None, info)``; ``info``: ``image (H, W, 3)`` float64 (white background),
    ``cov3d (3, 3)`` = R S S^T R^T of the red Gaussian, ``cov2d (2, 2)`` its projected
    covariance in pixels^2 (0.3 low-pass included), ``mean2d (2,)`` its centre in OpenCV pixel
    coordinates, ``radii (2,)`` gsplat's extent in pixels (0 when culled, e.g. opacity < 1/255).
    ``draw=True`` shows the image with the 2-sigma ellipse of ``cov2d`` (dashed) and the extent
    box (dotted) on ``ax`` (a new figure if None). Notebook 05, section 2.
    """
    g = toy_gaussians((scale_x, scale_y, scale_z), opacity, (rx, ry, rz))
    c2w, K = toy_camera(size)
    out = render_views(g, c2w, K, (size, size), background=torch.ones(3, dtype=torch.float64))
    proj = project_gaussians(g["means"], g["quats"], g["scales"], g["opacities"], cameras.invert_pose(c2w),
                             cameras.gsplat_K(K), size, size)
    info = {"image": out.rgb[0].permute(1, 2, 0),
            "cov3d": covariance_3d(g["quats"][:1], g["scales"][:1])[0],
            "cov2d": covariance_2d(proj)[0, 0],
            "mean2d": proj.means2d[0, 0] - 0.5,                 # gsplat's +0.5 centres -> OpenCV
            "radii": proj.radii[0, 0]}
    if not draw:
        return None, info
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse, Rectangle

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(info["image"].clamp(0, 1).numpy())
    evals, evecs = torch.linalg.eigh(info["cov2d"])
    angle = math.degrees(math.atan2(float(evecs[1, 1]), float(evecs[0, 1])))
    mx, my = (float(v) for v in info["mean2d"])
    w, h = (4 * math.sqrt(float(evals[1])), 4 * math.sqrt(float(evals[0])))   # 2 sigma each side
    ax.add_patch(Ellipse((mx, my), w, h, angle=angle, fill=False, ls="--", color="k", lw=1))
    rxp, ryp = (int(v) for v in info["radii"])
    if rxp or ryp:
        ax.add_patch(Rectangle((mx - rxp, my - ryp), 2 * rxp, 2 * ryp, fill=False, ls=":", color="0.3", lw=1))
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.set_title(f"red: cov2d diag ({info['cov2d'][0, 0]:.1f}, {info['cov2d'][1, 1]:.1f}) px^2, "
                 f"extent {rxp}x{ryp} px", fontsize=8)
    ax.set_axis_off()
    return ax, info


def orbit_view(gaussians: dict, target, radius: float, azimuth_deg: float, elevation_deg: float,
               K: torch.Tensor, hw, up=(0.0, 0.0, 1.0), reference=None, background=None, ax=None,
               draw: bool = True):
    """Callback of the novel-view widget: render ``gaussians`` from ``orbit_c2w(target, radius,
    azimuth_deg, elevation_deg, up, reference)`` with intrinsics ``K (3, 3)`` (OpenCV centres)
    at ``hw = (H, W)``.

    Returns ``(ax or None, info)``; ``info``: ``c2w (4, 4)`` the camera (float64), ``image
    (3, H, W)``, ``alpha (H, W)``, ``depth (H, W)`` (tensors in the Gaussians' dtype / device).
    ``draw=True`` shows the image on ``ax``. Notebook 05, section 3.
    """
    if not isinstance(K, torch.Tensor) or tuple(K.shape) != (3, 3):
        raise ValueError(f"orbit_view: K must be one (3, 3) intrinsics matrix, got "
                         f"{tuple(K.shape) if isinstance(K, torch.Tensor) else type(K).__name__}")
    c2w = orbit_c2w(target, radius, azimuth_deg, elevation_deg, up, reference)
    out = render_views(gaussians, c2w[None], K[None], hw, background=background)
    info = {"c2w": c2w, "image": out.rgb[0], "alpha": out.alpha[0], "depth": out.depth[0]}
    if not draw:
        return None, info
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(info["image"].detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy())
    ax.set_title(f"azimuth {azimuth_deg:.0f} deg, elevation {elevation_deg:.0f} deg, r {radius:.2f}", fontsize=8)
    ax.set_axis_off()
    return ax, info


def make_toy_widget(size: int = 96):
    """ipywidgets sliders (3 scales, opacity, 3 angles) around :func:`toy_view`; returns the
    :func:`flare_nb.panel.figure_panel` (display it). Notebook 05."""
    import ipywidgets as W


    fs = lambda v, lo, hi, step, d: W.FloatSlider(value=v, min=lo, max=hi, step=step, description=d,  # noqa: E731
                                                  continuous_update=False)

    def update(scale_x, scale_y, scale_z, opacity, rx, ry, rz):
        return toy_view(scale_x, scale_y, scale_z, opacity, rx, ry, rz, size=size)[0].figure

    return figure_panel(update, dict(scale_x=fs(0.3, 0.01, 1.0, 0.01, "scale x"), scale_y=fs(0.1, 0.01, 1.0, 0.01, "scale y"),
                        scale_z=fs(0.1, 0.01, 1.0, 0.01, "scale z"), opacity=fs(0.8, 0.0, 1.0, 0.01, "opacity"),
                        rx=fs(0.0, -180, 180, 5, "rx (deg)"), ry=fs(0.0, -180, 180, 5, "ry (deg)"),
                        rz=fs(0.0, -180, 180, 5, "rz (deg)")))


def make_orbit_widget(gaussians: dict, target, K: torch.Tensor, hw, radius: float, azimuth_deg: float = 0.0,
                      elevation_deg: float = 20.0, up=(0.0, 0.0, 1.0), reference=None, background=None):
    """ipywidgets sliders (azimuth, elevation, radius) around :func:`orbit_view`, starting at
    the given values; returns a :func:`flare_nb.panel.figure_panel`. Notebook 05."""
    import ipywidgets as W


    def update(azimuth, elevation, radius):
        return orbit_view(gaussians, target, radius, azimuth, elevation, K, hw, up, reference, background)[0].figure

    return figure_panel(update, dict(
                         azimuth=W.FloatSlider(value=azimuth_deg, min=azimuth_deg - 180, max=azimuth_deg + 180, step=5,
                                               description="azimuth", continuous_update=False),
                         elevation=W.FloatSlider(value=elevation_deg, min=-80, max=80, step=5, description="elevation",
                                                 continuous_update=False),
                         radius=W.FloatSlider(value=radius, min=0.3 * radius, max=2.0 * radius, step=0.05 * radius,
                                              description="radius", continuous_update=False)))
