"""The model a run trains: built from ``cfg.model``, started from a stage-1 checkpoint for stage 2
(:func:`init_weights`), and which parameters train (:func:`frozen_stages`,
:func:`select_trainable`) (notebook 06)."""
from __future__ import annotations

import torch

from flare_nb.model import config as mc
from flare_nb.model.checkpoint import read_state_dict, released_state_dict
from flare_nb.model.flare import FlareModel
from flare_nb.train.config import TrainConfig

__all__ = ["build_model", "init_weights", "frozen_stages", "select_trainable"]


def build_model(cfg: TrainConfig):
    """``FlareModel`` of ``cfg.model`` (a preset of :mod:`flare_nb.model.config`) with
    ``cfg.model_overrides``, initialised from ``cfg.seed`` (same seed -> same weights)."""

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

    sd = read_state_dict(path)
    own = released_state_dict(model)
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


def frozen_stages(cfg: TrainConfig) -> tuple[str, ...]:
    """The stage modules of ``FlareModel`` that are not trained: ``encoder`` with
    ``freeze_encoder``; ``pose_predictor`` (the coarse pose predictor, stage 1) in cascade stage 2."""
    return (("encoder",) if cfg.freeze_encoder else ()) + (("pose_predictor",) if cfg.stage == 2 else ())


def select_trainable(model, cfg: TrainConfig, device) -> tuple[list[str], list[str]]:
    """Mark the parameters to train (``requires_grad``) and return ``(trained, skipped)`` names.

    Skipped: the stages of :func:`frozen_stages`, and parameters no training loss reaches -- found with one
    forward/backward on a ``(1, 2, 3, m, m)`` probe (m = ``cfg.multiple``), e.g. the local-feature
    MLPs of the DPT heads (only the Gaussian head reads them) and ``model.inert_parameter_names()``.
    Leaving them out keeps DDP's gradient buckets complete and AdamW from decaying them."""
    model.requires_grad_(True)
    for stage in frozen_stages(cfg):
        getattr(model, stage).requires_grad_(False)
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
