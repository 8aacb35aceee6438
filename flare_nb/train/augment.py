"""Pose-noise augmentation during training: the hook handed to the model that perturbs the poses
fed to stages 2 and 3 (:func:`flare_nb.model.pose_encoding.perturb_pose_encoding`), seeded per
scene by ``(seed, step, slot, stage)``."""
from __future__ import annotations

import inspect

import torch

from flare_nb.model.pose_encoding import perturb_pose_encoding
from flare_nb.train.config import TrainConfig
from flare_nb.train.data import slot_generator

__all__ = ["pose_noise_hook", "model_takes_pose_noise"]


def pose_noise_hook(cfg: TrainConfig, step: int, slots):
    """The ``pose_noise(pose_enc (b, V, 9), stage) -> pose_enc`` callable handed to the model
    for one training step: sample ``slots[i]`` (its position in the global batch) gets noise
    from its own generator seeded by ``(seed, step, slot, stage)``, so the noise does not depend
    on how the batch is split over processes. ``None`` when ``pose_noise.prob`` is 0."""
    pn = cfg.pose_noise
    if pn.prob <= 0:
        return None

    def hook(enc: torch.Tensor, stage: int) -> torch.Tensor:
        deg = pn.stage2_deg if stage == 2 else pn.stage3_deg
        with torch.autocast(enc.device.type, enabled=False):      # the noise in float32 under bf16 too
            return torch.stack([perturb_pose_encoding(enc[i], pn.prob, deg, pn.trans_std,
                                                      slot_generator(cfg.seed, step, int(s), stage))
                                for i, s in enumerate(slots)])

    return hook


def model_takes_pose_noise(model) -> bool:
    m = model.module if hasattr(model, "module") else model
    return "pose_noise" in inspect.signature(m.forward).parameters
