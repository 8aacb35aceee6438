"""Rendering a prediction into ground-truth cameras (stage-2 training, novel-view evaluation).

FLARE's global pointmaps and Gaussians live in view 0's camera frame at an arbitrary scale;
ground-truth cameras are brought there as ``c2w_0^-1 c2w`` with translations times
``s = mean |X_pred| / mean |X_gt|`` (:func:`cameras_in_prediction_frame`, the geometry loss's
normalisation), then the Gaussians are rendered with
:func:`flare_nb.render.splats.render_views` (:func:`render_targets`)."""
from __future__ import annotations

import torch

from flare_nb.cameras import (invert_pose, mean_distance, transform_points,
                              unproject_depth)
from flare_nb.render.splats import render_views

__all__ = ["cameras_in_prediction_frame", "render_targets"]


def cameras_in_prediction_frame(c2w_context: torch.Tensor, c2w: torch.Tensor, scale) -> torch.Tensor:
    """Ground-truth cameras ``c2w (T, 4, 4)`` (world frame) expressed in the frame of a FLARE
    prediction: view 0's camera frame (``c2w_context[0]``) with lengths multiplied by ``scale``
    (prediction units per world unit, :func:`render_targets`). Returns ``(T, 4, 4)``."""

    rel = invert_pose(c2w_context[0]).to(c2w.dtype) @ c2w
    rel = rel.clone()
    rel[..., :3, 3] = rel[..., :3, 3] * scale
    return rel


def render_targets(gaussians: dict, pts_global: torch.Tensor, sample: dict, which: str = "target",
                   backend: str = "auto", scale=None):
    """Render one scene's predicted Gaussians into its target (or context) cameras.

    ``gaussians``: ``FlareOutput.gaussians[b]`` (view 0's frame, prediction units);
    ``pts_global (V, H, W, 3)``: that scene's global pointmap; ``sample``: one scene's tensors
    (``images (V, 3, H, W)``, ``K``, ``c2w``, ``depth`` of the context, and ``target_*``).
    The prediction is known up to scale, so the ground-truth cameras are moved into view 0's
    frame and scaled by ``s = mean |pred| / mean |gt|`` over the context pixels with depth (the
    normalisation of the geometry loss; detached). Returns ``(render, images, depth, scale)``:
    the :class:`~flare_nb.render.rasterize.RenderOutput` (``rgb (T, 3, H, W)``, ``depth``, ``alpha``),
    the ground-truth images ``(T, 3, H, W)`` and depths ``(T, H, W)`` (or None). Pass back the
    returned ``scale`` to render the same scene into other cameras without recomputing it."""

    c2w_ctx = sample["c2w"].float()
    pre = "target_" if which == "target" else ""
    if scale is None:
        depth = sample["depth"]
        if depth is None:
            raise ValueError("rendering needs the context depth to fix the prediction's scale (scenes without "
                             "depth cannot be used in stage 2)")
        valid = depth > 0
        rel = cameras_in_prediction_frame(c2w_ctx, c2w_ctx, 1.0)
        gt_v0 = transform_points(rel[:, None], unproject_depth(depth.float(), sample["K"].float()))
        with torch.no_grad():
            scale = (mean_distance(pts_global.float()[None].detach(), valid[None])
                     / mean_distance(gt_v0[None], valid[None]))[0]
    cams = cameras_in_prediction_frame(c2w_ctx, sample[pre + "c2w"].float(), scale)
    H, W = sample[pre + "images"].shape[-2:]
    g = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in gaussians.items()}
    rend = render_views(g, cams, sample[pre + "K"].float(), (H, W), backend=backend)
    tdepth = sample.get(pre + "depth")
    return rend, sample[pre + "images"].float(), None if tdepth is None else tdepth.float(), scale
