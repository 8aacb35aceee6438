"""Evaluation metrics of the paper's three tasks (notebook 07): images, poses, pointclouds.

Images
    :func:`psnr`, :func:`ssim` (the one implementation lives in :mod:`flare_nb.render.losses`),
    :class:`LPIPS` (VGG variant; needs two local weights files, none ship or download).
Poses (PoseDiffusion / VGGSfM protocol, which FLARE's paper reports)
    :func:`relative_pose_errors` over all view pairs, :func:`pose_auc`, :func:`pose_metrics`.
Pointclouds
    :func:`pointcloud_metrics`: accuracy and completion after a Sim(3) alignment.

Pose protocol, as in VGGSfM's ``camera_to_rel_deg`` / ``calculate_auc_np``:

* pairs ``(i, j)``, ``i < j``, of all ``V`` views (``V (V - 1) / 2`` pairs);
* the relative pose of a pair maps camera ``i``'s frame to camera ``j``'s:
  ``w2c_j @ c2w_i``, rotation ``R_j^T R_i``, translation ``R_j^T (c_i - c_j)`` (camera centres
  ``c``); it is invariant to any similarity transform of the whole trajectory;
* rotation error: geodesic angle of ``R_rel_gt^T R_rel_pred``, in [0, 180] degrees;
* translation error: angle between the relative translation *directions*; the sign is
  ignored as VGGSfM does (angle = ``min(a, 180 - a)``, in [0, 90]): a prediction that puts
  camera ``i`` exactly behind instead of in front of ``j`` counts as correct. When either
  relative translation has (near) zero length the direction is undefined and the error is 90
  degrees (the value VGGSfM's formula yields there);
* RRA@t / RTA@t: percentage of pairs with error strictly below t degrees;
* AUC@T: mean over integer thresholds k = 1..T of the fraction of pairs whose
  ``max(rotation error, translation error)`` is below k (numpy's histogram, which VGGSfM uses,
  closes its last bin, so at k = T an error of exactly T counts too). In [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from flare_nb.cameras import matrix_to_quat, relative_to_view0, umeyama
from flare_nb.render.losses import (  # noqa: F401  (ssim re-exported)
    VGG16_TAPS, VGG16Features, ssim)

# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------


def psnr(img1: torch.Tensor, img2: torch.Tensor, data_range: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """PSNR in dB of ``img1, img2 (B, C, H, W)`` in [0, ``data_range``], per image
    ``10 log10(data_range^2 / MSE)``; ``reduction="mean"`` averages the per-image values (the
    usual NVS report), ``"none"`` returns ``(B,)``. Identical images give ``inf``. Notebook 07."""
    if img1.shape != img2.shape or img1.ndim != 4:
        raise ValueError(f"psnr: images must be two (B, C, H, W) tensors of one shape, got "
                         f"{tuple(img1.shape)} and {tuple(img2.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"psnr: reduction must be 'mean' or 'none', got {reduction!r}")
    m = ((img1.double() - img2.double()) ** 2).flatten(1).mean(1)
    per = 10 * torch.log10(data_range ** 2 / m)
    per = per.to(img1.dtype if img1.is_floating_point() else torch.float32)
    return per.mean() if reduction == "mean" else per


LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_HOWTO = (
    "LPIPS needs two local files: torchvision's VGG16 weights (see flare_nb.render.losses.VGG16_HOWTO) "
    "and the LPIPS linear-layer weights 'vgg.pth' of the lpips package (richzhang/PerceptualSimilarity, "
    "BSD-2-Clause; file lpips/weights/v0.1/vgg.pth inside `pip download lpips`), copied here on a machine "
    "with internet access. Nothing is downloaded by this workbook.")


class LPIPS(nn.Module):
    """LPIPS, VGG variant (Zhang et al. 2018), from local weights only.

    ``LPIPS(vgg_weights_path, lin_weights_path)``: VGG16 trunk (:class:`VGG16Features`, torchvision
    names) and the five 1x1 linear layers of the lpips package (keys ``lin{l}.model.1.weight``
    of shape ``(1, C_l, 1, 1)``, C = 64, 128, 256, 512, 512). ``forward(img1, img2)`` on
    ``(B, 3, H, W)`` in [0, 1] returns ``(B,)``: images mapped to [-1, 1], shifted/scaled by the
    lpips constants, VGG activations at relu1_2 .. relu5_3 unit-normalised over channels,
    squared differences weighted by the linear layers, averaged over pixels and summed over
    layers. Missing files -> FileNotFoundError saying how to get them. Notebook 07.
    """

    def __init__(self, vgg_weights_path, lin_weights_path):
        super().__init__()
        if lin_weights_path is None or not Path(lin_weights_path).is_file():
            raise FileNotFoundError(f"LPIPS linear-layer weights {lin_weights_path} not found. " + LPIPS_HOWTO)
        self.vgg = VGG16Features(vgg_weights_path)
        sd = torch.load(lin_weights_path, map_location="cpu", weights_only=True)
        if not isinstance(sd, dict):
            raise ValueError(f"{lin_weights_path} holds a {type(sd).__name__}, not a state_dict")
        chans = (64, 128, 256, 512, 512)
        lins, problems = [], []
        for l, c in enumerate(chans):
            keys = [k for k in (f"lin{l}.model.1.weight", f"lin{l}.model.0.weight", f"lin{l}.weight") if k in sd]
            if not keys:
                problems.append(f"missing lin{l}.model.1.weight")
            elif tuple(sd[keys[0]].shape) != (1, c, 1, 1):
                problems.append(f"{keys[0]}: expected {(1, c, 1, 1)}, got {tuple(sd[keys[0]].shape)}")
            else:
                lins.append(sd[keys[0]].float().reshape(1, c, 1, 1))
        if problems:
            raise ValueError(f"{lin_weights_path} is not an LPIPS (VGG) linear-layer file: {problems}. " + LPIPS_HOWTO)
        for l, w in enumerate(lins):
            self.register_buffer(f"lin{l}", w)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        if img1.shape != img2.shape or img1.ndim != 4 or img1.shape[1] != 3:
            raise ValueError(f"LPIPS: images must be two (B, 3, H, W) tensors of one shape, got "
                             f"{tuple(img1.shape)} and {tuple(img2.shape)}")
        f1 = self.vgg(((2 * img1 - 1) - self.shift) / self.scale)
        f2 = self.vgg(((2 * img2 - 1) - self.shift) / self.scale)
        total = 0
        for l, name in enumerate(VGG16_TAPS):
            n1 = f1[name] / (f1[name].pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            n2 = f2[name] / (f2[name].pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + ((n1 - n2) ** 2 * getattr(self, f"lin{l}")).sum(1).mean((1, 2))
        return total


# ---------------------------------------------------------------------------------------------
# poses
# ---------------------------------------------------------------------------------------------
def _check_c2w(c2w: torch.Tensor, name: str) -> torch.Tensor:
    c2w = torch.as_tensor(c2w)
    if c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4):
        raise ValueError(f"{name} must be (V, 4, 4) camera-to-world matrices, got {tuple(c2w.shape)}")
    if not torch.isfinite(c2w).all():
        raise ValueError(f"{name} contains non-finite values")
    return c2w.detach().double().cpu()


def _rotation_angle_deg(R: torch.Tensor) -> torch.Tensor:
    """Geodesic angle of rotation matrices ``(..., 3, 3)`` in degrees, accurate near 0 and 180."""
    cos = (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    A = R - R.transpose(-1, -2)
    sin = torch.stack([A[..., 2, 1], A[..., 0, 2], A[..., 1, 0]], -1).norm(dim=-1) / 2
    return torch.rad2deg(torch.atan2(sin, cos))


def relative_pose_errors(c2w_pred: torch.Tensor, c2w_gt: torch.Tensor, sign_invariant: bool = True):
    """Errors of every view pair's relative pose, in degrees (module docstring for the protocol).

    ``c2w_pred, c2w_gt (V, 4, 4)`` camera-to-world, OpenCV axes (any common frame and scale:
    the errors are invariant to a similarity transform of either trajectory). Returns
    ``(rot_err (P,), trans_err (P,), pairs (P, 2) long)`` float64, P = V (V - 1) / 2, pairs in
    ``torch.combinations`` order (0,1), (0,2), ... ``sign_invariant=False`` gives the full
    translation angle in [0, 180] instead of VGGSfM's [0, 90]. Notebook 07.
    """
    P, G = _check_c2w(c2w_pred, "c2w_pred"), _check_c2w(c2w_gt, "c2w_gt")
    if P.shape != G.shape:
        raise ValueError(f"c2w_pred {tuple(P.shape)} and c2w_gt {tuple(G.shape)} must have the same number of views")
    V = P.shape[0]
    if V < 2:
        raise ValueError(f"pose errors need at least 2 views, got {V}")
    pairs = torch.combinations(torch.arange(V), 2)
    i, j = pairs[:, 0], pairs[:, 1]

    def rel(c2w):
        R, c = c2w[:, :3, :3], c2w[:, :3, 3]
        Rj_T = R[j].transpose(-1, -2)
        return Rj_T @ R[i], (Rj_T @ (c[i] - c[j])[..., None])[..., 0]

    Rp, tp = rel(P)
    Rg, tg = rel(G)
    rot_err = _rotation_angle_deg(Rg.transpose(-1, -2) @ Rp)

    def tiny(t, c2w):
        c = c2w[:, :3, 3]
        extent = (c[:, None] - c[None]).norm(dim=-1).max()
        return t.norm(dim=-1) <= 1e-9 * extent if extent > 0 else torch.ones(len(t), dtype=torch.bool)

    ang = torch.rad2deg(torch.atan2(torch.linalg.cross(tp, tg).norm(dim=-1), (tp * tg).sum(-1)))
    if sign_invariant:
        ang = torch.minimum(ang, 180 - ang)
    trans_err = torch.where(tiny(tp, P) | tiny(tg, G), torch.full_like(ang, 90.0), ang)
    return rot_err, trans_err, pairs


def pose_auc(rot_err, trans_err, max_threshold: int = 30) -> float:
    """AUC@``max_threshold`` in [0, 1]: mean over k = 1..T of the fraction of pairs with
    ``max(rot_err, trans_err) < k`` (``<= T`` at k = T, as VGGSfM's numpy histogram)."""
    e = torch.maximum(torch.as_tensor(rot_err, dtype=torch.float64), torch.as_tensor(trans_err, dtype=torch.float64))
    if e.numel() == 0:
        raise ValueError("pose_auc: no pairs")
    fr = [(e < k).double().mean().item() for k in range(1, max_threshold)] + [(e <= max_threshold).double().mean().item()]
    return float(np.mean(fr))


def pose_summary(rot: torch.Tensor, trans: torch.Tensor, thresholds=(5, 15, 30), auc_threshold: int = 30) -> dict:
    """RRA@t and RTA@t (percent of pairs strictly under ``t`` degrees) and AUC@``auc_threshold``
    from per-pair rotation / translation-direction errors in degrees (notebook 07)."""
    out = {}
    for t in thresholds:
        out[f"RRA@{t}"] = 100.0 * (rot < t).double().mean().item()
    for t in thresholds:
        out[f"RTA@{t}"] = 100.0 * (trans < t).double().mean().item()
    out[f"AUC@{auc_threshold}"] = pose_auc(rot, trans, auc_threshold)
    return out


def pose_metrics(c2w_pred: torch.Tensor, c2w_gt: torch.Tensor, thresholds=(5, 15, 30), auc_threshold: int = 30,
                 sign_invariant: bool = True) -> dict:
    """RRA@t and RTA@t (percent, t in ``thresholds``), ``AUC@auc_threshold`` (in [0, 1]) and the
    per-pair errors, over all view pairs of ``c2w_pred, c2w_gt (V, 4, 4)``.

    Returns ``{"RRA@5": ..., "RTA@5": ..., ..., "AUC@30": ..., "rot_err": (P,), "trans_err": (P,),
    "pairs": (P, 2)}`` (floats, then float64 / long tensors). Notebook 07.
    """
    rot, trans, pairs = relative_pose_errors(c2w_pred, c2w_gt, sign_invariant)
    out = pose_summary(rot, trans, thresholds, auc_threshold)
    out.update(rot_err=rot, trans_err=trans, pairs=pairs)
    return out


def pose_l1(c2w_pred: torch.Tensor, c2w_gt: torch.Tensor) -> float:
    """The pose-head objective as a metric: mean over the source views ``1..V-1`` of
    ``mean|q - q_gt| + mean|T - T_gt|``, both trajectories taken relative to view 0, translations
    divided by their mean norm over the views, unit quaternions ``wxyz`` with ``w >= 0``
    (:func:`flare_nb.train.losses.gt_pose_targets`'s convention). 0 is perfect; it is what the training
    loss drives down, so a model that learned nothing sits at the value of the priors
    (:mod:`flare_nb.eval.priors`). ``c2w (V, 4, 4)``; translation-free trajectories count their
    translations as 0."""

    P, G = _check_c2w(c2w_pred, "c2w_pred"), _check_c2w(c2w_gt, "c2w_gt")
    if P.shape != G.shape or P.shape[0] < 2:
        raise ValueError(f"pose_l1 needs two (V, 4, 4) trajectories with V >= 2, got {tuple(P.shape)}, {tuple(G.shape)}")

    def targets(c2w):
        rel = relative_to_view0(c2w)
        t = rel[:, :3, 3]
        scale = t.norm(dim=-1).mean()
        return (t / scale if scale > 1e-12 else t), matrix_to_quat(rel[:, :3, :3])

    (tp, qp), (tg, qg) = targets(P), targets(G)
    err = (qp - qg).abs().mean(-1) + (tp - tg).abs().mean(-1)
    return float(err[1:].mean())


# ---------------------------------------------------------------------------------------------
# pointclouds
# ---------------------------------------------------------------------------------------------
def _points64(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty (N, 3) array of points, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values; drop invalid points first")
    return x


def _sim3(src: np.ndarray, dst: np.ndarray):
    s, R, t = umeyama(torch.from_numpy(src), torch.from_numpy(dst))
    return float(s), R.numpy(), t.numpy()


def pointcloud_metrics(pred, gt, align: str = "sim3", pred_corr=None, icp_iters: int = 30) -> dict:
    """Accuracy and completion of ``pred (N, 3)`` against ``gt (M, 3)``, in gt units.

    * accuracy: distance from each (aligned) predicted point to its nearest gt point;
    * completion: distance from each gt point to its nearest predicted point;
    both reported as mean and median, plus ``chamfer`` = (accuracy_mean + completion_mean) / 2.

    ``align="none"`` uses ``pred`` as given. ``align="sim3"`` first maps ``pred`` by the
    least-squares similarity ``s R pred + t`` (:func:`flare_nb.cameras.umeyama`): on the
    correspondences ``pred[k] <-> pred_corr[k]`` when ``pred_corr (N, 3)`` is given (e.g. the gt
    pointmap at the same pixels -- the usual case for pointmaps), else by ICP with scale
    (``icp_iters`` rounds of nearest neighbours + Umeyama, started from matching centroids and
    RMS radii), which needs the two clouds roughly oriented alike already (e.g. both in view 0's
    frame). Returns a dict of floats plus ``s, R (3, 3), t (3,)`` and ``pred_aligned (N, 3)``
    (numpy). Nearest neighbours with ``scipy.spatial.cKDTree``. Notebook 07.
    """
    from scipy.spatial import cKDTree

    P, G = _points64(pred, "pred"), _points64(gt, "gt")
    if align not in ("sim3", "none"):
        raise ValueError(f"align must be 'sim3' or 'none', got {align!r}")
    gt_tree = cKDTree(G)
    s, R, t = 1.0, np.eye(3), np.zeros(3)
    if align == "sim3":
        if pred_corr is not None:
            C = _points64(pred_corr, "pred_corr")
            if C.shape != P.shape:
                raise ValueError(f"pred_corr must match pred: ({len(P)}, 3), got {C.shape}")
            s, R, t = _sim3(P, C)
        else:
            rp = np.sqrt(((P - P.mean(0)) ** 2).sum(1).mean())
            rg = np.sqrt(((G - G.mean(0)) ** 2).sum(1).mean())
            if rp == 0:
                raise ValueError("pred: all points coincide; a Sim(3) cannot be estimated")
            s, R = rg / rp, np.eye(3)
            t = G.mean(0) - s * P.mean(0)
            prev = np.inf
            for _ in range(icp_iters):
                d, nn_idx = gt_tree.query(s * P @ R.T + t)
                err = float(np.mean(d ** 2))
                if np.isfinite(prev) and prev - err <= 1e-12 * prev:
                    break  # the matches no longer improve: converged
                s, R, t = _sim3(P, G[nn_idx])
                prev = err
    A = s * P @ R.T + t
    acc, _ = gt_tree.query(A)
    comp, _ = cKDTree(A).query(G)
    return dict(accuracy_mean=float(acc.mean()), accuracy_median=float(np.median(acc)),
                completion_mean=float(comp.mean()), completion_median=float(np.median(comp)),
                chamfer=float((acc.mean() + comp.mean()) / 2), s=float(s), R=R, t=t, pred_aligned=A)
