"""Transformer building blocks of FLARE (notebook 01).

Token tensors are ``(B, N, C)``; positions ``(N, 2)`` integer ``(y, x)`` (see ``rope``).
All LayerNorms use ``eps`` (1e-6 released); GELU is the exact (erf) one; dropout is absent
(released rates are 0). Sub-module names equal the released checkpoint's keys.

=====================  ===============================================  ======================
class                  computation                                      released modules
=====================  ===============================================  ======================
``EncoderBlock``       x += attn(norm1 x); x += mlp(norm2 x)            ``enc_blocks.*``
``DecoderBlock``       + cross-attention to a normed memory (norm_y)    ``dec_blocks{,2}.*``
``SelfBlock``          x += attn(norm1 x); x += mlp(norm3 x)            ``dec_blocks_fine/point``
``CrossBlock``         x += xattn(norm2 x, norm_y m); x += mlp(norm3 x) ``dec_blocks_point_cross``
``CameraBlock``        y = LN(x) (no affine); y += MHA(y);               ``cam_cond_encoder*``,
                       y += mlp(LN(y))                                  ``pose_head*.trunk``
=====================  ===============================================  ======================
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flare_nb.model.rope import apply_rope2d

__all__ = ["Mlp", "SelfAttention", "CrossAttention", "EncoderBlock", "DecoderBlock", "SelfBlock",
           "CrossBlock", "CameraBlock"]


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))``: ``in_dim -> hidden -> out_dim`` (default ``out_dim = in_dim``)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim or in_dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, N, C = x.shape
    return x.reshape(B, N, n_heads, C // n_heads).transpose(1, 2)  # (B, h, N, d)


def _merge(x: torch.Tensor) -> torch.Tensor:
    B, h, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, h * d)


def _rope_attention(q, k, v, qpos, kpos, rope_base: float) -> torch.Tensor:
    """Heads ``(B, h, N, d)``: 2D RoPE on ``q`` (at ``qpos``) and ``k`` (at ``kpos``), scaled dot-product
    attention, heads merged back to ``(B, Nq, h d)``."""
    q = apply_rope2d(q, qpos, rope_base)
    k = apply_rope2d(k, kpos, rope_base)
    return _merge(F.scaled_dot_product_attention(q, k, v))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed ``qkv`` projection and 2D RoPE on q and k."""

    def __init__(self, dim: int, n_heads: int, rope_base: float = 100.0):
        super().__init__()
        self.n_heads, self.rope_base = n_heads, rope_base
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``x (B, N, C)``, ``pos (N, 2)`` -> ``(B, N, C)``."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        return self.proj(_rope_attention(qkv[0], qkv[1], qkv[2], pos, pos, self.rope_base))


class CrossAttention(nn.Module):
    """Multi-head cross-attention (``projq``, ``projk``, ``projv``, ``proj``) with 2D RoPE."""

    def __init__(self, dim: int, n_heads: int, rope_base: float = 100.0):
        super().__init__()
        self.n_heads, self.rope_base = n_heads, rope_base
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mem, xpos, mpos):
        """Queries ``x (B, Nq, C)`` at ``xpos (Nq, 2)`` attend to ``mem (B, Nk, C)`` at ``mpos (Nk, 2)``."""
        q, k, v = (_heads(t, self.n_heads) for t in (self.projq(x), self.projk(mem), self.projv(mem)))
        return self.proj(_rope_attention(q, k, v, xpos, mpos, self.rope_base))


class SelfBlock(nn.Module):
    """Pre-norm self-attention block: ``x += attn(norm1 x); x += mlp(<mlp norm> x)``.

    The decoders name the MLP's norm ``norm3`` (``dec_blocks_fine/point``), the encoder
    ``norm2`` (:class:`EncoderBlock`); ``mlp_norm`` is that name. E.g. global attention over
    the tokens of all views concatenated. ``x (B, N, C)``, ``pos (N, 2)`` -> ``(B, N, C)``.
    """

    mlp_norm = "norm3"

    def __init__(self, dim, n_heads, mlp_ratio=4.0, eps=1e-6, rope_base=100.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, n_heads, rope_base)
        self.add_module(self.mlp_norm, nn.LayerNorm(dim, eps=eps))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, pos):
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(getattr(self, self.mlp_norm)(x))


class EncoderBlock(SelfBlock):
    """Pre-norm ViT block (``norm1, attn, norm2, mlp``): :class:`SelfBlock` with its MLP norm
    called ``norm2``."""

    mlp_norm = "norm2"


class CrossBlock(nn.Module):
    """Cross-attention-only decoder block (``norm2, cross_attn, norm_y, norm3, mlp``):
    ``x += xattn(norm2 x, norm_y mem); x += mlp(norm3 x)``."""

    def __init__(self, dim, n_heads, mlp_ratio=4.0, eps=1e-6, rope_base=100.0):
        super().__init__()
        self._build_cross(dim, n_heads, mlp_ratio, eps, rope_base)

    def _build_cross(self, dim, n_heads, mlp_ratio, eps, rope_base):
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = CrossAttention(dim, n_heads, rope_base)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=eps)

    def forward(self, x, mem, xpos, mpos):
        x = x + self.cross_attn(self.norm2(x), self.norm_y(mem), xpos, mpos)
        return x + self.mlp(self.norm3(x))


class DecoderBlock(CrossBlock):
    """CroCo decoder block: self-attention (``norm1, attn``) first, then :class:`CrossBlock`
    (cross-attention to ``norm_y(mem)``, MLP)."""

    def __init__(self, dim, n_heads, mlp_ratio=4.0, eps=1e-6, rope_base=100.0):
        nn.Module.__init__(self)       # the released order: self-attention first (one seed, one initialisation)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, n_heads, rope_base)
        self._build_cross(dim, n_heads, mlp_ratio, eps, rope_base)

    def forward(self, x, mem, xpos, mpos):
        return super().forward(x + self.attn(self.norm1(x), xpos), mem, xpos, mpos)


class CameraBlock(nn.Module):
    """Camera-token block (VGGSfM style), no positional encoding.

    ``y = LN(x)`` (no affine); ``y = y + MHA(y)`` (``nn.MultiheadAttention``, packed
    ``in_proj``); ``y = y + mlp(LN(y))``. Note the residual starts from the *normalised*
    input, as in the released code. ``x (B, N, C) -> (B, N, C)``.
    """

    def __init__(self, dim, n_heads, mlp_ratio=4.0, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.attn = nn.MultiheadAttention(dim, n_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        C = x.shape[-1]
        y = F.layer_norm(x, (C,), eps=self.eps)
        y = y + self.attn(y, y, y, need_weights=False)[0]
        return y + self.mlp(F.layer_norm(y, (C,), eps=self.eps))
