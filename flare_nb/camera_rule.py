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
points are inliers. Otherwise the refined pose-head cameras are exported (their translation in
the network's units). ``report.md`` prints the rule and each view's inlier fraction.
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
               "(PnP found a consensus in each view); otherwise the refined pose-head cameras")


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
