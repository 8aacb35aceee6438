"""Private: the tile rasterizer behind ``flare_nb.render.rasterize`` (backend ``"torch"``).

It composites already-projected 2D Gaussians exactly as gsplat 1.5.3's CUDA kernel does
(see ``flare_nb.render.rasterize`` for the rules), but organised for a CPU:

* the image is cut into dense 8x8 tiles; every (Gaussian, tile) pair whose bounding box
  overlaps and whose ellipse alpha >= 1/255 reaches a pixel centre of the tile (an exact
  test) is one *entry*; entries are ordered by tile, and by depth inside a tile;
* a chunk of whole tiles is evaluated as one dense ``[entries, 64]`` block (the pixel
  offsets inside a tile are a constant, so the exponent is one small matrix product),
  which keeps the temporaries in cache;
* the exclusive transmittance of every entry comes from a float64 cumulative sum of
  ``log(1 - alpha)`` over the chunk, made relative to the start of each tile's segment;
* the backward pass is analytic and recomputes alpha and T chunk by chunk instead of
  storing them; per-Gaussian sums use ``torch.bincount`` (much faster than ``index_add_``).

Notebook 05 (rendering) explains the maths; nothing here is public API.
"""
from __future__ import annotations

import math

import numpy as np
import torch

TILE = 8
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
LOG_T_MIN = math.log(T_MIN)
CHUNK_VALUES = 1 << 18  # entries * 64 per chunk: small enough to stay in cache


def _basis(device, dtype):
    """``(6, 64)`` monomials ``1, ox, oy, ox^2, ox*oy, oy^2`` of every pixel's offset from its
    tile centre (offsets -3.5 .. 3.5); ``sigma`` of an entry is ``coef (6,) @ basis``."""
    r = torch.arange(TILE, device=device, dtype=torch.float64) - (TILE - 1) / 2
    ox, oy = r.repeat(TILE), r.repeat_interleave(TILE)
    return torch.stack([torch.ones_like(ox), ox, oy, ox * ox, ox * oy, oy * oy]).to(dtype)


def _min_sigma_over_rect(mx, my, a, b, c, x0, x1, y0, y1):
    """Minimum of ``0.5 d^T [[a, b], [b, c]] d`` (d = p - m) over p in the rectangle
    ``[x0, x1] x [y0, y1]`` (all ``(E,)``): 0 inside, else the best point of the 4 edges."""
    def q(px, py):
        dx, dy = px - mx, py - my
        return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy

    best = []
    for X in (x0, x1):  # vertical edges: minimise over y
        ys = torch.minimum(torch.maximum(my - b / c * (X - mx), y0), y1)
        best.append(q(X, ys))
    for Y in (y0, y1):  # horizontal edges: minimise over x
        xs = torch.minimum(torch.maximum(mx - b / a * (Y - my), x0), x1)
        best.append(q(xs, Y))
    out = torch.stack(best).amin(0)
    inside = (mx >= x0) & (mx <= x1) & (my >= y0) & (my <= y1)
    return torch.where(inside, torch.zeros_like(out), out)


class Binning:
    """(Gaussian, tile) entries of one image, sorted by tile then depth.

    An entry exists where the Gaussian's box (gsplat's extent) overlaps the tile and its
    alpha can reach 1/255 at one of the tile's pixel centres (exact ellipse-rectangle test,
    so dropping the other entries changes no pixel).

    ``gauss``  int64 ``(E,)`` index into the per-camera visible Gaussians of every entry;
    ``tile``   int64 ``(E,)`` tile index (row-major over ``tiles_y x tiles_x``);
    ``starts`` int64 ``(n_tiles + 1,)`` first entry of every tile (CSR offsets);
    ``chunks`` list of ``(tile_begin, tile_end)`` ranges of whole tiles.
    """

    def __init__(self, means2d, conics, opacities, radii, depths, width, height,
                 chunk_values=CHUNK_VALUES):
        dev = means2d.device
        self.width, self.height = width, height
        self.tiles_x = (width + TILE - 1) // TILE
        self.tiles_y = (height + TILE - 1) // TILE
        n_tiles = self.tiles_x * self.tiles_y
        with torch.no_grad():
            order = torch.argsort(depths, stable=True)
            m = means2d.detach()[order]
            r = radii[order].to(m.dtype)
            # pixels whose centre (i + 0.5) lies inside mean +- radius
            x0 = torch.ceil(m[:, 0] - r[:, 0] - 0.5).clamp(min=0)
            x1 = torch.floor(m[:, 0] + r[:, 0] - 0.5).clamp(max=width - 1)
            y0 = torch.ceil(m[:, 1] - r[:, 1] - 0.5).clamp(min=0)
            y1 = torch.floor(m[:, 1] + r[:, 1] - 0.5).clamp(max=height - 1)
            empty = (x1 < x0) | (y1 < y0)
            tx0 = torch.div(x0, TILE, rounding_mode="floor").long()
            tx1 = torch.div(x1, TILE, rounding_mode="floor").long()
            ty0 = torch.div(y0, TILE, rounding_mode="floor").long()
            ty1 = torch.div(y1, TILE, rounding_mode="floor").long()
            ntx = (tx1 - tx0 + 1).clamp(min=0)
            nty = (ty1 - ty0 + 1).clamp(min=0)
            counts = torch.where(empty, torch.zeros_like(ntx), ntx * nty)
            n_entries = int(counts.sum())
            rank = torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)
            first = torch.cumsum(counts, 0) - counts
            local = torch.arange(n_entries, device=dev) - first[rank]
            ntx_e = ntx[rank]
            ty = ty0[rank] + torch.div(local, ntx_e, rounding_mode="floor")
            tx = tx0[rank] + local % ntx_e
            # exact test: can alpha reach 1/255 at a pixel centre of this tile?
            f64 = torch.float64
            cn = conics.detach()[order].to(f64)[rank]
            me = m.to(f64)[rank]
            px0 = (tx * TILE).to(f64) + 0.5
            py0 = (ty * TILE).to(f64) + 0.5
            px1 = torch.clamp(px0 + TILE - 1, max=width - 0.5)
            py1 = torch.clamp(py0 + TILE - 1, max=height - 0.5)
            smin = _min_sigma_over_rect(me[:, 0], me[:, 1], cn[:, 0], cn[:, 1], cn[:, 2], px0, px1, py0, py1)
            reach = torch.log(opacities.detach()[order].to(f64) / ALPHA_MIN)[rank]
            keep = smin <= reach + 1e-3  # margin: rounding never drops a contributing entry
            tile = (ty * self.tiles_x + tx)[keep]
            tile, perm = torch.sort(tile, stable=True)
            self.gauss = order[rank[keep][perm]]
            self.tile = tile
            tile_counts = torch.bincount(tile, minlength=n_tiles)
            self.starts = torch.zeros(n_tiles + 1, dtype=torch.long, device=dev)
            self.starts[1:] = torch.cumsum(tile_counts, 0)
        self.n_tiles = n_tiles
        self.chunks = self._make_chunks(max(1, chunk_values // (TILE * TILE)))

    def _make_chunks(self, budget):
        cum = self.starts.cpu().numpy()
        chunks, t = [], 0
        while t < self.n_tiles:
            end = int(np.searchsorted(cum, cum[t] + budget, side="right")) - 1
            end = min(max(end, t + 1), self.n_tiles)
            if cum[end] > cum[t]:
                chunks.append((t, end))
            t = end
        return chunks

    def tiles_to_image(self, x):
        """``(n_tiles, 64, D)`` -> ``(H, W, D)``."""
        D = x.shape[-1]
        x = x.reshape(self.tiles_y, self.tiles_x, TILE, TILE, D).permute(0, 2, 1, 3, 4)
        return x.reshape(self.tiles_y * TILE, self.tiles_x * TILE, D)[: self.height, : self.width]

    def image_to_tiles(self, x):
        """``(H, W, D)`` -> ``(n_tiles, 64, D)``, zero outside the image."""
        D = x.shape[-1]
        full = x.new_zeros(self.tiles_y * TILE, self.tiles_x * TILE, D)
        full[: self.height, : self.width] = x
        full = full.reshape(self.tiles_y, TILE, self.tiles_x, TILE, D).permute(0, 2, 1, 3, 4)
        return full.reshape(self.n_tiles, TILE * TILE, D)


def _chunk_alpha(b: Binning, t0, t1, means2d, conics, opacities, basis):
    """Recompute one chunk of whole tiles ``t0 .. t1``: entries, alpha and transmittance.

    ``sigma = 0.5 d^T conic d`` (d = mean - pixel centre) is a quadratic in the pixel's
    offset from its tile centre, so ``log(opacity) - sigma`` for all 64 pixels of all entries
    is one ``(E, 6) @ (6, 64)`` product. Masks are applied by multiplying with 0/1 floats
    (much faster than ``torch.where`` on the CPU).
    """
    e0, e1 = int(b.starts[t0]), int(b.starts[t1])
    g = b.gauss[e0:e1]
    tile = b.tile[e0:e1]
    dt = means2d.dtype
    m = means2d.index_select(0, g)
    cn = conics.index_select(0, g)
    ux = m[:, 0] - ((tile % b.tiles_x).to(dt) * TILE + TILE / 2)
    uy = m[:, 1] - (torch.div(tile, b.tiles_x, rounding_mode="floor").to(dt) * TILE + TILE / 2)
    a, bb, c = cn.unbind(1)
    ga, gb = a * ux + bb * uy, bb * ux + c * uy  # conic @ u
    sig_u = 0.5 * (ux * ga + uy * gb)
    log_o = torch.log(opacities.index_select(0, g))
    coef = torch.stack([log_o - sig_u, ga, gb, -0.5 * a, -bb, -0.5 * c], 1)
    raw = torch.exp(coef @ basis)  # opacity * exp(-sigma), (E, 64)
    valid = (raw >= ALPHA_MIN).to(dt)
    alpha = raw.clamp(max=ALPHA_MAX) * valid
    log1m = torch.log1p(-alpha)
    cs = log1m.double().cumsum(0)
    local_tile = tile - t0
    seg_start = b.starts[t0:t1] - e0  # first entry of every tile in the chunk
    base = cs.index_select(0, (seg_start - 1).clamp(min=0))  # cumsum before every tile
    base[seg_start == 0] = 0.0
    incl = (cs - base.index_select(0, local_tile)).to(dt)  # log T after the entry (inclusive)
    # 1 where composited (gsplat's early stop cuts a prefix of each pixel's list); invalid
    # entries have alpha = 0, so callers multiply by alpha or valid as well
    comp = (incl > LOG_T_MIN).to(dt)
    T = torch.exp(incl - log1m)  # transmittance before the entry
    return dict(e0=e0, e1=e1, g=g, lt=local_tile, seg_start=seg_start, ux=ux, uy=uy, a=a,
                b=bb, c=c, raw=raw, valid=valid, alpha=alpha, log1m=log1m, comp=comp, T=T)


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of projected Gaussians into one image (gsplat rules).

    Inputs: ``means2d (M, 2)``, ``conics (M, 3)`` (upper triangle a, b, c of the inverse 2D
    covariance), ``opacities (M,)``, ``features (M, D)``, ``background (D,)``, and a
    :class:`Binning`. Outputs: ``image (H, W, D)`` (including ``T * background``) and
    ``alpha (H, W)`` = 1 - final transmittance.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, background, binning):
        b = binning
        dt, dev, D = means2d.dtype, means2d.device, features.shape[1]
        basis = _basis(dev, dt)
        acc = torch.zeros(b.n_tiles, D + 1, 64, dtype=dt, device=dev)
        for t0, t1 in b.chunks:
            ch = _chunk_alpha(b, t0, t1, means2d, conics, opacities, basis)
            comp = ch["comp"]
            w = ch["alpha"] * ch["T"] * comp
            f = features.index_select(0, ch["g"])
            vals = torch.empty((w.shape[0], D + 1, 64), dtype=dt, device=dev)
            for d in range(D):
                torch.mul(w, f[:, d: d + 1], out=vals[:, d])
            torch.mul(ch["log1m"], comp, out=vals[:, D])
            acc[t0:t1].index_add_(0, ch["lt"], vals)
        acc = acc.transpose(1, 2)  # (n_tiles, 64, D + 1)
        T_final = torch.exp(acc[..., D])  # (n_tiles, 64)
        color = acc[..., :D] + T_final[..., None] * background
        ctx.save_for_backward(means2d, conics, opacities, features, background, T_final)
        ctx.binning = b
        img = b.tiles_to_image(color)
        alpha = b.tiles_to_image((1.0 - T_final)[..., None])[..., 0]
        return img, alpha

    @staticmethod
    def backward(ctx, g_img, g_alpha):
        means2d, conics, opacities, features, background, T_final = ctx.saved_tensors
        b = ctx.binning
        dt, dev, D = means2d.dtype, means2d.device, features.shape[1]
        M = means2d.shape[0]
        if g_img is None:
            g_img = torch.zeros(b.height, b.width, D, dtype=dt, device=dev)
        if g_alpha is None:
            g_alpha = torch.zeros(b.height, b.width, dtype=dt, device=dev)
        G = b.image_to_tiles(g_img.to(dt))  # (n_tiles, 64, D)
        gA = b.image_to_tiles(g_alpha.to(dt)[..., None])[..., 0]
        # the background and alpha outputs add -T_final (G . bg - gA) / (1 - alpha_k) to
        # dLoss/dalpha_k of every composited entry k of the pixel
        Z = (T_final * ((G * background).sum(-1) - gA)).double()
        g_bg = (G * T_final[..., None]).sum((0, 1))
        Gt = G.transpose(1, 2).contiguous()  # (n_tiles, D, 64)
        basis = _basis(dev, dt)
        basis_t = basis.t().contiguous()
        per_entry = torch.zeros(int(b.starts[-1]), 6 + D, dtype=dt, device=dev)
        for t0, t1 in b.chunks:
            ch = _chunk_alpha(b, t0, t1, means2d, conics, opacities, basis)
            lt, g, comp, T, alpha, raw = ch["lt"], ch["g"], ch["comp"], ch["T"], ch["alpha"], ch["raw"]
            Gp = Gt[t0:t1].index_select(0, lt)  # (E, D, 64)
            f = features.index_select(0, g)
            gc = Gp[:, 0] * f[:, 0:1]  # G . feature, (E, 64)
            for d in range(1, D):
                gc += Gp[:, d] * f[:, d: d + 1]
            w = alpha * T * comp
            q = (w * gc).double().cumsum(0)
            seg_start = ch["seg_start"]
            seg_last = torch.cat([seg_start[1:], seg_start.new_tensor([ch["e1"] - ch["e0"]])]) - 1
            # sum over the later entries of the tile of w * gc, plus the background term
            tot = q.index_select(0, seg_last.clamp(min=0)) + Z[t0:t1]
            later = (tot.index_select(0, lt) - q).to(dt)
            g_raw = (T * gc - later / (1.0 - alpha)) * (comp * ch["valid"] * (raw <= ALPHA_MAX))
            gs = -g_raw * raw  # dLoss/dsigma, (E, 64)
            mom = gs @ basis_t  # sums of gs * (1, ox, oy, ox^2, ox*oy, oy^2)
            m0, mx, my, mxx, mxy, myy = mom.unbind(1)
            ux, uy, a, bb, c = ch["ux"], ch["uy"], ch["a"], ch["b"], ch["c"]
            s_dx, s_dy = ux * m0 - mx, uy * m0 - my  # sums of gs * d, d = u - o
            out = per_entry[ch["e0"]: ch["e1"]]
            out[:, 0] = a * s_dx + bb * s_dy
            out[:, 1] = bb * s_dx + c * s_dy
            out[:, 2] = 0.5 * (ux * ux * m0 - 2 * ux * mx + mxx)
            out[:, 3] = ux * uy * m0 - ux * my - uy * mx + mxy
            out[:, 4] = 0.5 * (uy * uy * m0 - 2 * uy * my + myy)
            out[:, 5] = -m0 / opacities.index_select(0, g)
            out[:, 6:] = (Gp * w[:, None, :]).sum(-1)
        sums = torch.stack([torch.bincount(b.gauss, weights=per_entry[:, k], minlength=M)
                            for k in range(6 + D)], 1).to(dt)
        return sums[:, 0:2], sums[:, 2:5], sums[:, 5], sums[:, 6:], g_bg, None


def composite(means2d, conics, opacities, features, background, radii, depths, width, height,
              chunk_values=CHUNK_VALUES):
    """Bin and composite one camera's visible Gaussians; returns ``(image (H, W, D), alpha (H, W))``."""
    b = Binning(means2d, conics, opacities, radii, depths, width, height, chunk_values)
    return _Composite.apply(means2d, conics, opacities, features, background, b)
