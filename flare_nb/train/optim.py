"""AdamW (betas 0.9, 0.95; no decay on biases and 1-D parameters) and its schedule: linear
warm-up then cosine (:func:`lr_factor`)."""
from __future__ import annotations

import math

import torch

from flare_nb.train.config import TrainConfig

__all__ = ["make_optimizer", "lr_factor"]


def make_optimizer(model, cfg: TrainConfig):
    """AdamW (``optim.name: adamw``, the released choice) or plain SGD (``sgd``) on the parameters
    with ``requires_grad`` (weight decay on >= 2-D weights only) and a ``LambdaLR`` of :func:`lr_factor`."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=o.lr) if o.name == "sgd" else \
        torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, o.warmup_steps, o.min_lr_ratio))
    return opt, sched


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier for the update after ``step`` completed steps: linear warm-up
    ``(step + 1) / warmup`` for ``step < warmup``, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
