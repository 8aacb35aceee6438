"""Running FLARE stage by stage, and poking at stages 2 and 3 (notebooks 03 and 04).

Everything here works on ONE scene (batch size 1) and is deterministic.

* :func:`weights_banner` -- which weights a model from ``flare_nb.inference.load_model`` holds;
  loud when they are random.
* :func:`trace_dpt` -- every intermediate shape of a DPT head (reassemble, fusion, output head);
  works on the ``meta`` device, so the released sizes cost no memory.
* :func:`run_to_stage2` / :func:`run_stage3` -- the cascade split at the global projector, so
  stage 3 can be re-run (cheaply) with any conditioning pose.
* poses: :func:`perturb_view_pose` (one camera axis at a time; the codec itself is
  :mod:`flare_nb.model.pose_encoding`).
* the naive global pointmap (camera-centric points moved rigidly by the poses):
  :func:`naive_global`, :func:`fit_naive_scales`, :func:`naive_vs_learned`.
* the pose-perturbation experiment behind notebook 04's widget: :func:`perturbation_response`,
  :func:`plot_response`, :func:`pose_widget_callback`, :func:`make_pose_widget`.

Conventions (README "Conventions"): pose encodings ``(V, 9) = [T (3), q (4, w x y z, not
normalised), focal logits (2)]``, camera-to-world relative to view 0, translation in units of
the mean translation norm; pointmaps ``(V, H, W, 3)``.
"""
from __future__ import annotations

import torch

from flare_nb.cameras import transform_points
from flare_nb.model.camera_centric import camera_embed_input
from flare_nb.model.flare import identity_pose_encoding
from flare_nb.model.pose_encoding import decode_c2w, move_camera_in_encoding

__all__ = ["weights_banner", "trace_dpt", "run_to_stage2", "run_stage3", "perturb_view_pose",
           "naive_global", "fit_naive_scales", "naive_vs_learned", "perturbation_response",
           "plot_response", "pose_widget_callback", "make_pose_widget"]

_AXES = {"x": 0, "y": 1, "z": 2}


# =========================================================================== the model
def weights_banner(model) -> str:
    """A banner saying which weights ``model`` holds (``flare_nb.inference.load_model`` sets
    ``weights_random`` and ``weights_label``); loud when they are random."""
    label = getattr(model, "weights_label", "weights of unknown origin")
    if not getattr(model, "weights_random", False):
        n = sum(p.numel() for p in model.parameters())
        return f"weights: {label} ({n / 1e6:.2f} M parameters)"
    bar = "!" * 78
    return (f"{bar}\n!! {label}\n"
            "!! The shapes and the mechanics below are real; the pointmaps, poses and responses\n"
            "!! are MEANINGLESS. Train the tiny model (notebook 06) or set CHECKPOINT.\n"
            f"{bar}")


# =========================================================================== DPT shapes
def trace_dpt(head, tokens, image_hw) -> list[tuple[str, tuple]]:
    """Run a ``flare_nb.model.dpt.DPTHead`` on ``tokens`` (4 tensors ``(BV, N, C_i)``) and list the
    shape of every intermediate, in order: ``tap{i}`` (token map as an image), ``reassemble{i}``
    (``act_postprocess[i]``, 4x / 2x / 1x / 0.5x the token grid), ``layer{i}_rn`` (to
    ``feature_dim``), ``refinenet4..1`` (fusion, coarse to fine), ``head.*`` and ``pts3d`` /
    ``conf``. Uses forward hooks, so it traces exactly what ``head`` runs; works on ``meta``
    tensors. Notebook 03."""
    H, W = (int(v) for v in image_hw)
    p = head.patch_size
    h, w = H // p, W // p
    trace: list[tuple[str, tuple]] = [(f"tap{i}", (t.shape[0], t.shape[2], h, w)) for i, t in enumerate(tokens)]
    handles = []

    def hook(name):
        return lambda _m, _inp, out: trace.append((name, tuple(out.shape)))

    dpt = head.dpt
    for i in range(4):
        handles.append(dpt.act_postprocess[i].register_forward_hook(hook(f"reassemble{i}")))
        handles.append(dpt.scratch.layer_rn[i].register_forward_hook(hook(f"layer{i + 1}_rn")))
    for k in (4, 3, 2, 1):
        handles.append(getattr(dpt.scratch, f"refinenet{k}").register_forward_hook(hook(f"refinenet{k}")))
    for j, name in enumerate(("head.conv3x3", "head.resize", "head.conv3x3_b", "head.relu", "head.conv1x1")):
        handles.append(dpt.head[j].register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            out = head(tokens, (H, W), local_features=False)
    finally:
        for hd in handles:
            hd.remove()
    # hooks fire in execution order: reassemble/layer_rn tap by tap, then fusion, then the head;
    # refinenet4's shape is before the crop to the 1x grid (odd h or w)
    trace += [("pts3d", tuple(out["pts3d"].shape)), ("conf", tuple(out["conf"].shape))]
    return trace


# =========================================================================== the cascade, split
@torch.no_grad()
def run_to_stage2(model, images) -> dict:
    """Encoder, stage 1 and stage 2 of ``model`` on ONE scene ``images (1, V, 3, H, W)`` in [-1, 1].

    Returns a cache dict: ``enc`` (encoder outputs), ``B``, ``V``, ``hw``, ``stage1`` and
    ``stage2`` (the dicts of ``model.pose_predictor`` / ``model.camera_centric``, the latter with
    the ``camera_embed_in (1, V, 7)`` it was conditioned on); ``pose1`` and
    ``pose2`` ``(V, 9)`` the last coarse / refined pose encodings; ``pts3d_cam (V, H, W, 3)``,
    ``conf_cam (V, H, W)``. Same numbers as ``model(images)`` without pose noise. Notebook 04.
    """
    images = model.check_images(images)
    B, V, _, H, W = images.shape
    if B != 1:
        raise ValueError(f"run_to_stage2 works on one scene (B = 1), got images of shape {tuple(images.shape)}")
    cfg = model.cfg
    enc = model.encoder(images.reshape(B * V, 3, H, W), keep_states=set(cfg.inject_enc_states))
    s1 = model.pose_predictor(enc["tokens"], enc["grid"], B, V)
    s2 = _stage2(model, enc, s1["pose_enc"][-1], B, V, (H, W))
    return {"enc": enc, "B": B, "V": V, "hw": (H, W), "stage1": s1, "stage2": s2,
            "pose1": s1["pose_enc"][-1][0], "pose2": s2["pose_enc"][-1][0],
            "pts3d_cam": s2["head"]["pts3d"][0], "conf_cam": s2["head"]["conf"][0]}


def _pose_embedding(model, pose_enc: torch.Tensor, enc: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """What conditions stages 2 and 3 of the geometry model on ``pose_enc (B, V, 9)``: its
    camera-embedding input ``[q, T / s] (B, V, 7)`` and ``model.embed_pose`` of it ``(B, V, D)``.
    A model trained without pose conditioning (``cfg.pose_conditioning = False``) gets the identity
    pose whatever ``pose_enc`` says, as in its forward pass."""
    if not model.cfg.pose_conditioning:
        pose_enc = identity_pose_encoding(pose_enc)
    cam_in = camera_embed_input(pose_enc)
    return cam_in, model.embed_pose(cam_in.to(enc["tokens"].dtype))


def _stage2(model, enc: dict, pose_enc: torch.Tensor, B: int, V: int, hw) -> dict:
    """``model.camera_centric`` conditioned on ``pose_enc (B, V, 9)``; its dict plus ``camera_embed_in``."""
    cam_in, e = _pose_embedding(model, pose_enc, enc)
    return dict(model.camera_centric(enc, e, B, V, hw), camera_embed_in=cam_in)


def _check_pose(pose_enc, V: int, what: str = "pose_enc") -> torch.Tensor:
    if not isinstance(pose_enc, torch.Tensor) or tuple(pose_enc.shape) != (V, 9):
        shape = tuple(pose_enc.shape) if isinstance(pose_enc, torch.Tensor) else type(pose_enc).__name__
        raise ValueError(f"{what} must be a ({V}, 9) pose encoding [T, q, focal logits] for {V} views, got {shape}")
    return pose_enc


@torch.no_grad()
def run_stage3(model, cache: dict, pose_enc: torch.Tensor | None = None, stage2_pose: torch.Tensor | None = None) -> dict:
    """Re-run the global projector (stage 3) from a :func:`run_to_stage2` cache.

    ``pose_enc (V, 9)``: the pose stage 3 is conditioned on (default: stage 2's refined pose,
    which reproduces ``model(images).pts3d_global``). ``stage2_pose (V, 9)``: if given, stage 2
    is re-run first conditioned on it, and stage 3 then gets stage 2's new refined pose unless
    ``pose_enc`` is given too. Returns ``pts3d (V, H, W, 3)``, ``conf (V, H, W)``, ``pose_in
    (V, 9)`` (what stage 3 was conditioned on) and ``pts3d_cam`` (stage 2's, re-run or not).
    """
    B, V, hw, enc = cache["B"], cache["V"], cache["hw"], cache["enc"]
    s2 = cache["stage2"]
    if stage2_pose is not None:
        s2 = _stage2(model, enc, _check_pose(stage2_pose, V, "stage2_pose")[None], B, V, hw)
    pose = s2["pose_enc"][-1][0] if pose_enc is None else _check_pose(pose_enc, V)
    s3 = model.global_projector(enc, _pose_embedding(model, pose[None], enc)[1], s2["layers"], B, V, hw)
    return {"pts3d": s3["head"]["pts3d"][0], "conf": s3["head"]["conf"][0], "pose_in": pose,
            "pts3d_cam": s2["head"]["pts3d"][0]}


# =========================================================================== poses
def perturb_view_pose(pose_enc: torch.Tensor, view: int, rot_deg: float = 0.0, trans: float = 0.0,
                      axis: str = "y") -> torch.Tensor:
    """Move the camera of one view in a pose encoding ``(V, 9)`` along ONE of its own axes:
    turn by ``rot_deg`` degrees about ``axis`` (``"x"`` tilt, ``"y"`` pan, ``"z"`` roll; OpenCV
    axes) and slide by ``trans`` times the mean translation norm along that same axis --
    :func:`flare_nb.model.pose_encoding.move_camera_in_encoding` with one axis set. Notebook 04.
    """
    if axis not in _AXES:
        raise ValueError(f"axis must be one of 'x', 'y', 'z' (camera axes, OpenCV), got {axis!r}")
    rot, shift = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    rot[_AXES[axis]], shift[_AXES[axis]] = float(rot_deg), float(trans)
    return move_camera_in_encoding(_check_pose(pose_enc, pose_enc.shape[0] if isinstance(pose_enc, torch.Tensor)
                                               and pose_enc.ndim == 2 else 1), view, rot, shift)


# =========================================================================== naive global pointmap
def _check_points(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[-1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a pointmap (V, H, W, 3), got {shape}")


def naive_global(pts_cam: torch.Tensor, c2w: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """The naive global pointmap: every view's camera-centric points moved by its pose,
    ``X_i = R_i X_cam_i + tau t_i``. ``pts_cam (V, H, W, 3)``, ``c2w (V, 4, 4)`` (relative to
    view 0); ``tau`` converts the translation units into pointmap units (see
    :func:`fit_naive_scales`). Returns ``(V, H, W, 3)`` in view 0's frame. Notebook 04."""

    _check_points(pts_cam, "pts_cam")
    if tuple(c2w.shape) != (pts_cam.shape[0], 4, 4):
        raise ValueError(f"c2w must be ({pts_cam.shape[0]}, 4, 4) for {pts_cam.shape[0]} views, got {tuple(c2w.shape)}")
    T = c2w.clone().to(pts_cam.dtype)
    T[:, :3, 3] = T[:, :3, 3] * tau
    return transform_points(T[:, None], pts_cam)


def fit_naive_scales(pts_cam: torch.Tensor, c2w: torch.Tensor, target: torch.Tensor,
                     valid: torch.Tensor | None = None) -> tuple[float, float]:
    """The two scales that make :func:`naive_global` best match a global pointmap ``target``.

    FLARE's translations are in units of their mean norm, its pointmaps in an arbitrary unit, so
    the naive transform needs ``tau`` (translation -> pointmap units), and ``target`` may be at
    yet another scale ``lam``. Both come from linear least squares,
    ``min_{tau, lam} sum_valid |R_i X_cam + tau t_i - lam X_target|^2`` (float64). With exact
    inputs the residual is 0 and ``lam = 1``. When every ``t_i`` is ~0, ``tau = 0``. Returns
    ``(tau, lam)``. ValueError for mismatched shapes or an all-zero ``target``.
    """
    _check_points(pts_cam, "pts_cam")
    _check_points(target, "target")
    if target.shape != pts_cam.shape:
        raise ValueError(f"target {tuple(target.shape)} and pts_cam {tuple(pts_cam.shape)} must have the same shape")
    if valid is None:
        valid = torch.ones(pts_cam.shape[:-1], dtype=torch.bool, device=pts_cam.device)
    if tuple(valid.shape) != tuple(pts_cam.shape[:-1]):
        raise ValueError(f"valid must be {tuple(pts_cam.shape[:-1])}, got {tuple(valid.shape)}")
    A = naive_global(pts_cam.double(), c2w.double(), tau=0.0)[valid]                        # (N, 3) rotated points
    Bt = c2w.double()[:, None, None, :3, 3].expand_as(pts_cam)[valid].to(A.device)       # (N, 3) translations
    G = target.double()[valid]
    gg = (G * G).sum()
    if float(gg) <= 0:
        raise ValueError("fit_naive_scales: the target pointmap is all zero on the valid pixels")
    bb, bg, ab, ag = (Bt * Bt).sum(), (Bt * G).sum(), (A * Bt).sum(), (A * G).sum()
    if float(bb) <= 1e-12 * float(gg):
        return 0.0, float(ag / gg)
    M = torch.stack((torch.stack((bb, -bg)), torch.stack((bg, -gg))))
    tau, lam = torch.linalg.solve(M, torch.stack((-ab, -ag)))
    return float(tau), float(lam)


def naive_vs_learned(pts_cam: torch.Tensor, c2w: torch.Tensor, pts_global: torch.Tensor,
                     valid: torch.Tensor | None = None) -> dict:
    """Compare the naive global pointmap with a (learned or exact) global pointmap.

    Fits ``(tau, lam)`` (:func:`fit_naive_scales`) and returns ``naive (V, H, W, 3)``,
    ``target = lam * pts_global``, ``tau``, ``lam``, ``rel_err (V,)`` = per view, the mean over
    valid pixels of ``|naive - target|`` divided by the mean distance of ``target`` to the origin
    (all views), and ``rel_err_all`` the same over all views. Scale-invariant: scaling
    ``pts_cam`` or ``pts_global`` leaves ``rel_err`` unchanged. Notebook 04.
    """
    if valid is None:
        valid = torch.ones(pts_cam.shape[:-1], dtype=torch.bool, device=pts_cam.device)
    tau, lam = fit_naive_scales(pts_cam, c2w, pts_global, valid)
    naive = naive_global(pts_cam.double(), c2w.double(), tau)
    target = lam * pts_global.double()
    d = (naive - target).norm(dim=-1)
    scale = target.norm(dim=-1)[valid].mean().clamp_min(1e-12)
    v = valid.double()
    per = (d * v).flatten(1).sum(1) / v.flatten(1).sum(1).clamp_min(1) / scale
    return {"naive": naive.float(), "target": target.float(), "tau": tau, "lam": lam,
            "rel_err": per.float(), "rel_err_all": float(d[valid].mean() / scale)}


# =========================================================================== the perturbation experiment
def perturbation_response(model, cache: dict, view: int, rot_deg: float = 0.0, trans: float = 0.0,
                          axis: str = "y", stage: int = 3) -> dict:
    """How every view's global pointmap moves when ONE view's conditioning pose is perturbed.

    ``cache``: from :func:`run_to_stage2`. The refined pose of stage 2 (``stage=3``: the pose
    that conditions the global projector) or the coarse pose of stage 1 (``stage=2``: the pose
    that conditions stage 2, which is then re-run) is perturbed with :func:`perturb_view_pose`,
    and stage 3 re-run. Returns

    * ``learned (V,)``: per view, mean ``|X' - X|`` of the learned global pointmap, divided by
      its mean distance to the origin (a relative displacement);
    * ``naive (V,)``: the same for the naive global pointmap (:func:`naive_global`, scales fitted
      once on the unperturbed output) moved by the perturbed poses -- only the perturbed view
      moves, by construction; with ``stage=2`` the naive one uses stage 2's re-run output;
    * ``pts3d``, ``pts3d_base`` ``(V, H, W, 3)``, ``pose_base``, ``pose_new`` ``(V, 9)``,
      and the arguments. Notebook 04.
    """
    if stage not in (2, 3):
        raise ValueError(f"stage must be 2 (perturb the pose fed to stage 2) or 3 (fed to stage 3), got {stage!r}")
    base = cache.get("_base3")
    if base is None:
        base = cache["_base3"] = run_stage3(model, cache)
    if stage == 3:
        pose_base = cache["pose2"]
        pose_new = perturb_view_pose(pose_base, view, rot_deg, trans, axis)
        new = run_stage3(model, cache, pose_enc=pose_new)
        pose_naive_new = pose_new
    else:
        pose_base = cache["pose1"]
        pose_new = perturb_view_pose(pose_base, view, rot_deg, trans, axis)
        new = run_stage3(model, cache, stage2_pose=pose_new)
        pose_naive_new = new["pose_in"]
    G0, G1 = base["pts3d"].float().cpu(), new["pts3d"].float().cpu()
    scale = G0.norm(dim=-1).mean().clamp_min(1e-12)
    learned = (G1 - G0).norm(dim=-1).flatten(1).mean(1) / scale
    c2w0, c2w1 = decode_c2w(cache["pose2"]).float(), decode_c2w(pose_naive_new).float()
    fit = naive_vs_learned(cache["pts3d_cam"].float().cpu(), c2w0, G0)
    N0 = fit["naive"]
    N1 = naive_global(new["pts3d_cam"].double().cpu(), c2w1.double(), fit["tau"]).float()
    nscale = fit["target"].norm(dim=-1).mean().clamp_min(1e-12)
    naive = (N1 - N0).norm(dim=-1).flatten(1).mean(1) / nscale
    return {"learned": learned, "naive": naive, "pts3d": G1, "pts3d_base": G0, "pose_base": pose_base.cpu(),
            "pose_new": pose_new.cpu(), "view": view, "rot_deg": float(rot_deg), "trans": float(trans),
            "axis": axis, "stage": stage}


def plot_response(resp: dict, ax=None):
    """Bar plot of :func:`perturbation_response`: learned vs naive relative displacement per
    view, the perturbed view marked. Returns the axis."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    V = len(resp["learned"])
    x = np.arange(V)
    ax.bar(x - 0.2, resp["learned"].cpu().numpy(), 0.4, label="learned projector (stage 3)")
    ax.bar(x + 0.2, resp["naive"].cpu().numpy(), 0.4, label="naive rigid transform")
    ax.set_xticks(x, [f"view {i}" + (" *" if i == resp["view"] else "") for i in range(V)])
    ax.set_ylabel("mean displacement / scene size")
    ax.set_title(f"view {resp['view']} ({resp['axis']}): {resp['rot_deg']:+.1f} deg, "
                 f"{resp['trans']:+.2f} translation, pose fed to stage {resp['stage']}", fontsize=9)
    ax.legend(fontsize=8)
    return ax


def pose_widget_callback(model, cache: dict, view: int = 1, rot_deg: float = 10.0, trans: float = 0.0,
                         axis: str = "y", stage: int = 3, show: bool = True) -> dict:
    """The widget's callback: :func:`perturbation_response`, a printed summary and (``show``)
    the bar plot. Returns the response dict."""
    resp = perturbation_response(model, cache, view, rot_deg, trans, axis, stage)
    print("relative displacement per view, learned:", [round(v, 4) for v in resp["learned"].tolist()],
          "| naive:", [round(v, 4) for v in resp["naive"].tolist()])
    if show:
        import matplotlib.pyplot as plt
        plot_response(resp)
        plt.show()
    return resp


def make_pose_widget(model, cache: dict):
    """An ``ipywidgets`` panel (view, axis, rotation slider in degrees, translation slider,
    stage) around :func:`pose_widget_callback`. Display it as the last expression of a cell."""
    import ipywidgets as W

    V = cache["V"]
    return W.interactive(
        lambda view, axis, rot_deg, trans, stage: pose_widget_callback(model, cache, view, rot_deg, trans, axis, stage),
        view=W.IntSlider(value=min(1, V - 1), min=0, max=V - 1, description="view"),
        axis=W.Dropdown(options=["x", "y", "z"], value="y", description="camera axis"),
        rot_deg=W.FloatSlider(value=10.0, min=-30.0, max=30.0, step=1.0, description="rotation deg"),
        trans=W.FloatSlider(value=0.0, min=-0.5, max=0.5, step=0.05, description="translation"),
        stage=W.Dropdown(options=[3, 2], value=3, description="pose fed to"),
    )
