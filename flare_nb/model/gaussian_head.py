"""The NVS model's Gaussian head: one 3-D Gaussian per pixel from descriptors + image detail.

Notebook 05 explains it. Input per view: head 2's raw local features ``desc`` (24 descriptor
channels + 1 descriptor-confidence channel, not normalised) and the shallow CNN's 16-channel
``detail`` map (:mod:`flare_nb.model.shallow_cnn`). The released module is ``downstream_head4``;
:class:`GaussianHead`'s state_dict keys equal its keys without that prefix.

Order of operations (all convs stride 1, "same" padding, GELU = exact erf GELU):

1. ``u = high_feature_fusion(desc)``: conv3x3 -> GELU -> conv3x3 -> GELU -> conv3x3
   (``enc1.0``, ``enc1.2``, ``dec2``; 25 channels throughout; called a UNet in the release but
   it has no down/up-sampling).
2. ``f = cat[u, detail]`` (41 channels; the UNet *output*, not the raw desc, comes first).
3. opacity  = ``feat_opacity(f)``  (conv3x3 41->20, GELU, conv1x1 20->1) **minus 2**;
   scaling  = ``feat_scaling(u)`` (conv3x3 25->20, GELU, conv1x1 20->3);
   rotation = ``feat_rotation(u)`` (conv3x3 25->20, GELU, conv1x1 20->4);
   ``h = feat_sh(f)`` (conv3x3 41->20, GELU); feature = ``cat[color(h), sh_high_fre(h)]``
   (conv1x1 20->3 and 20->3((d+1)^2 - 1); d = 4 in NVS.pth: 3 + 72 = 75 channels).

Outputs are raw (no activation), channels last ``(B, H, W, C)`` like the release and the
fixture ``data/flare_reference/parity_nvs.npz`` (``gs_*_raw``). :func:`activate_gaussians` turns
them into what gsplat's ``rasterization`` takes, exactly as the released renderer does:
opacity ``sigmoid``; scale ``clamp(exp(min(x - 4, ln 0.3)), 5e-4, 0.3)``; rotation normalised
(w, x, y, z); colour = SH coefficients ``(N, (d+1)^2, 3)`` with the DC term first and the rest
coefficient-major (channel ``3 + 3k + c`` is coefficient ``k + 1`` of colour ``c``); no 0.5 is
added (gsplat adds 0.5 to the evaluated SH colour and clamps at 0). With d = 0 the release
instead passes ``sigmoid(dc)`` as plain RGB colours (``sh_degree=None``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DescUNet", "GaussianHead", "activate_gaussians", "OPACITY_SHIFT", "SCALE_SHIFT",
           "SCALE_MIN", "SCALE_MAX"]

OPACITY_SHIFT = 2.0          # subtracted inside the head (part of the raw output)
SCALE_SHIFT = 4.0            # subtracted by the renderer before exp
SCALE_MIN, SCALE_MAX = 5e-4, 0.3
_RAW_KEYS = ("opacity_raw", "scaling_raw", "rotation_raw", "feature_dc_raw", "feature_rest_raw")


class DescUNet(nn.Module):
    """``high_feature_fusion``: conv3x3 -> GELU -> conv3x3 -> GELU -> conv3x3, ``(B, C, H, W)`` in and out.

    Keys ``enc1.0.*``, ``enc1.2.*`` (GELUs at ``enc1.1`` / ``enc1.3`` hold no parameters), ``dec2.*``.
    """

    def __init__(self, c_in: int, c_out: int, hidden: int):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU())
        self.dec2 = nn.Conv2d(hidden, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec2(self.enc1(x))


def _conv_gelu_1x1(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, c_out, 1))


class GaussianHead(nn.Module):
    """Per-pixel Gaussian parameters from ``desc (B, desc_dim, H, W)`` and ``detail (B, detail_dim, H, W)``.

    Released (``downstream_head4`` of NVS.pth): ``desc_dim=25, detail_dim=16, hidden=20,
    sh_degree=4`` (the geometry checkpoint carries an unused copy with ``sh_degree=2``).
    ``unet_dim`` is the UNet width (released = ``desc_dim``). ``forward`` returns the raw dict
    described in the module docstring; :meth:`reset_parameters` applies the release's
    initialisation for training from scratch.
    """

    def __init__(self, desc_dim: int = 25, detail_dim: int = 16, hidden: int = 20, sh_degree: int = 4,
                 unet_dim: int | None = None):
        super().__init__()
        if not 0 <= sh_degree <= 4:
            raise ValueError(f"sh_degree must be in 0..4 (gsplat evaluates up to degree 4), got {sh_degree}")
        if min(desc_dim, detail_dim, hidden) < 1:
            raise ValueError(f"desc_dim, detail_dim and hidden must be positive, got {desc_dim}, {detail_dim}, {hidden}")
        unet_dim = desc_dim if unet_dim is None else unet_dim
        self.desc_dim, self.detail_dim, self.hidden, self.sh_degree = desc_dim, detail_dim, hidden, sh_degree
        self.num_sh = (sh_degree + 1) ** 2
        fused = desc_dim + detail_dim
        self.high_feature_fusion = DescUNet(desc_dim, desc_dim, unet_dim)
        self.feat_sh = nn.Sequential(nn.Conv2d(fused, hidden, 3, padding=1), nn.GELU())
        self.color = nn.Conv2d(hidden, 3, 1)
        # degree 0 has no higher coefficients: no module (and no ``sh_high_fre.*`` keys)
        self.sh_high_fre = nn.Conv2d(hidden, 3 * (self.num_sh - 1), 1) if sh_degree else None
        self.feat_opacity = _conv_gelu_1x1(fused, hidden, 1)
        self.feat_scaling = _conv_gelu_1x1(desc_dim, hidden, 3)
        self.feat_rotation = _conv_gelu_1x1(desc_dim, hidden, 4)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The release's initialisation of the last layers (PyTorch defaults elsewhere).

        Weights ~ N(0, std): ``feat_scaling`` / ``feat_opacity`` output convs 0.02,
        ``sh_high_fre`` 0.02, ``color`` 0.88 (so initial colours vary); biases unchanged.
        """
        for layer, std in ((self.feat_scaling[-1], 0.02), (self.feat_opacity[-1], 0.02),
                           (self.color, 0.88), (self.sh_high_fre, 0.02)):
            if layer is not None:
                layer.weight.normal_(0.0, std, generator=generator)

    def forward(self, desc: torch.Tensor, detail: torch.Tensor) -> dict[str, torch.Tensor]:
        """``desc (B, desc_dim, H, W)``, ``detail (B, detail_dim, H, W)`` -> raw dict, channels last.

        Keys: ``opacity_raw`` (B, H, W, 1) (includes the -2), ``scaling_raw`` (B, H, W, 3),
        ``rotation_raw`` (B, H, W, 4), ``feature_dc_raw`` (B, H, W, 3),
        ``feature_rest_raw`` (B, H, W, 3((d+1)^2 - 1)).
        """
        for name, t, c in (("desc", desc, self.desc_dim), ("detail", detail, self.detail_dim)):
            if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != c:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must have shape (B, {c}, H, W) (channels first), got {shape}")
        if desc.shape[0] != detail.shape[0] or desc.shape[2:] != detail.shape[2:]:
            raise ValueError(f"desc {tuple(desc.shape)} and detail {tuple(detail.shape)} must share B, H and W")
        u = self.high_feature_fusion(desc)
        f = torch.cat((u, detail), dim=1)
        h = self.feat_sh(f)
        last = lambda t: t.permute(0, 2, 3, 1)  # noqa: E731
        rest = self.sh_high_fre(h) if self.sh_high_fre is not None else h[:, :0]
        return {
            "opacity_raw": last(self.feat_opacity(f) - OPACITY_SHIFT),
            "scaling_raw": last(self.feat_scaling(u)),
            "rotation_raw": last(self.feat_rotation(u)),
            "feature_dc_raw": last(self.color(h)),
            "feature_rest_raw": last(rest),
        }


def activate_gaussians(raw: dict[str, torch.Tensor], means: torch.Tensor,
                       scale_shift: float = SCALE_SHIFT, min_scale: float = SCALE_MIN,
                       max_scale: float = SCALE_MAX) -> dict:
    """Raw head outputs of one scene -> a flat Gaussian set, in gsplat ``rasterization`` argument names.

    ``raw``: :meth:`GaussianHead.forward`'s dict, tensors ``(*lead, C)`` (e.g. ``(V, H, W, C)``,
    all context views of one scene); ``means`` ``(*lead, 3)``: the centres (head 2's global
    pointmap, view 0's camera frame). Everything is flattened in ``*lead`` order (view, row,
    column), N = prod(lead). Returns ``means (N, 3)``, ``quats (N, 4)`` (w, x, y, z), unit norm,
    sign fixed to w >= 0 (same rotation as the release's plain normalisation), ``scales (N, 3)``
    = ``clamp(exp(min(x - scale_shift, ln max_scale)), min_scale, max_scale)``, ``opacities (N,)``
    = sigmoid, and ``colors`` with ``sh_degree``: SH coefficients ``(N, (d+1)^2, 3)`` (DC
    first, gsplat adds 0.5 itself) and d, or for d = 0 RGB ``sigmoid(dc)`` (N, 3) and None.
    """
    missing = [k for k in _RAW_KEYS if k not in raw]
    if missing:
        raise KeyError(f"raw Gaussian dict lacks {missing}; expected the keys {list(_RAW_KEYS)}")
    lead = means.shape[:-1]
    if means.shape[-1:] != (3,):
        raise ValueError(f"means must have shape (*lead, 3), got {tuple(means.shape)}")
    want = {"opacity_raw": 1, "scaling_raw": 3, "rotation_raw": 4, "feature_dc_raw": 3}
    for k in _RAW_KEYS:
        t = raw[k]
        if t.shape[:-1] != lead or (k in want and t.shape[-1] != want[k]):
            c = want.get(k, "3((d+1)^2-1)")
            raise ValueError(f"raw[{k!r}] must have shape {tuple(lead) + (c,)} to match means {tuple(means.shape)}, "
                             f"got {tuple(t.shape)}")
    n_rest = raw["feature_rest_raw"].shape[-1]
    k_sh = 1 + n_rest // 3
    degree = math.isqrt(k_sh) - 1
    if n_rest % 3 or (degree + 1) ** 2 != k_sh:
        raise ValueError(f"feature_rest_raw has {n_rest} channels; expected 3((d+1)^2 - 1) for an SH degree d")
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    q = F.normalize(flat(raw["rotation_raw"]), dim=-1)
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0).to(q.dtype)
    x = torch.clamp(flat(raw["scaling_raw"]) - scale_shift, max=math.log(max_scale))
    scales = torch.exp(x).clamp(min_scale, max_scale)
    dc = flat(raw["feature_dc_raw"])
    if degree == 0:
        colors, sh_degree = torch.sigmoid(dc), None
    else:
        colors = torch.cat((dc[:, None, :], flat(raw["feature_rest_raw"]).unflatten(-1, (-1, 3))), dim=1)
        sh_degree = degree
    return {
        "means": flat(means),
        "quats": q,
        "scales": scales,
        "opacities": torch.sigmoid(flat(raw["opacity_raw"]))[:, 0],
        "colors": colors,
        "sh_degree": sh_degree,
    }
