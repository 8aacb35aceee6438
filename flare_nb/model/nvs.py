"""The NVS parts of FLARE: what ``FlareModel`` adds when ``cfg.kind == "nvs"`` (notebook 05).

The released NVS model (``NVS.pth``) is the geometry cascade plus four things, all used in
stage 3 (the global projector) and after it:

1. a second image path, per view (``model.detail_encoder``, :class:`DetailEncoder`): the shallow CNN (:mod:`flare_nb.model.shallow_cnn`) on the input
   image gives a fused map ``(64, H, W)`` and a ``detail`` map ``(16, H, W)``; the fused map
   plus the RoPE-of-ones term goes through ``patch_embed_fine`` (16x16/16 conv 64 -> 1024),
   ``nvs_enc_depth`` (4) encoder blocks ``enc_blocks_stage2`` (token RoPE) and
   ``enc_norm_stage2``; ``decoder_embed_stage2`` (in ``model.global_projector``) of those tokens is *added* to stage 3's
   fresh tokens ``decoder_embed_point(encoder tokens)``;
2. the intrinsics: ``global_projector.decoder_embed_fxfycxcy([fx, fy, cx, cy] / 2000)`` (pixels of the input
   image, MLP 4 -> 768 -> 768) is added to the pose embedding of each stage-3 camera token;
3. stage 3's pose embedding normalises the translations by the *baseline* ``|T_0 - T_1|``
   (views 0 and 1) instead of the mean translation norm (stage 2 keeps the mean);
4. the Gaussian head ``model.gaussian_head`` (released ``downstream_head4``, :mod:`flare_nb.model.gaussian_head`) on head 2's raw
   local features (``desc_dim + 1`` channels) and the detail map; the Gaussian centres are
   head 2's global pointmap (view 0's camera frame).

The stage-2 and stage-3 injections use the states entering blocks 0, 1, 2 of the *main*
image encoder (``official_nvs().inject_enc_states``). ``downstream_head1`` (stage 2's
camera-centric pointmap) is never called by the release and is not built.
"""
from __future__ import annotations

import torch
from torch import nn

from flare_nb.model.blocks import EncoderBlock
from flare_nb.model.encoder import PatchEmbed
from flare_nb.model.gaussian_head import GaussianHead
from flare_nb.model.rope import grid_positions
from flare_nb.model.shallow_cnn import ShallowCNN, add_rope_ones

__all__ = ["DetailEncoder", "make_gaussian_head", "run_gaussian_head", "camera_embed_input_baseline",
           "intrinsics_vector"]


def camera_embed_input_baseline(pose_enc: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``[q, T / s]`` ``(B, V, 7)`` from pose encodings ``(B, V, 9)`` with the NVS model's stage-3
    scale ``s = |T_0 - T_1| + eps`` (baseline between views 0 and 1). Detached, float32."""
    enc = pose_enc.detach().float()
    if enc.ndim != 3 or enc.shape[1] < 2 or enc.shape[2] < 7:
        raise ValueError(f"pose_enc must be (B, V >= 2, 9), got {tuple(enc.shape)}")
    T, q = enc[..., :3], enc[..., 3:7]
    s = (T[:, 0:1] - T[:, 1:2]).norm(dim=-1, keepdim=True) + eps
    return torch.cat((q, T / s), dim=-1)


def intrinsics_vector(intrinsics, B: int, V: int) -> torch.Tensor:
    """Validate intrinsics and return ``(B, V, 4)`` float32 ``[fx, fy, cx, cy]`` in pixels.

    Accepts ``(B, V, 4)`` ``[fx, fy, cx, cy]`` or ``(B, V, 3, 3)`` pinhole matrices ``K``
    (pixels of the model input, OpenCV pixel centres, README "Conventions"). Raises ValueError
    for None, a wrong shape, non-finite values or non-positive focal lengths.
    """
    if intrinsics is None:
        raise ValueError(f"the NVS model needs intrinsics: a (B, V, 4) = ({B}, {V}, 4) tensor [fx, fy, cx, cy] "
                         "in pixels of the input images (or (B, V, 3, 3) matrices K)")
    k = torch.as_tensor(intrinsics)
    if tuple(k.shape) == (B, V, 3, 3):
        k = torch.stack((k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2]), dim=-1)
    if tuple(k.shape) != (B, V, 4):
        raise ValueError(f"intrinsics must be (B, V, 4) = ({B}, {V}, 4) [fx, fy, cx, cy] in pixels or "
                         f"(B, V, 3, 3) matrices K, got shape {tuple(k.shape)}")
    k = k.float()
    if not torch.isfinite(k).all():
        raise ValueError("intrinsics contain non-finite values")
    if not (k[..., :2] > 0).all():
        raise ValueError(f"intrinsics focal lengths fx, fy must be positive (pixels), got min "
                         f"{float(k[..., :2].min()):.4g}")
    return k


class DetailEncoder(ShallowCNN):
    """The NVS model's second image path, ``model.detail_encoder``: the shallow CNN
    (``cnn_wobn``, ``cnn_fusion``, ``cnn_proj``, :class:`~flare_nb.model.shallow_cnn.ShallowCNN`),
    ``patch_embed_fine``, ``enc_blocks_stage2``, ``enc_norm_stage2``.

    ``forward(images (BV, 3, H, W))`` in [-1, 1] -> ``tokens (BV, N, enc_dim)`` after
    ``enc_norm_stage2`` and ``detail (BV, cnn_detail_dim, H, W)`` (the Gaussian head's input).
    """

    def __init__(self, cfg):
        super().__init__(tuple(cfg.cnn_widths), cfg.cnn_fpn_dim, cfg.cnn_fusion_dim, cfg.cnn_detail_dim)
        E = cfg.enc_dim
        self.patch_size, self.rope_base = cfg.patch_size, cfg.rope_base
        self.patch_embed_fine = PatchEmbed(cfg.cnn_fusion_dim, E, cfg.patch_size)
        self.enc_blocks_stage2 = nn.ModuleList(
            EncoderBlock(E, cfg.enc_heads, cfg.enc_mlp_ratio, cfg.norm_eps, cfg.rope_base)
            for _ in range(cfg.nvs_enc_depth))
        self.enc_norm_stage2 = nn.LayerNorm(E, eps=cfg.norm_eps)

    def forward(self, images: torch.Tensor) -> dict:
        fusion, detail = super().forward(images)
        x = self.patch_embed_fine(add_rope_ones(fusion, base=self.rope_base))
        p = self.patch_size
        pos = grid_positions(images.shape[-2] // p, images.shape[-1] // p, images.device)
        for blk in self.enc_blocks_stage2:
            x = blk(x, pos)
        return {"tokens": self.enc_norm_stage2(x), "detail": detail}


def make_gaussian_head(cfg) -> GaussianHead:
    """``model.gaussian_head`` (released ``downstream_head4``) of an NVS config."""
    return GaussianHead(desc_dim=cfg.desc_dim + 1, detail_dim=cfg.cnn_detail_dim, hidden=cfg.gs_hidden,
                        sh_degree=cfg.sh_degree)


def run_gaussian_head(head: GaussianHead, desc: torch.Tensor, detail: torch.Tensor) -> dict:
    """``desc (B, V, H, W, desc_dim + 1)`` raw head-2 local features (channels last) and
    ``detail (B*V, cnn_detail_dim, H, W)`` -> raw Gaussian dict, each ``(B, V, H, W, C)``
    (keys of :meth:`GaussianHead.forward`)."""
    B, V = desc.shape[:2]
    raw = head(desc.flatten(0, 1).permute(0, 3, 1, 2), detail.to(desc.dtype))
    return {k: v.reshape(B, V, *v.shape[1:]) for k, v in raw.items()}
