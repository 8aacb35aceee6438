"""Stage 1 of FLARE, the neural pose predictor, and the iterative pose head (notebook 02).

Stage 1 (``CoarsePosePredictor``, ``model.pose_predictor``) works on *coarse* tokens: a ``coarse_stride`` x
``coarse_stride`` stride-``coarse_stride`` conv (``patch_embed_coarse2``) over the encoder's
token grid + ``enc_norm_coarse`` (1/64 of the image in the released model; for portrait
views the grid is built as the release builds it, ``release_coarse_grid``), ``decoder_embed`` to the decoder width,
then an asymmetric decoder: view 0 (``dec_blocks``) self-attends and cross-attends to all
other views' tokens; the other views (``dec_blocks2``) self-attend as one sequence and
cross-attend to view 0. Two learnable camera tokens (``pose_token_ref`` for view 0,
``pose_token_source`` shared by the others) are updated after every layer by a per-view
``CameraBlock`` over ``[camera token; that view's tokens]`` which also writes a bias-free
projection (``cam_cond_embed``) back into the image tokens. After the last layer the
camera tokens pass ``dec_cam_norm`` and the pose head.

``PoseHead`` (``pose_head`` after stage 1, ``pose_head_stage2`` after stage 2): VGGSfM-style,
``pose_iters`` iterations with shared weights over the ``V`` camera tokens ``(B, V, C)``.
Pose encoding layout (9 numbers per view): ``[T (3), q (4, w x y z, not normalised), focal
logits (2)]``, nominally the pose of view i relative to view 0 (camera-to-world).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flare_nb.model.blocks import CameraBlock, DecoderBlock, Mlp
from flare_nb.model.encoder import PatchEmbed
from flare_nb.model.rope import grid_positions

__all__ = ["harmonic_embedding", "PoseHead",
           "CoarsePosePredictor", "camera_step", "camera_tokens", "release_coarse_grid", "natural_coarse_grid"]


def harmonic_embedding(x: torch.Tensor, n_freq: int) -> torch.Tensor:
    """``[sin block, cos block, x]`` of ``x (..., d)`` with frequencies ``2^0 .. 2^(n_freq-1)``.

    Computed in float32 exactly like the released (pytorch3d) code: ``sin(x * f + [0, pi/2])``
    with a float32 ``[0, pi/2]`` offset (so the cos block is *not* ``cos(x f)`` bit for bit).
    Block layout: index ``d * n_freq + j`` within each of the sin / cos blocks.
    Output ``(..., d * (2 n_freq + 1))`` float32.
    """
    x = x.float()
    freqs = 2.0 ** torch.arange(n_freq, dtype=torch.float32, device=x.device)
    offset = torch.tensor([0.0, 0.5 * math.pi], dtype=torch.float32, device=x.device)
    e = x[..., None] * freqs                                  # (..., d, n)
    e = (e[..., None, :, :] + offset[:, None, None]).sin()    # (..., 2, d, n)
    return torch.cat((e.reshape(*x.shape[:-1], -1), x), dim=-1)


def camera_step(block: CameraBlock, embed: nn.Module | None, cam: torch.Tensor, tok: torch.Tensor):
    """One camera-conditioning step, per view.

    ``cam (B, V, C)`` camera tokens, ``tok (B, V, N, C)`` image tokens. Runs ``block`` on
    ``[cam; tok]`` of each view; returns ``cam + out[0]`` and ``tok + embed(out[1:])``
    (``tok`` unchanged when ``embed`` is None).
    """
    B, V, N, C = tok.shape
    out = block(torch.cat((cam.reshape(B * V, 1, C), tok.reshape(B * V, N, C)), dim=1))
    cam = cam + out[:, 0].reshape(B, V, C)
    if embed is not None:
        tok = tok + embed(out[:, 1:]).reshape(B, V, N, C)
    return cam, tok


def camera_tokens(ref: torch.Tensor, source: torch.Tensor, B: int, V: int) -> torch.Tensor:
    """The initial camera tokens ``(B, V, D)``: ``ref (1, 1, D)`` for view 0, ``source (1, 1, D)``
    shared by the other views."""
    D = ref.shape[-1]
    return torch.cat((ref.expand(B, 1, D), source.expand(B, V - 1, D)), 1)


class PoseHead(nn.Module):
    """Iterative pose head: camera tokens ``(B, V, C)`` -> encodings ``(iters, B, V, 9)``.

    Each iteration: embed the detached current encoding (``harmonic_embedding`` +
    ``pose_proj``) and add it to the features; add ``pose_token_ref`` to view 0; run the
    ``trunk`` (``CameraBlock`` over the V tokens); ``pose_branch`` MLP gives a 9-D delta and a
    feature delta; ``feat += ffeat_updater(LN(feature delta))``; ``enc += delta``;
    ``feat = (feat + feat_init) / 2``. The encoding starts at 0.

    ``teacher``: optional sequence of ``iters`` entries, each None or ``(B, V, 9)``; entry k
    replaces the running encoding at the start of iteration k (teacher forcing, used to
    compare with the released code despite the 2^41 frequencies; nothing is done when None).
    """

    def __init__(self, dim: int, n_heads: int, trunk_depth: int, mlp_ratio: float, pose_dim: int,
                 n_harmonics: int, branch_ratio: int, iters: int, eps: float = 1e-6,
                 focal_range=(0.1, 30.0)):
        super().__init__()
        self.pose_dim, self.n_harmonics, self.iters, self.eps = pose_dim, n_harmonics, iters, eps
        self.focal_range = tuple(focal_range)
        self.pose_token_ref = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.pose_proj = nn.Linear(pose_dim * (2 * n_harmonics + 1), dim)
        self.pose_branch = Mlp(dim, dim * branch_ratio, dim + pose_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.trunk = nn.Sequential(*[CameraBlock(dim, n_heads, mlp_ratio, eps) for _ in range(trunk_depth)])

    def forward(self, feat: torch.Tensor, teacher: Sequence | None = None) -> torch.Tensor:
        B, V, C = feat.shape
        if teacher is not None and len(teacher) > self.iters:
            raise ValueError(f"pose teacher has {len(teacher)} entries, the head runs {self.iters} iterations")
        enc = feat.new_zeros(B, V, self.pose_dim)
        feat_init = feat
        out = []
        for k in range(self.iters):
            if teacher is not None and k < len(teacher) and teacher[k] is not None:
                t = teacher[k]
                if tuple(t.shape) != (B, V, self.pose_dim):
                    raise ValueError(f"pose teacher entry {k} has shape {tuple(t.shape)}, expected "
                                     f"({B}, {V}, {self.pose_dim})")
                enc = t.to(enc)
            enc = enc.detach()
            emb = self.pose_proj(harmonic_embedding(enc, self.n_harmonics).to(feat.dtype))
            feat = feat + emb
            feat = torch.cat((self.pose_token_ref[:, 0] + feat[:, :1], feat[:, 1:]), dim=1)
            feat = self.trunk(feat)
            delta = self.pose_branch(feat)
            feat = self.ffeat_updater(F.layer_norm(delta[..., self.pose_dim:], (C,), eps=self.eps)) + feat
            enc = enc + delta[..., : self.pose_dim]
            feat = (feat + feat_init) / 2
            out.append(enc)
        return torch.stack(out)


def natural_coarse_grid(enc_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The geometric token grid ``(BV, C, h, w)`` of ``enc_tokens (BV, h*w, C)`` (row-major):
    cell ``[i, j]`` is the token of image row ``i``, column ``j``. Stage 1 of the release uses
    this for landscape and square views only (:func:`release_coarse_grid`)."""
    h, w = grid
    BV, N, C = enc_tokens.shape
    if N != h * w:
        raise ValueError(f"{N} tokens do not fill a {h}x{w} grid")
    return enc_tokens.transpose(1, 2).reshape(BV, C, h, w)


def release_coarse_grid(enc_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The grid ``(BV, C, h, w)`` that the released stage 1 convolves (``patch_embed_coarse2``)
    for tokens ``enc_tokens (BV, h*w, C)`` of an ``h x w`` token grid (row-major).

    Landscape or square (``h <= w``): the geometric grid (:func:`natural_coarse_grid`).
    Portrait (``h > w``): the release stores a portrait view with its axes swapped (landscape,
    ``w x h`` tokens) and takes the coarse grid's shape from that stored tensor, while the
    encoder's tokens are in portrait row-major order. It reads the flat token list as a
    ``w x h`` grid and swaps its axes, so cell ``[i, j]`` holds ``token[h * j + i]`` instead of
    the geometric ``token[w * i + j]``: a reinterpretation of the list, not a transpose of
    the image. The released weights were trained with this grid, so ``FlareModel`` uses it
    (``parity_geometry_portrait.npz`` checks it; notebook 01 shows the difference).
    """
    h, w = grid
    if h <= w:
        return natural_coarse_grid(enc_tokens, grid)
    BV, N, C = enc_tokens.shape
    if N != h * w:
        raise ValueError(f"{N} tokens do not fill a {h}x{w} grid")
    return enc_tokens.transpose(1, 2).reshape(BV, C, w, h).transpose(-1, -2)


def make_pose_head(cfg) -> PoseHead:
    return PoseHead(cfg.dec_dim, cfg.pose_heads, cfg.pose_trunk_depth, cfg.pose_mlp_ratio, cfg.pose_dim,
                    cfg.pose_harmonics, cfg.pose_branch_ratio, cfg.pose_iters, cfg.norm_eps,
                    (cfg.focal_min, cfg.focal_max))


class CoarsePosePredictor(nn.Module):
    """Stage 1, ``model.pose_predictor``: ``patch_embed_coarse2``, ``enc_norm_coarse``,
    ``decoder_embed``, ``dec_blocks``, ``dec_blocks2``, ``cam_cond_encoder``, ``cam_cond_embed``,
    ``dec_cam_norm``, ``pose_token_ref``, ``pose_token_source`` and ``pose_head``.

    ``forward(enc_tokens (B*V, N, enc_dim), grid, B, V, teacher=None)`` -> dict (:meth:`forward`).
    """

    def __init__(self, cfg):
        super().__init__()
        D = cfg.dec_dim
        self.patch_embed_coarse2 = PatchEmbed(cfg.enc_dim, cfg.enc_dim, cfg.coarse_stride)
        self.enc_norm_coarse = nn.LayerNorm(cfg.enc_dim, eps=cfg.norm_eps)
        self.decoder_embed = nn.Linear(cfg.enc_dim, D)
        mk = lambda: DecoderBlock(D, cfg.dec_heads, cfg.dec_mlp_ratio, cfg.norm_eps, cfg.rope_base)  # noqa: E731
        self.dec_blocks = nn.ModuleList(mk() for _ in range(cfg.dec_depth))
        self.dec_blocks2 = nn.ModuleList(mk() for _ in range(cfg.dec_depth))
        self.cam_cond_encoder = nn.ModuleList(
            CameraBlock(D, cfg.dec_heads, cfg.dec_mlp_ratio, cfg.norm_eps) for _ in range(cfg.dec_depth))
        self.cam_cond_embed = nn.ModuleList(nn.Linear(D, D, bias=False) for _ in range(cfg.dec_depth))
        self.dec_cam_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.pose_token_ref = nn.Parameter(torch.zeros(1, 1, D))
        self.pose_token_source = nn.Parameter(torch.zeros(1, 1, D))
        self.pose_head = make_pose_head(cfg)

    def coarse_tokens(self, enc_tokens: torch.Tensor, grid: tuple[int, int]):
        """``enc_tokens (BV, h*w, enc_dim)`` -> coarse tokens ``(BV, Nc, enc_dim)`` after
        ``enc_norm_coarse`` and their positions ``(Nc, 2)``. The input grid of the 4x4 conv is
        built as the released model builds it (:func:`release_coarse_grid`; portrait views
        differ from the geometric grid, notebook 01)."""
        x = self.patch_embed_coarse2.proj(release_coarse_grid(enc_tokens, grid))
        pos = grid_positions(x.shape[-2], x.shape[-1], x.device)
        return self.enc_norm_coarse(x.flatten(2).transpose(1, 2)), pos

    def forward(self, enc_tokens, grid, B: int, V: int, teacher=None) -> dict:
        """Stage 1. ``enc_tokens (B*V, N, enc_dim)`` (the encoder's ``tokens``) on a ``grid`` (h, w)
        -> ``cam_tokens (B, V, D)`` (after ``dec_cam_norm``), ``pose_enc (iters, B, V, 9)`` and
        ``coarse_tokens (B, V, Nc, enc_dim)`` (after ``enc_norm_coarse``). ``teacher``: see
        :class:`PoseHead`."""
        xc, pos = self.coarse_tokens(enc_tokens, grid)
        f = self.decoder_embed(xc)
        Nc, D = f.shape[1], f.shape[2]
        f = f.reshape(B, V, Nc, D)
        f1 = f[:, 0]                                 # (B, Nc, D)   view 0
        f2 = f[:, 1:].reshape(B, (V - 1) * Nc, D)    # (B, (V-1) Nc, D) all other views, one sequence
        pos2 = pos.repeat(V - 1, 1)
        cam = camera_tokens(self.pose_token_ref, self.pose_token_source, B, V)
        depth = len(self.dec_blocks)
        for i in range(depth):
            n1 = self.dec_blocks[i](f1, f2, pos, pos2)
            n2 = self.dec_blocks2[i](f2, f1, pos2, pos)
            tok = torch.cat((n1[:, None], n2.reshape(B, V - 1, Nc, D)), dim=1)
            # the image tokens of the last layer are discarded: skip their (dead) update
            embed = self.cam_cond_embed[i] if i < depth - 1 else None
            cam, tok = camera_step(self.cam_cond_encoder[i], embed, cam, tok)
            f1, f2 = tok[:, 0], tok[:, 1:].reshape(B, (V - 1) * Nc, D)
        cam = self.dec_cam_norm(cam)
        return {"cam_tokens": cam, "pose_enc": self.pose_head(cam, teacher), "coarse_tokens": xc.reshape(B, V, Nc, -1)}
