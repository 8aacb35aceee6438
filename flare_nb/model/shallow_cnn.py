"""The NVS model's shallow image CNN: a 64-channel fused map and a 16-channel detail map.

The released NVS FLARE model runs a small MVSNet-style feature pyramid directly on the input
images (in [-1, 1], no ImageNet normalisation, no batch norm; the paper mentions a VGG, the
release has none). Notebook 05 (Gaussian head) explains it. Three modules, under the released
state_dict names (in the NVS model they belong to ``model.detail_encoder``, whose names equal
the released ones without that prefix):

* ``cnn_wobn`` (:class:`ShallowFeatureNet`): three stages of two conv+ReLU layers (bias-free
  convs; widths 8, 16, 32; the first conv of stages 1 and 2 is 5x5 stride 2), then an FPN:
  ``toplayer`` (1x1) on the 1/4 map, ``lat1`` / ``lat0`` (1x1) laterals, top-down x2 bilinear
  (``align_corners=True``) upsample-and-add, and 3x3 ``smooth1`` / ``smooth0`` convs applied
  *after* the top-down pass (the 1/1 level adds the *unsmoothed* 1/2 level). Returns 32-channel
  maps at 1/4, 1/2 and 1/1 resolution.
* ``cnn_fusion``: conv3x3 (96 -> 64) on ``[full, up(half), up(quarter)]`` (channel order),
  where ``up`` is bilinear ``align_corners=True`` to the image size. No activation.
* ``cnn_proj``: conv3x3 (64 -> 16) on the fused map, no activation -> the *detail* map the
  Gaussian head (:mod:`flare_nb.model.gaussian_head`) concatenates after head 2's 25 descriptor
  channels.

The fused 64-channel map also feeds a second, 4-block image encoder (``patch_embed_fine``
16x16/16 conv 64 -> 1024, ``enc_blocks_stage2``, ``enc_norm_stage2``; built by the model, not
here) after adding :func:`rope_ones_term`, a fixed positional pattern: 2-D RoPE (base 100,
rotate-half) applied to a tensor of ones, per 64-channel group, with the pixel *column* x
rotating the first half of the channels and the *row* y the second half (the reverse of the
token RoPE's (y, x) order).

Shapes: images ``(*lead, 3, H, W)`` with H, W multiples of 4 (the model needs 64 anyway);
outputs ``(*lead, C, H, W)`` (channels first). The official code runs this only on landscape
or square inputs (its portrait path does not line up); these functions take the image as given.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvReLU",
    "ShallowFeatureNet",
    "ShallowCNN",
    "build_shallow_cnn",
    "run_shallow_cnn",
    "rope_ones_term",
    "add_rope_ones",
]


class ConvReLU(nn.Module):
    """Bias-free ``Conv2d`` followed by ReLU. State dict: ``conv.weight`` only."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, pad: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ShallowFeatureNet(nn.Module):
    """The ``cnn_wobn`` pyramid: ``(B, 3, H, W)`` -> 1/4, 1/2, 1/1 maps of ``fpn_dim`` channels.

    ``widths`` are the channels of the three conv stages (released: 8, 16, 32), ``fpn_dim``
    the width of the pyramid outputs (released: 32). H and W must be multiples of 4.
    """

    def __init__(self, widths: tuple[int, int, int] = (8, 16, 32), fpn_dim: int = 32):
        super().__init__()
        if len(widths) != 3 or min(widths) < 1 or fpn_dim < 1:
            raise ValueError(f"widths must be three positive ints and fpn_dim positive, got {widths}, {fpn_dim}")
        c0, c1, c2 = widths
        self.widths, self.fpn_dim = tuple(widths), fpn_dim
        self.conv0 = nn.Sequential(ConvReLU(3, c0, 3, 1, 1), ConvReLU(c0, c0, 3, 1, 1))
        self.conv1 = nn.Sequential(ConvReLU(c0, c1, 5, 2, 2), ConvReLU(c1, c1, 3, 1, 1))
        self.conv2 = nn.Sequential(ConvReLU(c1, c2, 5, 2, 2), ConvReLU(c2, c2, 3, 1, 1))
        self.toplayer = nn.Conv2d(c2, fpn_dim, 1)
        self.lat1 = nn.Conv2d(c1, fpn_dim, 1)
        self.lat0 = nn.Conv2d(c0, fpn_dim, 1)
        self.smooth1 = nn.Conv2d(fpn_dim, fpn_dim, 3, padding=1)
        self.smooth0 = nn.Conv2d(fpn_dim, fpn_dim, 3, padding=1)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``img`` (B, 3, H, W) -> (quarter (B, F, H/4, W/4), half (B, F, H/2, W/2), full (B, F, H, W))."""
        _check_images(img, batch_dims=1)
        c0 = self.conv0(img)
        c1 = self.conv1(c0)
        c2 = self.conv2(c1)
        quarter = self.toplayer(c2)
        half = _up2(quarter) + self.lat1(c1)
        full = _up2(half) + self.lat0(c0)  # top-down pass uses the unsmoothed 1/2 map
        return quarter, self.smooth1(half), self.smooth0(full)


def _check_images(img: torch.Tensor, batch_dims: int | None = None) -> None:
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(img).__name__}")
    if img.ndim < 4 or img.shape[-3] != 3 or (batch_dims is not None and img.ndim != 3 + batch_dims):
        want = "(B, 3, H, W)" if batch_dims == 1 else "(*lead, 3, H, W)"
        raise ValueError(f"images must have shape {want} (RGB in [-1, 1]), got {tuple(img.shape)}")
    h, w = img.shape[-2:]
    if h % 4 or w % 4 or h == 0 or w == 0:
        raise ValueError(f"image height and width must be positive multiples of 4, got H={h}, W={w}")


def build_shallow_cnn(widths: tuple[int, int, int] = (8, 16, 32), fpn_dim: int = 32,
                      fusion_dim: int = 64, detail_dim: int = 16) -> dict[str, nn.Module]:
    """The three released modules by their top-level names.

    Returns ``{"cnn_wobn": ShallowFeatureNet, "cnn_fusion": Conv2d(3 fpn_dim -> fusion_dim, 3x3),
    "cnn_proj": Conv2d(fusion_dim -> detail_dim, 3x3)}``; :class:`ShallowCNN` registers each under
    its key, so the state_dict keys are ``cnn_wobn.*`` etc.
    Released sizes are the defaults.
    """
    if fusion_dim < 1 or detail_dim < 1:
        raise ValueError(f"fusion_dim and detail_dim must be positive, got {fusion_dim}, {detail_dim}")
    return {
        "cnn_wobn": ShallowFeatureNet(widths, fpn_dim),
        "cnn_fusion": nn.Conv2d(3 * fpn_dim, fusion_dim, 3, 1, 1),
        "cnn_proj": nn.Conv2d(fusion_dim, detail_dim, 3, 1, 1),
    }


def run_shallow_cnn(cnn_wobn: ShallowFeatureNet, cnn_fusion: nn.Conv2d, cnn_proj: nn.Conv2d,
                    images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(*lead, 3, H, W)`` in [-1, 1] -> ``(fusion (*lead, 64, H, W), detail (*lead, 16, H, W))``.

    ``fusion = cnn_fusion(cat[full, up(half), up(quarter)])`` (bilinear, align_corners=True, to
    (H, W)); ``detail = cnn_proj(fusion)``. Neither has an activation. The NVS model feeds
    ``detail`` to the Gaussian head and ``add_rope_ones(fusion)`` to ``patch_embed_fine``.
    """
    _check_images(images)
    lead, (h, w) = images.shape[:-3], images.shape[-2:]
    x = images.reshape(-1, 3, h, w)
    quarter, half, full = cnn_wobn(x)
    up = lambda t: F.interpolate(t, size=(h, w), mode="bilinear", align_corners=True)  # noqa: E731
    fusion = cnn_fusion(torch.cat((full, up(half), up(quarter)), dim=1))
    detail = cnn_proj(fusion)
    return fusion.reshape(*lead, *fusion.shape[1:]), detail.reshape(*lead, *detail.shape[1:])


class ShallowCNN(nn.Module):
    """The three modules in one container, for standalone use (notebooks, tests).

    Its state_dict keys equal the released top-level keys (``cnn_wobn.*``, ``cnn_fusion.*``,
    ``cnn_proj.*``), so the released sub-state-dict loads into it directly. The NVS model's
    second image path (``flare_nb.model.nvs.DetailEncoder``) extends it.
    ``forward(images)`` = :func:`run_shallow_cnn`.
    """

    def __init__(self, widths: tuple[int, int, int] = (8, 16, 32), fpn_dim: int = 32,
                 fusion_dim: int = 64, detail_dim: int = 16):
        super().__init__()
        for name, module in build_shallow_cnn(widths, fpn_dim, fusion_dim, detail_dim).items():
            self.add_module(name, module)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return run_shallow_cnn(self.cnn_wobn, self.cnn_fusion, self.cnn_proj, images)


def rope_ones_term(height: int, width: int, dim: int = 64, head_dim: int | None = None,
                   base: float = 100.0, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """2-D rotate-half RoPE applied to ones: a fixed ``(dim, height, width)`` positional pattern.

    Channels are split into groups of ``head_dim`` (default ``min(dim, 64)``; released: one
    group of 64). In each group, the first half encodes the pixel column x and the second half
    the row y; within a half of ``d = head_dim / 2`` channels, with inverse frequencies
    ``f_i = base^(-2i/d)`` (i < d/2) and ``a_i = p f_i`` (p = x or y):
    channels ``[0, d/2)`` are ``cos a_i - sin a_i`` and ``[d/2, d)`` are ``cos a_i + sin a_i``.
    At (0, 0) every value is 1. Computed in float32 exactly as the released RoPE computes its
    tables, then cast to ``dtype``.
    """
    head_dim = min(dim, 64) if head_dim is None else head_dim
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}, {width}")
    if head_dim < 4 or head_dim % 4 or dim % head_dim:
        raise ValueError(f"head_dim must be a multiple of 4 that divides dim, got dim={dim}, head_dim={head_dim}")
    d = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, device=device).float() / d))

    def one_axis(n: int) -> torch.Tensor:  # (n, d)
        ang = torch.einsum("i,j->ij", torch.arange(n, device=device, dtype=torch.float32), inv_freq)
        ang = torch.cat((ang, ang), dim=-1)
        cos, sin = ang.cos(), ang.sin()
        sign = torch.cat((-torch.ones(d // 2, device=device), torch.ones(d // 2, device=device)))
        return cos + sign * sin

    ex, ey = one_axis(width), one_axis(height)  # (W, d), (H, d)
    grid = torch.cat((ex[None, :, :].expand(height, width, d), ey[:, None, :].expand(height, width, d)), dim=-1)
    grid = grid.repeat(1, 1, dim // head_dim)  # (H, W, dim)
    return grid.permute(2, 0, 1).contiguous().to(dtype)


def add_rope_ones(fusion: torch.Tensor, head_dim: int | None = None, base: float = 100.0) -> torch.Tensor:
    """``fusion (*lead, C, H, W) + rope_ones_term(H, W, C)``: the input of ``patch_embed_fine``."""
    if fusion.ndim < 3:
        raise ValueError(f"fusion must have shape (*lead, C, H, W), got {tuple(fusion.shape)}")
    c, h, w = fusion.shape[-3:]
    return fusion + rope_ones_term(h, w, c, head_dim, base, device=fusion.device, dtype=fusion.dtype)
