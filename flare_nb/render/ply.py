"""PLY files: 3D Gaussians in the standard 3DGS layout, and coloured point clouds (notebook 05).

Gaussians (:func:`save_gaussians_ply` / :func:`load_gaussians_ply`)
------------------------------------------------------------------
The layout that the original 3D Gaussian Splatting code writes and that common viewers
(SuperSplat, the SIBR viewer, antimatter15/splat, ...) and training codes read: one binary
little-endian ``vertex`` element, every property ``float32``, in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 ... f_rest_{3(K-1)-1}
    opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

The file holds *raw* (pre-activation) values, our functions take and return *activated* ones:

=================  ===========================  ==========================================
property           in the file                  in our tensors (what gsplat takes)
=================  ===========================  ==========================================
x y z              position                     ``means (N, 3)``
nx ny nz           zeros (unused)               --
f_dc_*, f_rest_*   SH coefficients              ``sh (N, K, 3)``, K = (degree + 1)^2
opacity            logit(opacity)               ``opacities (N,)`` in (0, 1)
scale_*            log(scale)                   ``scales (N, 3)`` > 0
rot_*              quaternion (w, x, y, z)      ``quats (N, 4)`` unit, w >= 0
=================  ===========================  ==========================================

**f_rest ordering (channel-major).** 3DGS keeps the higher-order coefficients as
``(N, K-1, 3)`` and writes them transposed to ``(N, 3, K-1)`` and flattened, so all of red's
coefficients come first, then green's, then blue's::

    f_rest_{c * (K - 1) + (k - 1)} = sh[:, k, c]      k = 1..K-1, c = 0 (R), 1 (G), 2 (B)

e.g. for degree 3 (K = 16): ``f_rest_0..14`` are red's 15 coefficients, ``f_rest_15..29``
green's, ``f_rest_30..44`` blue's. ``f_dc_c = sh[:, 0, c]``.

**RGB <-> SH DC.** A colour is the degree-0 SH term: ``rgb = C0 * sh[:, 0] + 0.5`` with
``C0 = 0.28209479177387814`` (1 / (2 sqrt(pi))), the +0.5 offset that gsplat and 3DGS both
add; :func:`rgb_to_sh` and :func:`sh_to_rgb` convert.

Points (:func:`save_points_ply` / :func:`load_points_ply`)
--------------------------------------------------------
``x y z`` float32, ``red green blue`` uchar and an optional float32 ``confidence``: the
layout Open3D, MeshLab and CloudCompare read.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

C0 = 0.28209479177387814
"""Degree-0 real spherical harmonic, 1 / (2 sqrt(pi))."""

_OPACITY_EPS = 1e-7  # opacities of exactly 0 or 1 (float32 sigmoid saturation) are clamped to this


# ---------------------------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------------------------
def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """``rgb (..., 3)`` in [0, 1] -> SH DC coefficients ``(..., 3)``: ``(rgb - 0.5) / C0``."""
    return (rgb - 0.5) / C0


def sh_to_rgb(sh_dc: torch.Tensor) -> torch.Tensor:
    """SH DC coefficients ``(..., 3)`` -> ``rgb (..., 3)``: ``C0 * sh_dc + 0.5`` (not clamped)."""
    return sh_dc * C0 + 0.5


def f_rest_names(K: int) -> list[str]:
    """Property names ``f_rest_0 .. f_rest_{3(K-1)-1}`` for ``K`` SH coefficients per channel."""
    return [f"f_rest_{i}" for i in range(3 * (K - 1))]


def gaussian_property_names(K: int) -> list[str]:
    """All vertex property names of a 3DGS PLY with ``K`` SH coefficients, in file order."""
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + f_rest_names(K)
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _as_np64(x, name: str, shape_tail: tuple, N: int | None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    want = ("N",) + shape_tail
    if x.ndim != len(want) or tuple(x.shape[1:]) != shape_tail or (N is not None and x.shape[0] != N):
        n = "N" if N is None else N
        raise ValueError(f"{name} must have shape ({n}, {', '.join(map(str, shape_tail))}), got {x.shape}"
                         if shape_tail else f"{name} must have shape ({n},), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


# ---------------------------------------------------------------------------------------------
# Gaussians
# ---------------------------------------------------------------------------------------------
def save_gaussians_ply(path, means, quats, scales, opacities, sh=None, rgb=None) -> Path:
    """Write Gaussians to ``path`` in the standard 3DGS PLY layout (module docstring).

    Takes *activated* values, as gsplat takes them:
    ``means (N, 3)``; ``quats (N, 4)`` (w, x, y, z), any non-zero norm (written as given);
    ``scales (N, 3)`` > 0; ``opacities (N,)`` (or ``(N, 1)``) in [0, 1] (exact 0 and 1 are
    clamped to 1e-7 and 1 - 1e-7 so that the logit stays finite); and exactly one of
    ``sh (N, K, 3)`` with K in {1, 4, 9, 16, 25} or ``rgb (N, 3)`` in [0, 1] (written as the SH
    DC term, :func:`rgb_to_sh`). Conversions to logit and log run in float64, then float32.
    Returns the path. Notebook 05.
    """
    means = _as_np64(means, "means", (3,), None)
    N = means.shape[0]
    quats = _as_np64(quats, "quats", (4,), N)
    scales = _as_np64(scales, "scales", (3,), N)
    op = opacities.detach().cpu().double().numpy() if isinstance(opacities, torch.Tensor) else np.asarray(opacities, np.float64)
    if op.ndim == 2 and op.shape[1] == 1:
        op = op[:, 0]
    op = _as_np64(op, "opacities", (), N)
    if (sh is None) == (rgb is None):
        raise ValueError("save_gaussians_ply: pass exactly one of sh (N, K, 3) or rgb (N, 3)")
    if rgb is not None:
        rgb = _as_np64(rgb, "rgb", (3,), N)
        sh = rgb_to_sh(rgb)[:, None, :]
    else:
        if isinstance(sh, torch.Tensor):
            sh = sh.detach().cpu().double().numpy()
        sh = np.asarray(sh, np.float64)
        if sh.ndim != 3 or sh.shape[0] != N or sh.shape[2] != 3:
            raise ValueError(f"sh must have shape ({N}, K, 3), got {sh.shape}")
        sh = _as_np64(sh, "sh", tuple(sh.shape[1:]), N)
    K = sh.shape[1]
    if math.isqrt(K) ** 2 != K:
        raise ValueError(f"sh has K={K} coefficients per channel; K must be (degree + 1)^2: 1, 4, 9, 16, 25")
    if (scales <= 0).any():
        raise ValueError(f"scales must be > 0 (activated scales, not log scales); min is {scales.min():.3g}")
    if ((op < 0) | (op > 1)).any():
        raise ValueError(f"opacities must lie in [0, 1] (activated, not logits); range is "
                         f"[{op.min():.3g}, {op.max():.3g}]")
    qn = np.linalg.norm(quats, axis=1)
    if (qn <= 0).any():
        raise ValueError(f"quats has {(qn <= 0).sum()} zero quaternion(s)")

    op = np.clip(op, _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    f_rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(N, -1)  # channel-major, see module docstring
    columns = ([means[:, i] for i in range(3)] + [np.zeros(N)] * 3
               + [sh[:, 0, c] for c in range(3)] + [f_rest[:, i] for i in range(f_rest.shape[1])]
               + [np.log(op) - np.log1p(-op)] + [np.log(scales[:, i]) for i in range(3)]
               + [quats[:, i] for i in range(4)])
    names = gaussian_property_names(K)
    vertex = np.empty(N, dtype=[(n, "<f4") for n in names])
    for n, col in zip(names, columns):
        vertex[n] = col.astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from plyfile import PlyData, PlyElement

    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(path))
    return path


def _read_vertex(path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no PLY file at {path}")
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path))
    except Exception as e:  # plyfile raises several types for malformed files
        raise ValueError(f"{path} is not a readable PLY file: {e}") from e
    if "vertex" not in [el.name for el in ply.elements]:
        raise ValueError(f"{path} has no 'vertex' element; elements: {[el.name for el in ply.elements]}")
    return ply["vertex"].data


def load_gaussians_ply(path, device=None) -> dict:
    """Read a 3DGS PLY (any SH degree 0-4) and return *activated* float32 tensors.

    Returns ``dict(means (N, 3), quats (N, 4) unit with w >= 0, scales (N, 3) = exp(scale_*),
    opacities (N,) = sigmoid(opacity), sh (N, K, 3), sh_degree int)``; ``f_rest`` is read in
    the channel-major order of the module docstring (properties sorted by their index, so
    the order in the file does not matter). ValueError naming the missing properties when a
    required one is absent, or when the f_rest count is not 3 (K - 1). Notebook 05.
    """
    v = _read_vertex(path)
    names = list(v.dtype.names)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
                "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [n for n in required if n not in names]
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n[len("f_rest_"):]))
    if rest and [int(n[7:]) for n in rest] != list(range(len(rest))):
        gaps = sorted(set(range(int(rest[-1][7:]) + 1)) - {int(n[7:]) for n in rest})
        missing += [f"f_rest_{i}" for i in gaps]
    if missing:
        raise ValueError(f"{path} is not a 3DGS Gaussian PLY: missing vertex properties {missing}")
    if len(rest) % 3 or math.isqrt(len(rest) // 3 + 1) ** 2 != len(rest) // 3 + 1:
        raise ValueError(f"{path}: {len(rest)} f_rest_* properties; expected 3 (K - 1) with K = "
                         "(degree + 1)^2, i.e. 0, 9, 24, 45 or 72")
    N, K = len(v), len(rest) // 3 + 1

    def col(n):
        return np.asarray(v[n], dtype=np.float64)

    means = np.stack([col(n) for n in "xyz"], 1)
    sh = np.zeros((N, K, 3))
    for c in range(3):
        sh[:, 0, c] = col(f"f_dc_{c}")
        for k in range(1, K):
            sh[:, k, c] = col(f"f_rest_{c * (K - 1) + k - 1}")
    opacities = 1.0 / (1.0 + np.exp(-col("opacity")))
    scales = np.exp(np.stack([col(f"scale_{i}") for i in range(3)], 1))
    quats = np.stack([col(f"rot_{i}") for i in range(4)], 1)
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    if (norm == 0).any():
        raise ValueError(f"{path}: {(norm == 0).sum()} Gaussian(s) have an all-zero quaternion rot_0..3")
    quats = quats / norm
    quats = np.where(quats[:, :1] < 0, -quats, quats)

    def t(x):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)

    return dict(means=t(means), quats=t(quats), scales=t(scales), opacities=t(opacities), sh=t(sh),
                sh_degree=math.isqrt(K) - 1)


# ---------------------------------------------------------------------------------------------
# Points
# ---------------------------------------------------------------------------------------------
def _colors_to_u8(colors, N: int) -> np.ndarray:
    if isinstance(colors, torch.Tensor):
        colors = colors.detach().cpu().numpy()
    colors = np.asarray(colors)
    if colors.shape != (N, 3):
        raise ValueError(f"colors must have shape ({N}, 3), got {colors.shape}")
    if colors.dtype == np.uint8:
        return colors
    if not np.issubdtype(colors.dtype, np.floating):
        raise ValueError(f"colors must be uint8 in [0, 255] or float in [0, 1], got dtype {colors.dtype}")
    if not np.isfinite(colors).all() or colors.min() < 0 or colors.max() > 1:
        raise ValueError(f"float colors must lie in [0, 1]; got range [{np.nanmin(colors):.3g}, "
                         f"{np.nanmax(colors):.3g}] (pass uint8 for 0-255 values)")
    return np.round(colors.astype(np.float64) * 255.0).astype(np.uint8)


def save_points_ply(path, points, colors, conf=None) -> Path:
    """Write a coloured point cloud: ``points (N, 3)``, ``colors (N, 3)`` uint8 or float in [0, 1]
    (float is rounded to uint8), optional ``conf (N,)`` stored as float32 ``confidence``.

    Binary little-endian; readable by Open3D (``o3d.io.read_point_cloud``), MeshLab,
    CloudCompare. Returns the path. Notebooks 03 and 05.
    """
    points = _as_np64(points, "points", (3,), None)
    N = points.shape[0]
    rgb = _colors_to_u8(colors, N)
    dtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if conf is not None:
        conf = _as_np64(conf, "conf", (), N)
        dtype.append(("confidence", "<f4"))
    vertex = np.empty(N, dtype=dtype)
    for i, n in enumerate("xyz"):
        vertex[n] = points[:, i].astype(np.float32)
    for i, n in enumerate(("red", "green", "blue")):
        vertex[n] = rgb[:, i]
    if conf is not None:
        vertex["confidence"] = conf.astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from plyfile import PlyData, PlyElement

    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(path))
    return path


def load_points_ply(path) -> dict:
    """Read a point-cloud PLY: ``dict(points (N, 3) float32, colors (N, 3) uint8 or None,
    conf (N,) float32 or None)`` as torch tensors. ValueError naming missing x/y/z."""
    v = _read_vertex(path)
    names = v.dtype.names
    missing = [n for n in "xyz" if n not in names]
    if missing:
        raise ValueError(f"{path}: missing vertex properties {missing}")
    points = np.stack([np.array(v[n], np.float32) for n in "xyz"], 1)
    colors = None
    if all(n in names for n in ("red", "green", "blue")):
        colors = np.stack([np.asarray(v[n]) for n in ("red", "green", "blue")], 1)
        if colors.dtype != np.uint8:  # float colours in [0, 1], as some tools write
            colors = np.round(np.clip(colors.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    conf = np.array(v["confidence"], np.float32) if "confidence" in names else None
    return dict(points=torch.from_numpy(points),
                colors=None if colors is None else torch.from_numpy(colors),
                conf=None if conf is None else torch.from_numpy(conf))
