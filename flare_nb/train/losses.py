"""Training losses of the FLARE cascade (notebook 06).

All functions work on plain tensors so they can be read and tested on their own:

* :func:`pose_loss` -- the pose loss over every pose-head iteration (both heads), with the
  released code's geometric decay ``gamma ** (n - 1 - i)`` and weight 5, L1 by default
  (the paper's Huber variant with ``kind="huber"``).
* :func:`confidence_loss` -- DUSt3R's confidence-weighted regression loss
  ``conf * |p - g| - alpha * log(conf)`` on pointmaps normalised by their mean distance to
  the origin over all views.
* :func:`geometry_loss` -- FLARE's two geometry terms: camera-centric pointmaps (moved to
  view 0's frame with the ground-truth pose, weight 0.5) and global pointmaps (weight 1.0).
* :func:`follow_target_poses` -- the poses that place the global target when stage 3 is to follow
  the (perturbed) true pose it was given (``pose_noise.stage3_follow_target``, not in the release).

Pose encodings follow :mod:`flare_nb.model.pose_predictor`: ``(..., 9) = [T(3), q wxyz(4),
focal logits(2)]``, camera-to-world relative to view 0 (README "Conventions").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flare_nb.cameras import (matrix_to_quat, mean_distance,
                              normalize_translation, quat_to_matrix,
                              relative_to_view0, transform_points)


def gt_pose_targets(c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth pose-head targets from camera-to-world poses ``(B, V, 4, 4)``.

    Returns ``(T (B, V, 3), q (B, V, 4))``: poses relative to view 0, translation divided by
    the mean translation norm over the views (FLARE's normalisation), unit quaternions wxyz
    with w >= 0.
    """
    rel = torch.stack([normalize_translation(relative_to_view0(p))[0] for p in c2w])
    return rel[..., :3, 3], matrix_to_quat(rel[..., :3, :3])


def follow_target_poses(pose_enc: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """The poses ``(B, V, 4, 4)`` relative to view 0, in the units of ``c2w (B, V, 4, 4)``, that the
    pose encodings ``pose_enc (B, V, 9)`` stand for *as stage 3 sees them*: ``R`` from the (normalised)
    quaternion; ``t`` = the translations over their mean norm across the views (what
    :func:`flare_nb.model.camera_centric.camera_embed_input` feeds the network) times the mean
    translation norm of ``c2w``'s poses relative to view 0 (the scale :func:`gt_pose_targets`
    divides by). The inverse of :func:`gt_pose_targets` for ``c2w``'s own encoding; for a perturbed
    one, the poses whose global target moves with the perturbation. Detached.
    """
    if pose_enc.shape[:-1] != c2w.shape[:-2] or pose_enc.shape[-1] < 7:
        raise ValueError(f"pose encodings {tuple(pose_enc.shape)} do not match poses {tuple(c2w.shape)}")
    scale = torch.stack([normalize_translation(relative_to_view0(p))[1] for p in c2w.detach()])   # (B,)
    e = pose_enc.detach().to(c2w.dtype)
    T = e[..., :3] / e[..., :3].norm(dim=-1).mean(dim=-1).view(-1, 1, 1)
    rel = torch.zeros_like(c2w)
    rel[..., :3, :3] = quat_to_matrix(e[..., 3:7])
    rel[..., :3, 3] = T * scale.view(-1, 1, 1)
    rel[..., 3, 3] = 1.0
    return rel


def _elementwise(x: torch.Tensor, y: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    return (x - y).abs() if kind == "l1" else F.huber_loss(x, y, delta=delta, reduction="none")


def pose_loss(pred_encodings: list[torch.Tensor], c2w_gt: torch.Tensor, gamma: float = 0.8,
              weight: float = 5.0, kind: str = "l1", huber_delta: float = 0.1,
              sign_invariant: bool = False) -> tuple[torch.Tensor, dict]:
    """Pose loss over all pose-head iterations.

    ``pred_encodings``: list of ``(B, V, 9)`` raw encodings, in order (stage-1 iterations then
    stage-2 iterations: 8 for the released model). Iteration ``i`` of ``n`` is weighted by
    ``gamma ** (n - 1 - i)`` so the last counts most. Per iteration:
    ``weight * (mean|q - q_gt| + mean|T - T_gt|)`` (``kind="l1"``, as released) or the same
    with a Huber penalty (``kind="huber"``, as in the paper). ``sign_invariant``: the rotation
    term of each view is the smaller of its distance to ``q_gt`` and to ``-q_gt`` (both are the same
    rotation; the ``w >= 0`` rule makes targets near 180 degrees jump between them); the released
    loss is not.
    Returns ``(loss, {"pose_rot": last-iteration rotation term, "pose_trans": ...})``.
    """
    if kind not in ("l1", "huber"):
        raise ValueError(f"pose loss kind must be 'l1' or 'huber', got {kind!r}")
    if not pred_encodings:
        raise ValueError("pose_loss needs at least one pose encoding")
    T_gt, q_gt = gt_pose_targets(c2w_gt.to(pred_encodings[0].dtype))
    n = len(pred_encodings)
    total = pred_encodings[0].new_zeros(())
    for i, enc in enumerate(pred_encodings):
        if enc.shape[:-1] != T_gt.shape[:-1] or enc.shape[-1] < 7:
            raise ValueError(f"pose encoding {i} has shape {tuple(enc.shape)}, expected {tuple(T_gt.shape[:-1])} + (9,)")
        lt = _elementwise(enc[..., :3], T_gt, kind, huber_delta).mean()
        eq = _elementwise(enc[..., 3:7], q_gt, kind, huber_delta).sum(-1)                 # (B, V)
        if sign_invariant:
            eq = torch.minimum(eq, _elementwise(enc[..., 3:7], -q_gt, kind, huber_delta).sum(-1))
        lq = eq.mean() / 4
        total = total + gamma ** (n - 1 - i) * weight * (lq + lt)
    return total, {"pose_rot": lq.detach(), "pose_trans": lt.detach()}


def confidence_loss(pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                    alpha: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """DUSt3R's confidence-aware regression loss.

    ``pred, gt (B, V, H, W, 3)``, ``conf (B, V, H, W)`` (>= 1, from ``1 + exp``), ``valid``
    boolean ``(B, V, H, W)``. Both pointmaps are divided by their own mean distance to the
    origin (so the loss is invariant to the global scale of each). Returns
    ``(mean over valid pixels of conf * |p - g| - alpha * log conf, plain mean |p - g|)``.
    """
    if pred.shape != gt.shape or conf.shape != pred.shape[:-1] or valid.shape != conf.shape:
        raise ValueError(f"shapes do not match: pred {tuple(pred.shape)}, gt {tuple(gt.shape)}, "
                         f"conf {tuple(conf.shape)}, valid {tuple(valid.shape)}")
    if not bool(valid.any()):
        raise ValueError("confidence_loss: no valid pixel in the batch (check the depth / mask)")
    pn = pred / mean_distance(pred, valid).view(-1, 1, 1, 1, 1)
    gn = gt / mean_distance(gt, valid).view(-1, 1, 1, 1, 1)
    err = (pn - gn).norm(dim=-1)[valid]
    c = conf[valid]
    return (c * err - alpha * torch.log(c)).mean(), err.mean().detach()


def geometry_loss(pts_cam: torch.Tensor, conf_cam: torch.Tensor, pts_global: torch.Tensor,
                  conf_global: torch.Tensor, gt_cam: torch.Tensor, c2w_gt: torch.Tensor, valid: torch.Tensor,
                  w_cam: float = 0.5, w_global: float = 1.0, alpha: float = 0.2,
                  rel_global: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """FLARE's geometry loss.

    ``pts_cam (B, V, H, W, 3)``: predicted camera-centric pointmaps, each in its own camera
    frame; ``pts_global``: predicted global pointmaps in view 0's frame; ``gt_cam``: ground-
    truth camera-frame pointmaps; ``c2w_gt (B, V, 4, 4)``. The camera-centric prediction is
    moved to view 0's frame with the ground-truth relative pose (translation in the units of
    ``gt_cam`` divided by their mean distance, so both live at the same scale) before the
    loss, as the released code does; the global prediction is compared with the ground truth
    expressed in view 0's frame. ``pts_cam = conf_cam = None`` (the NVS model, which has no
    camera-centric head) leaves only the global term (``geo_cam`` is then 0). ``rel_global (B, V, 4, 4)``:
    other poses relative to view 0 (units of ``c2w_gt``) that place the global target
    (:func:`follow_target_poses`); the camera-centric term keeps the ground truth.
    """
    B, V = gt_cam.shape[:2]
    rel = torch.stack([relative_to_view0(p) for p in c2w_gt.to(gt_cam.dtype)])           # (B, V, 4, 4)
    gt_v0 = transform_points(rel[:, :, None], gt_cam)                                    # (B, V, H, W, 3)
    gt_glob = gt_v0 if rel_global is None else transform_points(rel_global.to(gt_cam)[:, :, None], gt_cam)
    s = mean_distance(gt_v0, valid).view(B, 1, 1, 1)
    if pts_cam is None:
        l_glob, e_glob = confidence_loss(pts_global, conf_global, gt_glob, valid, alpha)
        zero = l_glob.new_zeros(())
        return w_global * l_glob, {"geo_cam": zero, "geo_global": l_glob.detach(), "err_cam": zero,
                                   "err_global": e_glob}
    rel_n = rel.clone()
    rel_n[..., :3, 3] = rel[..., :3, 3] / s
    # predicted camera-frame points, scaled to the ground truth's normalised units, moved with the GT pose
    pc = pts_cam / mean_distance(pts_cam, valid).view(B, 1, 1, 1, 1) * mean_distance(gt_cam / s.view(B, 1, 1, 1, 1), valid).view(B, 1, 1, 1, 1)
    pc_v0 = transform_points(rel_n[:, :, None], pc)
    l_cam, e_cam = confidence_loss(pc_v0, conf_cam, gt_v0, valid, alpha)
    l_glob, e_glob = confidence_loss(pts_global, conf_global, gt_glob, valid, alpha)
    return w_cam * l_cam + w_global * l_glob, {"geo_cam": l_cam.detach(), "geo_global": l_glob.detach(),
                                               "err_cam": e_cam, "err_global": e_glob}
