"""The FLARE cascade as a diagram whose shapes come from a ``FlareConfig`` (notebook 01, README).

``cascade_shapes(cfg, hw, views)`` lists every tensor that flows between the stages with the
shape the configuration implies (no batch axis); ``forward_shapes(model, images)`` reads the same
tensors off a real forward pass, so a test can check one against the other;
``draw_cascade(cfg, hw, views)`` draws them with matplotlib (``scripts/draw_architecture.py``
saves the released configuration's figure as ``docs/architecture.png``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Node", "cascade_shapes", "forward_shapes", "draw_cascade"]


@dataclass(frozen=True)
class Node:
    """One tensor of the cascade: ``key`` (a ``FlareOutput`` attribute or ``intermediates`` name),
    ``label``, ``shape`` without the batch axis, column ``col`` (0 encoder .. 3 stage 3), row ``row``
    (top to bottom) and ``op``: what produces it, printed above the box."""

    key: str
    label: str
    shape: tuple
    col: int
    row: int
    op: str = ""


def cascade_shapes(cfg, hw=(384, 512), views: int = 8) -> list[Node]:
    """The tensors of a geometry model of config ``cfg`` for ``views`` images of ``hw = (H, W)``."""
    H, W = hw
    m = cfg.multiple
    if H % m or W % m or H < m or W < m:
        raise ValueError(f"hw = {hw}: H and W must be positive multiples of {m} for this config")
    if views < 2:
        raise ValueError(f"views must be >= 2, got {views}")
    V, p, E, D = views, cfg.patch_size, cfg.enc_dim, cfg.dec_dim
    N = (H // p) * (W // p)
    Nc = N // cfg.coarse_stride ** 2
    it, L = cfg.pose_iters, cfg.dec_depth
    inj = ", ".join(str(i) for i in cfg.inject_layers)
    states = ", ".join(str(k) for k in cfg.inject_enc_states)
    taps = ", ".join(str(h) for h in cfg.dpt_hooks[1:])
    return [
        Node("images", "images", (V, 3, H, W), 0, 0, "[-1, 1], view 0 = reference"),
        Node("patch_embed_out", "patch tokens", (V, N, E), 0, 1, f"{p}x{p} conv, stride {p}"),
        Node("enc_norm_out", "encoder tokens", (V, N, E), 0, 2,
             f"{cfg.enc_depth} ViT blocks, 2D RoPE {cfg.rope_base:g}, frozen"),
        Node("stage1_coarse_tokens", "coarse tokens", (V, Nc, E), 1, 1,
             f"{cfg.coarse_stride}x{cfg.coarse_stride} conv, stride {cfg.coarse_stride} (1/{m} grid)"),
        Node("stage1_cam_tokens", "camera tokens", (V, D), 1, 2,
             f"Linear {E}->{D}; {L} asymmetric layers\n(view 0 x sources) + camera blocks"),
        Node("pose_enc_stage1", "coarse pose", (it, V, 9), 1, 3, f"pose head 1: {it} iterations"),
        Node("stage2_camera_embed_in", "pose input [q, T/s]", (V, cfg.pose_embed_dim), 2, 0, "detached coarse pose"),
        Node("stage2_tokens_last", "camera-centric tokens", (V, N, D), 2, 1,
             f"{L} global self-attn layers, adaLN on camera\ntokens; enc. states {states} after layers {inj} (0-based)"),
        Node("stage2_cam_tokens", "camera tokens", (V, D), 2, 2, "camera blocks"),
        Node("pts3d_cam", "camera-centric pointmap", (V, H, W, 3), 2, 3, f"DPT head 1 (taps enc, {taps})"),
        Node("pose_enc_stage2", "refined pose", (it, V, 9), 2, 4, f"pose head 2: {it} iterations"),
        Node("stage3_camera_embed_in", "pose input [q, T/s]", (V, cfg.pose_embed_dim), 3, 0, "detached refined pose"),
        Node("stage3_tokens_last", "global tokens", (V, N, D), 3, 1,
             f"{L} layers: cross-attn to stage-2 layer,\nglobal self-attn, camera block"),
        Node("pts3d_global", "global pointmap (view 0 frame)", (V, H, W, 3), 3, 3, f"DPT head 2 (taps enc, {taps})"),
        Node("local_features_global", "descriptors + conf", (V, H, W, cfg.desc_dim + 1), 3, 4,
             "DPT head 2, MLP branch (Gaussian head input)"),
    ]


def forward_shapes(model, images: torch.Tensor) -> dict:
    """Shapes (batch axis dropped) of the ``cascade_shapes`` tensors in a real forward pass of
    ``model`` (geometry kind) on ``images (1, V, 3, H, W)`` in [-1, 1]."""
    if images.ndim != 5 or images.shape[0] != 1:
        raise ValueError(f"images must be (1, V, 3, H, W), got {tuple(images.shape)}")
    with torch.no_grad():
        out = model(images, local_features=True)
    shapes = {"images": tuple(images.shape[1:])}
    shapes.update({k: tuple(v.shape[1:]) for k, v in out.intermediates.items()})
    for k in ("pts3d_cam", "pts3d_global"):
        shapes[k] = tuple(getattr(out, k).shape[1:])
    for k in ("pose_enc_stage1", "pose_enc_stage2"):
        t = getattr(out, k)
        shapes[k] = (t.shape[0],) + tuple(t.shape[2:])
    shapes["local_features_global"] = tuple(out.local_features["global"].shape[1:])
    return shapes


_COLS = ("image encoder", "stage 1: pose predictor", "stage 2: camera-centric geometry", "stage 3: global projector")
_COLOURS = ("#dbe9f6", "#fde2c8", "#d9f0d3", "#e8dcf2")
_EDGES = (("images", "patch_embed_out"), ("patch_embed_out", "enc_norm_out"),
          ("enc_norm_out", "stage1_coarse_tokens"), ("stage1_coarse_tokens", "stage1_cam_tokens"),
          ("stage1_cam_tokens", "pose_enc_stage1"), ("pose_enc_stage1", "stage2_camera_embed_in"),
          ("enc_norm_out", "stage2_tokens_last"), ("stage2_camera_embed_in", "stage2_tokens_last"),
          ("stage2_tokens_last", "stage2_cam_tokens"), ("stage2_cam_tokens", "pts3d_cam"),
          ("stage2_tokens_last", "stage3_tokens_last"),
          ("pose_enc_stage2", "stage3_camera_embed_in"), ("stage3_camera_embed_in", "stage3_tokens_last"),
          ("stage3_tokens_last", "pts3d_global"), ("pts3d_global", "local_features_global"))


def draw_cascade(cfg, hw=(384, 512), views: int = 8, title: str | None = None):
    """Draw the cascade for ``cfg`` (boxes = tensors with their shapes, grey text = the operation
    that makes them). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    nodes = cascade_shapes(cfg, hw, views)
    pos = {n.key: (n.col * 4.2, -n.row * 1.9) for n in nodes}
    w, h = 3.3, 0.72
    fig, ax = plt.subplots(figsize=(17, 10.5))
    for c, (name, colour) in enumerate(zip(_COLS, _COLOURS)):
        x = c * 4.2
        ax.add_patch(FancyBboxPatch((x - w / 2 - 0.2, -4 * 1.9 - 1.0), w + 0.4, 4 * 1.9 + 2.0,
                                    boxstyle="round,pad=0.05", fc=colour, ec="none", alpha=0.55, zorder=0))
        ax.text(x, 1.25, name, ha="center", va="bottom", fontsize=11, weight="bold")
    for n in nodes:
        x, y = pos[n.key]
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04", fc="white",
                                    ec="0.3", lw=1.0, zorder=2))
        ax.text(x, y + 0.12, n.label, ha="center", va="center", fontsize=9, zorder=3)
        ax.text(x, y - 0.17, "(" + ", ".join(str(s) for s in n.shape) + ")", ha="center", va="center",
                fontsize=9, family="monospace", color="#08306b", zorder=3)
        if n.op:
            ax.text(x, y + h / 2 + 0.08, n.op, ha="center", va="bottom", fontsize=7.2, color="0.35", zorder=3)
    for a, b in _EDGES:
        (xa, ya), (xb, yb) = pos[a], pos[b]
        if xa == xb:
            start, end, rad = (xa, ya - h / 2), (xb, yb + h / 2), 0.0
        else:
            start, end = (xa + w / 2, ya), (xb - w / 2, yb)
            rad = 0.0
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, color="0.25",
                                     lw=0.9, connectionstyle=f"arc3,rad={rad}", zorder=1, shrinkA=2, shrinkB=10))
    H, W = hw
    ax.set_title(title or f"FLARE cascade, {cfg.notes or cfg.kind}: {views} views of {W}x{H} "
                 f"(shapes without the batch axis)", fontsize=12)
    ax.set_xlim(-2.2, 3 * 4.2 + 2.2)
    ax.set_ylim(-4 * 1.9 - 1.2, 1.8)
    ax.axis("off")
    fig.tight_layout()
    return fig
