"""Cameras, point clouds, images and depth maps on screen (used by every notebook).

Cameras are drawn as frusta in the workbook's conventions (README "Conventions"): ``c2w``
camera-to-world 4x4 with **OpenCV axes** (x right, y down, z forward); ``K`` in pixels with
OpenCV pixel centres, so the image border is at ``u = -0.5 .. W - 0.5``. Each frustum is its
apex (the camera centre) joined to the four image corners at depth ``scale`` along the
optical axis, plus a small triangle on the *top* edge of the image (the camera's ``-y``
side), so an upside-down camera is visible at a glance.

* :func:`plot_cameras` -- matplotlib 3D (static, for papermill / PDFs)
* :func:`plotly_cameras` -- interactive plotly figure for JupyterLab
* :func:`show_images`, :func:`show_depth` -- image grids
* :func:`frustum_points` -- the frustum geometry both plotters draw
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["frustum_points", "plot_cameras", "plotly_cameras", "show_images", "show_depth"]


# ----------------------------------------------------------------------------- inputs


def _np(x, name: str) -> np.ndarray:
    """torch / numpy / list -> float64 numpy (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array or tensor of numbers, got {type(x).__name__}") from None


def _poses(c2w) -> np.ndarray:
    T = _np(c2w, "c2w")
    if T.ndim == 2:
        T = T[None]
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise ValueError(f"c2w must be (V, 4, 4) or (4, 4) camera-to-world matrices, got {T.shape}")
    return T


def _intrinsics(K, hw, V: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``K (V, 3, 3)`` and ``(H, W)``: ``hw`` defaults to what K's centred principal point
    implies, ``K`` to a 60 degree horizontal field of view for ``hw`` (or a square image)."""
    if K is None:
        H, W = hw if hw is not None else (1, 1)
        f = 0.5 * W / math.tan(math.radians(30))
        K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])
    K = _np(K, "K")
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (V, 3, 3))
    if K.shape != (V, 3, 3):
        raise ValueError(f"K must be (3, 3) or ({V}, 3, 3) for {V} cameras, got {K.shape}")
    if hw is None:
        hw = (int(round(2 * K[0, 1, 2] + 1)), int(round(2 * K[0, 0, 2] + 1)))
    H, W = (int(s) for s in hw)
    if H <= 0 or W <= 0:
        raise ValueError(f"hw must be a positive (H, W), got {hw}")
    return K, (H, W)


def _cloud(points, colors, max_points: int, seed: int = 0):
    """Flatten ``points (..., 3)`` (and ``colors (..., 3)`` in [0, 1]), drop non-finite
    points, subsample to ``max_points`` with a fixed seed. No points: ``(None, None)``."""
    if points is None:
        if colors is not None:
            raise ValueError("colors given without points")
        return None, None
    P = _np(points, "points")
    if P.shape[-1] != 3:
        raise ValueError(f"points must be (..., 3), got {P.shape}")
    P = P.reshape(-1, 3)
    C = None
    if colors is not None:
        C = _np(colors, "colors")
        if C.shape[-1] != 3 or C.size != P.size:
            raise ValueError(f"colors must be (..., 3) with one RGB per point ({P.shape[0]} points), got {C.shape}")
        C = np.clip(C.reshape(-1, 3), 0.0, 1.0)
    keep = np.flatnonzero(np.isfinite(P).all(axis=1))
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_points, replace=False))
    return P[keep], (None if C is None else C[keep])


def _auto_scale(T: np.ndarray, P: np.ndarray | None) -> float:
    """A frustum depth of 15% of the scene's size (camera centres and points)."""
    xyz = T[:, :3, 3] if P is None or len(P) == 0 else np.concatenate([T[:, :3, 3], P])
    size = 0.0
    if len(xyz) > 1:
        size = float(np.linalg.norm(np.percentile(xyz, 95, axis=0) - np.percentile(xyz, 5, axis=0)))
    return 0.15 * size if size > 1e-9 else 0.3


# ----------------------------------------------------------------------------- geometry


def frustum_points(c2w, K=None, hw=None, scale: float = 1.0) -> np.ndarray:
    """World coordinates ``(V, 8, 3)`` of each camera's frustum (numpy float64).

    Rows: 0 the apex (camera centre), 1-4 the image corners (top-left, top-right,
    bottom-right, bottom-left in pixels ``(-0.5, -0.5) .. (W - 0.5, H - 0.5)``, OpenCV
    pixel centres) at z-depth ``scale``, 5-7 the "up" triangle on the top edge. ``K`` is
    ``(3, 3)`` or ``(V, 3, 3)``; see :func:`plot_cameras` for the defaults. Notebook 00.
    """
    T = _poses(c2w)
    K, (H, W) = _intrinsics(K, hw, len(T))
    u0, v0, u1, v1 = -0.5, -0.5, W - 0.5, H - 0.5
    um = 0.5 * (u0 + u1)
    pix = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1],
                    [um - 0.2 * W, v0], [um + 0.2 * W, v0], [um, v0 - 0.25 * H]])
    out = np.empty((len(T), 8, 3))
    for i in range(len(T)):
        rays = np.linalg.solve(K[i], np.concatenate([pix, np.ones((len(pix), 1))], 1).T).T
        cam = rays / rays[:, 2:] * scale
        out[i, 0] = T[i, :3, 3]
        out[i, 1:] = cam @ T[i, :3, :3].T + T[i, :3, 3]
    return out


# segments of a frustum as index pairs into frustum_points' rows
_EDGES = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1), (5, 7), (7, 6)]


def _view_colours(V: int):
    import matplotlib
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(V - 1, 1)) for i in range(V)]


# ----------------------------------------------------------------------------- matplotlib


def plot_cameras(c2w, K=None, hw=None, ax=None, points=None, colors=None, scale: float | None = None,
                 max_points: int = 20000, labels: bool = True):
    """Draw camera frusta (and optionally a point cloud) on a matplotlib 3D axis.

    Args:
        c2w: ``(V, 4, 4)`` camera-to-world, OpenCV axes (torch or numpy).
        K: ``(3, 3)`` or ``(V, 3, 3)`` intrinsics; default a 60 degree horizontal field of view.
        hw: ``(H, W)`` image size; default from K's principal point (``W = 2 cx + 1``).
        ax: a 3D axis to draw on (default: a new figure).
        points: optional ``(..., 3)`` world points (e.g. pointmaps ``(V, H, W, 3)``);
            non-finite ones are dropped, at most ``max_points`` drawn (fixed-seed subsample).
        colors: optional ``(..., 3)`` RGB in [0, 1], one per point.
        scale: frustum depth in world units (default 15% of the scene's size).
        labels: write the view index next to each camera.

    Returns the axis. Each camera is one ``Line3DCollection`` (coloured by view index,
    view 0 dark purple); the points are one scatter collection. Notebooks 00 and later.
    """
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    T = _poses(c2w)
    P, C = _cloud(points, colors, max_points)
    scale = _auto_scale(T, P) if scale is None else float(scale)
    F = frustum_points(T, K, hw, scale)
    if ax is None:
        fig = plt.figure(figsize=(6, 6))
        ax = fig.add_subplot(projection="3d")
    elif getattr(ax, "name", "") != "3d":
        raise ValueError("ax must be a 3D axis (fig.add_subplot(projection='3d'))")
    if P is not None and len(P):
        ax.scatter(P[:, 0], P[:, 1], P[:, 2], c=C if C is not None else "0.5", s=1.0, depthshade=False,
                   linewidths=0)
    for i, col in enumerate(_view_colours(len(T))):
        ax.add_collection3d(Line3DCollection([F[i, [a, b]] for a, b in _EDGES], colors=[col], linewidths=1.5))
        if labels:
            ax.text(*F[i, 0], str(i), color=col, fontsize=8)
    xyz = F.reshape(-1, 3) if P is None or not len(P) else np.concatenate([F.reshape(-1, 3), P])
    lo, hi = xyz.min(0), xyz.max(0)
    c, r = 0.5 * (lo + hi), 0.5 * float((hi - lo).max()) or 1.0
    ax.set_xlim(c[0] - r, c[0] + r)
    ax.set_ylim(c[1] - r, c[1] + r)
    ax.set_zlim(c[2] - r, c[2] + r)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    return ax


# ----------------------------------------------------------------------------- plotly


def plotly_cameras(c2w, K=None, hw=None, points=None, colors=None, scale: float | None = None,
                   names=None, max_points: int = 20000, fig=None, point_size: float = 1.5):
    """Interactive plotly figure: one line trace per camera frustum, plus one marker trace
    for the points (if given). Same arguments and conventions as :func:`plot_cameras`;
    ``names`` labels the cameras (default ``view 0 .. V-1``); ``fig`` adds to an existing
    figure. Returns the ``plotly.graph_objects.Figure`` (display it with ``fig.show()`` or
    as the last expression of a JupyterLab cell). Notebooks 00 and later.
    """
    import plotly.graph_objects as go

    T = _poses(c2w)
    P, C = _cloud(points, colors, max_points)
    if names is None:
        names = [f"view {i}" for i in range(len(T))]
    if len(names) != len(T):
        raise ValueError(f"names has {len(names)} entries for {len(T)} cameras")
    scale = _auto_scale(T, P) if scale is None else float(scale)
    F = frustum_points(T, K, hw, scale)
    fig = go.Figure() if fig is None else fig
    for i, col in enumerate(_view_colours(len(T))):
        xyz = []
        for a, b in _EDGES:
            xyz += [F[i, a], F[i, b], [None] * 3]
        x, y, z = zip(*xyz)
        rgb = "rgb({:.0f},{:.0f},{:.0f})".format(*(255 * np.asarray(col[:3])))
        fig.add_trace(go.Scatter3d(x=x, y=y, z=z, mode="lines", name=str(names[i]),
                                   line=dict(color=rgb, width=4)))
    if P is not None:
        marker = dict(size=point_size)
        if C is not None:
            marker["color"] = [f"rgb({r:.0f},{g:.0f},{b:.0f})" for r, g, b in 255 * C]
        fig.add_trace(go.Scatter3d(x=P[:, 0], y=P[:, 1], z=P[:, 2], mode="markers", name="points",
                                   marker=marker))
    fig.update_layout(scene=dict(aspectmode="data"), margin=dict(l=0, r=0, t=30, b=0),
                      legend=dict(itemsizing="constant"))
    return fig


# ----------------------------------------------------------------------------- image grids


def _grid(n: int, ncols: int | None, size: float):
    import matplotlib.pyplot as plt
    ncols = min(n, 4) if ncols is None else max(1, int(ncols))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def _titles(titles, n: int):
    if titles is None:
        return [None] * n
    titles = list(titles)
    if len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} images")
    return titles


def show_images(images, titles=None, ncols: int | None = None, size: float = 3.0):
    """Show RGB images in a grid; returns the matplotlib Figure (one axis per image).

    ``images``: ``(V, 3, H, W)`` (``Scene.images``) or ``(V, H, W, 3)``, or one image
    ``(3, H, W)`` / ``(H, W, 3)``; values in [0, 1] (model inputs in [-1, 1] must be mapped
    back with ``x * 0.5 + 0.5`` first; values outside [0, 1] are clipped). Scalar maps go
    to :func:`show_depth`.
    """
    X = _np(images, "images")
    if X.ndim == 3:
        X = X[None]
    if X.ndim == 4 and X.shape[1] == 3 and X.shape[-1] != 3:
        X = X.transpose(0, 2, 3, 1)
    if X.ndim != 4 or X.shape[-1] != 3:
        raise ValueError(f"images must be (V, 3, H, W) or (V, H, W, 3) RGB, got {_np(images, 'images').shape}")
    titles = _titles(titles, len(X))
    fig, axes = _grid(len(X), ncols, size)
    for ax, im, t in zip(axes, X, titles):
        ax.imshow(np.clip(im, 0.0, 1.0))
        ax.set_axis_off()
        if t is not None:
            ax.set_title(str(t), fontsize=9)
    fig.tight_layout()
    return fig


def show_depth(depth, titles=None, ncols: int | None = None, size: float = 3.0, cmap: str = "turbo",
               inverse: bool = False, colorbar: bool = True):
    """Show z-depth maps ``(V, H, W)`` (or one ``(H, W)``) in a grid; returns the Figure.

    Pixels with depth 0 (no data, README "Conventions") are masked and drawn blank. All
    maps share one colour range (2nd-98th percentile of the valid depths) so views can be
    compared; ``inverse=True`` shows ``1 / depth`` (disparity-like, more detail up close).
    """
    D = _np(depth, "depth")
    if D.ndim == 2:
        D = D[None]
    if D.ndim != 3:
        raise ValueError(f"depth must be (V, H, W) or (H, W), got {D.shape}")
    valid = np.isfinite(D) & (D > 0)
    D = np.where(valid, D, np.nan)
    if inverse:
        D = 1.0 / D
    vals = D[valid]
    vmin, vmax = (np.percentile(vals, [2, 98]) if vals.size else (0.0, 1.0))
    titles = _titles(titles, len(D))
    fig, axes = _grid(len(D), ncols, size)
    im = None
    for ax, d, ok, t in zip(axes, D, valid, titles):
        im = ax.imshow(np.ma.masked_array(d, ~ok), cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_axis_off()
        if t is not None:
            ax.set_title(str(t), fontsize=9)
    fig.tight_layout()
    if colorbar and im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="1 / depth" if inverse else "depth")
    return fig
