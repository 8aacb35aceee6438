"""Stage 3 of FLARE: the global geometry projector (notebook 04).

Conditioned on the refined (detached) pose of stage 2, it maps the camera-centric tokens
into one frame, view 0's camera. Fresh tokens ``decoder_embed_point(encoder tokens)``; camera
tokens ``pose_token_*_point + embed_pose([q, T / s])``. Each of ``dec_depth`` layers:

1. per view, cross-attend (``dec_blocks_point_cross``) to stage 2's output of the same
   layer plus ``cam_cond_embed_point_pre(camera token)`` (stage 2's last layer after its
   final norm);
2. global self-attention over all views (``dec_blocks_point``);
3. per-view ``CameraBlock`` update of camera and image tokens (``cam_cond_*_point``);
4. encoder-state injections after ``inject_layers`` (``inject_stage3``).

Then ``dec_norm_point`` and ``downstream_head2`` (DPT): a pointmap of every view in view 0's
camera frame.
"""
from __future__ import annotations

import torch
from torch import nn

from flare_nb.model.blocks import CameraBlock, CrossBlock, SelfBlock
from flare_nb.model.camera_centric import (camera_embed_input, make_dpt_head,
                                           run_dpt)
from flare_nb.model.pose_predictor import camera_step

__all__ = ["GlobalProjectorMixin"]


class GlobalProjectorMixin:
    """Stage 3 modules: ``decoder_embed_point``, ``pose_token_{ref,source}_point``,
    ``dec_blocks_point_cross``, ``dec_blocks_point``, ``cam_cond_encoder_point``,
    ``cam_cond_embed_point``, ``cam_cond_embed_point_pre``, ``enc_inject_stage3``,
    ``inject_stage3``, ``dec_norm_point``, ``downstream_head2``."""

    def _build_global_projector(self, cfg):
        D, E = cfg.dec_dim, cfg.enc_dim
        n_inj = len(cfg.inject_layers)
        args = (D, cfg.dec_heads, cfg.dec_mlp_ratio, cfg.norm_eps, cfg.rope_base)
        self.decoder_embed_point = nn.Linear(E, D)
        self.pose_token_ref_point = nn.Parameter(torch.zeros(1, 1, D))
        self.pose_token_source_point = nn.Parameter(torch.zeros(1, 1, D))
        self.dec_blocks_point_cross = nn.ModuleList(CrossBlock(*args) for _ in range(cfg.dec_depth))
        self.dec_blocks_point = nn.ModuleList(SelfBlock(*args) for _ in range(cfg.dec_depth))
        self.cam_cond_encoder_point = nn.ModuleList(
            CameraBlock(D, cfg.dec_heads, cfg.dec_mlp_ratio, cfg.norm_eps) for _ in range(cfg.dec_depth))
        self.cam_cond_embed_point = nn.ModuleList(nn.Linear(D, D, bias=False) for _ in range(cfg.dec_depth))
        self.cam_cond_embed_point_pre = nn.ModuleList(nn.Linear(D, D, bias=False) for _ in range(cfg.dec_depth))
        self.enc_inject_stage3 = nn.ModuleList(nn.LayerNorm(E, eps=cfg.norm_eps) for _ in range(n_inj))
        self.inject_stage3 = nn.ModuleList(nn.Linear(E, D, bias=False) for _ in range(n_inj))
        self.dec_norm_point = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.downstream_head2 = make_dpt_head(cfg)

    def global_projection(self, enc: dict, B: int, V: int, hw, stage2_layers, pose_enc: torch.Tensor,
                          local_features: bool = False, camera_embed_in: torch.Tensor | None = None,
                          token_extra: torch.Tensor | None = None,
                          camera_extra: torch.Tensor | None = None) -> dict:
        """Stage 3. ``stage2_layers``: stage 2's ``layers``; ``pose_enc (B, V, 9)`` the last
        stage-2 encoding (detached here). Returns ``camera_embed_in (B, V, 7)``, ``layers``
        (the last after ``dec_norm_point``) and ``head`` (``downstream_head2`` outputs).

        NVS model only (``flare_nb.model.nvs``): ``camera_embed_in (B, V, 7)`` replaces
        ``camera_embed_input(pose_enc)``; ``token_extra (B*V, N, dec_dim)`` is added to the
        fresh tokens, ``camera_extra (B, V, dec_dim)`` to the pose embedding."""
        cfg = self.cfg
        tokens, pos, states = enc["tokens"], enc["pos"], enc["states"]
        N = tokens.shape[1]
        cam_in = camera_embed_input(pose_enc) if camera_embed_in is None else camera_embed_in
        e = self.embed_pose(cam_in.to(tokens.dtype))
        if camera_extra is not None:
            e = e + camera_extra
        f = self.decoder_embed_point(tokens)
        if token_extra is not None:
            f = f + token_extra
        f = f.reshape(B, V, N, -1)
        D = f.shape[-1]
        pos_all = pos.repeat(V, 1)
        cam = torch.cat((self.pose_token_ref_point.expand(B, 1, D),
                         self.pose_token_source_point.expand(B, V - 1, D)), 1) + e
        layers = []
        for i in range(cfg.dec_depth):
            mem = stage2_layers[i] + self.cam_cond_embed_point_pre[i](cam)[:, :, None]
            f = self.dec_blocks_point_cross[i](f.reshape(B * V, N, D), mem.reshape(B * V, N, D), pos, pos)
            f = self.dec_blocks_point[i](f.reshape(B, V * N, D), pos_all).reshape(B, V, N, D)
            cam, f = camera_step(self.cam_cond_encoder_point[i], self.cam_cond_embed_point[i], cam, f)
            if i in cfg.inject_layers:
                j = cfg.inject_layers.index(i)
                s = states[cfg.inject_enc_states[j]]
                f = f + self.inject_stage3[j](self.enc_inject_stage3[j](s)).reshape(B, V, N, D)
            layers.append(f)
        layers[-1] = self.dec_norm_point(layers[-1])
        head = run_dpt(self.downstream_head2, tokens, layers, cfg.dpt_hooks, hw, B, V, local_features)
        return {"camera_embed_in": cam_in, "layers": layers, "head": head}
