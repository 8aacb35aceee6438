"""``scene.html``: a 3D page of one reconstruction that opens offline (``flare-nb`` output folder).

One self-contained HTML file: plotly's JavaScript (plotly.js, MIT licence, shipped inside the
``plotly`` Python package) is inlined, so the page needs no network and no server. It shows

* the point cloud (the confident pixels of the global pointmap, in their colours),
* each camera as a frustum (wire lines) with its input image drawn on the frustum's far
  rectangle (a coloured mesh, one vertex per image sample),
* the Gaussians' centres (a legend entry; click it to show or hide them).

Everything is in the world frame of the exports (view 0's camera frame, OpenCV axes: x right,
y down, z forward); the page starts looking along +z from behind view 0 with -y up.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["frustum_corners", "scene_figure", "write_scene_page", "MAX_PAGE_POINTS", "MAX_PAGE_GAUSSIANS"]

MAX_PAGE_POINTS = 60_000        # points drawn (a fixed-seed random subset beyond this)
MAX_PAGE_GAUSSIANS = 30_000     # Gaussian centres drawn
IMAGE_SAMPLES = 32              # image samples along the longer side of each frustum picture


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def _subset(n: int, cap: int, seed: int = 0) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def frustum_corners(c2w, K, hw, depth: float) -> np.ndarray:
    """World coordinates ``(5, 3)``: the camera centre and the image corners (top-left, top-right,
    bottom-right, bottom-left pixel edges) at ``depth`` along the optical axis."""
    c2w, K = _np(c2w), _np(K)
    H, W = hw
    px = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]])
    rays = np.c_[(px[:, 0] - K[0, 2]) / K[0, 0], (px[:, 1] - K[1, 2]) / K[1, 1], np.ones(4)] * depth
    cam = np.vstack([np.zeros(3), rays])
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def _scene_scale(points: np.ndarray, centres: np.ndarray) -> float:
    """A frustum depth: a tenth of the scene's extent (robust percentiles), else the camera spread."""
    ext = 0.0
    if len(points):
        lo, hi = np.percentile(points, [5, 95], axis=0)
        ext = float(np.linalg.norm(hi - lo))
    spread = float(np.linalg.norm(centres.max(0) - centres.min(0))) if len(centres) > 1 else 0.0
    s = 0.1 * ext if ext > 0 else 0.3 * spread
    return s if np.isfinite(s) and s > 0 else 0.1


def _image_mesh(corners: np.ndarray, image: np.ndarray):
    """A grid mesh over the far rectangle ``corners[1:5]`` coloured by ``image (H, W, 3)`` in [0, 1]."""
    H, W = image.shape[:2]
    s = IMAGE_SAMPLES / max(H, W)
    h, w = max(2, round(H * s)), max(2, round(W * s))
    rows = np.clip(((np.arange(h) + 0.5) / h * H).astype(int), 0, H - 1)
    cols = np.clip(((np.arange(w) + 0.5) / w * W).astype(int), 0, W - 1)
    tl, tr, br, bl = corners[1:5]
    a = np.linspace(0, 1, w)[None, :, None]
    b = np.linspace(0, 1, h)[:, None, None]
    grid = (1 - b) * ((1 - a) * tl + a * tr) + b * ((1 - a) * bl + a * br)     # (h, w, 3)
    colors = (np.clip(image[rows][:, cols], 0, 1) * 255).round().astype(int).reshape(-1, 3)
    idx = np.arange(h * w).reshape(h, w)
    q = np.stack([idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]], -1).reshape(-1, 4)
    tris = np.vstack([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    return grid.reshape(-1, 3), tris, [f"rgb({r},{g},{bb})" for r, g, bb in colors]


def scene_figure(points, colors, c2w, K, images, names=None, gaussian_means=None, title: str = ""):
    """The plotly figure of :func:`write_scene_page` as a plain dict (``{"data": [...], "layout":
    {...}}``; ``plotly.graph_objects.Figure(d)`` turns it into a figure object, which takes seconds
    to validate 60,000 colours). ``points (N, 3)``, ``colors (N, 3)`` in [0, 1], ``c2w (V, 4, 4)``
    (OpenCV axes), ``K (V, 3, 3)``, ``images (V, 3, H, W)`` in [0, 1], ``names`` V labels,
    ``gaussian_means (M, 3)`` or None."""

    P, C = _np(points).reshape(-1, 3), _np(colors).reshape(-1, 3)
    c2w, K = _np(c2w), _np(K)
    imgs = _np(images).transpose(0, 2, 3, 1)
    V, H, W = imgs.shape[:3]
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (V, 3, 3))
    if len(P) != len(C) or c2w.shape != (V, 4, 4) or K.shape != (V, 3, 3):
        raise ValueError(f"scene page: need points/colors of one length and V = {V} cameras and K, got "
                         f"{P.shape}, {C.shape}, {c2w.shape}, {K.shape}")
    names = [f"view {i}" for i in range(V)] if names is None else [str(n) for n in names]
    ok = np.isfinite(P).all(1)
    P, C = P[ok], C[ok]
    sel = _subset(len(P), MAX_PAGE_POINTS)
    P, C = P[sel], np.clip(C[sel], 0, 1)
    traces = [dict(type="scatter3d", x=P[:, 0], y=P[:, 1], z=P[:, 2], mode="markers", name=f"points ({len(P)})",
                           marker=dict(size=1.5, color=[f"rgb({r},{g},{b})" for r, g, b in
                                                         (C * 255).round().astype(int)]), hoverinfo="skip")]
    depth = _scene_scale(P, c2w[:, :3, 3])
    lx, ly, lz = [], [], []
    for i in range(V):
        c = frustum_corners(c2w[i], K[i], (H, W), depth)
        for a, b in ((0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1)):
            lx += [c[a, 0], c[b, 0], None]
            ly += [c[a, 1], c[b, 1], None]
            lz += [c[a, 2], c[b, 2], None]
        verts, tris, vc = _image_mesh(c, imgs[i])
        traces.append(dict(type="mesh3d", x=verts[:, 0], y=verts[:, 1], z=verts[:, 2], i=tris[:, 0], j=tris[:, 1],
                                k=tris[:, 2], vertexcolor=vc, name=names[i], showlegend=False,
                                hovertext=names[i], hoverinfo="text", flatshading=True,
                                lighting=dict(ambient=1.0, diffuse=0.0, specular=0.0)))
    traces.append(dict(type="scatter3d", x=lx, y=ly, z=lz, mode="lines", name=f"cameras ({V})",
                               line=dict(color="crimson", width=3), hoverinfo="skip"))
    if gaussian_means is not None:
        G = _np(gaussian_means).reshape(-1, 3)
        G = G[np.isfinite(G).all(1)]
        G = G[_subset(len(G), MAX_PAGE_GAUSSIANS, seed=1)]
        traces.append(dict(type="scatter3d", x=G[:, 0], y=G[:, 1], z=G[:, 2], mode="markers", visible="legendonly",
                                   name=f"Gaussian centres ({len(G)} shown)", hoverinfo="skip",
                                   marker=dict(size=1.2, color="royalblue", opacity=0.6)))
    layout = dict(title=dict(text=title), paper_bgcolor="white", margin=dict(l=0, r=0, t=40, b=0),
                  legend=dict(itemsizing="constant"),
                  scene=dict(aspectmode="data", xaxis=dict(title=dict(text="x")),
                             yaxis=dict(title=dict(text="y (down)")), zaxis=dict(title=dict(text="z")),
                             camera=dict(up=dict(x=0, y=-1, z=0), eye=dict(x=0.0, y=-0.6, z=-1.8))))
    return {"data": traces, "layout": layout}


def write_scene_page(path, points, colors, c2w, K, images, names=None, gaussian_means=None, title: str = "") -> Path:
    """Write the offline page (plotly.js inlined; no network needed) and return its path."""
    import plotly.io as pio

    fig = scene_figure(points, colors, c2w, K, images, names, gaussian_means, title)
    path = Path(path)
    pio.write_html(fig, str(path), include_plotlyjs=True, full_html=True, validate=False,
                   config={"displaylogo": False})
    return path
