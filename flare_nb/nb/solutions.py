"""Worked solutions of the notebook exercises (``flare_nb.nb.exercises``).

A notebook uses them only when its ``SOLUTIONS`` parameter is True; try the exercise first.
Each one is written out from the equation in its notebook rather than by calling the
library function it is checked against.
"""
from __future__ import annotations

import torch

__all__ = ["invert_pose", "patchify", "harmonic", "depth_exp", "to_view0", "covariance_2d",
           "confidence_loss", "rra_auc", "focal"]


def invert_pose(c2w):
    """Notebook 00. ``c2w (V, 4, 4)`` -> ``w2c``: the inverse of ``[R | t]`` is ``[R^T | -R^T t]``."""
    R, t = c2w[..., :3, :3], c2w[..., :3, 3:]
    w2c = torch.zeros_like(c2w)
    w2c[..., :3, :3] = R.transpose(-1, -2)
    w2c[..., :3, 3:] = -R.transpose(-1, -2) @ t
    w2c[..., 3, 3] = 1.0
    return w2c


def patchify(images, p):
    """Notebook 01. ``(B, C, H, W)`` -> ``(B, N, C p p)``: split H and W into (tiles, p), bring
    the two tile axes forward, keep (channel, row, column) inside a tile."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def harmonic(x, n_freq):
    """Notebook 02. ``[sin(x 2^j), cos(x 2^j), x]`` with the frequencies of one input
    coordinate next to each other; float32."""
    x = x.float()
    xf = (x[..., None] * 2.0 ** torch.arange(n_freq, dtype=torch.float32)).flatten(-2)   # (..., d * n)
    return torch.cat([torch.sin(xf), torch.cos(xf), x], dim=-1)


def depth_exp(xyz):
    """Notebook 03. Keep the direction, map the length d to e^d - 1 (the origin stays put)."""
    d = xyz.norm(dim=-1, keepdim=True)
    return xyz / d.clamp_min(1e-7) * torch.expm1(d)


def to_view0(pts_cam, c2w):
    """Notebook 04. ``pts_cam (V, H, W, 3)`` in each camera's frame, ``c2w (V, 4, 4)`` relative
    to view 0 -> every point in view 0's frame: ``X_0 = R_v X + t_v``."""
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    return torch.einsum("vij,vhwj->vhwi", R, pts_cam) + t[:, None, None, :]


def covariance_2d(mean, quat, scale, w2c, K):
    """Notebook 05. ``Sigma' = J W Sigma W^T J^T + 0.3 I`` for one Gaussian (float64)."""
    w, x, y, z = (quat / quat.norm()).unbind()
    Rq = torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
    ])
    Sigma = Rq @ torch.diag(scale ** 2) @ Rq.T
    Wr = w2c[:3, :3]
    tx, ty, tz = Wr @ mean + w2c[:3, 3]
    fx, fy = K[0, 0], K[1, 1]
    zero = torch.zeros((), dtype=mean.dtype)
    J = torch.stack([torch.stack([fx / tz, zero, -fx * tx / tz ** 2]),
                     torch.stack([zero, fy / tz, -fy * ty / tz ** 2])])
    return J @ Wr @ Sigma @ Wr.T @ J.T + 0.3 * torch.eye(2, dtype=mean.dtype)


def confidence_loss(pred, conf, gt, valid, alpha=0.2):
    """Notebook 06. Scale-normalise both pointmaps over the valid pixels of each scene, then
    ``mean(C |X - X*| - alpha log C)`` over the valid pixels."""
    def normalise(X):
        dist = (X.norm(dim=-1) * valid).flatten(1).sum(1) / valid.flatten(1).sum(1)
        return X / dist.reshape(-1, *([1] * (X.ndim - 1)))

    err = (normalise(pred) - normalise(gt)).norm(dim=-1)[valid]
    c = conf[valid]
    return (c * err - alpha * torch.log(c)).mean()


def rra_auc(rot, trans):
    """Notebook 07. ``(RRA@15 in percent, AUC@30 in [0, 1])`` from per-pair errors in degrees."""
    rra = 100.0 * (rot < 15).double().mean()
    worst = torch.maximum(rot, trans)
    fractions = [(worst < k).double().mean() for k in range(1, 30)] + [(worst <= 30).double().mean()]
    return torch.stack([rra, torch.stack(fractions).mean()])


def focal(P):
    """Notebook 08. One focal from a pointmap ``(H, W, 3)`` in its camera's frame: the median
    of the votes ``u z / x`` and ``v z / y``, pixel offsets from ((W-1)/2, (H-1)/2)."""
    H, W = P.shape[:2]
    P = P.double()
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    du, dv = u - (W - 1) / 2, v - (H - 1) / 2
    x, y, z = P.unbind(-1)
    votes = torch.cat([(du * z / x)[(du.abs() >= 1) & (z > 0)], (dv * z / y)[(dv.abs() >= 1) & (z > 0)]])
    votes = votes[torch.isfinite(votes) & (votes > 0)]
    return float(votes.median())
