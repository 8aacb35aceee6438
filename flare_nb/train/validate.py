"""Validation during training: the losses and pose metrics of a held-out dataset, without pose
noise (also used by :mod:`flare_nb.train.ablations`)."""
from __future__ import annotations

import numpy as np
import torch

from flare_nb.eval.metrics import pose_metrics
from flare_nb.model.pose_encoding import decode_c2w
from flare_nb.scenes.sample import as_sample
from flare_nb.train.config import TrainConfig
from flare_nb.train.data import (b_to, collate, model_inputs, n_targets,
                                 slot_generator)
from flare_nb.train.objective import compute_losses

__all__ = ["evaluate", "autocast_context"]


@torch.no_grad()
def evaluate(model, dataset, cfg: TrainConfig, device="cpu", amp_dtype=None) -> dict:
    """Validation: mean loss (no pose noise) and pose accuracy of the refined pose (last stage-2
    iteration) over ``dataset`` (scenes), one scene at a time. Returns ``{"loss", "pose",
    "geometry", "RRA@5", "RRA@15", "RTA@15", "AUC@30", "n_scenes"}`` (percent / [0, 1] as
    :func:`flare_nb.eval.metrics.pose_metrics`); in stage 2 also ``render``, ``psnr`` (dB) and
    ``render_ssim`` of the held-out target views."""

    was_training = model.training
    model.eval()
    acc: dict[str, list] = {}
    try:
        for i in range(len(dataset)):
            b = collate([as_sample(dataset[i], f"validation item {i}", cfg.data.n_views,
                                     slot_generator(cfg.seed, 0, i, 5), n_targets(cfg))], [i], [0])
            images = b["images"].to(device) * 2 - 1
            with autocast_context(torch.device(device), amp_dtype):
                out = model(images, **model_inputs(model, b, device))
            loss, parts = compute_losses(out, b_to(b, device), cfg)
            pm = pose_metrics(decode_c2w(out.pose_enc_stage2[-1][0]).float(), b["c2w"][0])
            keep = ("pose", "geometry", "render", "psnr", "render_ssim")
            vals = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items() if k in keep},
                    **{k: pm[k] for k in ("RRA@5", "RRA@15", "RTA@15", "AUC@30")}}
            src = b["source"][0]
            if src.startswith("synthetic:"):          # per-mode pose accuracy (orbit is the hard one)
                mode = src.split(":")[1]
                vals.update({f"{k}/{mode}": pm[k] for k in ("RRA@15", "RTA@15")})
            for k, v in vals.items():
                acc.setdefault(k, []).append(v)
    finally:
        model.train(was_training)
    res = {k: float(np.mean(v)) for k, v in acc.items()}
    res["n_scenes"] = len(dataset)
    return res


def autocast_context(device, amp):
    import contextlib

    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp)
