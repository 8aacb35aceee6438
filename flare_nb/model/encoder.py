"""The image encoder: patch embedding + ViT with 2D RoPE (notebook 01).

Released: MASt3R's ViT-L/16 (``patch_embed.proj`` 16x16/16 conv 3 -> 1024, 24
``EncoderBlock`` of width 1024 with 16 heads, ``enc_norm``), no absolute position
embedding, frozen during FLARE training. All views go through it independently (as one
batch) with the same token positions.
"""
from __future__ import annotations

import torch
from torch import nn

from flare_nb.model.blocks import EncoderBlock
from flare_nb.model.rope import grid_positions

__all__ = ["PatchEmbed", "Encoder"]


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv: ``(B, C_in, H, W) -> (B, (H/p)(W/p), dim)`` row-major."""

    def __init__(self, in_ch: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Encoder(nn.Module):
    """The image encoder ``model.encoder``: ``patch_embed``, ``enc_blocks``, ``enc_norm``.

    ``forward(images (BV, 3, H, W), keep_states=())`` -> dict (see :meth:`forward`).
    """

    def __init__(self, cfg):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.patch_embed = PatchEmbed(3, cfg.enc_dim, cfg.patch_size)
        self.enc_blocks = nn.ModuleList(
            EncoderBlock(cfg.enc_dim, cfg.enc_heads, cfg.enc_mlp_ratio, cfg.norm_eps, cfg.rope_base)
            for _ in range(cfg.enc_depth))
        self.enc_norm = nn.LayerNorm(cfg.enc_dim, eps=cfg.norm_eps)

    def forward(self, images: torch.Tensor, keep_states=()) -> dict:
        """Encode ``images (BV, 3, H, W)`` in [-1, 1].

        Returns a dict with ``tokens`` (BV, N, enc_dim) after ``enc_norm``, ``patch`` (BV, N,
        enc_dim) the patch-embedding output, ``pos`` (N, 2) integer (y, x) token coordinates,
        ``grid`` (h, w) and ``states`` {k: (BV, N, enc_dim)} the token tensors entering encoder
        block ``k`` for each ``k`` in ``keep_states``.
        """
        p = self.patch_size
        h, w = images.shape[-2] // p, images.shape[-1] // p
        pos = grid_positions(h, w, images.device)
        x = self.patch_embed(images)
        patch = x
        states = {}
        for k, blk in enumerate(self.enc_blocks):
            if k in keep_states:
                states[k] = x
            x = blk(x, pos)
        return {"tokens": self.enc_norm(x), "patch": patch, "pos": pos, "grid": (h, w), "states": states}
