"""How ``flare-nb`` solves and chooses the exported cameras: bounded PnP and one stated rule.

PnP settings (:func:`pnp_settings`) -- the released demo runs PnP-RANSAC (SQPnP, 1 px, 10 000
iterations, confidence 0.9999) on the 40 % most confident pixels of each global pointmap.
When few of those pixels agree (a small or untrained model), RANSAC's adaptive stop never
triggers and every one of the 10 000 iterations runs. ``flare-nb`` keeps the method and bounds
its cost:

* at most :data:`PNP_MAX_POINTS` of each view's selected pixels, evenly spaced in raster order;
* :data:`PNP_DEFAULT_ITERATIONS` RANSAC iterations by default (``--pnp-iterations``), with
  OpenCV's adaptive stop at confidence :data:`PNP_CONFIDENCE`: RANSAC ends as soon as the
  inliers found make a better sample that unlikely;
* an inlier threshold of 1 px at the release's 512-pixel side, scaled with the image
  (``max(1, max(W, H) / 512)`` px): the same angular tolerance above 512 px, never below 1 px.

Camera rule (:data:`CAMERA_RULE`, :func:`pnp_trusted`) -- the PnP cameras are exported when
PnP found a consensus in every view: at least :data:`MIN_INLIER_FRACTION` of each view's PnP
points are inliers. Otherwise the refined pose-head cameras are exported, their translation
scaled into the pointmaps' units by :func:`pose_head_scale` (the network's units when it cannot). ``report.md`` prints the rule and each view's inlier fraction.
"""
from __future__ import annotations

__all__ = ["PNP_MAX_POINTS", "PNP_DEFAULT_ITERATIONS", "PNP_CONFIDENCE", "MIN_INLIER_FRACTION", "CAMERA_RULE",
           "pnp_settings", "inlier_fractions", "pnp_trusted"]

PNP_MAX_POINTS = 1000
PNP_DEFAULT_ITERATIONS = 300
PNP_CONFIDENCE = 0.999
MIN_INLIER_FRACTION = 0.2
RELEASE_SIDE = 512             # the released model's input width, where the release uses 1 px
CAMERA_RULE = (f"PnP cameras when at least {MIN_INLIER_FRACTION:.0%} of every view's PnP points are inliers "
               "(PnP found a consensus in each view); otherwise the refined pose-head cameras, their translation "
               "scaled into the pointmaps' units (pose_head_scale)")


#: What ``--conf-threshold`` means: the same words in ``flare-nb --help``, notebook 08 and report.md.
CONF_THRESHOLD_HELP = ("--conf-threshold Q drops the least confident fraction Q of EACH view's pixels: a per-view "
                       "quantile, not an absolute value. FLARE's confidence is 1 + exp(x), unbounded, and its scale "
                       "differs between models, scenes and views, so no absolute number means the same everywhere; a "
                       "quantile keeps the same share of every view. The released demo selects its PnP pixels the "
                       "same way (each view's 40 % most confident, i.e. Q = 0.6).")


def pnp_settings(H: int, W: int, iterations: int | None = None) -> dict:
    """Keyword arguments of :func:`flare_nb.cameras.pnp_poses` for an ``H x W`` pointmap:
    ``reproj_px`` (1 px at a 512-pixel side, scaled with ``max(W, H)``, at least 1 px),
    ``iterations`` (``PNP_DEFAULT_ITERATIONS`` unless given), ``ransac_confidence`` and
    ``max_points``."""
    if iterations is None:
        iterations = PNP_DEFAULT_ITERATIONS
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"--pnp-iterations must be a positive integer, got {iterations!r}")
    return {"reproj_px": max(1.0, max(int(H), int(W)) / RELEASE_SIDE), "iterations": int(iterations),
            "ransac_confidence": PNP_CONFIDENCE, "max_points": PNP_MAX_POINTS}


def inlier_fractions(pnp_info: dict | None) -> list[float] | None:
    """Each view's fraction of PnP points that are inliers, or None without PnP."""
    if not pnp_info:
        return None
    return [i / n if n else 0.0 for i, n in zip(pnp_info["n_inliers"], pnp_info["n_points"])]


def pnp_trusted(pnp_info: dict | None, min_fraction: float = MIN_INLIER_FRACTION) -> bool:
    """:data:`CAMERA_RULE`: True when every view's inlier fraction is at least ``min_fraction``."""
    fr = inlier_fractions(pnp_info)
    return bool(fr) and min(fr) >= min_fraction


def pose_head_scale(c2w, pts_global, conf, K, top: float = 0.4) -> float | None:
    """The factor that puts pose-head translations (network units, mean norm 1) into the units
    of the global pointmaps, so that the exported cameras and points agree.

    For each view ``i >= 1`` and its ``top`` most confident pixels ``(u, v)`` with global point
    ``X``: with ``R, t`` of ``c2w[i]``, the point in the camera is ``a - s b`` (``a = R^T X``,
    ``b = R^T t``), and projecting it onto ``(u, v)`` with ``K`` is linear in ``s``:
    ``s ((u - cx) b_z - fx b_x) = (u - cx) a_z - fx a_x`` (and the same in ``v``). ``s`` is the
    least-squares solution over all those equations. None when it is not positive and finite
    (e.g. one view, or all pose-head translations zero)."""
    import torch

    V = c2w.shape[0]
    if V < 2:
        return None
    K = torch.as_tensor(K, dtype=torch.float64)
    K = K.expand(V, 3, 3) if K.ndim == 2 else K
    num = den = 0.0
    H, W = pts_global.shape[1:3]
    v_, u_ = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    for i in range(1, V):
        X = pts_global[i].double()
        c = conf[i].double()
        ok = torch.isfinite(X).all(-1) & torch.isfinite(c)
        if ok.sum() < 3:
            continue
        ok &= c >= torch.quantile(c[ok], 1.0 - top)
        R, t = c2w[i, :3, :3].double(), c2w[i, :3, 3].double()
        a = X[ok] @ R                      # R^T X for each row
        b = R.T @ t
        fx, fy, cx, cy = K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2]
        du, dv = u_[ok] - cx, v_[ok] - cy
        for d, f, k in ((du, fx, 0), (dv, fy, 1)):
            coef = d * b[2] - f * b[k]
            rhs = d * a[:, 2] - f * a[:, k]
            num += float((coef * rhs).sum())
            den += float((coef * coef).sum())
    if den <= 0:
        return None
    s = num / den
    return s if s > 0 and s == s and s != float("inf") else None
