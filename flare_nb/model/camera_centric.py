"""Stage 2 of FLARE: camera-centric geometry and the refined pose (notebook 03).

Conditioned on the (detached) coarse pose of stage 1, full-resolution tokens of all views
go through ``dec_depth`` layers of *global* self-attention (``dec_blocks_fine``: one
sequence over every view's tokens). The camera tokens (``pose_token_*_fine``) are
modulated adaLN-style before each layer: ``cam = cam * (1 + scale) + shift`` with
``(shift, scale, unused gate) = adaLN_modulation[i](embed_pose([q, T / s]))``; after each
layer a per-view ``CameraBlock`` updates them and writes back into the image tokens
(``cam_cond_embed_fine``). After layers ``inject_layers`` (2, 5, 8) encoder states are
injected: ``tokens += inject_stage2[j](enc_inject_stage2[j](state))``. Then
``dec_norm_fine``; ``downstream_head1`` (DPT) gives a pointmap of every view *in its own
camera frame*, and ``pose_head_stage2`` on the ``dec_cam_norm_fine`` camera tokens a
refined pose.
"""
from __future__ import annotations

import torch
from torch import nn

from flare_nb.model.blocks import CameraBlock, Mlp, SelfBlock
from flare_nb.model.dpt import DPTHead
from flare_nb.model.pose_predictor import camera_step, make_pose_head

__all__ = ["camera_embed_input", "make_dpt_head", "CameraCentricMixin"]


def camera_embed_input(pose_enc: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``[q, T / s]`` ``(B, V, 7)`` from pose encodings ``(B, V, 9)``; ``s = mean_v |T_v| + eps``
    (geometry model). Detached and float32, as in the released code."""
    enc = pose_enc.detach().float()
    T, q = enc[..., :3], enc[..., 3:7]
    s = T.norm(dim=-1, keepdim=True).mean(dim=-2, keepdim=True) + eps
    return torch.cat((q, T / s), dim=-1)


def make_dpt_head(cfg) -> DPTHead:
    return DPTHead(enc_dim=cfg.enc_dim, dec_dim=cfg.dec_dim, patch_size=cfg.patch_size,
                   layer_dims=tuple(cfg.dpt_layer_dims), feature_dim=cfg.dpt_feature_dim,
                   last_dim=cfg.dpt_last_dim, desc_dim=cfg.desc_dim, mlp_ratio=cfg.desc_mlp_ratio)


def run_dpt(head: DPTHead, enc_tokens, layers, hooks, hw, B, V, local_features: bool) -> dict:
    """Run a DPT head on ``[encoder tokens, layers[h-1] for h in hooks[1:]]``; outputs get a
    ``(B, V)`` leading shape."""
    taps = [enc_tokens] + [layers[h - 1].reshape(B * V, -1, layers[h - 1].shape[-1]) for h in hooks[1:]]
    out = head(taps, hw, local_features=local_features)
    return {k: v.reshape(B, V, *v.shape[1:]) for k, v in out.items()}


class CameraCentricMixin:
    """Stage 2 modules: ``embed_pose`` (shared with stage 3), ``decoder_embed_fine``,
    ``adaLN_modulation``, ``dec_blocks_fine``, ``cam_cond_encoder_fine``, ``cam_cond_embed_fine``,
    ``enc_inject_stage2``, ``inject_stage2``, ``dec_norm_fine``, ``dec_cam_norm_fine``,
    ``pose_token_{ref,source}_fine``, ``pose_head_stage2``, ``downstream_head1``."""

    def _build_camera_centric(self, cfg):
        D, E = cfg.dec_dim, cfg.enc_dim
        n_inj = len(cfg.inject_layers)
        self.embed_pose = Mlp(cfg.pose_embed_dim, D, D)
        self.decoder_embed_fine = nn.Linear(E, D)
        self.adaLN_modulation = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(D, 3 * D)) for _ in range(cfg.dec_depth))
        self.dec_blocks_fine = nn.ModuleList(
            SelfBlock(D, cfg.dec_heads, cfg.dec_mlp_ratio, cfg.norm_eps, cfg.rope_base) for _ in range(cfg.dec_depth))
        self.cam_cond_encoder_fine = nn.ModuleList(
            CameraBlock(D, cfg.dec_heads, cfg.dec_mlp_ratio, cfg.norm_eps) for _ in range(cfg.dec_depth))
        self.cam_cond_embed_fine = nn.ModuleList(nn.Linear(D, D, bias=False) for _ in range(cfg.dec_depth))
        self.enc_inject_stage2 = nn.ModuleList(nn.LayerNorm(E, eps=cfg.norm_eps) for _ in range(n_inj))
        self.inject_stage2 = nn.ModuleList(nn.Linear(E, D, bias=False) for _ in range(n_inj))
        self.dec_norm_fine = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.dec_cam_norm_fine = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.pose_token_ref_fine = nn.Parameter(torch.zeros(1, 1, D))
        self.pose_token_source_fine = nn.Parameter(torch.zeros(1, 1, D))
        self.pose_head_stage2 = make_pose_head(cfg)
        # the NVS release never calls head 1: not built there (``head`` is then None)
        self.downstream_head1 = make_dpt_head(cfg) if cfg.kind != "nvs" else None

    def camera_centric(self, enc: dict, B: int, V: int, hw, pose_enc: torch.Tensor, teacher=None,
                       local_features: bool = False) -> dict:
        """Stage 2.

        ``enc``: output of ``encode`` (tokens (B*V, N, E), pos, states); ``pose_enc (B, V, 9)``
        the last stage-1 encoding (detached here). Returns ``camera_embed_in (B, V, 7)``,
        ``layers`` (list of ``dec_depth`` tensors (B, V, N, D), the last after
        ``dec_norm_fine``), ``cam_tokens (B, V, D)``, ``pose_enc (iters, B, V, 9)`` and
        ``head`` (``downstream_head1`` outputs with a (B, V) leading shape; None in the NVS model).
        """
        cfg = self.cfg
        tokens, pos, states = enc["tokens"], enc["pos"], enc["states"]
        N = tokens.shape[1]
        cam_in = camera_embed_input(pose_enc)
        e = self.embed_pose(cam_in.to(tokens.dtype))
        f = self.decoder_embed_fine(tokens).reshape(B, V, N, -1)
        D = f.shape[-1]
        pos_all = pos.repeat(V, 1)
        cam = torch.cat((self.pose_token_ref_fine.expand(B, 1, D),
                         self.pose_token_source_fine.expand(B, V - 1, D)), 1)
        layers = []
        for i in range(cfg.dec_depth):
            shift, scale, _gate = self.adaLN_modulation[i](e).chunk(3, dim=-1)
            cam = cam * (1 + scale) + shift
            f = self.dec_blocks_fine[i](f.reshape(B, V * N, D), pos_all).reshape(B, V, N, D)
            cam, f = camera_step(self.cam_cond_encoder_fine[i], self.cam_cond_embed_fine[i], cam, f)
            if i in cfg.inject_layers:
                j = cfg.inject_layers.index(i)
                s = states[cfg.inject_enc_states[j]]
                f = f + self.inject_stage2[j](self.enc_inject_stage2[j](s)).reshape(B, V, N, D)
            layers.append(f)
        layers[-1] = self.dec_norm_fine(layers[-1])
        cam = self.dec_cam_norm_fine(cam)
        pose = self.pose_head_stage2(cam, teacher)
        head = None if self.downstream_head1 is None else run_dpt(
            self.downstream_head1, tokens, layers, cfg.dpt_hooks, hw, B, V, local_features)
        return {"camera_embed_in": cam_in, "layers": layers, "cam_tokens": cam, "pose_enc": pose, "head": head}
