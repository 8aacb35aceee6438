"""Train FLARE (the tiny model on a laptop CPU, or any size on GPUs): notebook 06.

From a shell::

    python -m flare_nb.train --config configs/tiny_synthetic.yaml [--set optim.lr=1e-3 ...]
    torchrun --nproc_per_node 2 -m flare_nb.train --config ...      # DistributedDataParallel
    python -m flare_nb.train --config ... --nproc 2                  # same, without torchrun

From a notebook: ``result = train(load_config("configs/tiny_synthetic.yaml"))`` (or pass
``dataset=`` any indexable collection of :class:`~flare_nb.scenes.Scene`).

What a run does (config fields in :mod:`flare_nb.train_config`):

* data: synthetic scenes rendered on the fly (:mod:`flare_nb.synthetic`), or loaded scenes.
  The sample of global position ``p = step * batch_size + slot`` is fixed by ``(seed, p)``
  (one shuffled pass over the dataset per epoch), so the data -- and the pose noise, seeded
  by ``(seed, step, slot)`` -- do not depend on the number of processes or on resuming.
* loss (:mod:`flare_nb.losses`): pose loss over every pose-head iteration of both heads +
  geometry loss (camera-centric and global pointmaps), computed per scene and averaged, so
  ``N`` processes with ``batch_size / N`` scenes each give the gradient of one process with
  ``batch_size`` scenes.
* cascade ``stage``: 1 trains pose + geometry (the geometry model, ``model: tiny``); 2 trains
  the NVS model (``model: tiny_nvs``: the same network plus the second image path and the
  Gaussian head), started from a stage-1 checkpoint (``init_from``, :func:`init_weights`), with
  the coarse pose predictor frozen (:func:`frozen_prefixes`) and a rendering loss added: the
  Gaussians predicted from the context views are rendered into held-out target views
  (:func:`render_targets`) and compared with them (MSE, SSIM, depth; VGG with local weights).
* AdamW (betas 0.9, 0.95; no decay on biases and 1-D parameters), linear warm-up then cosine
  (:func:`lr_factor`), optional gradient clipping; bf16 autocast on CUDA.
* pose noise: the poses fed to stages 2 and 3 are perturbed (:func:`perturb_pose_encoding`)
  through the model's ``pose_noise`` hook (probability 0.6, +-7.5 / +-5 degrees).
* ``out_dir``: ``checkpoint.pt`` (atomic: written to ``checkpoint.pt.tmp`` then
  ``os.replace``; model, optimizer, scheduler, RNG states, step, config), ``log.jsonl`` (one
  JSON record per logged step / validation), ``loss_curves.png``, ``config.yaml``.
* resume (``run.resume: auto``): continues bit-identically from ``checkpoint.pt``; refuses a
  checkpoint written under a different config (every field outside ``run``); Ctrl-C saves
  the last completed step first; a non-finite loss stops the run naming the step and scenes.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import random
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from flare_nb.train_config import TrainConfig, config_diff, load_config, seed_list

__all__ = ["train", "TrainResult", "build_model", "make_datasets", "compute_losses", "perturb_pose_encoding",
           "pose_noise_hook", "lr_factor", "frozen_prefixes", "select_trainable", "make_optimizer",
           "save_checkpoint", "load_checkpoint", "load_trained_model", "evaluate", "plot_curves",
           "read_log", "launch_ddp", "main", "CHECKPOINT_NAME", "NonFiniteLossError", "init_weights",
           "split_context_target", "cameras_in_prediction_frame", "render_targets", "orbit_arc_at"]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
PLOT_NAME = "loss_curves.png"
FORMAT = "flare_nb.train/1"

#: Module-name prefixes of each part of ``FlareModel`` (the first component of a parameter name).
ENCODER_MODULES = ("patch_embed", "enc_blocks", "enc_norm")
COARSE_POSE_MODULES = ("patch_embed_coarse2", "enc_norm_coarse", "decoder_embed", "dec_blocks", "dec_blocks2",
                       "cam_cond_encoder", "cam_cond_embed", "dec_cam_norm", "pose_token_ref",
                       "pose_token_source", "pose_head")


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN / inf; the message names the step and the scenes."""


# ============================================================================ model
def build_model(cfg: TrainConfig):
    """``FlareModel`` of ``cfg.model`` (a preset of :mod:`flare_nb.config`) with
    ``cfg.model_overrides``, initialised from ``cfg.seed`` (same seed -> same weights)."""
    from flare_nb import config as mc
    from flare_nb.model import FlareModel

    base = getattr(mc, cfg.model)()
    try:
        fc = base.replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.model_overrides.items()})
    except TypeError as e:
        raise ValueError(f"config model_overrides {cfg.model_overrides}: {e} (use FlareConfig field names)") from None
    if fc.kind != base.kind:
        raise ValueError(f"config model_overrides set kind={fc.kind!r} on the {base.kind} preset {cfg.model!r}; "
                         "choose the preset of that kind instead (tiny / tiny_nvs, official_geometry / official_nvs)")
    torch.manual_seed(cfg.seed)
    return FlareModel(fc)


def init_weights(model, path) -> str:
    """Start ``model`` from the weights of another run (``init_from``): every tensor whose name
    and shape the checkpoint shares is copied; returns a one-paragraph report.

    ``path``: a training checkpoint (``checkpoint.pt``) or a shipped one (``{'model': sd}``,
    ``.safetensors``). Typical use is cascade stage 2: a stage-1 geometry checkpoint starts
    the NVS model; its ``downstream_head1`` (the camera-centric head the NVS model does not
    have) is skipped and the NVS-only parts keep their initialisation. Raises ``ValueError``
    when a shared name has another shape (a checkpoint of another configuration) or when the
    checkpoint shares fewer than half of the model's tensors (not a FLARE checkpoint of this
    size). The model is untouched on error."""
    from flare_nb.checkpoint import read_state_dict

    sd = read_state_dict(path)
    own = model.state_dict()
    shared = [k for k in own if k in sd]
    bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in shared
           if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"init_from {path}: {len(bad)} tensors do not fit this model (another configuration?): "
                         + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
                         + ". Use the checkpoint of a run with the same model sizes")
    if len(shared) < len(own) / 2:
        raise ValueError(f"init_from {path}: only {len(shared)} of the model's {len(own)} tensors are in the "
                         "checkpoint; it is not a FLARE checkpoint of this model")
    with torch.no_grad():
        for k in shared:
            own[k].copy_(sd[k].to(own[k].dtype))
    fresh = sorted({k.split(".")[0] for k in own if k not in sd})
    unused = sorted({k.split(".")[0] for k in sd if k not in own})
    return (f"initialised {len(shared)}/{len(own)} tensors from {path}; new (initialised here): "
            f"{', '.join(fresh) or 'none'}; in the checkpoint but not in this model: {', '.join(unused) or 'none'}")


def frozen_prefixes(cfg: TrainConfig) -> tuple[str, ...]:
    """Top-level module names whose parameters are not trained: the encoder with
    ``freeze_encoder``; the coarse pose predictor (stage 1) in cascade stage 2."""
    out = ()
    if cfg.freeze_encoder:
        out += ENCODER_MODULES
    if cfg.stage == 2:
        out += COARSE_POSE_MODULES
    return out


def select_trainable(model, cfg: TrainConfig, device) -> tuple[list[str], list[str]]:
    """Mark the parameters to train (``requires_grad``) and return ``(trained, skipped)`` names.

    Skipped: :func:`frozen_prefixes`, and parameters no training loss reaches -- found with one
    forward/backward on a ``(1, 2, 3, m, m)`` probe (m = ``cfg.multiple``), e.g. the local-feature
    MLPs of the DPT heads (only the Gaussian head reads them) and ``model.inert_parameter_names()``.
    Leaving them out keeps DDP's gradient buckets complete and AdamW from decaying them."""
    frozen = frozen_prefixes(cfg)
    for n, p in model.named_parameters():
        p.requires_grad_(n.split(".")[0] not in frozen)
    m = model.cfg.multiple
    probe = torch.full((1, 2, 3, m, m), -0.5, device=device)
    probe[..., ::2, :] = 0.5
    model.zero_grad(set_to_none=True)
    intr = torch.tensor([[[m, m, m / 2, m / 2]] * 2], dtype=torch.float32, device=device)
    match = model.cfg.kind == "geometry" and cfg.loss.match_weight > 0    # the matching loss reads head 1's descriptors
    out = model(probe, intrinsics=intr, **({"local_features": True} if match else {}))
    parts = [out.pose_enc_stage1, out.pose_enc_stage2, out.pts3d_global, out.conf_global]
    if match:
        parts.append(out.local_features["cam"][..., :-1])
    parts += [t for t in (out.pts3d_cam, out.conf_cam) if t is not None]
    parts += list((out.gaussians_raw or {}).values())
    sum(t.float().mean() for t in parts).backward()
    inert = set(model.inert_parameter_names()) if hasattr(model, "inert_parameter_names") else set()
    trained, skipped = [], []
    for n, p in model.named_parameters():
        used = p.requires_grad and p.grad is not None and n not in inert
        p.requires_grad_(used)
        (trained if used else skipped).append(n)
    model.zero_grad(set_to_none=True)
    return trained, skipped


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


# ============================================================================ pose noise
def _hamilton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Quaternion product ``a * b`` (w, x, y, z): the rotation of ``b`` followed by ``a``."""
    w1, x1, y1, z1 = a.unbind(-1)
    w2, x2, y2, z2 = b.unbind(-1)
    return torch.stack((w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2), -1)


def perturb_pose_encoding(enc: torch.Tensor, prob: float, max_rot_deg: float, trans_std: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Pose-noise augmentation on pose encodings ``(..., V, 9) = [T, q (w x y z), focal]``.

    Each view except view 0 is, with probability ``prob``, rotated by a random angle in
    ``[-max_rot_deg, max_rot_deg]`` about a random axis and shifted by ``N(0, trans_std^2)``
    times the mean translation norm (:func:`flare_nb.losses.perturb_poses` on the decoded
    camera-to-world poses). The quaternion is multiplied by the noise rotation, so its norm and
    sign are kept; focal logits are untouched. Detached; same shape and dtype. A quaternion of
    (near) zero norm (an untrained pose head) is treated as the identity rotation.
    """
    from flare_nb.cameras import matrix_to_quat, quat_to_matrix
    from flare_nb.losses import perturb_poses

    enc = enc.detach()
    T, q = enc[..., :3].float(), enc[..., 3:7].float()
    n = q.norm(dim=-1, keepdim=True)
    ok = torch.isfinite(q).all(-1, keepdim=True) & (n > 1e-6)
    q_safe = torch.where(ok, q / n.clamp_min(1e-6), torch.tensor([1.0, 0, 0, 0], device=q.device))
    c2w = torch.zeros(*T.shape[:-1], 4, 4, device=T.device)
    c2w[..., :3, :3] = quat_to_matrix(q_safe)
    c2w[..., :3, 3] = T
    c2w[..., 3, 3] = 1
    out = perturb_poses(c2w, prob=prob, max_rot_deg=max_rot_deg, trans_std=trans_std, generator=generator)
    dq = matrix_to_quat(out[..., :3, :3] @ c2w[..., :3, :3].transpose(-1, -2))
    q_new = torch.where(ok, _hamilton(dq, q), q)
    return torch.cat((out[..., :3, 3], q_new, enc[..., 7:].float()), -1).to(enc.dtype)


def _generator(seed: int, step: int, slot: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + slot * 8 + salt)


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
                                                      _generator(cfg.seed, step, int(s), stage))
                                for i, s in enumerate(slots)])

    return hook


def _model_takes_pose_noise(model) -> bool:
    m = model.module if hasattr(model, "module") else model
    return "pose_noise" in inspect.signature(m.forward).parameters


# ============================================================================ data
def make_datasets(cfg: TrainConfig):
    """``(train, val)`` datasets of :class:`~flare_nb.scenes.Scene` for ``cfg.data``."""
    d = cfg.data
    if d.kind == "synthetic":
        from flare_nb.synthetic import SyntheticDataset

        kw = dict(n_objects=d.n_objects, orbit_arc=tuple(d.orbit_arc))
        n = d.n_views + _n_targets(cfg)           # stage 2: target views come from the same sequence
        train = SyntheticDataset(seed_list(d.train_seeds), n, tuple(d.size), d.modes, cache=d.cache, **kw)
        vs = seed_list(d.val_seeds)
        val = SyntheticDataset(vs, n, tuple(d.size), d.modes, **kw) if vs else []
        return train, val
    from flare_nb.scenes import load_scene

    size = (int(d.size[0]), int(d.size[1]))            # (W, H), as load_scene takes it
    return [load_scene(p, size=size) for p in d.paths], [load_scene(p, size=size) for p in d.val_paths]


def _n_targets(cfg: TrainConfig) -> int:
    return cfg.render.n_targets if cfg.stage == 2 else 0


def split_context_target(n_total: int, n_targets: int) -> tuple[list[int], list[int]]:
    """``(context, target)`` view indices of a sequence of ``n_total`` views: the targets are
    ``n_targets`` interior views spread evenly (so they lie between context views: novel-view
    interpolation, the protocol FLARE is evaluated with); view 0 and the last view are always
    context. E.g. ``(6, 2) -> ([0, 2, 3, 5], [1, 4])``."""
    if n_targets == 0:
        return list(range(n_total)), []
    if n_total - n_targets < 2:
        raise ValueError(f"{n_total} views cannot hold {n_targets} target views and at least 2 context views")
    tgt = sorted({int(round(x)) for x in np.linspace(1, n_total - 2, n_targets)})
    if len(tgt) < n_targets:              # more targets than interior spacing allows: take the first free ones
        tgt = sorted(set(tgt) | set([i for i in range(1, n_total - 1) if i not in tgt][:n_targets - len(tgt)]))
    return [i for i in range(n_total) if i not in tgt], tgt


def _as_sample(item, where: str, n_views: int, gen: torch.Generator, n_targets: int = 0) -> dict:
    """A dataset item (``Scene`` or dict with images/K/c2w[/depth]) -> dict of tensors with
    ``n_views`` views (a random subset, in their original order, when the scene has more); with
    ``n_targets``, ``n_views + n_targets`` views are taken and split by :func:`split_context_target`
    into the context (``images``, ...) and the targets (``target_images``, ``target_K``,
    ``target_c2w``, ``target_depth``)."""
    if isinstance(item, dict):
        get = item.get
    else:
        get = lambda k: getattr(item, k, None)  # noqa: E731
    images, K, c2w, depth = get("images"), get("K"), get("c2w"), get("depth")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{where}: expected a Scene (or dict) with images (V, 3, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(item).__name__}")
    V = images.shape[0]
    if V < 2:
        raise ValueError(f"{where}: the scene has {V} view(s); FLARE needs at least 2 views per sample")
    need = n_views + n_targets
    if V < need:
        extra = f" + render.n_targets = {n_targets}" if n_targets else ""
        raise ValueError(f"{where}: the scene has {V} views but data.n_views = {n_views}{extra}; "
                         f"lower data.n_views{' or render.n_targets' if n_targets else ''}")
    idx = torch.arange(V)
    if V > need:
        idx = torch.randperm(V, generator=gen)[:need].sort().values
    src = get("source") or where
    ctx, tgt = split_context_target(need, n_targets)
    out = {}
    for prefix, sel in (("", idx[ctx]), ("target_", idx[tgt])):
        if prefix and not n_targets:
            continue
        out.update({f"{prefix}images": images[sel].float(), f"{prefix}K": K[sel].float(),
                    f"{prefix}c2w": c2w[sel].float(), f"{prefix}depth": None if depth is None else depth[sel].float()})
    out["source"] = str(src)
    return out


def orbit_arc_at(cfg: TrainConfig, step: int) -> tuple[float, float] | None:
    """The synthetic orbit spread of training step ``step`` under the curriculum
    (``data.orbit_arc_start`` -> ``data.orbit_arc`` linearly over ``data.curriculum_steps``),
    or None without one (the dataset's own ``orbit_arc``). Depends on the step only, so resuming
    and any number of processes see the same scenes."""
    d = cfg.data
    if not d.curriculum_steps or d.orbit_arc_start is None:
        return None
    f = min(1.0, step / d.curriculum_steps)
    return tuple(float(a + f * (b - a)) for a, b in zip(d.orbit_arc_start, d.orbit_arc))


class _StepBatches(torch.utils.data.Dataset):
    """Map-style dataset over steps: item ``step`` is this process's part of global batch ``step``.

    Global sample position ``p = step * B + slot`` -> epoch ``p // N``, dataset index
    ``perm_epoch[p % N]`` with ``perm_epoch`` a permutation seeded by ``(seed, epoch)``."""

    def __init__(self, dataset, cfg: TrainConfig, slots: list[int]):
        self.dataset, self.cfg, self.slots = dataset, cfg, slots
        self.n = len(dataset)
        self._perms: dict[int, torch.Tensor] = {}

    def index(self, p: int) -> int:
        epoch = p // self.n
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(
                self.cfg.seed * 7919 + epoch))
        return int(self._perms[epoch][p % self.n])

    def __len__(self):
        return self.cfg.steps

    def __getitem__(self, step: int) -> dict:
        B = self.cfg.batch_size
        arc = orbit_arc_at(self.cfg, step) if hasattr(self.dataset, "scene") else None
        samples, ids = [], []
        for s in self.slots:
            i = self.index(step * B + s)
            ids.append(i)
            item = self.dataset.scene(i, orbit_arc=arc) if arc is not None else self.dataset[i]
            samples.append(_as_sample(item, f"training dataset item {i}", self.cfg.data.n_views,
                                      _generator(self.cfg.seed, step, s, 7), _n_targets(self.cfg)))
        return _collate(samples, ids, self.slots)


def _collate(samples: list[dict], ids, slots) -> dict:
    shapes = {tuple(s["images"].shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"scenes of one batch must share (V, 3, H, W), got {sorted(shapes)} for "
                         f"{[s['source'] for s in samples]}; resize them (data.size) first")
    out = {"source": [s["source"] for s in samples], "index": list(ids), "slot": list(slots)}
    for prefix in ("", "target_") if "target_images" in samples[0] else ("",):
        for k in ("images", "K", "c2w"):
            out[prefix + k] = torch.stack([s[prefix + k] for s in samples])
        has_depth = all(s[prefix + "depth"] is not None for s in samples)
        out[prefix + "depth"] = torch.stack([s[prefix + "depth"] for s in samples]) if has_depth else None
    return out


# ============================================================================ losses
def compute_losses(out, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """Training loss of one batch: ``(loss, parts)``.

    ``out``: a ``FlareOutput``; ``batch``: ``c2w (b, V, 4, 4)``, ``K (b, V, 3, 3)``, ``depth
    (b, V, H, W)`` (0 = no data; may be None when ``loss.geometry_weight`` is 0). The pose loss
    runs over all stage-1 then stage-2 pose iterations (:func:`flare_nb.losses.pose_loss`); the
    geometry loss (:func:`flare_nb.losses.geometry_loss`) is computed per scene and averaged over
    the scenes. Everything in float32. ``parts`` holds detached scalars ``pose``, ``geometry``,
    ``pose_rot``, ``pose_trans``, ``geo_cam``, ``geo_global``.
    """
    from flare_nb.cameras import unproject_depth
    from flare_nb.losses import geometry_loss, pose_loss

    L = cfg.loss
    c2w = batch["c2w"].float()
    total = c2w.new_zeros(())
    parts = {}
    if L.pose_weight > 0:
        encs = list(out.pose_enc_stage1.float()) + list(out.pose_enc_stage2.float())
        lp, pp = pose_loss(encs, c2w, gamma=L.pose_gamma, weight=L.pose_weight, kind=L.pose_kind)
        total = total + lp
        parts.update(pose=lp.detach(), **pp)
    if L.geometry_weight > 0:
        depth = batch.get("depth")
        if depth is None:
            raise ValueError(f"scenes {batch.get('source')} have no depth, but loss.geometry_weight = "
                             f"{L.geometry_weight}; set loss.geometry_weight: 0 to train the poses only")
        depth = depth.float()
        valid = depth > 0
        gt_cam = unproject_depth(depth, batch["K"].float())
        per, cam, glob = [], [], []
        for b in range(depth.shape[0]):
            s = slice(b, b + 1)
            has_cam = out.pts3d_cam is not None     # the NVS model has no camera-centric head
            if not bool(valid[s].any()):     # nothing to fit: zero that keeps every parameter in the graph
                z = out.pts3d_global[s].float().sum() + out.conf_global[s].float().sum()
                if has_cam:
                    z = z + out.pts3d_cam[s].float().sum() + out.conf_cam[s].float().sum()
                per.append(0.0 * z)
                continue
            lg, gp = geometry_loss(out.pts3d_cam[s].float() if has_cam else None,
                                   out.conf_cam[s].float() if has_cam else None, out.pts3d_global[s].float(),
                                   out.conf_global[s].float(), gt_cam[s], c2w[s], valid[s],
                                   w_cam=L.w_cam, w_global=L.w_global, alpha=L.conf_alpha)
            per.append(lg)
            cam.append(gp["geo_cam"])
            glob.append(gp["geo_global"])
        lg = torch.stack(per).mean()
        total = total + L.geometry_weight * lg
        parts["geometry"] = lg.detach()
        if cam:
            parts.update(geo_cam=torch.stack(cam).mean(), geo_global=torch.stack(glob).mean())
    if L.match_weight > 0:
        from flare_nb.correspondence import match_loss

        if out.local_features is None or batch.get("depth") is None:
            raise ValueError("loss.match_weight > 0 needs depth in the data and the descriptor branch "
                             "(the model run with local_features=True)")
        desc = out.local_features["cam"][..., :-1]              # the last channel is a confidence
        lm = match_loss(desc, batch["depth"].float(), batch["K"].float(), c2w, n_samples=L.match_samples,
                        tau=L.match_tau)
        total = total + L.match_weight * lm
        parts["match"] = lm.detach()
    if cfg.stage == 2:
        lr_, rp = render_loss(out, batch, cfg)
        total = total + lr_
        parts.update(render=lr_.detach(), **rp)
    return total, parts


def cameras_in_prediction_frame(c2w_context: torch.Tensor, c2w: torch.Tensor, scale) -> torch.Tensor:
    """Ground-truth cameras ``c2w (T, 4, 4)`` (world frame) expressed in the frame of a FLARE
    prediction: view 0's camera frame (``c2w_context[0]``) with lengths multiplied by ``scale``
    (prediction units per world unit, :func:`render_targets`). Returns ``(T, 4, 4)``."""
    from flare_nb.cameras import invert_pose

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
    the :class:`~flare_nb.rasterize.RenderOutput` (``rgb (T, 3, H, W)``, ``depth``, ``alpha``),
    the ground-truth images ``(T, 3, H, W)`` and depths ``(T, H, W)`` (or None). Pass back the
    returned ``scale`` to render the same scene into other cameras without recomputing it."""
    from flare_nb.cameras import transform_points, unproject_depth
    from flare_nb.losses import mean_distance
    from flare_nb.splats import render_views

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


_PERCEPTUAL: dict = {}


def render_loss(out, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """Stage 2's rendering loss over the scenes of a batch (mean over scenes), see
    :class:`~flare_nb.train_config.RenderConfig`. ``parts``: ``render_mse``, ``render_ssim``
    (the SSIM itself, not the loss), ``render_depth``, ``render_perceptual`` (when on) and
    ``psnr`` (dB, of the rendered target views)."""
    from flare_nb.render_losses import PerceptualLoss, depth_loss, mse, ssim

    R = cfg.render
    if out.gaussians is None:
        raise ValueError("stage 2 needs the NVS model's Gaussians (model: tiny_nvs); this model has no Gaussian head")
    which = (["target"] if R.n_targets else []) + (["context"] if R.render_context else [])
    perc = None
    if R.perceptual_weight > 0:
        key = str(R.vgg_weights)
        if key not in _PERCEPTUAL:
            _PERCEPTUAL[key] = PerceptualLoss(R.vgg_weights)
        perc = _PERCEPTUAL[key].to(batch["images"].device)
    totals, acc = [], {}
    for b in range(batch["images"].shape[0]):
        sample = {k: (v[b] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        if not bool(torch.isfinite(out.pts3d_global[b].detach()).all()):
            # a diverged prediction: a NaN loss lets the trainer stop and name the step and scenes
            totals.append(out.pts3d_global[b].float().sum() * float("nan"))
            continue
        scale = None                    # the scene's prediction scale: computed once, reused for every camera set
        for w in which:
            rend, img, dep, scale = render_targets(out.gaussians[b], out.pts3d_global[b], sample, w, scale=scale)
            pred = rend.rgb.clamp(0, 1)
            l_mse = mse(rend.rgb, img)
            s = ssim(rend.rgb, img, padding="same")
            loss = R.mse_weight * l_mse + R.ssim_weight * (1 - s)
            part = {"render_mse": l_mse.detach(), "render_ssim": s.detach(),
                    "psnr": (-10 * torch.log10(mse(pred.detach(), img).clamp_min(1e-10)))}
            if R.depth_weight > 0 and dep is not None:
                ok = (dep > 0) & (rend.alpha.detach() > 0.5)
                if all(int(m.sum()) >= 2 for m in ok):
                    ld = depth_loss(rend.depth, dep, ok, scale_invariant=True)
                    loss = loss + R.depth_weight * ld
                    part["render_depth"] = ld.detach()
            if perc is not None:
                lp = perc(rend.rgb, img)
                loss = loss + R.perceptual_weight * lp
                part["render_perceptual"] = lp.detach()
            totals.append(loss)
            for k, v in part.items():
                acc.setdefault(k, []).append(v)
    return torch.stack(totals).mean(), {k: torch.stack(v).mean() for k, v in acc.items()}


# ============================================================================ checkpoints
def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` with ``torch.save`` atomically: to ``path.tmp<pid>`` first, flushed to disk,
    then ``os.replace``; a crash mid-write leaves the previous checkpoint untouched."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path) -> dict:
    """Load a training checkpoint (``weights_only=True``) with clear errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable training checkpoint ({type(e).__name__}: {e}); "
                         "it may be truncated -- delete it to start over") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"{path} is not a flare_nb training checkpoint (expected format {FORMAT!r})")
    return ck


def load_trained_model(path, device="cpu"):
    """``FlareModel`` with the weights of a training checkpoint (eval mode), for notebooks."""
    from flare_nb.config import FlareConfig
    from flare_nb.model import FlareModel

    ck = load_checkpoint(path)
    mc = {k: tuple(v) if isinstance(v, list) else v for k, v in ck["model_config"].items()}
    model = FlareModel(FlareConfig(**mc))
    model.load_state_dict(ck["model"])
    return model.to(device).eval()


def _rng_state() -> dict:
    np_state = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                    "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


# ============================================================================ log and plot
def read_log(path) -> list[dict]:
    """The records of a ``log.jsonl`` (``[]`` when absent)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(log_path, png_path=None):
    """Loss curves of a run (train loss, its parts, validation loss and pose accuracy, with the
    blind priors' AUC@30 as horizontal lines when the log has them) from its ``log.jsonl``; saved
    atomically to ``png_path`` when given. Returns the matplotlib figure."""
    from matplotlib.figure import Figure      # no pyplot: leaves a notebook's backend alone

    recs = read_log(log_path)
    tr = [r for r in recs if r.get("kind") == "train"]
    va = [r for r in recs if r.get("kind") == "val"]
    fig = Figure(figsize=(11, 4))
    ax, ax2 = fig.subplots(1, 2)
    for key, style in (("loss", "-"), ("pose", "--"), ("geometry", ":"), ("render", "-."), ("match", (0, (1, 3)))):
        pts = [(r["step"], r[key]) for r in tr if key in r]
        if pts:
            ax.plot(*zip(*pts), ls=style, label=f"train {key}")
    if va:
        ax.plot([r["step"] for r in va], [r["loss"] for r in va], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    if tr and min(r["loss"] for r in tr) > 0:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    for key in ("RRA@15", "RTA@15", "AUC@30", "psnr"):
        pts = [(r["step"], r[key] * (100 if key.startswith("AUC") else 1)) for r in va if key in r]
        if pts:
            ax2.plot(*zip(*pts), "o-", label={"AUC@30": "AUC@30 x100", "psnr": "target PSNR dB"}.get(key, key + " %"),
                     **({"color": "C2"} if key == "AUC@30" else {}))
    colours = {"AUC@30": "C2", "pose_L1": "C3"}
    for r in (r for r in recs if r.get("kind") == "prior" and "AUC@30" in r):     # blind priors: the bar to beat
        style = {"straight": ":", "constant": "--", "per_view": "-."}.get(r.get("prior"), ":")
        ax2.axhline(100 * r["AUC@30"], color=colours["AUC@30"], ls=style, lw=1,
                    label=f"AUC@30 x100 of the {r.get('prior')} prior")
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 100)
    ax2.set_title("validation: pose accuracy" + (", novel views" if any("psnr" in r for r in va) else ""))
    if va:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    if png_path is not None:
        png_path = Path(png_path)
        tmp = png_path.with_name(png_path.name + ".tmp")
        fig.savefig(tmp, format="png", dpi=90)
        os.replace(tmp, png_path)
    return fig


# ============================================================================ evaluation
def _c2w_from_encoding(enc: torch.Tensor) -> torch.Tensor:
    from flare_nb.pose_predictor import quaternion_to_rotation

    enc = enc.float()
    c2w = torch.zeros(*enc.shape[:-1], 4, 4, device=enc.device)
    c2w[..., :3, :3] = quaternion_to_rotation(enc[..., 3:7])
    c2w[..., :3, 3] = enc[..., :3]
    c2w[..., 3, 3] = 1
    return c2w


@torch.no_grad()
def evaluate(model, dataset, cfg: TrainConfig, device="cpu", amp_dtype=None) -> dict:
    """Validation: mean loss (no pose noise) and pose accuracy of the refined pose (last stage-2
    iteration) over ``dataset`` (scenes), one scene at a time. Returns ``{"loss", "pose",
    "geometry", "RRA@5", "RRA@15", "RTA@15", "AUC@30", "n_scenes"}`` (percent / [0, 1] as
    :func:`flare_nb.metrics.pose_metrics`); in stage 2 also ``render``, ``psnr`` (dB) and
    ``render_ssim`` of the held-out target views."""
    from flare_nb.metrics import pose_l1, pose_metrics

    was_training = model.training
    model.eval()
    acc: dict[str, list] = {}
    try:
        for i in range(len(dataset)):
            b = _collate([_as_sample(dataset[i], f"validation item {i}", cfg.data.n_views,
                                     _generator(cfg.seed, 0, i, 5), _n_targets(cfg))], [i], [0])
            images = b["images"].to(device) * 2 - 1
            with _autocast(torch.device(device), amp_dtype):
                out = model(images, **_model_inputs(model, b, device),
                            **({"local_features": True} if cfg.loss.match_weight > 0 else {}))
            loss, parts = compute_losses(out, b_to(b, device), cfg)
            pred = _c2w_from_encoding(out.pose_enc_stage2[-1][0]).cpu()
            pm = pose_metrics(pred, b["c2w"][0])
            pm["pose_L1"] = pose_l1(pred, b["c2w"][0])
            c1 = _c2w_from_encoding(out.pose_enc_stage1[-1][0]).cpu()
            pm1 = pose_metrics(c1, b["c2w"][0])
            keep = ("pose", "geometry", "match", "render", "psnr", "render_ssim")
            vals = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items() if k in keep},
                    **{k: pm[k] for k in ("RRA@5", "RRA@15", "RTA@15", "AUC@30", "pose_L1")},
                    "AUC@30/stage1": pm1["AUC@30"], "pose_L1/stage1": pose_l1(c1, b["c2w"][0])}
            mode = _mode_of(b["source"][0])
            if mode:                                  # per-mode pose accuracy (orbit is the hard one)
                vals.update({f"{k}/{mode}": pm[k] for k in ("RRA@15", "RTA@15", "AUC@30", "pose_L1")})
            for k, v in vals.items():
                acc.setdefault(k, []).append(v)
    finally:
        model.train(was_training)
    res = {k: float(np.mean(v)) for k, v in acc.items()}
    res["n_scenes"] = len(dataset)
    return res


def _mode_of(source: str) -> str | None:
    """``"orbit"`` for a source ``"synthetic:orbit:seed=..."``, None for other scenes."""
    return source.split(":")[1] if source.startswith("synthetic:") else None


def prior_records(cfg: TrainConfig, dataset, val_dataset) -> list[dict]:
    """The blind pose priors (:mod:`flare_nb.priors`) scored on the validation scenes, one log
    record per prior (``kind: "prior"``): ``straight``, and ``constant`` / ``per_view`` fitted on
    the cameras of up to 512 TRAINING scenes per mode (synthetic data; otherwise on the training
    scenes themselves). A model that has learned something beats all three."""
    from flare_nb.priors import fit_priors, score_priors

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
                mode = _mode_of(str((item.get("source") if isinstance(item, dict) else item.source) or "")) or "scenes"
            if salt is not None:       # the context views validation picks (same draw as evaluate())
                dummy = {"images": torch.zeros(c2w.shape[0], 3, 1, 1), "K": torch.eye(3).repeat(c2w.shape[0], 1, 1),
                         "c2w": c2w, "depth": None}
                c2w = _as_sample(dummy, "prior", V, _generator(cfg.seed, 0, i, salt), _n_targets(cfg))["c2w"]
            out.append((mode, c2w[:V].float()))
        return out

    if not len(val_dataset):
        return []
    train_traj = trajectories(dataset, 512 * max(1, len(cfg.data.modes)), salt=7)
    fitted = {m: fit_priors([c for mm, c in train_traj if mm == m]) for m in {mm for mm, _ in train_traj}}
    scored = score_priors(trajectories(val_dataset, salt=5), fitted)
    return [{"kind": "prior", "prior": k, "step": 0, **v} for k, v in scored.items()]


def _model_inputs(model, batch: dict, device) -> dict:
    """Extra forward arguments: the NVS model takes the context intrinsics ``K (B, V, 3, 3)``."""
    m = model.module if hasattr(model, "module") else model
    return {"intrinsics": batch["K"].to(device)} if m.cfg.kind == "nvs" else {}


def b_to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ============================================================================ the loop
@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (unwrapped, on its device), the step
    reached, the output folder, the checkpoint path, the logged records and the last validation."""

    model: object
    step: int
    out_dir: Path
    checkpoint: Path
    history: list = field(default_factory=list)
    val: dict = field(default_factory=dict)


def _dist_env():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return world, rank, local


def train(cfg: TrainConfig, dataset=None, val_dataset=None, stop_at: int | None = None, callback=None) -> TrainResult:
    """Run (or resume) the training of ``cfg``; see the module docstring.

    Args:
        cfg: a :class:`~flare_nb.train_config.TrainConfig` (e.g. from ``load_config``).
        dataset / val_dataset: optional indexable collections of ``Scene`` (or dicts with
            ``images (V, 3, H, W)`` in [0, 1], ``K``, ``c2w``, ``depth``) replacing ``cfg.data``.
        stop_at: stop (with a checkpoint) after this many steps, as if interrupted; the
            schedule still runs to ``cfg.steps`` and a later call resumes.
        callback: ``callback(record: dict)`` after every step (``kind="train"``) and validation
            (``kind="val"``), e.g. for live plots; it may raise ``KeyboardInterrupt`` to stop.

    Runs under ``torchrun`` (or :func:`launch_ddp`) with one process per ``WORLD_SIZE``: gloo on
    CPU, NCCL on GPUs; ``batch_size`` is the global batch and must divide by the process count.
    """
    from flare_nb.device import autocast_dtype, resolve_device

    cfg = TrainConfig.from_dict(cfg.to_dict()).validate() if isinstance(cfg, TrainConfig) else \
        TrainConfig.from_dict(cfg).validate()
    world, rank, local = _dist_env()
    created_pg = False
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        backend = "nccl" if (torch.cuda.is_available() and cfg.run.device != "cpu") else "gloo"
        dist.init_process_group(backend)
        created_pg = True
    if cfg.batch_size % world:
        raise ValueError(f"batch_size = {cfg.batch_size} (the global batch) must be divisible by the "
                         f"number of processes ({world})")
    threads = torch.get_num_threads()
    try:
        return _train(cfg, dataset, val_dataset, stop_at, callback, world, rank, local, resolve_device,
                      autocast_dtype)
    finally:
        torch.set_num_threads(threads)
        if created_pg:
            dist.destroy_process_group()


def _train(cfg, dataset, val_dataset, stop_at, callback, world, rank, local, resolve_device, autocast_dtype):
    from tqdm.auto import tqdm

    R = cfg.run
    if R.threads:
        torch.set_num_threads(R.threads)
    device = resolve_device(R.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    amp = {"auto": autocast_dtype(device), "bf16": torch.bfloat16, "off": None}[R.amp]
    out_dir = Path(R.out_dir)
    ck_path = out_dir / CHECKPOINT_NAME
    main_proc = rank == 0
    ddp = world > 1

    def say(msg):
        if main_proc:
            (tqdm.write if R.progress else print)(msg)

    # ------------------------------------------------------------ data
    if dataset is None:
        dataset, val_default = make_datasets(cfg)
        if val_dataset is None:
            val_dataset = val_default
    if val_dataset is None:
        val_dataset = []
    try:
        n = len(dataset)
    except TypeError:
        raise ValueError("dataset must be an indexable collection with len() (a list of Scenes, a "
                         "SyntheticDataset, ...)") from None
    if n == 0:
        raise ValueError("the training dataset is empty: no scene to train on (check data.paths / "
                         "data.train_seeds, or the dataset passed to train())")
    b_local = cfg.batch_size // world
    slots = list(range(rank * b_local, (rank + 1) * b_local))
    steps_ds = _StepBatches(dataset, cfg, slots)
    steps_ds[0]                      # fail fast on a malformed scene (one view, no depth, wrong shape)

    # ------------------------------------------------------------ resume
    out_dir.mkdir(parents=True, exist_ok=True)
    start = 0
    resume_from = None
    if R.resume not in (False, None, "auto", "false", "no"):
        resume_from = Path(R.resume)
        if not resume_from.exists():
            raise FileNotFoundError(f"run.resume = {R.resume!r}: no such checkpoint")
    elif ck_path.exists():
        if R.resume == "auto":
            resume_from = ck_path
        else:
            raise FileExistsError(f"{out_dir} already holds a checkpoint ({ck_path}); set run.resume: auto to "
                                  "continue it, or choose another run.out_dir (nothing was overwritten)")
    for stale in sorted(out_dir.glob(CHECKPOINT_NAME + ".tmp*")) if main_proc else ():
        warnings.warn(f"removing {stale}: a checkpoint write that never finished (the run was killed while "
                      f"saving); {ck_path.name} holds the last complete state", stacklevel=2)
        stale.unlink(missing_ok=True)
    ck = None
    if resume_from is not None:
        ck = load_checkpoint(resume_from)
        diff = config_diff(ck["config"], cfg.to_dict())
        if diff:
            raise ValueError(f"cannot resume from {resume_from}: it was written by a run with another "
                             f"configuration ({'; '.join(diff)}). Only run.* settings may change on resume; "
                             "restore the config or start a new run.out_dir")
    # ------------------------------------------------------------ model, optimizer
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    init_note = init_weights(model, cfg.init_from) if (cfg.init_from and ck is None) else None
    model = model.to(device)
    model.train()
    trained, skipped = select_trainable(model, cfg, device)
    opt, sched = make_optimizer(model, cfg)
    if cfg.pose_noise.prob > 0 and not _model_takes_pose_noise(model):
        warnings.warn("FlareModel.forward has no pose_noise hook: the pose-noise augmentation is off",
                      stacklevel=2)

    if ck is not None:
        missing, unexpected = model.load_state_dict(ck["model"], strict=False)
        if missing or unexpected:
            raise ValueError(f"{resume_from}: model weights do not fit the model (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        start = int(ck["step"])
        say(f"resumed {resume_from} at step {start}/{cfg.steps}")
    history = [r for r in read_log(out_dir / LOG_NAME) if r.get("step", 0) <= start] if start else []
    priors: list[dict] = []
    if main_proc:
        _write_log(out_dir / LOG_NAME, history)
        import yaml

        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if init_note:
            say(init_note)
        priors = [r for r in history if r.get("kind") == "prior"]
        if not priors:
            priors = prior_records(cfg, dataset, val_dataset)
            for r in priors:
                history.append(r)
                _append_log(out_dir / LOG_NAME, r)
        if priors:
            say("blind priors on the validation scenes (pose L1 / AUC@30): " + ", ".join(
                f"{r['prior']} {r['pose_L1']:.3f} / {r['AUC@30']:.3f}" for r in priors))
        if start == 0:
            say(f"training {sum(model.get_parameter(n).numel() for n in trained):,} parameters "
                f"({len(skipped)} tensors not trained: {_summarise(skipped)}) on {device}"
                f"{f' x {world} processes' if ddp else ''}")
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if ddp else model
    takes_noise = _model_takes_pose_noise(model)
    params = [p for p in model.parameters() if p.requires_grad]

    def state(step):
        return {"format": FORMAT, "step": step, "config": cfg.to_dict(), "model_config": model.cfg.to_dict(),
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": _rng_state(), "world_size": world, "trained": trained, "time": time.time()}

    saved = [start]

    def checkpoint(step):
        saved[0] = step
        if main_proc:
            save_checkpoint(ck_path, state(step))
            if (out_dir / LOG_NAME).exists():
                plot_curves(out_dir / LOG_NAME, out_dir / PLOT_NAME)
        if ddp:
            dist.barrier()

    last_val: dict = {}

    def validate(step):
        nonlocal last_val
        if main_proc and len(val_dataset):
            last_val = evaluate(model, val_dataset, cfg, device, amp)
            rec = {"kind": "val", "step": step, **last_val}
            history.append(rec)
            _append_log(out_dir / LOG_NAME, rec)
            say(f"step {step}: val loss {last_val['loss']:.4f}  RRA@15 {last_val['RRA@15']:.1f}%  "
                f"RTA@15 {last_val['RTA@15']:.1f}%  AUC@30 {last_val['AUC@30']:.3f}  pose L1 {last_val['pose_L1']:.3f}"
                + (f" (best prior {min(r['pose_L1'] for r in priors):.3f})" if priors else "")
                + (f"  PSNR {last_val['psnr']:.2f} dB" if "psnr" in last_val else ""))
            if callback is not None:
                callback(rec)
        if ddp:
            dist.barrier()

    end = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    if start >= cfg.steps:
        say(f"{ck_path} is already at the final step {cfg.steps}: nothing to do")
        return TrainResult(model, start, out_dir, ck_path, history, last_val)
    loader = torch.utils.data.DataLoader(steps_ds, batch_size=None, sampler=range(start, end),
                                         num_workers=R.num_workers, collate_fn=_identity)
    bar = tqdm(total=cfg.steps, initial=start, disable=not (R.progress and main_proc), desc="train",
               dynamic_ncols=True)
    done = start
    updating = False
    t0 = time.time()
    try:
        for step, batch in zip(range(start, end), loader):
            images = batch["images"].to(device) * 2 - 1
            kw = _model_inputs(model, batch, device)
            if takes_noise:
                hook = pose_noise_hook(cfg, step, batch["slot"])
                if hook is not None:
                    kw["pose_noise"] = hook
            if cfg.loss.match_weight > 0:
                kw["local_features"] = True
            with _autocast(device, amp):
                out = net(images, **kw)
            loss, parts = compute_losses(out, b_to(batch, device), cfg)
            _check_finite(loss, "loss", step, batch, parts, ck_path, saved[0], ddp, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
            _check_finite(gnorm, "gradient norm", step, batch, parts, ck_path, saved[0], ddp, device)
            updating = True
            opt.step()
            sched.step()
            done = step + 1
            updating = False
            vals = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
            if ddp:
                t = torch.tensor(list(vals.values()), dtype=torch.float64, device=device)
                dist.all_reduce(t)
                vals = dict(zip(vals, (t / world).tolist()))
            rec = {"kind": "train", "step": done, **vals, "lr": opt.param_groups[0]["lr"],
                   "grad_norm": float(gnorm), "time": round(time.time() - t0, 3)}
            bar.update(1)
            if done % R.log_every == 0 or done == end:
                history.append(rec)
                if main_proc:
                    _append_log(out_dir / LOG_NAME, rec)
                bar.set_postfix(loss=f"{vals['loss']:.4f}", lr=f"{rec['lr']:.2e}")
            if callback is not None and main_proc:
                callback(rec)
            if R.val_every and done % R.val_every == 0 and done < cfg.steps:
                validate(done)
            if done < cfg.steps and (done % R.ckpt_every == 0 or done == end):
                checkpoint(done)
    except KeyboardInterrupt:
        bar.close()
        if not updating and done > start:
            checkpoint(done)
            say(f"interrupted: saved the last completed step {done} to {ck_path}; run the same command "
                "again (run.resume: auto) to continue")
        else:
            say(f"interrupted at step {done}; {ck_path} is unchanged")
        raise
    bar.close()
    if done == cfg.steps:
        validate(done)
        checkpoint(done)
        say(f"finished {cfg.steps} steps in {time.time() - t0:.0f} s; checkpoint {ck_path}")
    return TrainResult(model, done, out_dir, ck_path, history, last_val)


def _check_finite(value, what, step, batch, parts, ck_path, last_ck, ddp, device):
    ok = torch.isfinite(value.detach()).all()
    flag = torch.tensor([1.0 if bool(ok) else 0.0], device=device)
    if ddp:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if flag.item() < 1:
        if bool(ok):
            raise NonFiniteLossError(f"the {what} became NaN/inf in another process at step {step}; "
                                     f"see that process's message")
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
        raise NonFiniteLossError(
            f"the {what} is {float(value.detach())} (not finite) at step {step} (terms: {terms}); batch scenes "
            f"{batch['source']} (dataset indices {batch['index']}). Training stopped before the update: "
            f"the last checkpoint ({ck_path}, step {last_ck}) is intact. Check those scenes, or lower optim.lr")


def _identity(x):
    return x


def _autocast(device, amp):
    import contextlib

    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp)


def _summarise(names: list[str]) -> str:
    groups: dict[str, int] = {}
    for n in names:
        key = ".".join(n.split(".")[:2]) if "head_local_features" in n else n.split(".")[0]
        if "head_local_features" in n:
            key = n.split(".")[0] + ".head_local_features"
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{k} ({v})" for k, v in groups.items()) or "none"


def _write_log(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def _append_log(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


# ============================================================================ multi-process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGTERM this process when its parent dies, so the workers of
    :func:`launch_ddp` do not train on as orphans when the launching process is killed (the
    last checkpoint stays intact: writes are atomic). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))      # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, stop_at, threads: int):
    _die_with_parent()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    if threads:
        torch.set_num_threads(threads)
    train(TrainConfig.from_dict(cfg_dict), stop_at=stop_at)


def launch_ddp(cfg: TrainConfig, nproc: int, stop_at: int | None = None, threads: int = 1) -> None:
    """Train ``cfg`` with ``nproc`` local processes (DistributedDataParallel; gloo on CPU) via
    ``torch.multiprocessing.spawn`` -- the notebook-friendly equivalent of ``torchrun
    --nproc_per_node nproc``. Results are in ``cfg.run.out_dir``."""
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    mp.spawn(_ddp_worker, args=(nproc, _free_port(), cfg.to_dict(), stop_at, threads), nprocs=nproc, join=True)


# ============================================================================ CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flare_nb.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML config (e.g. configs/tiny_synthetic.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=1e-3 --set run.out_dir=runs/x")
    p.add_argument("--nproc", type=int, default=1, help="local processes (DDP, gloo on CPU) without torchrun")
    p.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) after this step")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.set)
        if a.nproc > 1:
            launch_ddp(cfg, a.nproc, a.stop_at, threads=cfg.run.threads or 1)
            recs = [r for r in read_log(Path(cfg.run.out_dir) / LOG_NAME) if r.get("kind") == "val"]
            if recs:
                print(json.dumps(recs[-1]))
        else:
            res = train(cfg, stop_at=a.stop_at)
            if res.val and int(os.environ.get("RANK", "0")) == 0:
                print(json.dumps({"step": res.step, **res.val}))
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
