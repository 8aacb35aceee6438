"""The training objective of one batch: pose + geometry losses (:mod:`flare_nb.train.losses`),
and in stage 2 the rendering loss of the target views (:func:`flare_nb.render.targets.render_targets`)."""
from __future__ import annotations

import torch

from flare_nb.cameras import unproject_depth
from flare_nb.render.losses import PerceptualLoss, depth_loss, mse, ssim
from flare_nb.render.targets import render_targets
from flare_nb.train.config import TrainConfig
from flare_nb.train.correspondence import match_loss
from flare_nb.train.losses import follow_target_poses, geometry_loss, pose_loss

__all__ = ["compute_losses", "render_loss"]


def compute_losses(out, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """Training loss of one batch: ``(loss, parts)``.

    ``out``: a ``FlareOutput``; ``batch``: ``c2w (b, V, 4, 4)``, ``K (b, V, 3, 3)``, ``depth
    (b, V, H, W)`` (0 = no data; may be None when ``loss.geometry_weight`` is 0). The pose loss
    runs over all stage-1 then stage-2 pose iterations (:func:`flare_nb.train.losses.pose_loss`); the
    geometry loss (:func:`flare_nb.train.losses.geometry_loss`) is computed per scene and averaged over
    the scenes. Everything in float32. ``parts`` holds detached scalars ``pose``, ``geometry``,
    ``pose_rot``, ``pose_trans``, ``geo_cam``, ``geo_global``. With ``batch["stage3_true"]`` (``{scene
    index: (V, 9) pose encoding fed to stage 3}``, ``pose_noise.stage3_follow_target``) those scenes'
    global targets are placed with the given poses (:func:`flare_nb.train.losses.follow_target_poses`).
    """

    L = cfg.loss
    c2w = batch["c2w"].float()
    total = c2w.new_zeros(())
    parts = {}
    if L.pose_weight > 0:
        encs = list(out.pose_enc_stage1.float()) + list(out.pose_enc_stage2.float())
        lp, pp = pose_loss(encs, c2w, gamma=L.pose_gamma, weight=L.pose_weight, kind=L.pose_kind,
                           sign_invariant=L.pose_sign_invariant)
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
        follow = batch.get("stage3_true") or {}      # pose_noise.stage3_follow_target (flare_nb.train.augment)
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
                                   w_cam=L.w_cam, w_global=L.w_global, alpha=L.conf_alpha,
                                   rel_global=follow_target_poses(follow[b][None], c2w[s]) if b in follow else None)
            per.append(lg)
            cam.append(gp["geo_cam"])
            glob.append(gp["geo_global"])
        lg = torch.stack(per).mean()
        total = total + L.geometry_weight * lg
        parts["geometry"] = lg.detach()
        if cam:
            parts.update(geo_cam=torch.stack(cam).mean(), geo_global=torch.stack(glob).mean())
    if L.match_weight > 0:
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


_PERCEPTUAL: dict = {}


def render_loss(out, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """Stage 2's rendering loss over the scenes of a batch (mean over scenes), see
    :class:`~flare_nb.train.config.RenderConfig`. ``parts``: ``render_mse``, ``render_ssim``
    (the SSIM itself, not the loss), ``render_depth``, ``render_perceptual`` (when on) and
    ``psnr`` (dB, of the rendered target views)."""

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
