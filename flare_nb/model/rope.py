"""2D rotary position embedding (RoPE) as FLARE / CroCo use it (notebook 01).

Each attention head's channels (``head_dim``) are split into two halves: the first half is
rotated by the token's row ``y``, the second by its column ``x``. Inside a half of ``D``
channels, channel ``j`` is paired with ``j + D/2`` ("rotate half", not interleaved pairs)
and rotated by the angle ``pos * base^(-2i/D)``, ``i = j mod D/2``. Positions are integer
``(y, x)`` token coordinates, the same for every view. There are no parameters.
"""
from __future__ import annotations

import torch

__all__ = ["grid_positions", "rope_tables", "apply_rope2d"]

_CACHE: dict = {}


def grid_positions(h: int, w: int, device=None) -> torch.Tensor:
    """Integer token coordinates ``(h * w, 2)`` as ``(y, x)``, row-major (row outer)."""
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    return torch.cartesian_prod(ys, xs)


def rope_tables(half_dim: int, n_pos: int, base: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` tables ``(n_pos, half_dim)`` for positions ``0..n_pos-1`` (cached).

    Angle of position ``p`` and channel ``j``: ``p * base^(-(2 (j mod half_dim/2)) / half_dim)``,
    computed in float32 and then cast to ``dtype``.
    """
    key = (half_dim, n_pos, float(base), str(device), dtype)
    hit = _CACHE.get(key)
    if hit is None:
        inv_freq = 1.0 / (base ** (torch.arange(0, half_dim, 2, device=device).float() / half_dim))
        t = torch.arange(n_pos, device=device, dtype=torch.float32)
        ang = (t[:, None] * inv_freq[None, :]).to(dtype)
        ang = torch.cat((ang, ang), dim=-1)
        hit = (ang.cos(), ang.sin())
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = hit
    return hit


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rope2d(x: torch.Tensor, pos: torch.Tensor, base: float = 100.0) -> torch.Tensor:
    """Rotate queries or keys ``x (B, heads, N, head_dim)`` by token positions ``pos``.

    ``pos``: ``(N, 2)`` (shared by the batch) or ``(B, N, 2)`` integer ``(y, x)``.
    ``head_dim`` must be a multiple of 4. Returns a tensor of the same shape and dtype.
    """
    hd = x.shape[-1]
    if hd % 4:
        raise ValueError(f"apply_rope2d: head_dim must be a multiple of 4, got {hd}")
    if pos.shape[-1] != 2 or pos.shape[-2] != x.shape[-2]:
        raise ValueError(f"apply_rope2d: pos must be (N, 2) or (B, N, 2) with N = {x.shape[-2]}, "
                         f"got {tuple(pos.shape)}")
    D = hd // 2
    cos, sin = rope_tables(D, int(pos.max()) + 1, base, x.device, x.dtype)
    out = []
    for half, p in zip(x.chunk(2, dim=-1), (pos[..., 0], pos[..., 1])):
        c, s = cos[p], sin[p]  # (N, D) or (B, N, D)
        if c.ndim == 3:
            c, s = c[:, None], s[:, None]
        out.append(half * c + _rotate_half(half) * s)
    return torch.cat(out, dim=-1)
