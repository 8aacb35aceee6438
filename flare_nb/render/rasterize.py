"""Differentiable rendering of 3D Gaussians: ``rasterize`` (notebook 05, rendering).

One function renders ``N`` Gaussians into ``C`` cameras and is differentiable in the
Gaussians' means, quaternions, scales, opacities and colours. It follows gsplat 1.5.3's CUDA
rasterizer (``gsplat.rasterization(..., render_mode="RGB+ED")``) exactly:

* cameras: ``viewmats (C, 4, 4)`` world-to-camera, OpenCV axes; ``Ks (C, 3, 3)`` pixel
  intrinsics; pixel ``(i, j)`` (row, column) is sampled at ``(j + 0.5, i + 0.5)``;
* projection: EWA splatting with the Jacobian of the perspective projection evaluated at the
  view-space x/z, y/z clamped to the field of view plus 30 % (asymmetric: the clamp uses cx,
  cy), and a 0.3-pixel low-pass (``eps2d``) added to the 2D covariance; Gaussians with
  z < ``near_plane`` (behind the camera) are culled;
* extent: ``min(3.33, sqrt(2 ln(255 opacity)))`` standard deviations per axis (the pixels
  where alpha can reach 1/255), rounded up; Gaussians with opacity < 1/255 are culled;
* compositing: front to back in depth (z) order (ties: lower index first),
  ``alpha = min(0.999, opacity * exp(-0.5 d^T conic d))`` with ``d`` = mean - pixel centre;
  contributions with alpha < 1/255 skipped; a Gaussian that would bring the transmittance
  ``T`` to <= 1e-4 is not composited and ends the pixel. (gsplat also skips a negative
  exponent, which for a positive-definite conic only rounding can produce; we do not.)
  Gradients follow gsplat's backward: none through the 0.999 clamp or the cut-offs;
* outputs: ``rgb = sum w_i c_i + T * background``; ``depth = sum w_i z_i / alpha`` (the
  expected z-depth, 0 where nothing was hit); ``alpha = 1 - T``;
* colours: RGB ``(N, 3)`` used as given, or spherical-harmonics coefficients ``(N, K, 3)``
  evaluated per Gaussian in the direction from the camera centre, then ``+ 0.5`` and clamped
  at 0.

Bad input raises: zero / non-finite quaternions, negative or NaN scales, opacities outside
[0, 1], mismatched shapes, devices or dtypes -> ``ValueError`` naming the argument.

Backends: ``"gsplat"`` calls gsplat's CUDA ``rasterization`` (CUDA float32 tensors only);
``"torch"`` runs our tile rasterizer (any device; built for the CPU, see
``flare_nb.render._raster_cpu``); ``"auto"`` picks gsplat for CUDA float32 tensors, ours otherwise.
"""
from __future__ import annotations

from numbers import Integral
from typing import NamedTuple

import torch

from flare_nb.render._raster_cpu import ALPHA_MIN, composite

EPS2D = 0.3
EXTENT_MAX = 3.33
FAR_PLANE = 1e10
_SH_SIZES = {1: 0, 4: 1, 9: 2, 16: 3, 25: 4}


class RenderOutput(NamedTuple):
    """``rgb (C, H, W, 3)``, ``depth (C, H, W, 1)`` expected z-depth, ``alpha (C, H, W, 1)``."""

    rgb: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor


class Projection(NamedTuple):
    """Per camera and Gaussian: ``means2d (C, N, 2)`` pixels, ``conics (C, N, 3)`` (a, b, c of
    the inverse 2D covariance ``[[a, b], [b, c]]``), ``depths (C, N)`` view-space z,
    ``radii (C, N, 2)`` int32 extent in pixels (0 where culled), ``visible (C, N)`` bool."""

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor
    visible: torch.Tensor


# ----------------------------------------------------------------------------- geometry
def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` quaternions (w, x, y, z), normalised here -> ``(..., 3, 3)`` rotations."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    return torch.stack(rows, -1).reshape(q.shape[:-1] + (3, 3))


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``Sigma = R S S R^T`` ``(N, 3, 3)`` from quaternions ``(N, 4)`` and scales ``(N, 3)``."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height,
                      near_plane=0.01, eps2d=EPS2D) -> Projection:
    """EWA projection of ``N`` Gaussians into ``C`` cameras, as gsplat 1.5.3's CUDA kernel.

    ``means (N, 3)``, ``quats (N, 4)`` wxyz, ``scales (N, 3)``, ``opacities (N,)`` or ``None``
    (then the extent is a plain 3.33 sigma, as gsplat's pure-PyTorch ``_fully_fused_projection``),
    ``viewmats (C, 4, 4)`` world-to-camera, ``Ks (C, 3, 3)``. Differentiable in means2d,
    conics and depths; ``radii`` and ``visible`` carry no gradient. Culled Gaussians keep
    finite (meaningless) means2d / conics so that their zero gradients stay zero.
    """
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # (C, N, 3)
    cov_c = R[:, None] @ covariance_3d(quats, scales)[None] @ R.transpose(-1, -2)[:, None]
    x, y, z = means_c.unbind(-1)
    ok_z = (z >= near_plane) & (z <= FAR_PLANE)
    zs = torch.where(ok_z, z, torch.ones_like(z))  # safe z for culled Gaussians
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Jacobian at the position clamped to the field of view + 30 % (asymmetric, uses cx, cy)
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_xn), lim_xp)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_yn), lim_yp)
    j00, j02 = fx / zs, -fx * tx / (zs * zs)
    j11, j12 = fy / zs, -fy * ty / (zs * zs)
    s = cov_c
    c00 = j00 * j00 * s[..., 0, 0] + 2 * j00 * j02 * s[..., 0, 2] + j02 * j02 * s[..., 2, 2] + eps2d
    c11 = j11 * j11 * s[..., 1, 1] + 2 * j11 * j12 * s[..., 1, 2] + j12 * j12 * s[..., 2, 2] + eps2d
    c01 = (j00 * j11 * s[..., 0, 1] + j00 * j12 * s[..., 0, 2] + j02 * j11 * s[..., 1, 2]
           + j02 * j12 * s[..., 2, 2])
    det = c00 * c11 - c01 * c01
    ok_det = det > 0
    dets = torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c11 / dets, -c01 / dets, c00 / dets], -1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    with torch.no_grad():
        visible = ok_z & ok_det
        extent = torch.full_like(z, EXTENT_MAX)
        if opacities is not None:
            op = opacities.detach()[None].expand_as(z)
            visible &= op >= ALPHA_MIN
            extent = torch.minimum(extent, torch.sqrt(2 * torch.log(op.clamp(min=ALPHA_MIN) / ALPHA_MIN)))
        rx = torch.ceil(extent * torch.sqrt(c00.detach().clamp(min=0)))
        ry = torch.ceil(extent * torch.sqrt(c11.detach().clamp(min=0)))
        m = means2d.detach()
        visible &= (rx > 0) | (ry > 0)
        visible &= (m[..., 0] + rx > 0) & (m[..., 0] - rx < width)
        visible &= (m[..., 1] + ry > 0) & (m[..., 1] - ry < height)
        radii = torch.stack([rx, ry], -1).nan_to_num(0.0)
        radii = torch.where(visible[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return Projection(means2d, conics, z, radii, visible)


# ----------------------------------------------------------------------- spherical harmonics
def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Real spherical-harmonics basis ``(..., (degree + 1)^2)`` at unit directions ``(..., 3)``
    (the 3DGS / gsplat sign and order convention, degrees 0..4)."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        out += [-0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
                0.31539156525252005 * (3 * zz - 1), -1.0925484305920792 * x * z,
                0.5462742152960396 * (xx - yy)]
    if degree >= 3:
        out += [-0.5900435899266435 * y * (3 * xx - yy), 2.890611442640554 * x * y * z,
                -0.4570457994644658 * y * (5 * zz - 1), 0.3731763325901154 * z * (5 * zz - 3),
                -0.4570457994644658 * x * (5 * zz - 1), 1.445305721320277 * z * (xx - yy),
                -0.5900435899266435 * x * (xx - 3 * yy)]
    if degree >= 4:
        out += [2.5033429417967046 * x * y * (xx - yy), -1.7701307697799304 * y * z * (3 * xx - yy),
                0.9461746957575601 * x * y * (7 * zz - 1), -0.6690465435572892 * y * z * (7 * zz - 3),
                0.10578554691520431 * (35 * zz * zz - 30 * zz + 3),
                -0.6690465435572892 * x * z * (7 * zz - 3), 0.47308734787878 * (xx - yy) * (7 * zz - 1),
                -1.7701307697799304 * x * z * (xx - 3 * yy),
                0.6258357354491763 * (xx * xx - 6 * xx * yy + yy * yy)]
    return torch.stack(out, -1)


def eval_sh(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Colour ``(..., 3)`` of SH ``coeffs (..., K, 3)`` (first ``(degree + 1)^2`` used) in the
    directions ``dirs (..., 3)`` (normalised here). No ``+ 0.5`` and no clamp."""
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    n = (degree + 1) ** 2
    return (sh_basis(degree, d)[..., None] * coeffs[..., :n, :]).sum(-2)


# --------------------------------------------------------------------------- validation
def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                  background, sh_degree, near_plane, backend):
    named = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                 viewmats=viewmats, Ks=Ks)
    for name, v in named.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"rasterize: {name} must be a torch.Tensor, got {type(v).__name__}")
    if background is not None and not isinstance(background, torch.Tensor):
        raise TypeError(f"rasterize: background must be a torch.Tensor or None, got {type(background).__name__}")
    if backend not in ("auto", "gsplat", "torch"):
        raise ValueError(f"rasterize: backend must be 'auto', 'gsplat' or 'torch', got {backend!r}")
    if not (isinstance(width, Integral) and isinstance(height, Integral)) or width <= 0 or height <= 0:
        raise ValueError(f"rasterize: width and height must be positive ints, got {width!r} x {height!r}")
    if not (near_plane > 0):
        raise ValueError(f"rasterize: near_plane must be > 0, got {near_plane!r}")
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"rasterize: means must be (N, 3), got {tuple(means.shape)}")
    N = means.shape[0]
    expect = dict(quats=(N, 4), scales=(N, 3), opacities=(N,))
    for name, shape in expect.items():
        if tuple(named[name].shape) != shape:
            raise ValueError(f"rasterize: {name} must be {shape} for N={N} Gaussians, got {tuple(named[name].shape)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"rasterize: viewmats must be (C, 4, 4) world-to-camera, got {tuple(viewmats.shape)}")
    C = viewmats.shape[0]
    if tuple(Ks.shape) != (C, 3, 3):
        raise ValueError(f"rasterize: Ks must be ({C}, 3, 3) for {C} viewmats, got {tuple(Ks.shape)}")
    if colors.ndim == 2:
        if tuple(colors.shape) != (N, 3):
            raise ValueError(f"rasterize: RGB colors must be ({N}, 3), got {tuple(colors.shape)}")
        if sh_degree is not None:
            raise ValueError("rasterize: sh_degree is given but colors are (N, 3) RGB; "
                             "pass SH coefficients as (N, K, 3)")
    elif colors.ndim == 3:
        K = colors.shape[1]
        if colors.shape[0] != N or colors.shape[2] != 3 or K not in _SH_SIZES:
            raise ValueError(f"rasterize: SH colors must be ({N}, K, 3) with K in {sorted(_SH_SIZES)}, "
                             f"got {tuple(colors.shape)}")
        if sh_degree is not None and (not isinstance(sh_degree, Integral) or not 0 <= sh_degree <= _SH_SIZES[K]):
            raise ValueError(f"rasterize: sh_degree must be an int in 0..{_SH_SIZES[K]} for K={K} "
                             f"coefficients, got {sh_degree!r}")
    else:
        raise ValueError(f"rasterize: colors must be (N, 3) RGB or (N, K, 3) SH, got {tuple(colors.shape)}")
    if background is not None and tuple(background.shape) not in ((3,), (C, 3)):
        raise ValueError(f"rasterize: background must be (3,) or ({C}, 3), got {tuple(background.shape)}")
    tensors = dict(named, **({} if background is None else dict(background=background)))
    dev, dt = means.device, means.dtype
    if dt not in (torch.float32, torch.float64):
        raise ValueError(f"rasterize: tensors must be float32 or float64, got means.dtype={dt}")
    for name, v in tensors.items():
        if v.device != dev:
            raise ValueError(f"rasterize: {name} is on {v.device} but means is on {dev}; put all on one device")
        if v.dtype != dt:
            raise ValueError(f"rasterize: {name} has dtype {v.dtype} but means has {dt}; use one dtype")
    with torch.no_grad():
        for name, v in tensors.items():
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"rasterize: {name} contains NaN or inf values")
        if N and bool((quats.norm(dim=-1) == 0).any()):
            n_bad = int((quats.norm(dim=-1) == 0).sum())
            raise ValueError(f"rasterize: {n_bad} quaternion(s) are zero; quats must be non-zero (w, x, y, z)")
        if N and bool((scales < 0).any()):
            raise ValueError(f"rasterize: scales must be >= 0, got min {float(scales.min()):.3g}")
        if N and bool(((opacities < 0) | (opacities > 1)).any()):
            raise ValueError(f"rasterize: opacities must lie in [0, 1], got range "
                             f"[{float(opacities.min()):.3g}, {float(opacities.max()):.3g}]")


# ----------------------------------------------------------------------------- rendering
def rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
              background=None, sh_degree=None, near_plane=0.01, backend="auto") -> RenderOutput:
    """Render ``N`` 3D Gaussians into ``C`` cameras (gsplat 1.5.3's rules; notebook 05).

    Args:
        means ``(N, 3)`` world positions; quats ``(N, 4)`` (w, x, y, z), normalised here (zero
        quaternions raise ValueError); scales ``(N, 3)`` standard deviations >= 0;
        opacities ``(N,)`` in [0, 1]; colors ``(N, 3)`` RGB, or ``(N, K, 3)`` SH coefficients
        with K in {1, 4, 9, 16, 25} (degree 0..4); viewmats ``(C, 4, 4)`` world-to-camera
        (OpenCV); Ks ``(C, 3, 3)`` pixel intrinsics; width, height in pixels;
        background ``(C, 3)`` or ``(3,)`` or None (black); sh_degree: SH degree to use
        (default: all of K; only with SH colours); near_plane: Gaussians with view-space z
        below it are culled; backend "auto" | "gsplat" | "torch" (module docstring).

    All tensors share one device and one dtype (float32 or float64).

    Returns:
        :class:`RenderOutput` ``rgb (C, H, W, 3)``, ``depth (C, H, W, 1)`` expected z-depth
        (0 where alpha is 0), ``alpha (C, H, W, 1)``; differentiable in means, quats,
        scales, opacities and colors.
    """
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                  background, sh_degree, near_plane, backend)
    C, dev, dt = viewmats.shape[0], means.device, means.dtype
    width, height = int(width), int(height)
    if colors.ndim == 3:
        sh_degree = _SH_SIZES[colors.shape[1]] if sh_degree is None else int(sh_degree)
    if background is None:
        background = torch.zeros(C, 3, device=dev, dtype=dt)
    elif background.ndim == 1:
        background = background[None].expand(C, 3)
    use_gsplat = backend == "gsplat" or (backend == "auto" and dev.type == "cuda" and dt == torch.float32)
    if use_gsplat:
        if dev.type != "cuda" or dt != torch.float32:
            raise ValueError(f"rasterize: backend='gsplat' needs CUDA float32 tensors, got {dev} {dt}; "
                             "use backend='torch' (or 'auto')")
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                 background, sh_degree, near_plane)
    return _rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                            background, sh_degree, near_plane)


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                      background, sh_degree, near_plane):
    from gsplat.rendering import rasterization

    img, alpha, _ = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                  near_plane=near_plane, sh_degree=sh_degree,
                                  backgrounds=background.contiguous(), render_mode="RGB+ED")
    return RenderOutput(img[..., :3], img[..., 3:4], alpha)


def _rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                     background, sh_degree, near_plane, chunk_values=None):
    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane)
    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats.detach())[:, :3, 3]  # (C, 3) camera centres
    zero = torch.zeros(1, device=means.device, dtype=means.dtype)
    kw = {} if chunk_values is None else dict(chunk_values=chunk_values)
    rgbs, depths, alphas = [], [], []
    for c in range(viewmats.shape[0]):
        idx = torch.nonzero(proj.visible[c]).squeeze(1)
        if sh_degree is None:
            rgb = colors[idx]
        else:
            dirs = means[idx] - campos[c]
            rgb = torch.clamp_min(eval_sh(sh_degree, dirs, colors[idx]) + 0.5, 0.0)
        feats = torch.cat([rgb, proj.depths[c, idx, None]], 1)
        img, alpha = composite(proj.means2d[c, idx], proj.conics[c, idx], opacities[idx], feats,
                               torch.cat([background[c], zero]), proj.radii[c, idx],
                               proj.depths[c, idx].detach(), width, height, **kw)
        alpha = alpha[..., None]
        rgbs.append(img[..., :3])
        depths.append(img[..., 3:4] / alpha.clamp(min=1e-10))
        alphas.append(alpha)
    return RenderOutput(torch.stack(rgbs), torch.stack(depths), torch.stack(alphas))
