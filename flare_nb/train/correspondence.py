"""Dense correspondences from exact depth and cameras, and a matching loss on descriptors
(notebook 06, training the tiny model).

A pose can only be regressed from several views once the network knows which pixels show the
same 3D point. The released model inherits that knowledge from its pretrained encoder; a tiny
model trained from scratch does not have it. With exact depth and cameras (synthetic scenes)
the correspondences are known, so they can be taught directly, as MASt3R does with the
descriptor branch of its DPT heads:

* pixel ``p`` of source view ``i`` with depth ``d`` lands at the 3D point
  ``X = c2w_i [d K_i^{-1} (u, v, 1)]``; projected into the reference view 0 it falls on pixel
  ``q = round(pi(K_0, w2c_0 X))``. The pair ``(p, q)`` is kept when ``q`` lies inside the image
  and view 0 sees the same surface there (its depth at ``q`` agrees with ``X``'s depth within
  ``rel_tol``), i.e. ``X`` is not occluded in view 0.
* InfoNCE over the reference view: with unit descriptors ``f``, the loss of a pair is
  ``-log softmax_q'(f_i(p) . f_0(q') / tau)[q]`` over every pixel ``q'`` of view 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flare_nb.cameras import invert_pose, transform_points, unproject_depth

__all__ = ["correspondences", "match_loss"]


def correspondences(depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, src: int, ref: int = 0,
                    rel_tol: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel correspondences from view ``src`` to view ``ref`` of one scene.

    ``depth (V, H, W)`` (0 = no data), ``K (V, 3, 3)``, ``c2w (V, 4, 4)`` (OpenCV camera-to-world).
    Returns ``(p, q)``: two int64 tensors ``(n,)`` of flat pixel indices ``row * W + col`` in
    ``src`` and ``ref``, one pair per visible, unoccluded source pixel.
    """
    V, H, W = depth.shape
    X = unproject_depth(depth[src], K[src])                               # (H, W, 3) in src's frame
    T = invert_pose(c2w[ref]) @ c2w[src]                                  # src camera -> ref camera
    Xr = transform_points(T, X).reshape(-1, 3)
    z = Xr[:, 2]
    uvw = Xr @ K[ref].T
    u = uvw[:, 0] / z.clamp_min(1e-8)
    v = uvw[:, 1] / z.clamp_min(1e-8)
    col, row = torch.round(u).long(), torch.round(v).long()
    ok = (depth[src].reshape(-1) > 0) & (z > 1e-6) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
    p = torch.nonzero(ok).squeeze(1)
    q = row[ok] * W + col[ok]
    d_ref = depth[ref].reshape(-1)[q]
    seen = (d_ref > 0) & ((d_ref - z[ok]).abs() <= rel_tol * d_ref)
    return p[seen], q[seen]


def match_loss(desc: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor,
               n_samples: int = 256, tau: float = 0.07, generator: torch.Generator | None = None) -> torch.Tensor:
    """InfoNCE matching loss of every source view against view 0, averaged over pairs.

    ``desc (B, V, H, W, C)`` descriptors (any scale: they are L2-normalised here), ``depth (B, V, H, W)``,
    ``K (B, V, 3, 3)``, ``c2w (B, V, 4, 4)``. Up to ``n_samples`` correspondences per source view
    are drawn (without replacement, from ``generator``); a view pair without any contributes
    nothing. Returns a scalar (0 with a gradient path when no pair has a correspondence).
    """
    B, V, H, W, C = desc.shape
    f = F.normalize(desc.float(), dim=-1).reshape(B, V, H * W, C)
    losses = []
    for b in range(B):
        for i in range(1, V):
            p, q = correspondences(depth[b].float(), K[b].float(), c2w[b].float(), i, 0)
            if p.numel() == 0:
                continue
            if p.numel() > n_samples:
                pick = torch.randperm(p.numel(), generator=generator)[:n_samples]
                p, q = p[pick], q[pick]
            logits = f[b, i, p] @ f[b, 0].T / tau                         # (n, H W)
            losses.append(F.cross_entropy(logits, q))
    if not losses:
        return 0.0 * desc.sum()
    return torch.stack(losses).mean()
