"""The NVS model on the ``flare-nb`` command (``--model nvs``): its config, weights and intrinsics.

The released NVS model takes the intrinsics of its input views (``[fx, fy, cx, cy]`` in pixels
of the model input, :func:`flare_nb.model.nvs.intrinsics_vector`). When none are given they are
estimated here from the GEOMETRY model: it runs first on the same preprocessed views, and each
view's focal is the demo's rule (:func:`flare_nb.cameras.estimate_focal`, median of ``u z / x``
and ``v z / y``) applied to that view's camera-centric pointmap, with the principal point at
the image centre. The Gaussians written are then the NVS model's Gaussian head
(:func:`flare_nb.model.gaussian_head.activate_gaussians`: centres = its global pointmap, view
0's frame), and the exported cameras use the same intrinsics (PnP on the NVS model's global
pointmap with them), so the renders show the Gaussians from the cameras they were made for.
"""
from __future__ import annotations

from pathlib import Path

import torch

from flare_nb import cameras, data_dir
from flare_nb.inference import reconstruct

__all__ = ["MODELS", "nvs_config_name", "geometry_config_name", "default_checkpoint", "estimate_intrinsics",
           "nvs_cameras"]

MODELS = ("geometry", "nvs")
_NVS_OF = {"tiny": "tiny_nvs", "official_geometry": "official_nvs"}


def nvs_config_name(config: str) -> str:
    """``--config`` (model size) -> the NVS config of that size: tiny -> tiny_nvs,
    official_geometry -> official_nvs (the released NVS.pth network)."""
    if config in _NVS_OF.values():
        return config
    if config not in _NVS_OF:
        raise ValueError(f"--model nvs: --config must be one of {sorted(_NVS_OF)}, got {config!r}")
    return _NVS_OF[config]


def geometry_config_name(nvs_config: str) -> str:
    """The geometry model of the same size as ``nvs_config`` (for the intrinsics)."""
    back = {v: k for k, v in _NVS_OF.items()}
    return back.get(nvs_config, nvs_config)


def default_checkpoint(config_name: str) -> Path | None:
    """The bundled trained tiny NVS model for ``tiny_nvs``; None (random weights) otherwise."""
    p = data_dir() / "checkpoints" / "tiny_nvs.pt"
    return p if config_name == "tiny_nvs" and p.is_file() else None


def estimate_intrinsics(x01: torch.Tensor, geometry_model, device) -> tuple[torch.Tensor, str, list[str]]:
    """``K (V, 3, 3)`` float32 for the views ``x01 (V, 3, H, W)`` in [0, 1] (already in model
    order), from ``geometry_model``'s camera-centric pointmaps: one focal per view
    (:func:`flare_nb.cameras.estimate_focal`), principal point at the centre. A view whose
    pointmap gives no focal takes the median of the others; none at all -> ValueError.
    Returns ``(K, source sentence, notes)``."""

    V, _, H, W = x01.shape
    rec = reconstruct(geometry_model, x01, device=device, pnp=False)
    focals, notes = [], []
    for i in range(V):
        try:
            focals.append(float(cameras.estimate_focal(rec.pts3d_cam[i])))
        except ValueError as e:
            focals.append(None)
            notes.append(f"intrinsics: view {i} gave no focal ({e}); the median of the other views is used")
    good = [f for f in focals if f is not None]
    if not good:
        raise ValueError("--model nvs: the geometry model's camera-centric pointmaps gave no focal for any view; "
                         "give the intrinsics instead")
    med = float(torch.tensor(good).median())
    K = torch.stack([cameras.intrinsics_from_focal(f if f is not None else med, H, W).float() for f in focals])
    src = (f"estimated: focal per view from the geometry model's camera-centric pointmap "
           f"({getattr(geometry_model, 'weights_label', 'geometry model')}), principal point at the image centre")
    return K, src, notes


def nvs_cameras(rec, K: torch.Tensor, pnp_iterations: int, intrinsics_source: str) -> dict:
    """The exported cameras of an NVS run (the dict of :func:`flare_nb.export.export_cameras`):
    ``K`` = the intrinsics the model was given, poses by PnP on its global pointmap with those
    intrinsics (else the refined pose head)."""
    V = rec.n_views
    notes = []
    K = K.float().expand(V, 3, 3).clone()
    try:
        c2w = cameras.pnp_poses(rec.pts3d_global, rec.conf_global, K, top=0.4, reproj_px=1.0,
                                iterations=pnp_iterations, seed=0).float()
        pose_source = "pnp (PnP-RANSAC on the NVS model's global pointmap with the intrinsics it was given)"
    except (ValueError, RuntimeError) as e:
        c2w = rec.c2w_refined
        pose_source = f"refined pose head (PnP not solved: {e}; translation in the network's units)"
        notes.append(f"poses: {pose_source}")
    return {"c2w": c2w, "K": K, "pose_source": pose_source,
            "focal_source": f"the intrinsics given to the NVS model ({intrinsics_source})", "notes": notes}
