"""A ray caster in plain torch, for machines without open3d (GPU training boxes) and on CUDA.

:func:`cast_rays` intersects rays with a triangle soup by the Moller-Trumbore test, brute force
over the triangles of each group, and returns what the synthetic scene generator takes from
open3d's ``RaycastingScene.cast_rays``: the distance ``t`` along each ray to the nearest hit
(``inf`` on a miss; in units of the ray direction's length, so a direction with camera-frame
``z = 1`` gives z-depth) and the index of the triangle hit (``-1`` on a miss). Both faces of a
triangle count, as in open3d.

Cost is bounded two ways:

* triangles come in groups (one per object of a scene, ``groups``); each group is sorted
  along a Z-order curve of the triangle centroids and cut into clusters of :data:`CLUSTER`
  triangles that lie close together;
  a ray is tested against a cluster's triangles only when it passes through the cluster's
  bounding sphere, so an object costs about the pixels it covers, not its triangle count;
* the work is cut into chunks of at most ``max_pairs`` ray-cluster pairs (and of
  ``max_pairs / CLUSTER`` ray-cluster pairs in the triangle test), so memory stays bounded
  for any scene or image size.

Results do not depend on the chunking: each ray's minimum over triangles is exact, and ties
(equal ``t``) go to the lowest triangle index. Works on any torch device; float32 by default (the precision of open3d's
Embree tracer), float64 on request.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["cast_rays", "DEFAULT_MAX_PAIRS"]

#: Ray-triangle pairs per chunk by device type (temporary memory ~40 bytes per pair in float32).
DEFAULT_MAX_PAIRS = {"cpu": 1 << 20, "cuda": 1 << 24}
#: Triangles per cluster: each cluster (neighbouring triangles of one group) has a bounding sphere,
#: and a ray is tested against a cluster's triangles only when it passes through that sphere.
CLUSTER = 32
#: Groups of at most this many triangles (quads) skip the clusters and meet every ray.
SMALL_GROUP = 8
# Barycentric slack: rays through a shared edge of two triangles must hit at least one of them
# despite float32 rounding (2^-20 still let a few rays through); 2^-16 of a triangle's size is far
# below a pixel at any image size used here.
_EDGE_SLACK = 2.0 ** -16


def _as_tensor(x, dtype, device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x).to(device=device, dtype=dtype)


def cast_rays(vertices, triangles, origins, directions, groups: Sequence[tuple[int, int]] | None = None,
              device=None, dtype=torch.float32, max_pairs: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest hit of each ray with a triangle mesh.

    Args:
        vertices: ``(N, 3)`` vertex positions (numpy or torch).
        triangles: ``(M, 3)`` vertex indices of each triangle.
        origins, directions: ``(R, 3)`` rays (directions need not be unit length; ``t`` is in
            units of their length).
        groups: ``[(start, stop), ...]`` contiguous triangle ranges that are spatially compact
            (e.g. one per object); default one group of all triangles. Clusters never span two
            groups.
        device: where to compute (default: the device of ``origins`` if a tensor, else CPU).
        dtype: float32 (default) or float64.
        max_pairs: ray-cluster / ray-triangle pairs per chunk (default :data:`DEFAULT_MAX_PAIRS`).

    Returns:
        ``(t_hit, prim)`` on ``device``: ``t_hit (R,)`` of ``dtype`` (``inf`` where nothing is
        hit) and ``prim (R,)`` int64 triangle indices (``-1`` where nothing is hit).
    """
    if device is None:
        device = origins.device if isinstance(origins, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"cast_rays: dtype must be torch.float32 or torch.float64, got {dtype}")
    V = _as_tensor(vertices, dtype, device)
    F = _as_tensor(triangles, torch.int64, device)
    o = _as_tensor(origins, dtype, device)
    d = _as_tensor(directions, dtype, device)
    if V.ndim != 2 or V.shape[1] != 3 or F.ndim != 2 or F.shape[1] != 3:
        raise ValueError(f"cast_rays: vertices must be (N, 3) and triangles (M, 3), got {tuple(V.shape)} and "
                         f"{tuple(F.shape)}")
    if o.shape != d.shape or o.ndim != 2 or o.shape[1] != 3:
        raise ValueError(f"cast_rays: origins and directions must both be (R, 3), got {tuple(o.shape)} and "
                         f"{tuple(d.shape)}")
    if len(F) and (int(F.min()) < 0 or int(F.max()) >= len(V)):
        raise ValueError(f"cast_rays: triangle indices must lie in [0, {len(V)}), got [{int(F.min())}, {int(F.max())}]")
    if max_pairs is None:
        max_pairs = DEFAULT_MAX_PAIRS.get(device.type, DEFAULT_MAX_PAIRS["cpu"])
    max_pairs = max(int(max_pairs), CLUSTER)
    n_rays = o.shape[0]
    best_t = torch.full((n_rays,), float("inf"), dtype=dtype, device=device)
    best_id = torch.full((n_rays,), -1, dtype=torch.int64, device=device)
    if groups is None:
        groups = [(0, len(F))]
    groups = [(int(a), int(b)) for a, b in groups if int(b) > int(a)]
    # small groups (a quad of the ground or a room wall) are tested against every ray directly;
    # the others are sorted into clusters with bounding spheres
    dense = torch.tensor([t for a, b in groups if b - a <= SMALL_GROUP for t in range(a, b)], dtype=torch.int64,
                         device=device)
    big = [(a, b) for a, b in groups if b - a > SMALL_GROUP]
    starts = [s for a, b in big for s in range(a, b, CLUSTER)]
    stops = [min(s + CLUSTER, b) for a, b in big for s in range(a, b, CLUSTER)]
    if n_rays == 0 or (not starts and not len(dense)):
        return best_t, best_id
    v0_all = V[F[:, 0]]
    e1_all = V[F[:, 1]] - v0_all
    e2_all = V[F[:, 2]] - v0_all
    n_c = len(starts)
    if n_c:
        c_start = torch.tensor(starts, dtype=torch.int64, device=device)
        c_len = torch.tensor(stops, dtype=torch.int64, device=device) - c_start
        lane = torch.arange(CLUSTER, device=device)
        order = _spatial_order(V, F, big)
        c_tri = order[c_start[:, None] + torch.minimum(lane[None], c_len[:, None] - 1)]  # (C, CLUSTER), last repeated
        c_valid = lane[None] < c_len[:, None]
        # bounding sphere of each cluster: centre in the middle of its box, radius padded for rounding
        pts = V[F[c_tri]].reshape(n_c, -1, 3)
        centre = 0.5 * (pts.min(1).values + pts.max(1).values)
        radius = torch.sqrt(((pts - centre[:, None]) ** 2).sum(-1).max(1).values) * (1 + 1e-4) + 1e-6
        cc = (centre * centre).sum(1)
    eps = torch.finfo(dtype).eps
    rows = max(1, max_pairs // max(n_c, len(dense), 1))
    big_id = torch.iinfo(torch.int64).max
    for i in range(0, n_rays, rows):
        oi, di = o[i:i + rows], d[i:i + rows]
        n_i = len(oi)
        ray_parts, t_parts, id_parts = [], [], []
        if len(dense):
            L = len(dense)
            t, k = _nearest(oi, di, v0_all[dense].expand(n_i, L, 3), e1_all[dense].expand(n_i, L, 3),
                            e2_all[dense].expand(n_i, L, 3), None)
            ray_parts.append(torch.arange(n_i, device=device))
            t_parts.append(t)
            id_parts.append(dense[k])
        if n_c:
            # ray-sphere test of every ray of the chunk against every cluster, by matrix products:
            # |o + t d - c|^2 = r^2  <=>  dd t^2 + 2 hb t + (|o - c|^2 - r^2) = 0
            dd = (di * di).sum(1)[:, None]
            oo = (oi * oi).sum(1)[:, None]
            hb = (oi * di).sum(1)[:, None] - di @ centre.T                 # d . (o - c)
            occ = oo - 2 * (oi @ centre.T) + cc[None]                      # |o - c|^2
            # pad the radius by the rounding error of the expanded products (keeps the test conservative)
            r2 = radius[None] ** 2 + 8 * eps * (oo + cc[None])
            disc = hb * hb - dd * (occ - r2)
            ok = (disc >= 0) & (-hb + torch.sqrt(torch.clamp(disc, min=0)) > 0)
            ray_k, clu_k = torch.nonzero(ok, as_tuple=True)
            step = max(1, max_pairs // CLUSTER)
            for j in range(0, ray_k.numel(), step):
                rk, ck = ray_k[j:j + step], clu_k[j:j + step]
                tri = c_tri[ck]                                            # (P, CLUSTER)
                t, k = _nearest(oi[rk], di[rk], v0_all[tri], e1_all[tri], e2_all[tri], c_valid[ck])
                ray_parts.append(rk)
                t_parts.append(t)
                id_parts.append(tri.gather(1, k[:, None]).squeeze(1))
        if not ray_parts:
            continue
        ray_k, t_p, id_p = torch.cat(ray_parts), torch.cat(t_parts), torch.cat(id_parts)
        bt = torch.full((n_i,), float("inf"), dtype=dtype, device=device)
        bt.scatter_reduce_(0, ray_k, t_p, reduce="amin")
        win = torch.where((t_p == bt[ray_k]) & torch.isfinite(t_p), id_p, torch.full_like(id_p, big_id))
        bid = torch.full((n_i,), big_id, dtype=torch.int64, device=device)
        bid.scatter_reduce_(0, ray_k, win, reduce="amin")
        best_t[i:i + rows] = bt
        best_id[i:i + rows] = torch.where(torch.isfinite(bt), bid, torch.full_like(bid, -1))
    return best_t, best_id


def _spatial_order(V, F, groups) -> torch.Tensor:
    """A permutation of the triangles that keeps each group's range and sorts the triangles of a
    group along a Z-order (Morton) curve of their centroids, so consecutive triangles -- the
    clusters -- are spatially compact whatever order the mesh lists them in."""
    cen = V[F].mean(1)                                              # (M, 3)
    order = torch.arange(len(F), device=V.device)
    for a, b in groups:
        a, b = int(a), int(b)
        if b - a <= 1:
            continue
        c = cen[a:b]
        lo, hi = c.min(0).values, c.max(0).values
        q = ((c - lo) / torch.clamp(hi - lo, min=1e-12) * 1023).round().long().clamp(0, 1023)   # 10 bits / axis
        code = torch.zeros(b - a, dtype=torch.int64, device=V.device)
        for bit in range(10):
            for axis in range(3):
                code |= ((q[:, axis] >> bit) & 1) << (3 * bit + axis)
        order[a:b] = a + torch.sort(code, stable=True).indices
    return order


def _nearest(o, d, v0, e1, e2, valid):
    """Moller-Trumbore for ``P`` rays ``o, d (P, 3)``, each against its own ``L`` triangles
    ``v0, e1, e2 (P, L, 3)`` (``valid (P, L)`` masks padding, or None): nearest ``t (P,)`` (inf on a miss)
    and its lane ``(P,)`` (lowest lane on ties)."""
    d_ = d[:, None, :].expand_as(e2)
    p = torch.linalg.cross(d_, e2)
    det = (p * e1).sum(-1)
    s = o[:, None, :] - v0
    inv = 1.0 / det
    u = (s * p).sum(-1) * inv
    q = torch.linalg.cross(s, e1)
    v = (q * d_).sum(-1) * inv
    t = (q * e2).sum(-1) * inv
    hit = (det != 0) & (u >= -_EDGE_SLACK) & (v >= -_EDGE_SLACK) & (u + v <= 1 + _EDGE_SLACK) & (t > 0) \
        & torch.isfinite(t)
    if valid is not None:
        hit = hit & valid
    t = torch.where(hit, t, torch.full_like(t, float("inf")))
    return t.min(1)
