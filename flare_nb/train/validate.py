"""Validation during training: the losses and pose metrics of a held-out dataset, without pose
noise (also used by :mod:`flare_nb.train.ablations`)."""
from __future__ import annotations

import numpy as np
import torch

from flare_nb.eval.metrics import pose_l1, pose_metrics
from flare_nb.eval.priors import fit_priors, score_priors
from flare_nb.model.pose_encoding import decode_c2w
from flare_nb.scenes.sample import as_sample
from flare_nb.train.config import TrainConfig
from flare_nb.train.data import (b_to, collate, model_inputs, n_targets,
                                 slot_generator)
from flare_nb.train.objective import compute_losses

__all__ = ["evaluate", "prior_records", "mode_of", "autocast_context"]


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
                out = model(images, **model_inputs(model, b, device),
                            **({"local_features": True} if cfg.loss.match_weight > 0 else {}))
            loss, parts = compute_losses(out, b_to(b, device), cfg)
            pred = decode_c2w(out.pose_enc_stage2[-1][0]).float()
            pm = pose_metrics(pred, b["c2w"][0])
            pm["pose_L1"] = pose_l1(pred, b["c2w"][0])
            c1 = decode_c2w(out.pose_enc_stage1[-1][0]).float()
            pm1 = pose_metrics(c1, b["c2w"][0])
            keep = ("pose", "geometry", "match", "render", "psnr", "render_ssim")
            vals = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items() if k in keep},
                    **{k: pm[k] for k in ("RRA@5", "RRA@15", "RTA@15", "AUC@30", "pose_L1")},
                    "AUC@30/stage1": pm1["AUC@30"], "pose_L1/stage1": pose_l1(c1, b["c2w"][0])}
            mode = mode_of(b["source"][0])
            if mode:                                  # per-mode pose accuracy (orbit is the hard one)
                vals.update({f"{k}/{mode}": pm[k] for k in ("RRA@15", "RTA@15", "AUC@30", "pose_L1")})
            for k, v in vals.items():
                acc.setdefault(k, []).append(v)
    finally:
        model.train(was_training)
    res = {k: float(np.mean(v)) for k, v in acc.items()}
    res["n_scenes"] = len(dataset)
    return res


def mode_of(source: str) -> str | None:
    """``"orbit"`` for a source ``"synthetic:orbit:seed=..."``, None for other scenes."""
    return source.split(":")[1] if source.startswith("synthetic:") else None


def prior_records(cfg: TrainConfig, dataset, val_dataset) -> list[dict]:
    """The blind pose priors (:mod:`flare_nb.eval.priors`) scored on the validation scenes, one log
    record per prior (``kind: "prior"``): ``straight``, and ``constant`` / ``per_view`` fitted on
    the cameras of up to 512 TRAINING scenes per mode (synthetic data; otherwise on the training
    scenes themselves). A model that has learned something beats all three."""
    V = cfg.data.n_views

    def trajectories(ds, limit=None, salt=None):
        out = []
        n = len(ds) if limit is None else min(len(ds), limit)
        for i in range(n):
            if hasattr(ds, "cameras"):
                mode, c2w = ds.cameras(i)
            else:
                item = ds[i]
                c2w = item["c2w"] if isinstance(item, dict) else item.c2w
                mode = mode_of(str((item.get("source") if isinstance(item, dict) else item.source) or "")) or "scenes"
            if salt is not None:       # the context views validation picks (same draw as evaluate())
                dummy = {"images": torch.zeros(c2w.shape[0], 3, 1, 1), "K": torch.eye(3).repeat(c2w.shape[0], 1, 1),
                         "c2w": c2w, "depth": None}
                c2w = as_sample(dummy, "prior", V, slot_generator(cfg.seed, 0, i, salt), n_targets(cfg))["c2w"]
            out.append((mode, c2w[:V].float()))
        return out

    if not len(val_dataset):
        return []
    train_traj = trajectories(dataset, 512 * max(1, len(cfg.data.modes)), salt=7)
    fitted = {m: fit_priors([c for mm, c in train_traj if mm == m]) for m in {mm for mm, _ in train_traj}}
    scored = score_priors(trajectories(val_dataset, salt=5), fitted)
    return [{"kind": "prior", "prior": k, "step": 0, **v} for k, v in scored.items()]


def autocast_context(device, amp):
    import contextlib

    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp)
