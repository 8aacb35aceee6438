"""The FLARE pixel head: a DPT pointmap branch plus an MLP local-feature branch.

FLARE has two copies of this head, ``downstream_head1`` (stage 2, camera-centric
pointmaps) and ``downstream_head2`` (stage 3, global pointmaps). Notebook 03 explains it.

Inputs: four token maps of one batch of views, each ``(BV, N, C_i)`` with
``N = (H / patch) * (W / patch)`` tokens in row-major order (row outer, column inner):
``tokens[0]`` is the image-encoder output (``enc_dim`` channels), ``tokens[1:]`` are
decoder layers 6, 9 and 12 (``dec_dim`` channels; layer 12 after the decoder's final norm).

Two branches:

* **DPT** (``self.dpt``): each token map becomes an image ``(BV, C_i, h, w)`` with
  ``(h, w) = (H, W) / patch``; "reassemble" projects it with a 1x1 conv to
  ``layer_dims[i]`` channels and resamples it to 4x, 2x, 1x and 0.5x the token grid
  (4x4 stride-4 transposed conv, 2x2 stride-2 transposed conv, nothing, 3x3 stride-2
  conv); a bias-free 3x3 conv brings each to ``feature_dim``. Fusion runs coarse to fine:
  ``refinenet4`` takes the 0.5x map alone (so its ``resConfUnit1`` is never used), its 2x
  upsampled output is cropped to the 1x grid, and every later ``refinenet{k}`` adds
  ``resConfUnit1(skip)`` to the coarser path, applies ``resConfUnit2``, upsamples x2
  (bilinear, ``align_corners=True``) and applies a 1x1 conv. The output head is
  conv3x3 -> bilinear resize to (H, W) -> conv3x3 -> ReLU -> conv1x1 giving
  ``out_channels`` = 4 channels (x, y, z, confidence).
* **Local features** (``self.head_local_features``): an MLP (Linear, exact GELU, Linear)
  on the concatenation ``[tokens[0], tokens[3]]`` (``enc_dim + dec_dim`` = 1792 channels
  in the released model) gives ``(desc_dim + 1) * patch**2`` values per token which a
  pixel shuffle turns into ``desc_dim + 1`` = 25 channels at full resolution.

Activations (module-level functions so that the notebook can plot them):
``depth_exp`` for the points (``xyz / |xyz| * expm1(|xyz|)``), ``conf_exp`` for both
confidences (``vmin + exp(x)``: ``vmin = 1`` for the point confidence, ``0`` for the
descriptor confidence). The released FLARE code does not normalise the descriptors.

State-dict names and shapes equal the released checkpoint's ``downstream_head{1,2}.*``
keys (without that prefix), including the alias pairs
``dpt.scratch.layer{k}_rn.weight`` == ``dpt.scratch.layer_rn.{k-1}.weight`` (one tensor
registered under both names). ``unused_keys()`` lists the keys never used at inference.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DPTHead", "depth_exp", "conf_exp", "unused_keys"]


# --------------------------------------------------------------------------- activations
def depth_exp(xyz: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """FLARE's 'exp' point activation: keep the direction, map the norm ``d`` to ``expm1(d)``.

    ``xyz`` (..., 3) raw head output -> (..., 3) points, ``xyz / max(|xyz|, eps) * expm1(|xyz|)``.
    Raw 0 maps to 0; a raw norm of ``d`` becomes a distance ``e^d - 1`` from the camera
    centre, so small raw values give a near-linear response and large ones reach far.
    """
    if xyz.shape[-1] != 3:
        raise ValueError(f"depth_exp expects a last dimension of 3 (x, y, z), got shape {tuple(xyz.shape)}")
    d = xyz.norm(dim=-1, keepdim=True)
    return xyz / d.clamp(min=eps) * torch.expm1(d)


def conf_exp(x: torch.Tensor, vmin: float = 1.0) -> torch.Tensor:
    """FLARE's confidence activation ``vmin + exp(x)`` (any shape, elementwise).

    ``vmin = 1`` for the pointmap confidence (so it is always > 1), ``vmin = 0`` for the
    descriptor confidence.
    """
    return vmin + x.exp()


# --------------------------------------------------------------------------- building blocks
class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` with 3x3 convs (bias) keeping ``features`` channels."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """One DPT fusion step: ``out_conv(up2(resConfUnit2(path + resConfUnit1(skip))))``.

    ``path`` and ``skip`` are ``(B, F, h, w)``; the result is ``(B, F, 2h, 2w)``. Without a
    skip (the coarsest block) ``resConfUnit1`` is not used.
    """

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, path: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            path = path + self.resConfUnit1(skip)
        path = self.resConfUnit2(path)
        path = F.interpolate(path, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(path)


class _Resize(nn.Module):
    """Placeholder at ``head.1`` (no parameters): bilinear resize to the image size,
    ``align_corners=True``. For patch 16 this is exactly the released x2 upsampling."""

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class _Scratch(nn.Module):
    """Projections to ``feature_dim`` (``layer{k}_rn``, aliased as ``layer_rn[k-1]``) and the
    four fusion blocks."""

    def __init__(self, layer_dims: Sequence[int], feature_dim: int):
        super().__init__()
        convs = [nn.Conv2d(c, feature_dim, 3, padding=1, bias=False) for c in layer_dims]
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = convs
        self.layer_rn = nn.ModuleList(convs)  # the same modules again: both key names exist
        self.refinenet1 = FusionBlock(feature_dim)
        self.refinenet2 = FusionBlock(feature_dim)
        self.refinenet3 = FusionBlock(feature_dim)
        self.refinenet4 = FusionBlock(feature_dim)


class DPTBranch(nn.Module):
    """The DPT pointmap branch: 4 token maps -> ``(BV, out_channels, H, W)`` raw channels."""

    def __init__(self, token_dims: Sequence[int], layer_dims: Sequence[int], feature_dim: int,
                 last_dim: int, out_channels: int):
        super().__init__()
        self.scratch = _Scratch(layer_dims, feature_dim)
        half = feature_dim // 2
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, half, 3, padding=1),
            _Resize(),
            nn.Conv2d(half, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, out_channels, 1),
        )
        d0, d1, d2, d3 = layer_dims
        t0, t1, t2, t3 = token_dims
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(t0, d0, 1), nn.ConvTranspose2d(d0, d0, 4, stride=4)),  # 4x
            nn.Sequential(nn.Conv2d(t1, d1, 1), nn.ConvTranspose2d(d1, d1, 2, stride=2)),  # 2x
            nn.Sequential(nn.Conv2d(t2, d2, 1)),                                            # 1x
            nn.Sequential(nn.Conv2d(t3, d3, 1), nn.Conv2d(d3, d3, 3, stride=2, padding=1)),  # 0.5x
        ])

    def forward(self, maps: Sequence[torch.Tensor], image_hw: tuple[int, int]) -> torch.Tensor:
        """``maps``: 4 tensors ``(BV, C_i, h, w)`` on the token grid -> ``(BV, out_channels, H, W)``."""
        s = self.scratch
        feats = [s.layer_rn[i](self.act_postprocess[i](m)) for i, m in enumerate(maps)]
        h3, w3 = feats[2].shape[-2:]
        path = s.refinenet4(feats[3])[:, :, :h3, :w3]  # 2 * ceil(h/2) may exceed h
        path = s.refinenet3(path, feats[2])
        path = s.refinenet2(path, feats[1])
        path = s.refinenet1(path, feats[0])
        conv0, resize, conv2, relu, conv4 = self.head
        return conv4(relu(conv2(resize(conv0(path), image_hw))))


class LocalFeatureMLP(nn.Module):
    """``fc1`` -> exact GELU -> ``fc2`` (dropout-free), the released ``head_local_features``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


# --------------------------------------------------------------------------- the head
_UNUSED = (
    "dpt.scratch.refinenet4.resConfUnit1.conv1.weight",
    "dpt.scratch.refinenet4.resConfUnit1.conv1.bias",
    "dpt.scratch.refinenet4.resConfUnit1.conv2.weight",
    "dpt.scratch.refinenet4.resConfUnit1.conv2.bias",
)


def unused_keys() -> list[str]:
    """State-dict keys of ``DPTHead`` that never take part in a forward pass (the coarsest
    fusion block has no skip input). Relative names; prefix ``downstream_head1.`` etc."""
    return list(_UNUSED)


class DPTHead(nn.Module):
    """FLARE's pixel head (``downstream_head1`` / ``downstream_head2``); see the module doc.

    Args:
        enc_dim: channels of ``tokens[0]`` (encoder output; 1024 released).
        dec_dim: channels of ``tokens[1:]`` (decoder layers; 768 released).
        patch_size: pixels per token side (16 released). Also the pixel-shuffle factor.
        layer_dims: reassemble widths of the 4 taps (96, 192, 384, 768 released).
        feature_dim: fusion width (256); the output head's first conv gives ``feature_dim // 2``.
        last_dim: width of the output head's second conv (128).
        out_channels: DPT output channels, 3 point coordinates + 1 confidence (4).
        desc_dim: descriptor channels of the MLP branch (24); one more channel is its confidence.
        mlp_ratio: hidden width of the MLP = ``mlp_ratio * (enc_dim + dec_dim)`` (4).
        depth_eps: the ``eps`` of ``depth_exp`` (1e-7).
        desc_mode: ``"raw"`` (released FLARE: descriptors not normalised) or ``"norm"``
            (unit length, as MASt3R does).

    State dict: ``dpt.*`` and ``head_local_features.*`` exactly as in the released checkpoint.
    """

    def __init__(self, enc_dim: int = 1024, dec_dim: int = 768, patch_size: int = 16,
                 layer_dims: Sequence[int] = (96, 192, 384, 768), feature_dim: int = 256,
                 last_dim: int = 128, out_channels: int = 4, desc_dim: int = 24,
                 mlp_ratio: float = 4, depth_eps: float = 1e-7, desc_mode: str = "raw"):
        super().__init__()
        for name, v in (("enc_dim", enc_dim), ("dec_dim", dec_dim), ("patch_size", patch_size),
                        ("feature_dim", feature_dim), ("last_dim", last_dim), ("desc_dim", desc_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"DPTHead: {name} must be a positive int, got {v!r}")
        if len(layer_dims) != 4 or any(int(c) < 1 for c in layer_dims):
            raise ValueError(f"DPTHead: layer_dims must be 4 positive ints, got {layer_dims!r}")
        if feature_dim < 2:
            raise ValueError(f"DPTHead: feature_dim must be >= 2 (the head halves it), got {feature_dim}")
        if out_channels != 4:
            raise ValueError(f"DPTHead: out_channels must be 4 (x, y, z, confidence), got {out_channels!r}")
        if desc_mode not in ("raw", "norm"):
            raise ValueError(f"DPTHead: desc_mode must be 'raw' or 'norm', got {desc_mode!r}")
        self.enc_dim, self.dec_dim, self.patch_size = enc_dim, dec_dim, patch_size
        self.desc_dim, self.depth_eps, self.desc_mode = desc_dim, depth_eps, desc_mode
        self.dpt = DPTBranch((enc_dim, dec_dim, dec_dim, dec_dim), [int(c) for c in layer_dims],
                             feature_dim, last_dim, out_channels)
        cat_dim = enc_dim + dec_dim
        self.head_local_features = LocalFeatureMLP(cat_dim, int(mlp_ratio * cat_dim),
                                                   (desc_dim + 1) * patch_size ** 2)

    # ------------------------------------------------------------------ helpers
    def _check(self, tokens, image_hw) -> tuple[int, int, int, int]:
        if not isinstance(tokens, (list, tuple)) or len(tokens) != 4:
            n = len(tokens) if isinstance(tokens, (list, tuple)) else type(tokens).__name__
            raise ValueError(f"DPTHead expects a list of 4 token tensors [encoder, layer 6, 9, 12], got {n}")
        try:
            H, W = (int(v) for v in image_hw)
        except (TypeError, ValueError):
            raise ValueError(f"DPTHead: image_hw must be (H, W), got {image_hw!r}") from None
        p = self.patch_size
        if H < p or W < p or H % p or W % p:
            raise ValueError(f"DPTHead: image size {H}x{W} must be a positive multiple of the patch size {p}")
        h, w = H // p, W // p
        B = tokens[0].shape[0] if tokens[0].ndim == 3 else -1
        for i, t in enumerate(tokens):
            want = self.enc_dim if i == 0 else self.dec_dim
            if t.ndim != 3 or t.shape[0] != B or t.shape[1] != h * w or t.shape[2] != want:
                raise ValueError(f"DPTHead: tokens[{i}] has shape {tuple(t.shape)}, expected "
                                 f"({B if B > 0 else 'BV'}, {h * w}, {want}) for a {H}x{W} image "
                                 f"with patch {p} ({h}x{w} tokens, row-major)")
        return H, W, h, w

    def pointmap_channels(self, tokens: Sequence[torch.Tensor], image_hw) -> torch.Tensor:
        """Raw DPT output ``(BV, 4, H, W)`` (x, y, z, confidence before activation)."""
        H, W, h, w = self._check(tokens, image_hw)
        maps = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w) for t in tokens]
        return self.dpt(maps, (H, W))

    def local_feature_channels(self, tokens: Sequence[torch.Tensor], image_hw) -> torch.Tensor:
        """Raw MLP-branch output ``(BV, desc_dim + 1, H, W)`` (descriptors, then their
        confidence, both before activation): per token, ``(desc_dim + 1) * p**2`` values
        ordered channel-major, then row and column inside the patch (a pixel shuffle)."""
        H, W, h, w = self._check(tokens, image_hw)
        x = self.head_local_features(torch.cat([tokens[0], tokens[-1]], dim=-1))  # (BV, N, (D+1) p^2)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return F.pixel_shuffle(x, self.patch_size)

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: Sequence[torch.Tensor], image_hw, local_features: bool = True) -> dict:
        """Run both branches and the activations.

        Args:
            tokens: ``[encoder (BV, N, enc_dim), layer 6, layer 9, layer 12 (BV, N, dec_dim)]``.
            image_hw: ``(H, W)`` in pixels, multiples of ``patch_size``; ``N = H W / patch**2``.
            local_features: ``False`` skips the MLP branch (the geometry model discards it).

        Returns a dict of
            ``pts3d`` (BV, H, W, 3) = ``depth_exp`` of raw channels 0:3,
            ``conf`` (BV, H, W) = ``1 + exp`` of raw channel 3,
        and, with ``local_features``,
            ``desc`` (BV, H, W, desc_dim) descriptors (raw, or unit length for ``desc_mode="norm"``),
            ``desc_conf`` (BV, H, W) = ``exp`` of the last MLP channel,
            ``local_features`` (BV, H, W, desc_dim + 1) the raw MLP channels, which is what
            the released Gaussian head consumes.
        """
        raw = self.pointmap_channels(tokens, image_hw).permute(0, 2, 3, 1)
        out = {"pts3d": depth_exp(raw[..., :3], self.depth_eps), "conf": conf_exp(raw[..., 3], 1.0)}
        if local_features:
            lf = self.local_feature_channels(tokens, image_hw).permute(0, 2, 3, 1)
            desc = lf[..., : self.desc_dim]
            if self.desc_mode == "norm":
                desc = desc / desc.norm(dim=-1, keepdim=True)
            out.update(desc=desc, desc_conf=conf_exp(lf[..., self.desc_dim], 0.0), local_features=lf)
        return out
