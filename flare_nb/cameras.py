"""Every camera / pose / geometry convention of the workbook, implemented once (notebook 00).

The conventions (README "Conventions"; explained in notebook 00):

==============  ==========================================================================
pose            camera-to-world ``c2w`` 4x4, ``X_world = R X_cam + t``; ``w2c = invert_pose(c2w)``
camera axes     OpenCV: x right, y down, z forward (OpenGL files: y up, z backward)
quaternion      ``(w, x, y, z)``, real part first, unit norm, sign fixed to ``w >= 0``
``K``           pixels; OpenCV pixel centres (top-left pixel centre = (0, 0)); gsplat/COLMAP
                use (0.5, 0.5): :func:`gsplat_K` / :func:`opencv_K` convert
FLARE frame     poses relative to view 0 (view 0 = identity), translations / mean norm
depth           z-depth along the optical axis, 0 = no data
pointmap        ``(H, W, 3)``, ``X = depth * K^-1 [u, v, 1]^T``
==============  ==========================================================================

All functions take torch tensors, are batched over leading dimensions and keep the dtype
(float32 / float64) and device of their input. Quaternions are WXYZ everywhere; the two
conversions are our own (equal bit for bit to ``roma``'s, which the tests use as the oracle),
registration uses ``roma``; PnP uses
OpenCV's ``solvePnPRansac`` with SQPnP as FLARE's demo does.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "invert_pose", "opengl_to_opencv", "opencv_to_opengl", "quat_to_matrix", "matrix_to_quat", "quat_multiply",
    "euler_to_matrix",
    "relative_to_view0", "normalize_translation", "mean_distance", "look_at_point", "pixel_grid", "unproject_depth",
    "transform_points", "project_points", "umeyama", "align_trajectories", "estimate_focal",
    "intrinsics_from_focal", "pnp_poses", "gsplat_K", "opencv_K",
]

# diag(1, -1, -1, 1): flips the camera's y and z axes (OpenCV <-> OpenGL)
_FLIP_YZ = (1.0, -1.0, -1.0, 1.0)


def _check_last(x: torch.Tensor, shape: tuple, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape:
        want = "(..., " + ", ".join(map(str, shape)) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


# ----------------------------------------------------------------------------- poses


def invert_pose(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid 4x4 transforms ``(..., 4, 4)``: turns ``c2w`` into ``w2c`` and back.

    Written by hand as ``[R^T | -R^T t]`` rather than ``torch.linalg.inv``: it is exact for a
    rotation, cheaper, and keeps the last row exactly ``[0, 0, 0, 1]``. Assumes ``T`` is rigid
    (orthonormal ``R``); a scaled transform gives a wrong answer. Notebook 00.
    """
    _check_last(T, (4, 4), "T")
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1
    return out


def opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """Convert OpenGL-axes ``c2w (..., 4, 4)`` (y up, z backward) to OpenCV axes (y down, z forward).

    Right-multiplies by ``diag(1, -1, -1, 1)``: the camera centre stays, the camera's y and z
    axes flip. The same flip converts back (:func:`opencv_to_opengl`). Notebook 00.
    """
    _check_last(c2w, (4, 4), "c2w")
    return c2w * c2w.new_tensor(_FLIP_YZ)  # scales columns = c2w @ diag(flip)


def opencv_to_opengl(c2w: torch.Tensor) -> torch.Tensor:
    """Convert OpenCV-axes ``c2w (..., 4, 4)`` to OpenGL axes (NeRF / Blender files). Notebook 00."""
    return opengl_to_opencv(c2w)


def _unitquat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from unit quaternions ``(..., 4)`` ``(w, x, y, z)`` (not
    normalised here). Diagonal ``w^2 + x^2 - y^2 - z^2`` etc., off-diagonal ``2 (xy - wz)`` etc.,
    each evaluated in one fixed order (the order of SciPy's and roma's implementations, so the
    result equals theirs bit for bit: ``tests/test_train_gpu.py``)."""
    w, x, y, z = q.unbind(-1)
    xx, yy, zz, ww = x * x, y * y, z * z, w * w
    xy, wz, xz, wy, yz, wx = x * y, z * w, x * z, y * w, y * z, x * w
    rows = (xx - yy - zz + ww, 2 * (xy - wz), 2 * (xz + wy),
            2 * (xy + wz), -xx + yy - zz + ww, 2 * (yz - wx),
            2 * (xz - wy), 2 * (yz + wx), -xx - yy + zz + ww)
    return torch.stack(rows, -1).reshape(*q.shape[:-1], 3, 3)


def _matrix_to_unitquat(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` ``(w, x, y, z)`` (either sign) of rotations ``(..., 3, 3)``.

    Shepperd's method in Markley's form (J. Guid. Control Dyn. 31(2), 2008): the four vectors
    ``4 q_k q`` are read off ``R`` (the rows of the symmetric matrix ``4 q q^T``), and the one with
    the largest ``4 q_k^2`` -- well conditioned for every rotation -- is normalised. Each entry is
    evaluated in the same order as roma's implementation, so the two agree bit for bit."""
    r = R.transpose(-1, -2)                      # Markley's attitude matrix A = R^T; a_ij = r[i-1, j-1]
    (a11, a12, a13), (a21, a22, a23), (a31, a32, a33) = (row.unbind(-1) for row in r.unbind(-2))
    # 4 q q^T in (x, y, z, w) order, row by row
    outer = torch.stack([1 + a11 - a22 - a33, a12 + a21, a13 + a31, a23 - a32,
                         a21 + a12, 1 + a22 - a33 - a11, a23 + a32, a31 - a13,
                         a31 + a13, a32 + a23, 1 + a33 - a11 - a22, a12 - a21,
                         a23 - a32, a31 - a13, a12 - a21, 1 + a11 + a22 + a33], -1).unflatten(-1, (4, 4))
    k = outer.diagonal(dim1=-2, dim2=-1).argmax(-1)
    row = outer.gather(-2, k[..., None, None].expand(*k.shape, 1, 4))[..., 0, :]
    q_xyzw = row / row.norm(dim=-1, keepdim=True)
    return q_xyzw[..., [3, 0, 1, 2]]


def quat_to_matrix(q_wxyz: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from quaternions ``(..., 4)`` in ``(w, x, y, z)`` order.

    The quaternion is normalised first (so ``q`` and ``c * q`` give the same rotation, as in
    FLARE's pose head, which outputs unnormalised quaternions). ValueError on a zero-norm
    or non-finite quaternion. Notebook 00.
    """
    _check_last(q_wxyz, (4,), "q_wxyz")
    if not torch.isfinite(q_wxyz).all():
        raise ValueError("quat_to_matrix: the quaternion has non-finite entries")
    norm = q_wxyz.norm(dim=-1, keepdim=True)
    if (norm <= torch.finfo(q_wxyz.dtype).tiny * 1e6).any():
        raise ValueError("quat_to_matrix: a quaternion has (near) zero norm; expected a nonzero (w, x, y, z)")
    return _unitquat_to_matrix(q_wxyz / norm)


def matrix_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` in ``(w, x, y, z)`` order from rotations ``(..., 3, 3)``.

    ``q`` and ``-q`` are the same rotation; the sign is fixed so that ``w >= 0``. For a
    180-degree rotation (``w`` = 0 up to 1e-7) the largest-magnitude of ``x, y, z`` is made
    positive, so the output is still unique. Notebook 00.
    """
    _check_last(R, (3, 3), "R")
    q = _matrix_to_unitquat(R)
    w = q[..., :1]
    vec = q[..., 1:]
    big = vec.gather(-1, vec.abs().argmax(dim=-1, keepdim=True))
    flip = (w < 0) | ((w.abs() <= 1e-7) & (big < 0))
    return torch.where(flip, -q, q)


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a b`` of (w, x, y, z) quaternions ``(..., 4)``: ``R(a b) = R(a) R(b)``."""
    w1, x1, y1, z1 = a.unbind(-1)
    w2, x2, y2, z2 = b.unbind(-1)
    return torch.stack((w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2), -1)


def euler_to_matrix(rx_deg: float, ry_deg: float, rz_deg: float, dtype=torch.float64) -> torch.Tensor:
    """``R = Rz @ Ry @ Rx`` (3, 3) from angles in degrees about the x, y and z axes (x applied first)."""
    a, b, c = (math.radians(float(v)) for v in (rx_deg, ry_deg, rz_deg))
    Rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=dtype)
    Ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]], dtype=dtype)
    Rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]], dtype=dtype)
    return Rz @ Ry @ Rx


def relative_to_view0(c2w: torch.Tensor) -> torch.Tensor:
    """FLARE's pose frame: ``c2w_0^-1 c2w_i`` for ``c2w (..., V, 4, 4)``; view 0 becomes identity.

    Relative motion between any two views is unchanged (``rel_i^-1 rel_j = c2w_i^-1 c2w_j``).
    Notebook 00.
    """
    _check_last(c2w, (4, 4), "c2w")
    if c2w.ndim < 3:
        raise ValueError(f"c2w must be (..., V, 4, 4) with a view axis, got {tuple(c2w.shape)}")
    return invert_pose(c2w[..., :1, :, :]) @ c2w


def normalize_translation(c2w: torch.Tensor, mode: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Divide the translations of ``c2w (..., V, 4, 4)`` by a scale; return ``(c2w_n, scale (...,))``.

    ``mode="mean"`` (FLARE's geometry model): ``scale`` = mean of ``|t_i|`` over all V views,
    view 0 included (after :func:`relative_to_view0` it has ``t = 0``), so the mean norm
    becomes 1. ``mode="baseline"`` (FLARE's NVS model): ``scale = |t_0 - t_1|``. Rotations are
    untouched. ValueError when the scale is ~0 (all cameras at one place). Notebook 00.
    """
    _check_last(c2w, (4, 4), "c2w")
    if c2w.ndim < 3:
        raise ValueError(f"c2w must be (..., V, 4, 4) with a view axis, got {tuple(c2w.shape)}")
    t = c2w[..., :3, 3]
    if mode == "mean":
        scale = t.norm(dim=-1).mean(dim=-1)
    elif mode == "baseline":
        if c2w.shape[-3] < 2:
            raise ValueError("normalize_translation(mode='baseline') needs at least 2 views")
        scale = (t[..., 0, :] - t[..., 1, :]).norm(dim=-1)
    else:
        raise ValueError(f"normalize_translation: mode must be 'mean' or 'baseline', got {mode!r}")
    if (scale <= 1e-12).any():
        raise ValueError("normalize_translation: the translation scale is ~0 (all cameras at the "
                         "same place); nothing to normalise")
    out = c2w.clone()
    out[..., :3, 3] = t / scale[..., None, None]
    return out, scale


# ----------------------------------------------------------------------------- pixels and points


def mean_distance(points: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean distance to the origin of ``points (B, V, H, W, 3)`` over all valid pixels of all
    views, per batch element: ``(B,)``. Used to normalise pointmaps (DUSt3R's 'avg_dis')."""
    d = points.norm(dim=-1)
    if valid is None:
        return d.flatten(1).mean(1).clamp_min(1e-8)
    v = valid.to(d.dtype)
    return ((d * v).flatten(1).sum(1) / v.flatten(1).sum(1).clamp_min(1)).clamp_min(1e-8)


def look_at_point(c2w: torch.Tensor) -> torch.Tensor:
    """The point ``(3,)`` closest (least squares) to all cameras' optical axes, ``c2w (V, 4, 4)``
    OpenCV (axis = camera centre + s * third column). For an orbit capture it is the object the
    cameras look at. ValueError if fewer than 2 cameras or all axes are parallel."""
    if not isinstance(c2w, torch.Tensor) or c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4) or c2w.shape[0] < 2:
        raise ValueError(f"look_at_point: c2w must be (V >= 2, 4, 4), got {tuple(c2w.shape) if isinstance(c2w, torch.Tensor) else type(c2w).__name__}")
    T = c2w.double()
    d = T[:, :3, 2] / T[:, :3, 2].norm(dim=-1, keepdim=True)
    P = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]     # projectors onto axis normals
    A, b = P.sum(0), (P @ T[:, :3, 3, None]).sum(0)[:, 0]
    if torch.linalg.matrix_rank(A, atol=1e-6 * float(A.abs().max())) < 3:
        raise ValueError("look_at_point: the optical axes are (nearly) parallel; no point is looked at")
    return torch.linalg.solve(A, b).to(c2w.dtype)


def pixel_grid(H: int, W: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Pixel coordinates ``(H, W, 2)`` as ``(u, v)`` = (column, row) in the OpenCV convention:
    the centre of pixel ``[i, j]`` is ``(j, i)``. Notebook 00."""
    if int(H) <= 0 or int(W) <= 0:
        raise ValueError(f"pixel_grid: H and W must be positive, got H={H}, W={W}")
    v, u = torch.meshgrid(torch.arange(H, dtype=dtype, device=device),
                          torch.arange(W, dtype=dtype, device=device), indexing="ij")
    return torch.stack([u, v], dim=-1)


def unproject_depth(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame pointmap ``(..., H, W, 3)`` from z-depth ``(..., H, W)`` and ``K (..., 3, 3)``.

    ``X = depth * K^-1 [u, v, 1]^T`` with OpenCV pixel centres; ``X[..., 2] == depth``. Pixels
    with depth 0 (no data) give the point (0, 0, 0). Leading dims of ``depth`` and ``K``
    broadcast. Notebook 00.
    """
    _check_last(K, (3, 3), "K")
    if not isinstance(depth, torch.Tensor) or depth.ndim < 2:
        raise ValueError(f"depth must be a tensor (..., H, W), got "
                         f"{tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__}")
    H, W = depth.shape[-2:]
    uv = pixel_grid(H, W, dtype=depth.dtype, device=depth.device)
    pix = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1)          # (H, W, 3)
    Kinv = torch.linalg.inv(K.to(depth.dtype))[..., None, None, :, :]    # (..., 1, 1, 3, 3)
    rays = (Kinv @ pix[..., None]).squeeze(-1)                           # (..., H, W, 3), z = 1
    return rays * depth[..., None]


def transform_points(T: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Apply rigid/affine ``T (..., 4, 4)`` to points ``X (..., N, 3)`` or ``(..., H, W, 3)``.

    The batch dims of ``T`` line up with the *leading* dims of ``X`` (broadcasting); all
    remaining dims of ``X`` are point dims. E.g. ``T (V, 4, 4)`` with ``X (V, H, W, 3)`` moves
    each view's pointmap by its own pose; ``T (4, 4)`` moves everything. Notebook 00.
    """
    _check_last(T, (4, 4), "T")
    _check_last(X, (3,), "X")
    nb = T.ndim - 2
    k = X.ndim - 1 - nb
    if k < 1:
        raise ValueError(f"transform_points: X {tuple(X.shape)} needs at least one point dim after "
                         f"the batch dims of T {tuple(T.shape)}")
    T = T.to(X.dtype).reshape(T.shape[:-2] + (1,) * k + (4, 4))
    return (T[..., :3, :3] @ X[..., None]).squeeze(-1) + T[..., :3, 3]


def project_points(X_world: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor,
                   eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points ``(..., N, 3)`` into a camera: ``(uv (..., N, 2), z (..., N))``.

    ``X_cam = w2c X_world``; ``uv = (K X_cam)[:2] / z`` in OpenCV pixel centres; ``z`` is the
    depth along the optical axis. ``uv`` only means something where ``z > 0``; ``|z| < eps``
    is replaced by ``eps`` in the division so the output stays finite. Notebook 00.
    """
    _check_last(K, (3, 3), "K")
    Xc = transform_points(w2c, X_world)
    z = Xc[..., 2]
    z_safe = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
    nb = K.ndim - 2
    k = Xc.ndim - 1 - nb
    Kb = K.to(Xc.dtype).reshape(K.shape[:-2] + (1,) * k + (3, 3))
    p = (Kb @ (Xc / z_safe[..., None])[..., None]).squeeze(-1)
    return p[..., :2], z


# ----------------------------------------------------------------------------- alignment


def umeyama(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None,
            with_scale: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity with ``dst ~ s R src + t`` (Umeyama 1991); returns ``(s, R, t)``.

    ``src, dst (N, 3)``; optional non-negative ``weights (N,)``. ``s`` is a 0-dim tensor (1
    when ``with_scale=False``), ``R (3, 3)`` a proper rotation, ``t (3,)``. Uses
    ``roma.rigid_points_registration``. ValueError for fewer than 3 (weighted) points or
    collinear points, where the rotation is not determined. Notebook 00.
    """
    _check_last(src, (3,), "src")
    _check_last(dst, (3,), "dst")
    if src.ndim != 2 or src.shape != dst.shape:
        raise ValueError(f"umeyama: src and dst must both be (N, 3), got {tuple(src.shape)} and "
                         f"{tuple(dst.shape)}")
    dst = dst.to(src.dtype)
    if not (torch.isfinite(src).all() and torch.isfinite(dst).all()):
        raise ValueError("umeyama: src/dst contain non-finite values")
    used = torch.ones(src.shape[0], dtype=torch.bool, device=src.device)
    if weights is not None:
        if weights.shape != src.shape[:1]:
            raise ValueError(f"umeyama: weights must be ({src.shape[0]},), got {tuple(weights.shape)}")
        weights = weights.to(src.dtype)
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("umeyama: weights must be finite and >= 0")
        used = weights > 0
    if int(used.sum()) < 3:
        raise ValueError(f"umeyama: needs at least 3 points with positive weight, got {int(used.sum())}")
    c = src[used] - src[used].mean(0)
    sv = torch.linalg.svdvals(c)
    if sv[1] <= 1e-9 * max(float(sv[0]), 1e-30):
        raise ValueError("umeyama: the source points are collinear (or identical); the rotation "
                         "is not determined")
    import roma

    if with_scale:
        R, t, s = roma.rigid_points_registration(src, dst, weights=weights, compute_scaling=True)
    else:
        R, t = roma.rigid_points_registration(src, dst, weights=weights, compute_scaling=False)
        s = torch.ones((), dtype=src.dtype, device=src.device)
    return s, R, t


def align_trajectories(c2w_pred: torch.Tensor, c2w_gt: torch.Tensor, method: str = "centres"):
    """Sim(3)-align a predicted trajectory to the ground truth; returns ``(c2w_aligned, (s, R, t))``.

    ``c2w_pred, c2w_gt (V, 4, 4)``. ``method="centres"``: Umeyama on the camera centres (needs
    3 or more non-collinear centres). ``method="rotations"`` (for 2 views or a straight
    path): ``R`` is the rotation closest to the mean of ``R_gt_i R_pred_i^T``, then ``s, t``
    by least squares on the centres. ``c2w_aligned_i = [R R_i | s R t_i + t]``: the rotation
    part stays orthonormal, the scale only moves the centres. Notebook 00.
    """
    _check_last(c2w_pred, (4, 4), "c2w_pred")
    _check_last(c2w_gt, (4, 4), "c2w_gt")
    if c2w_pred.ndim != 3 or c2w_pred.shape != c2w_gt.shape:
        raise ValueError(f"align_trajectories: c2w_pred and c2w_gt must both be (V, 4, 4), got "
                         f"{tuple(c2w_pred.shape)} and {tuple(c2w_gt.shape)}")
    c2w_gt = c2w_gt.to(c2w_pred.dtype)
    cp, cg = c2w_pred[:, :3, 3], c2w_gt[:, :3, 3]
    if method == "centres":
        try:
            s, R, t = umeyama(cp, cg)
        except ValueError as e:
            raise ValueError(f"align_trajectories: {e}; with 2 views or a straight path use "
                             f"method='rotations'") from None
    elif method == "rotations":
        M = (c2w_gt[:, :3, :3] @ c2w_pred[:, :3, :3].transpose(-1, -2)).sum(0)
        import roma

        R = roma.special_procrustes(M)
        a = cp @ R.T - (cp @ R.T).mean(0)
        b = cg - cg.mean(0)
        denom = (a * a).sum()
        if denom <= 1e-18:
            raise ValueError("align_trajectories: all predicted camera centres coincide; scale undetermined")
        s = (a * b).sum() / denom
        t = cg.mean(0) - s * (R @ cp.mean(0))
    else:
        raise ValueError(f"align_trajectories: method must be 'centres' or 'rotations', got {method!r}")
    out = c2w_pred.clone()
    out[:, :3, :3] = R @ c2w_pred[:, :3, :3]
    out[:, :3, 3] = s * (cp @ R.T) + t
    return out, (s, R, t)


# ----------------------------------------------------------------------------- FLARE's cameras


def _centre(H: int, W: int, principal_point) -> tuple[float, float]:
    if principal_point is None:
        return (W - 1) / 2.0, (H - 1) / 2.0
    cx, cy = (float(p) for p in principal_point)
    return cx, cy


def estimate_focal(pointmap: torch.Tensor, principal_point=None, mask: torch.Tensor | None = None,
                   min_offset_px: float = 1.0) -> float:
    """One focal length (pixels) from a pointmap in the camera's own frame: FLARE demo's rule.

    ``pointmap (H, W, 3)`` (FLARE: view 0's global pointmap, which is in view 0's frame). With
    ``(u, v)`` the pixel minus the principal point, every pixel votes ``u z / x`` and
    ``v z / y``; the answer is the median of all votes (square pixels, one focal).
    ``principal_point`` defaults to the image centre ``((W-1)/2, (H-1)/2)`` in our OpenCV
    pixel-centre convention (the official demo uses ``(W/2, H/2)`` on integer pixel
    coordinates, half a pixel off; pass it to reproduce the demo exactly).

    Degenerate votes are dropped instead of producing inf/nan: pixels closer than
    ``min_offset_px`` to the principal point in u (resp. v), points with ``z <= 0``, ``x``
    (resp. ``y``) ~ 0, non-finite values, non-positive votes, and pixels outside the
    optional ``mask (H, W)``. ValueError if no vote is left. Notebook 00.
    """
    _check_last(pointmap, (3,), "pointmap")
    if pointmap.ndim != 3:
        raise ValueError(f"estimate_focal: pointmap must be (H, W, 3), got {tuple(pointmap.shape)}")
    H, W = pointmap.shape[:2]
    P = pointmap.detach().to(torch.float64)
    cx, cy = _centre(H, W, principal_point)
    uv = pixel_grid(H, W, dtype=torch.float64, device=P.device)
    off = uv - uv.new_tensor([cx, cy])                       # (H, W, 2)
    x, y, z = P.unbind(-1)
    ok = torch.isfinite(P).all(-1) & (z > 0)
    if mask is not None:
        if tuple(mask.shape) != (H, W):
            raise ValueError(f"estimate_focal: mask must be ({H}, {W}), got {tuple(mask.shape)}")
        ok = ok & mask.to(torch.bool).to(P.device)
    votes = []
    for o, c in ((off[..., 0], x), (off[..., 1], y)):
        good = ok & (o.abs() >= min_offset_px) & (c.abs() > 1e-12 * z.abs().clamp_min(1e-300))
        f = o[good] * z[good] / c[good]
        votes.append(f[torch.isfinite(f) & (f > 0)])
    votes = torch.cat(votes)
    if votes.numel() == 0:
        raise ValueError("estimate_focal: no valid pixel (need finite points with z > 0 away from "
                         "the principal point, consistent with a positive focal)")
    return float(votes.median())


def intrinsics_from_focal(focal: float, H: int, W: int, principal_point=None,
                          dtype=torch.float32, device=None) -> torch.Tensor:
    """``K (3, 3)`` with ``fx = fy = focal`` and the principal point at the image centre
    ``((W-1)/2, (H-1)/2)`` (OpenCV pixel centres) unless given. Notebook 00."""
    if not math.isfinite(float(focal)) or float(focal) <= 0:
        raise ValueError(f"intrinsics_from_focal: focal must be a positive number, got {focal}")
    cx, cy = _centre(H, W, principal_point)
    return torch.tensor([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def pnp_poses(pointmaps: torch.Tensor, conf: torch.Tensor | None, K: torch.Tensor, top: float = 0.4,
              reproj_px: float = 1.0, iterations: int = 10_000, ransac_confidence: float = 0.9999,
              seed: int = 0, return_info: bool = False, max_points: int | None = None):
    """Camera-to-world poses ``(V, 4, 4)`` (OpenCV axes) from global pointmaps, as FLARE's demo.

    ``pointmaps (V, H, W, 3)`` all in one frame (view 0's, for FLARE's global head), ``conf
    (V, H, W)`` (None = all pixels equal), ``K (3, 3)`` shared or ``(V, 3, 3)`` per view. For
    each view, the pixels with confidence above the view's ``1 - top`` quantile (top 40 %)
    and finite points give 2D-3D matches ``(u, v) <-> X`` (OpenCV pixel centres), solved by
    ``cv2.solvePnPRansac`` with SQPnP, a ``reproj_px`` inlier threshold, ``iterations`` and
    ``ransac_confidence`` (FLARE: 1 px, 10 000, 0.9999). PnP gives ``w2c``; we return its
    inverse. If the pointmaps are in view 0's frame, view 0 comes out ~identity.

    ``max_points``: use at most this many of each view's selected pixels, evenly spaced in
    raster order (None = all, as released); RANSAC's time grows with the points scored per
    iteration, and a thinned, evenly spread subset keeps the geometry.

    OpenCV's RANSAC RNG is seeded with ``seed`` (``cv2.setRNGSeed``) for determinism. With
    ``return_info=True`` also returns ``{"n_points": [...], "n_inliers": [...]}``. ValueError
    for shape mismatches or fewer than 6 usable pixels in a view; RuntimeError if OpenCV
    fails. Notebook 00.
    """
    import cv2

    _check_last(pointmaps, (3,), "pointmaps")
    if pointmaps.ndim != 4:
        raise ValueError(f"pnp_poses: pointmaps must be (V, H, W, 3), got {tuple(pointmaps.shape)}")
    V, H, W = pointmaps.shape[:3]
    if conf is not None and tuple(conf.shape) != (V, H, W):
        raise ValueError(f"pnp_poses: conf must be ({V}, {H}, {W}) to match pointmaps, got {tuple(conf.shape)}")
    _check_last(K, (3, 3), "K")
    if K.ndim == 2:
        K = K.expand(V, 3, 3)
    if tuple(K.shape) != (V, 3, 3):
        raise ValueError(f"pnp_poses: K must be (3, 3) or ({V}, 3, 3), got {tuple(K.shape)}")
    if not 0.0 < float(top) <= 1.0:
        raise ValueError(f"pnp_poses: top must be in (0, 1], got {top}")
    if float(reproj_px) <= 0:
        raise ValueError(f"pnp_poses: reproj_px must be > 0, got {reproj_px}")

    P = pointmaps.detach().cpu().to(torch.float64).numpy()
    C = None if conf is None else conf.detach().cpu().to(torch.float64).numpy()
    Ks = K.detach().cpu().to(torch.float64).numpy()
    uv = pixel_grid(H, W, dtype=torch.float64).numpy()
    cv2.setRNGSeed(int(seed))
    w2cs, n_points, n_inliers = [], [], []
    for i in range(V):
        valid = np.isfinite(P[i]).all(-1)
        if C is not None:
            ci = C[i]
            if top < 1.0:
                thr = np.quantile(ci[np.isfinite(ci)], 1.0 - top) if np.isfinite(ci).any() else np.inf
                valid &= ci > thr
            valid &= np.isfinite(ci)
        if max_points is not None and int(valid.sum()) > int(max_points):
            idx = np.flatnonzero(valid)
            keep = idx[np.linspace(0, len(idx) - 1, int(max_points)).round().astype(np.int64)]
            valid = np.zeros_like(valid)
            valid.reshape(-1)[keep] = True
        n = int(valid.sum())
        if n < 6:
            raise ValueError(f"pnp_poses: view {i} has {n} usable pixels (finite point, confidence in "
                             f"the top {top:.0%}); PnP needs at least 6")
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            P[i][valid], uv[valid], Ks[i], None, flags=cv2.SOLVEPNP_SQPNP,
            iterationsCount=int(iterations), reprojectionError=float(reproj_px),
            confidence=float(ransac_confidence))
        if not ok:
            raise RuntimeError(f"pnp_poses: OpenCV solvePnPRansac failed for view {i} ({n} points)")
        w2c = np.eye(4)
        w2c[:3, :3] = cv2.Rodrigues(rvec)[0]
        w2c[:3, 3] = tvec.reshape(3)
        w2cs.append(w2c)
        n_points.append(n)
        n_inliers.append(0 if inliers is None else int(len(inliers)))
    dtype = pointmaps.dtype if pointmaps.is_floating_point() else torch.float32
    c2w = invert_pose(torch.from_numpy(np.stack(w2cs))).to(dtype=dtype, device=pointmaps.device)
    if return_info:
        return c2w, {"n_points": n_points, "n_inliers": n_inliers}
    return c2w


# ----------------------------------------------------------------------------- pixel-centre shifts


def gsplat_K(K: torch.Tensor) -> torch.Tensor:
    """OpenCV pixel-centre ``K (..., 3, 3)`` -> gsplat / COLMAP ``K`` (``cx, cy`` + 0.5).

    gsplat (and COLMAP, instant-ngp) put the top-left pixel's centre at (0.5, 0.5). Notebook 00.
    """
    _check_last(K, (3, 3), "K")
    out = K.clone()
    out[..., 0, 2] = out[..., 0, 2] + 0.5
    out[..., 1, 2] = out[..., 1, 2] + 0.5
    return out


def opencv_K(K: torch.Tensor) -> torch.Tensor:
    """gsplat / COLMAP ``K (..., 3, 3)`` -> OpenCV pixel-centre ``K`` (``cx, cy`` - 0.5). Notebook 00."""
    _check_last(K, (3, 3), "K")
    out = K.clone()
    out[..., 0, 2] = out[..., 0, 2] - 0.5
    out[..., 1, 2] = out[..., 1, 2] - 0.5
    return out
