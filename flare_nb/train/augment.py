"""Pose-noise augmentation during training: the hook handed to the model that perturbs the poses
fed to stages 2 and 3 (:func:`flare_nb.model.pose_encoding.perturb_pose_encoding`), seeded per
scene by ``(seed, step, slot, stage)``."""
from __future__ import annotations

import inspect

import torch

from flare_nb.model.pose_encoding import perturb_pose_encoding
from flare_nb.train.config import TrainConfig
from flare_nb.train.data import slot_generator
from flare_nb.train.losses import gt_pose_targets

__all__ = ["pose_noise_hook", "gt_pose_encoding", "model_takes_pose_noise"]


def gt_pose_encoding(c2w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The pose encoding ``(B, V, 9)`` of ground-truth cameras ``c2w (B, V, 4, 4)``: ``[T, q]`` as
    the pose loss's targets (relative to view 0, translation over its mean norm, ``w >= 0``), the
    focal entries copied from ``like (B, V, 9)`` (they are not trained)."""
    T, q = gt_pose_targets(c2w.to(like.dtype))
    return torch.cat((T, q, like[..., 7:]), dim=-1)


def pose_noise_hook(cfg: TrainConfig, step: int, slots, c2w: torch.Tensor | None = None):
    """The ``pose_noise(pose_enc (b, V, 9), stage) -> pose_enc`` callable handed to the model
    for one training step: sample ``slots[i]`` (its position in the global batch) gets noise
    from its own generator seeded by ``(seed, step, slot, stage)``, so the noise does not depend
    on how the batch is split over processes. With ``pose_noise.stage3_gt_prob > 0`` and the
    batch's ground-truth cameras ``c2w (b, V, 4, 4)``, a sample's pose fed to stage 3 is first
    replaced by the ground truth with that probability (drawn from the same generator). ``None``
    when neither is on.

    The hook keeps, in ``hook.stage3_true``, the pose encoding ``(V, 9)`` it fed to stage 3 for each
    sample index that got the (perturbed) true pose in the last forward: the targets of
    ``pose_noise.stage3_follow_target`` (:func:`flare_nb.train.losses.follow_target_poses`)."""
    pn = cfg.pose_noise
    use_gt = pn.stage3_gt_prob > 0 and c2w is not None
    if pn.prob <= 0 and not use_gt:
        return None

    def hook(enc: torch.Tensor, stage: int) -> torch.Tensor:
        deg = pn.stage2_deg if stage == 2 else pn.stage3_deg
        with torch.autocast(enc.device.type, enabled=False):      # the noise in float32 under bf16 too
            enc = enc.float()
            gt = gt_pose_encoding(c2w.to(enc.device), enc) if use_gt and stage == 3 else None
            if stage == 3:
                hook.stage3_true = {}
            out = []
            for i, s in enumerate(slots):
                g = slot_generator(cfg.seed, step, int(s), stage)
                e = enc[i]
                true = gt is not None and float(torch.rand((), generator=g)) < pn.stage3_gt_prob
                if true:
                    e = gt[i]
                out.append(perturb_pose_encoding(e, pn.prob, deg, pn.trans_std, g) if pn.prob > 0 else e)
                if true:
                    hook.stage3_true[i] = out[-1].detach()
            return torch.stack(out)

    hook.stage3_true = {}
    return hook


def model_takes_pose_noise(model) -> bool:
    m = model.module if hasattr(model, "module") else model
    return "pose_noise" in inspect.signature(m.forward).parameters
