"""Looking inside FLARE: patch tokens, 2D RoPE, camera-token attention, the harmonic pose
embedding and the pose head's iterations (notebooks 01 and 02).

Everything takes and returns plain tensors; the ``plot_*`` functions return matplotlib
figures. Images are ``(V, 3, H, W)`` in [0, 1] (README "Conventions").
"""
from __future__ import annotations

import numpy as np
import torch

from flare_nb.cameras import quat_to_matrix
from flare_nb.model.pose_predictor import harmonic_embedding
from flare_nb.model.rope import apply_rope2d
from flare_nb.scenes.preprocess import to_model_input
from flare_nb.train.losses import gt_pose_targets

__all__ = ["token_grids", "patchify", "patch_embed_by_matmul", "rope_angles", "rope_relative_scores",
           "camera_attention", "harmonic_sensitivity", "pose_iteration_errors", "plot_patch_grid",
           "plot_rope_angles", "plot_attention"]


# ----------------------------------------------------------------------------- patch tokens
def token_grids(H: int, W: int, cfg) -> dict:
    """Token grid sizes of an ``H x W`` image for a ``FlareConfig``.

    ``tokens (h, w)`` = ``(H / patch, W / patch)`` (1/16 of the image released), ``coarse
    (hc, wc)`` = tokens / ``coarse_stride`` (1/64 released) as the image is oriented (for portrait
    views the release fills this grid in its own order, ``release_coarse_grid``). ValueError if H or W is
    not a positive multiple of ``cfg.multiple``. Notebook 01.
    """
    m = cfg.multiple
    if int(H) <= 0 or int(W) <= 0 or H % m or W % m:
        raise ValueError(f"image size {H}x{W} (HxW) must be positive multiples of {m} "
                         f"(patch {cfg.patch_size} x coarse stride {cfg.coarse_stride})")
    h, w = H // cfg.patch_size, W // cfg.patch_size
    hc, wc = h // cfg.coarse_stride, w // cfg.coarse_stride
    return {"patch_px": cfg.patch_size, "coarse_px": m, "tokens": (h, w), "n_tokens": h * w,
            "coarse": (hc, wc), "n_coarse": hc * wc}


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut ``images (B, C, H, W)`` into non-overlapping ``patch x patch`` tiles:
    ``(B, N, C * patch * patch)``, tokens row-major (row outer), each tile flattened in
    ``(channel, row, column)`` order -- the order of a conv weight ``(D, C, p, p)``. Notebook 01."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    B, C, H, W = images.shape
    if H % patch or W % patch:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {patch}")
    x = images.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // patch) * (W // patch), C * patch * patch)


def patch_embed_by_matmul(model, images: torch.Tensor) -> torch.Tensor:
    """The patch embedding as ``patchify(x) @ W^T + b`` with the conv's own weights:
    ``images (B, 3, H, W)`` in [-1, 1] -> ``(B, N, enc_dim)``; equals ``model.encoder.patch_embed(x)``."""
    conv = model.encoder.patch_embed.proj
    Wt = conv.weight.reshape(conv.weight.shape[0], -1)
    return patchify(images, conv.kernel_size[0]) @ Wt.T + conv.bias


# ----------------------------------------------------------------------------- RoPE
def rope_angles(h: int, w: int, head_dim: int, base: float = 100.0) -> torch.Tensor:
    """Rotation angle (radians, unwrapped) of every channel pair at every token: ``(h, w, head_dim // 2)``.

    Pairs ``0 .. head_dim/4 - 1`` live in the first half of the head and turn with the row
    ``y``; pairs ``head_dim/4 ..`` in the second half turn with the column ``x``. Pair ``i`` of
    a half of ``D = head_dim / 2`` channels turns by ``pos * base^(-2i / D)`` (so pair 0 is the
    fastest: one radian per token). Same formula as :func:`flare_nb.model.rope.rope_tables`. Notebook 01.
    """
    if head_dim % 4:
        raise ValueError(f"head_dim must be a multiple of 4, got {head_dim}")
    D = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2).float() / D))       # (D/2,)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.cat((ys[..., None] * inv_freq, xs[..., None] * inv_freq), dim=-1)


def rope_relative_scores(head_dim: int, base: float, offsets, anchors, seed: int = 0) -> torch.Tensor:
    """``q . k`` after RoPE for one random query/key pair, with the query at ``anchor`` and the
    key at ``anchor + offset``: ``(len(anchors), len(offsets))`` float64.

    RoPE's relative-position property says every column is constant: the score depends on the
    offset only, not on where the pair sits. ``anchors``/``offsets``: lists of integer
    ``(dy, dx)``; anchor + offset must stay >= 0. Notebook 01.
    """
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, head_dim, generator=g, dtype=torch.float64)
    out = torch.empty(len(anchors), len(offsets), dtype=torch.float64)
    for a, (ay, ax) in enumerate(anchors):
        for o, (oy, ox) in enumerate(offsets):
            pq, pk = (ay, ax), (ay + oy, ax + ox)
            if min(pk) < 0:
                raise ValueError(f"anchor {pq} + offset {(oy, ox)} leaves the grid (negative position)")
            pos = torch.tensor([pq, pk])
            x = torch.stack((q, k))[None, None]                           # (1, 1, 2, head_dim)
            r = apply_rope2d(x, pos, base)[0, 0]
            out[a, o] = r[0] @ r[1]
    return out


# ----------------------------------------------------------------------------- camera tokens
_CAMERA_BLOCKS = {1: ("pose_predictor", "cam_cond_encoder"), 2: ("camera_centric", "cam_cond_encoder_fine"),
                  3: ("global_projector", "cam_cond_encoder_point")}


@torch.no_grad()
def camera_attention(model, images01: torch.Tensor, stage: int = 1, layer: int = -1) -> dict:
    """Attention of each view's camera token over that view's image tokens in one ``CameraBlock``.

    ``images01 (V, 3, H, W)`` in [0, 1]; ``stage`` 1 (coarse tokens, ``cam_cond_encoder``), 2
    (``cam_cond_encoder_fine``) or 3 (``cam_cond_encoder_point``); ``layer`` indexes the
    decoder layer (-1 = last). A hook records the block's normalised input ``[cam; tokens]``;
    the weights are recomputed from it with ``need_weights=True``. Returns
    ``{"weights": (V, heads, gh, gw), "self": (V, heads) weight on the camera token itself,
    "grid": (gh, gw)}``, grid in image orientation (stage 1 of a portrait view: the release's
    coarse cells, which do not tile the image, ``release_coarse_grid``); every row (self + image
    tokens) sums to 1. Notebook 01.
    """

    if stage not in _CAMERA_BLOCKS:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
    stage_module, name = _CAMERA_BLOCKS[stage]
    blocks = getattr(getattr(model, stage_module), name)
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"layer {layer} out of range for {len(blocks)} decoder layers")
    attn = blocks[layer].attn
    seen = {}

    def grab(_mod, args):                       # returns None: the forward runs unchanged
        seen["y"] = args[0]

    hook = attn.register_forward_pre_hook(grab)
    try:
        p = next(model.parameters())
        model(to_model_input(images01)[None].to(p.device, p.dtype))
    finally:
        hook.remove()
    y = seen["y"]
    w = attn(y, y, y, need_weights=True, average_attn_weights=False)[1][:, :, 0]  # (V, heads, 1 + N)
    V, _, H, W = images01.shape
    cfg = model.cfg
    h, wd = H // cfg.patch_size, W // cfg.patch_size
    if stage == 1:      # the release's coarse grid (release_coarse_grid): h x w cells, but for portrait
        h, wd = h // cfg.coarse_stride, wd // cfg.coarse_stride   # views a cell is not one image region
    maps = w[:, :, 1:].reshape(V, w.shape[1], h, wd).float().cpu()
    return {"weights": maps, "self": w[:, :, 0].float().cpu(), "grid": (h, wd)}


# ----------------------------------------------------------------------------- pose encoding
def harmonic_sensitivity(x: float, delta: float, n_freq: int = 42) -> dict:
    """How much each frequency of the harmonic embedding moves when the input moves by ``delta``.

    Both inputs are rounded to float32 first (as the model sees them). Returns
    ``{"freqs": 2^0..2^(n-1) (n,), "dx": the float32 difference actually seen,
    "dsin": |sin(f x') - sin(f x)| (n,), "dcos": same for the cos block}`` (float64). For
    ``f dx`` much larger than 1 the channels are effectively random. Notebook 02.
    """
    xs = torch.tensor([[x], [x + delta]], dtype=torch.float32)           # (2, 1)
    e = harmonic_embedding(xs, n_freq).double()                           # (2, 2 n + 1)
    d = (e[1] - e[0]).abs()
    return {"freqs": 2.0 ** torch.arange(n_freq, dtype=torch.float64), "dx": float(xs[1, 0] - xs[0, 0]),
            "dsin": d[:n_freq], "dcos": d[n_freq:2 * n_freq]}


def pose_iteration_errors(pose_enc: torch.Tensor, c2w_gt: torch.Tensor) -> dict:
    """Per pose-head iteration, how far the encodings are from the ground truth.

    ``pose_enc (iters, V, 9)``, ``c2w_gt (V, 4, 4)`` camera-to-world in any frame. Targets are
    the pose loss's (:func:`flare_nb.train.losses.gt_pose_targets`: relative to view 0, mean
    translation norm 1, unit q with w >= 0). Returns float64 tensors ``(iters,)``:
    ``rot_deg`` mean geodesic rotation error over views 1.., ``trans_l1`` mean |T - T_gt|,
    ``quat_l1`` mean |q - q_gt| (the loss's raw terms) and ``step`` mean |enc_k - enc_{k-1}|
    (``enc_{-1}`` = 0, the head's starting point). Notebook 02.
    """

    if pose_enc.ndim != 3 or pose_enc.shape[-1] != 9 or tuple(c2w_gt.shape) != (pose_enc.shape[1], 4, 4):
        raise ValueError(f"pose_enc must be (iters, V, 9) and c2w_gt (V, 4, 4), got {tuple(pose_enc.shape)} "
                         f"and {tuple(c2w_gt.shape)}")
    enc = pose_enc.detach().double().cpu()
    T_gt, q_gt = gt_pose_targets(c2w_gt.detach().double().cpu()[None])
    R_gt = quat_to_matrix(q_gt[0])
    R = quat_to_matrix(enc[..., 3:7])
    dR = R_gt.transpose(-1, -2) @ R
    cos = ((dR.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    rot = torch.rad2deg(torch.arccos(cos))[:, 1:].mean(-1)
    prev = torch.cat((torch.zeros_like(enc[:1]), enc[:-1]))
    return {"rot_deg": rot, "trans_l1": (enc[..., :3] - T_gt).abs().mean((-1, -2)),
            "quat_l1": (enc[..., 3:7] - q_gt).abs().mean((-1, -2)), "step": (enc - prev).abs().mean((-1, -2))}


# ----------------------------------------------------------------------------- figures
def plot_patch_grid(image01: torch.Tensor, patch: int, coarse: int | None = None, ax=None, title: str = ""):
    """One image ``(3, H, W)`` with its patch grid (thin lines every ``patch`` px) and, if given,
    the coarse grid (thick lines every ``coarse`` px). Returns the axis. Notebook 01."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    img = image01.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    H, W = img.shape[:2]
    ax.imshow(img)
    for step, lw, col in ((patch, 0.6, "white"), (coarse, 2.0, "red")):
        if not step:
            continue
        for v in np.arange(0, W + 1, step) - 0.5:
            ax.axvline(v, color=col, lw=lw, alpha=0.8)
        for u in np.arange(0, H + 1, step) - 0.5:
            ax.axhline(u, color=col, lw=lw, alpha=0.8)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.set_title(title or f"{H // patch}x{W // patch} tokens of {patch} px" +
                 (f", {H // coarse}x{W // coarse} coarse tokens of {coarse} px" if coarse else ""), fontsize=9)
    ax.set_axis_off()
    return ax


def plot_rope_angles(angles: torch.Tensor, pairs=(0, 1, 2)):
    """Heatmaps of ``cos(angle)`` over the token grid for a few channel pairs of each half
    (``angles (h, w, P)`` from :func:`rope_angles`). Returns the figure. Notebook 01."""
    import matplotlib.pyplot as plt

    P = angles.shape[-1]
    half = P // 2
    sel = [(f"y-pair {i}", i) for i in pairs if i < half] + [(f"x-pair {i}", half + i) for i in pairs if i < half]
    fig, axes = plt.subplots(1, len(sel), figsize=(2.2 * len(sel), 2.6), squeeze=False)
    for ax, (name, j) in zip(axes[0], sel):
        ax.imshow(torch.cos(angles[..., j]).numpy(), cmap="twilight", vmin=-1, vmax=1)
        ax.set_title(f"{name}\ncos(angle)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_attention(images01: torch.Tensor, weights: torch.Tensor, titles=None, alpha: float = 0.6):
    """Overlay per-view attention maps ``weights (V, gh, gw)`` (e.g. averaged over heads) on
    ``images01 (V, 3, H, W)``; each map is upsampled by nearest neighbour. Returns the figure."""
    import matplotlib.pyplot as plt

    V, _, H, W = images01.shape
    if weights.ndim != 3 or weights.shape[0] != V:
        raise ValueError(f"weights must be (V, gh, gw) with V = {V}, got {tuple(weights.shape)}")
    fig, axes = plt.subplots(1, V, figsize=(2.6 * V, 2.8), squeeze=False)
    for i, ax in enumerate(axes[0]):
        m = weights[i].float()
        up = m.repeat_interleave(H // m.shape[0], 0).repeat_interleave(W // m.shape[1], 1)
        ax.imshow(images01[i].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        im = ax.imshow(up.cpu().numpy(), cmap="inferno", alpha=alpha)
        ax.set_title(titles[i] if titles else f"view {i}", fontsize=8)
        ax.set_axis_off()
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="attention weight")
    return fig
