"""3D Gaussians from pointmaps, rendering them with our conventions, orbit cameras and a small
gradient-descent fit (notebook 05, "Gaussian regression and rasterization").

A Gaussian set is a dict with the argument names of :func:`flare_nb.render.rasterize.rasterize`
(and of :func:`flare_nb.model.gaussian_head.activate_gaussians`): ``means (N, 3)``, ``quats (N, 4)``
(w, x, y, z), ``scales (N, 3)`` standard deviations, ``opacities (N,)`` in [0, 1], ``colors``
``(N, K, 3)`` SH coefficients (or ``(N, 3)`` RGB) and ``sh_degree`` (int or None).

Cameras here follow the README "Conventions": ``c2w (V, 4, 4)`` camera-to-world, OpenCV axes,
``K (V, 3, 3)`` with OpenCV pixel centres. :func:`render_views` does the two conversions the
rasterizer needs (``viewmats = invert_pose(c2w)``, ``Ks = gsplat_K(K)``) in one place.

* :func:`gaussians_from_pointmap` -- one Gaussian per valid pixel of a global pointmap;
* :func:`render_views` -- render a Gaussian set into cameras, images ``(V, 3, H, W)``;
* :func:`masked_psnr`, :func:`covariance_2d` -- PSNR on valid pixels, 2D covariances of a projection;
* :func:`flare_nb.cameras.look_at_point`, :func:`orbit_c2w`, :func:`orbit_params` -- cameras on
  a sphere around a scene (novel views);
* :func:`perturb_gaussians`, :func:`fit_gaussians` -- a noisy start and Adam on the parameters.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from flare_nb import cameras
from flare_nb.render.losses import mse, ssim
from flare_nb.render.ply import rgb_to_sh, sh_to_rgb
from flare_nb.render.rasterize import Projection, RenderOutput, rasterize

__all__ = ["gaussians_from_pointmap", "render_views", "masked_psnr", "covariance_2d",
           "orbit_c2w", "orbit_params", "perturb_gaussians", "fit_gaussians", "GAUSSIAN_KEYS"]

GAUSSIAN_KEYS = ("means", "quats", "scales", "opacities", "colors")


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_gaussians(g: dict, name: str = "gaussians") -> int:
    if not isinstance(g, dict):
        raise TypeError(f"{name} must be a dict with keys {list(GAUSSIAN_KEYS)}, got {type(g).__name__}")
    missing = [k for k in GAUSSIAN_KEYS if k not in g]
    if missing:
        raise KeyError(f"{name} lacks {missing}; expected the keys {list(GAUSSIAN_KEYS)} (+ optional 'sh_degree')")
    return int(g["means"].shape[0])


def _check_cameras(c2w, K, fn: str) -> int:
    if not isinstance(c2w, torch.Tensor) or c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4):
        raise ValueError(f"{fn}: c2w must be a (V, 4, 4) camera-to-world tensor, got {_shape(c2w)}")
    V = c2w.shape[0]
    if not isinstance(K, torch.Tensor) or tuple(K.shape) != (V, 3, 3):
        raise ValueError(f"{fn}: K must be ({V}, 3, 3) OpenCV-centre intrinsics for {V} cameras, got {_shape(K)}")
    return V


def _check_hw(hw, fn: str) -> tuple[int, int]:
    try:
        H, W = (int(v) for v in hw)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: hw must be (H, W) positive ints, got {hw!r}") from None
    if H <= 0 or W <= 0:
        raise ValueError(f"{fn}: hw must be (H, W) positive ints, got {hw!r}")
    return H, W


# ----------------------------------------------------------------------------- pointmap -> Gaussians
def gaussians_from_pointmap(points: torch.Tensor, images: torch.Tensor, depth: torch.Tensor, K: torch.Tensor,
                            valid: torch.Tensor | None = None, footprint: float = 0.5,
                            opacity: float = 0.95) -> dict:
    """One isotropic Gaussian per valid pixel of a global pointmap (notebook 05, section 1).

    Args:
        points: ``(V, H, W, 3)`` global pointmap (all views in one frame, e.g. the world or
            view 0's camera frame); the Gaussian centres.
        images: ``(V, 3, H, W)`` in [0, 1]; pixel colour -> SH DC coefficient (``rgb_to_sh``),
            so ``colors`` is ``(N, 1, 3)`` (degree 0; gsplat adds 0.5 back).
        depth: ``(V, H, W)`` z-depth of each pixel in its *own* camera (README "Conventions").
        K: ``(V, 3, 3)`` intrinsics (pixels); the footprint uses ``fx``.
        valid: ``(V, H, W)`` bool, which pixels get a Gaussian (default ``depth > 0``).
        footprint: scale in pixels: ``sigma = footprint * depth / fx`` on all three axes, i.e.
            a Gaussian whose image in its own view is ``footprint`` pixels wide (one std).
        opacity: the same opacity in (0, 1] for every Gaussian.

    Returns the Gaussian dict (module docstring), flattened in (view, row, column) order with
    identity quaternions, ``sh_degree = 0``, plus ``pixel (N, 3)`` long: (view, row, column).
    ValueError on mismatched shapes or out-of-range ``footprint`` / ``opacity``.
    """
    fn = "gaussians_from_pointmap"
    if not isinstance(points, torch.Tensor) or points.ndim != 4 or points.shape[-1] != 3:
        raise ValueError(f"{fn}: points must be a (V, H, W, 3) pointmap, got {_shape(points)}")
    V, H, W = points.shape[:3]
    if not isinstance(images, torch.Tensor) or tuple(images.shape) != (V, 3, H, W):
        raise ValueError(f"{fn}: images must be ({V}, 3, {H}, {W}) to match points, got {_shape(images)}")
    if not isinstance(depth, torch.Tensor) or tuple(depth.shape) != (V, H, W):
        raise ValueError(f"{fn}: depth must be ({V}, {H}, {W}) to match points, got {_shape(depth)}")
    if not isinstance(K, torch.Tensor) or tuple(K.shape) != (V, 3, 3):
        raise ValueError(f"{fn}: K must be ({V}, 3, 3), got {_shape(K)}")
    if valid is None:
        valid = depth > 0
    if not isinstance(valid, torch.Tensor) or tuple(valid.shape) != (V, H, W) or valid.dtype != torch.bool:
        raise ValueError(f"{fn}: valid must be a ({V}, {H}, {W}) bool mask, got {_shape(valid)}")
    if not (math.isfinite(footprint) and footprint > 0):
        raise ValueError(f"{fn}: footprint must be > 0 pixels, got {footprint!r}")
    if not 0 < opacity <= 1:
        raise ValueError(f"{fn}: opacity must lie in (0, 1], got {opacity!r}")
    if bool((depth[valid] <= 0).any()):
        raise ValueError(f"{fn}: {int((depth[valid] <= 0).sum())} valid pixel(s) have depth <= 0; "
                         "a footprint needs a positive z-depth")
    dt, dev = points.dtype, points.device
    pix = valid.nonzero()                                               # (N, 3) view, row, column
    N = pix.shape[0]
    fx = K[:, 0, 0].to(dt)[pix[:, 0]]
    sigma = footprint * depth[valid].to(dt) / fx
    quats = torch.zeros(N, 4, dtype=dt, device=dev)
    quats[:, 0] = 1
    return {
        "means": points[valid],
        "quats": quats,
        "scales": sigma[:, None].expand(N, 3).contiguous(),
        "opacities": torch.full((N,), float(opacity), dtype=dt, device=dev),
        "colors": rgb_to_sh(images.permute(0, 2, 3, 1)[valid].to(dt))[:, None, :],
        "sh_degree": 0,
        "pixel": pix,
    }


# ----------------------------------------------------------------------------- rendering
def render_views(gaussians: dict, c2w: torch.Tensor, K: torch.Tensor, hw, background=None,
                 backend: str = "auto") -> RenderOutput:
    """Render a Gaussian set into cameras given in *our* conventions (notebook 05).

    ``c2w (V, 4, 4)`` camera-to-world (OpenCV), ``K (V, 3, 3)`` OpenCV pixel centres, ``hw = (H, W)``;
    converted here to gsplat's ``viewmats = invert_pose(c2w)`` and ``Ks = gsplat_K(K)``.
    ``background`` ``(3,)`` / ``(V, 3)`` or None (black). Cameras are cast to the Gaussians'
    dtype and device. Returns :class:`~flare_nb.render.rasterize.RenderOutput` with channels *first*:
    ``rgb (V, 3, H, W)`` (like ``Scene.images``), ``depth (V, H, W)``, ``alpha (V, H, W)``.
    """
    _check_gaussians(gaussians)
    _check_cameras(c2w, K, "render_views")
    H, W = _check_hw(hw, "render_views")
    m = gaussians["means"]
    viewmats = cameras.invert_pose(c2w.to(device=m.device, dtype=m.dtype))
    Ks = cameras.gsplat_K(K.to(device=m.device, dtype=m.dtype))
    if background is not None:
        background = torch.as_tensor(background, dtype=m.dtype, device=m.device)
    out = rasterize(gaussians["means"], gaussians["quats"], gaussians["scales"], gaussians["opacities"],
                    gaussians["colors"], viewmats, Ks, W, H, background=background,
                    sh_degree=gaussians.get("sh_degree"), backend=backend)
    return RenderOutput(out.rgb.permute(0, 3, 1, 2), out.depth[..., 0], out.alpha[..., 0])


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB per image ``(B,)`` of ``pred, target (B, C, H, W)`` in [0, 1], over the pixels
    where ``mask (B, H, W)`` is true (all pixels if None); ``10 log10(1 / MSE)``, all channels
    of a masked pixel count. ValueError on mismatched shapes or an image with an empty mask."""
    if not isinstance(pred, torch.Tensor) or pred.ndim != 4 or not isinstance(target, torch.Tensor) \
            or pred.shape != target.shape:
        raise ValueError(f"masked_psnr: pred and target must be two (B, C, H, W) tensors of one shape, "
                         f"got {_shape(pred)} and {_shape(target)}")
    B, C, H, W = pred.shape
    if mask is None:
        mask = torch.ones(B, H, W, dtype=torch.bool, device=pred.device)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, H, W):
        raise ValueError(f"masked_psnr: mask must be ({B}, {H}, {W}), got {_shape(mask)}")
    m = mask.to(torch.float64)[:, None]
    count = m.sum((1, 2, 3)) * C
    if bool((count == 0).any()):
        raise ValueError("masked_psnr: the mask of some image is empty; nothing to compare")
    err = (((pred.double() - target.double()) ** 2) * m).sum((1, 2, 3)) / count
    return (-10 * torch.log10(err)).to(pred.dtype)


def covariance_2d(proj: Projection) -> torch.Tensor:
    """The 2D covariances ``(C, N, 2, 2)`` (pixels^2, the 0.3 low-pass included) of a
    :func:`flare_nb.render.rasterize.project_gaussians` result, i.e. the inverse of its conics."""
    a, b, c = proj.conics.unbind(-1)
    det = a * c - b * b
    return torch.stack([torch.stack([c, -b], -1), torch.stack([-b, a], -1)], -2) / det[..., None, None]


# ----------------------------------------------------------------------------- orbit cameras
def _orbit_basis(up: torch.Tensor, reference: torch.Tensor | None):
    up = up / up.norm()
    if reference is None:  # the world axis least aligned with up
        reference = torch.zeros(3, dtype=up.dtype)
        reference[int(up.abs().argmin())] = 1
    e1 = reference - (reference @ up) * up
    if float(e1.norm()) < 1e-6:
        raise ValueError("orbit: reference direction is parallel to up; pick another one")
    e1 = e1 / e1.norm()
    return e1, torch.linalg.cross(up, e1), up


def _vec3(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).detach().cpu()
    if tuple(t.shape) != (3,) or not bool(torch.isfinite(t).all()):
        raise ValueError(f"orbit: {name} must be 3 finite numbers, got {x!r}")
    return t


def orbit_c2w(target, radius: float, azimuth_deg: float, elevation_deg: float, up=(0.0, 0.0, 1.0),
              reference=None) -> torch.Tensor:
    """Camera-to-world ``(4, 4)`` float64 (OpenCV axes) on a sphere around ``target (3,)``, looking at it.

    Centre ``= target + radius (cos el cos az e1 + cos el sin az e2 + sin el up)`` with
    ``e1`` = ``reference`` (default: the world axis least aligned with ``up``) made orthogonal to
    ``up`` and ``e2 = up x e1``. No roll: the camera's x axis is horizontal (orthogonal to
    ``up``) and its y axis points "down" (``y . up < 0``). ValueError for ``radius <= 0``,
    ``|elevation| >= 90`` (looking straight down the up axis has no defined roll) or
    non-finite input. Notebook 05, section 3.
    """
    target, up = _vec3(target, "target"), _vec3(up, "up")
    if float(up.norm()) == 0:
        raise ValueError("orbit: up must be a non-zero vector")
    vals = (radius, azimuth_deg, elevation_deg)
    if not all(math.isfinite(float(v)) for v in vals):
        raise ValueError(f"orbit: radius, azimuth and elevation must be finite, got {vals}")
    if not float(radius) > 0:
        raise ValueError(f"orbit: radius must be > 0, got {radius!r}")
    if abs(float(elevation_deg)) >= 90:
        raise ValueError(f"orbit: elevation must lie in (-90, 90) degrees, got {elevation_deg!r}")
    e1, e2, u = _orbit_basis(up, None if reference is None else _vec3(reference, "reference"))
    az, el = math.radians(float(azimuth_deg)), math.radians(float(elevation_deg))
    centre = target + float(radius) * (math.cos(el) * math.cos(az) * e1 + math.cos(el) * math.sin(az) * e2
                                       + math.sin(el) * u)
    z = (target - centre) / (target - centre).norm()          # forward
    x = torch.linalg.cross(z, u)                               # right (OpenCV: x = y x z, y down)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, centre
    return c2w


def orbit_params(c2w: torch.Tensor, target, up=(0.0, 0.0, 1.0), reference=None) -> tuple[float, float, float]:
    """``(radius, azimuth_deg, elevation_deg)`` of a camera centre (``c2w (4, 4)``) around
    ``target``, in :func:`orbit_c2w`'s parametrisation: ``orbit_c2w(target, *orbit_params(...))``
    has the same centre (and, for a camera that looks at ``target`` without roll, the same pose)."""
    if not isinstance(c2w, torch.Tensor) or tuple(c2w.shape) != (4, 4):
        raise ValueError(f"orbit_params: c2w must be one (4, 4) pose, got {_shape(c2w)}")
    target, up = _vec3(target, "target"), _vec3(up, "up")
    e1, e2, u = _orbit_basis(up, None if reference is None else _vec3(reference, "reference"))
    d = c2w[:3, 3].double().cpu() - target
    r = float(d.norm())
    if r == 0:
        raise ValueError("orbit_params: the camera sits on the target; no direction is defined")
    el = math.degrees(math.asin(max(-1.0, min(1.0, float(d @ u) / r))))
    az = math.degrees(math.atan2(float(d @ e2), float(d @ e1)))
    return r, az, el


# ----------------------------------------------------------------------------- fitting
def perturb_gaussians(gaussians: dict, means_noise: float = 2.0, color_noise: float = 0.3,
                      seed: int = 0) -> dict:
    """A noisy copy of a Gaussian set (the start of the fit in notebook 05, section 4).

    Means move by ``N(0, (means_noise * s)^2)`` per axis, ``s`` the Gaussian's mean scale
    (so the noise is in footprints); RGB colours (read from the SH DC term) get
    ``N(0, color_noise^2)`` and are clipped to [0, 1], higher SH terms are kept. Seeded
    (``torch.Generator``), so the same seed gives the same start. Other entries are copied.
    """
    N = _check_gaussians(gaussians)
    if not (means_noise >= 0 and color_noise >= 0):
        raise ValueError(f"perturb_gaussians: noise levels must be >= 0, got {means_noise!r}, {color_noise!r}")
    g = torch.Generator().manual_seed(int(seed))
    m, c = gaussians["means"], gaussians["colors"]
    out = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in gaussians.items()}
    s = gaussians["scales"].detach().mean(-1, keepdim=True)
    out["means"] = m.detach() + means_noise * s * torch.randn(N, 3, generator=g, dtype=m.dtype).to(m.device)
    noise = color_noise * torch.randn(N, 3, generator=g, dtype=c.dtype).to(c.device)
    if c.ndim == 3:
        rgb = (sh_to_rgb(c[:, 0].detach()) + noise).clamp(0, 1)
        out["colors"] = torch.cat([rgb_to_sh(rgb)[:, None], c[:, 1:].detach()], 1)
    else:
        out["colors"] = (c.detach() + noise).clamp(0, 1)
    return out


def fit_gaussians(init: dict, targets: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, steps: int = 50,
                  lr_means: float = 0.5, lr_colors: float = 0.1, lr_scales: float = 0.05,
                  lr_opacities: float = 0.1, lr_quats: float = 0.01, ssim_weight: float = 0.2,
                  background=None, callback: Callable[[int, dict], None] | None = None) -> tuple[dict, dict]:
    """Fit a Gaussian set to images by Adam on all its parameters (notebook 05, section 4).

    Loss ``(1 - w) MSE + w (1 - SSIM)`` (``w = ssim_weight``; SSIM of
    :func:`flare_nb.render.losses.ssim`, zero-padded "same" windows) over all views of
    ``targets (V, 3, H, W)`` in [0, 1], rendered with :func:`render_views` from ``c2w (V, 4, 4)``
    and ``K (V, 3, 3)`` (our conventions). Parametrisation: means as they are, ``log`` scales,
    opacity logits, quaternions (normalised by the rasterizer), colours as given (SH or RGB; RGB
    is clamped to [0, 1] after each step). ``lr_means`` is in units of the median initial scale
    (the fit is independent of the scene's units); the other rates are Adam's.
    ``callback(step, history)`` runs after every step.

    Returns ``(gaussians, history)``: the fitted set (detached, activated, like ``init``) and
    ``history`` with ``loss`` (``steps`` floats), ``psnr`` (``steps + 1`` floats: before each
    step, then after the last one; PSNR over whole images, mean over views).
    """
    _check_gaussians(init, "init")
    V = _check_cameras(c2w, K, "fit_gaussians")
    if not isinstance(targets, torch.Tensor) or targets.ndim != 4 or targets.shape[:2] != (V, 3):
        raise ValueError(f"fit_gaussians: targets must be ({V}, 3, H, W) images in [0, 1], got {_shape(targets)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"fit_gaussians: steps must be an int >= 0, got {steps!r}")
    if not 0 <= ssim_weight <= 1:
        raise ValueError(f"fit_gaussians: ssim_weight must lie in [0, 1], got {ssim_weight!r}")
    hw = tuple(targets.shape[-2:])
    if min(hw) < 11 and ssim_weight > 0:
        raise ValueError(f"fit_gaussians: images of {hw} are smaller than the 11-pixel SSIM window")
    sh_degree = init.get("sh_degree")
    rgb_colors = init["colors"].ndim == 2
    op = init["opacities"].detach().clamp(1e-4, 1 - 1e-4)
    raw = {
        "means": init["means"].detach().clone().requires_grad_(),
        "quats": init["quats"].detach().clone().requires_grad_(),
        "log_scales": init["scales"].detach().clamp_min(1e-12).log().requires_grad_(),
        "logit_opacities": torch.log(op / (1 - op)).requires_grad_(),
        "colors": init["colors"].detach().clone().requires_grad_(),
    }
    unit = float(init["scales"].detach().median())
    opt = torch.optim.Adam([
        {"params": [raw["means"]], "lr": lr_means * unit},
        {"params": [raw["colors"]], "lr": lr_colors},
        {"params": [raw["log_scales"]], "lr": lr_scales},
        {"params": [raw["logit_opacities"]], "lr": lr_opacities},
        {"params": [raw["quats"]], "lr": lr_quats},
    ])
    target = targets.to(device=raw["means"].device, dtype=raw["means"].dtype)

    def activated():
        return {"means": raw["means"], "quats": raw["quats"], "scales": raw["log_scales"].exp(),
                "opacities": torch.sigmoid(raw["logit_opacities"]), "colors": raw["colors"],
                "sh_degree": sh_degree}

    def psnr_of(img):
        return float(masked_psnr(img.detach().clamp(0, 1), target).mean())

    history = {"loss": [], "psnr": []}
    for step in range(steps):
        img = render_views(activated(), c2w, K, hw, background=background).rgb
        loss = (1 - ssim_weight) * mse(img, target)
        if ssim_weight > 0:
            loss = loss + ssim_weight * (1 - ssim(img, target, padding="same"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if rgb_colors:
            with torch.no_grad():
                raw["colors"].clamp_(0, 1)
        history["loss"].append(float(loss.detach()))
        history["psnr"].append(psnr_of(img))
        if callback is not None:
            callback(step, history)
    with torch.no_grad():
        final = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in activated().items()}
        history["psnr"].append(psnr_of(render_views(final, c2w, K, hw, background=background).rgb))
    extra = {k: v for k, v in init.items() if k not in final}
    return {**extra, **final}, history
