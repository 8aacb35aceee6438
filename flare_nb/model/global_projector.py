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

from flare_nb.model.blocks import CameraBlock, CrossBlock, Mlp, SelfBlock
from flare_nb.model.camera_centric import (finish_decoder, global_layer,
                                           inject_encoder_state, make_dpt_head)
from flare_nb.model.pose_predictor import camera_tokens

__all__ = ["GlobalProjector"]


class GlobalProjector(nn.Module):
    """Stage 3, ``model.global_projector``: ``decoder_embed_point``, ``pose_token_{ref,source}_point``,
    ``dec_blocks_point_cross``, ``dec_blocks_point``, ``cam_cond_encoder_point``,
    ``cam_cond_embed_point``, ``cam_cond_embed_point_pre``, ``enc_inject_stage3``,
    ``inject_stage3``, ``dec_norm_point``, ``downstream_head2``; in the NVS model also
    ``decoder_embed_stage2`` (second image path's tokens -> decoder width) and
    ``decoder_embed_fxfycxcy`` (intrinsics -> camera embedding), ``flare_nb.model.nvs``.
    See :meth:`forward` for the shapes.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
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

    def add_nvs_inputs(self, cfg) -> None:
        """The NVS model's two extra inputs of stage 3: ``decoder_embed_stage2`` and
        ``decoder_embed_fxfycxcy``. ``FlareModel`` adds them after building its detail encoder, in
        the released model's module order (so one seed gives one initialisation)."""
        D, E = cfg.dec_dim, cfg.enc_dim
        self.decoder_embed_stage2 = nn.Linear(E, D)
        self.decoder_embed_fxfycxcy = Mlp(4, D, D)

    def forward(self, enc: dict, pose_embed: torch.Tensor, stage2_layers, B: int, V: int, hw,
                local_features: bool = False, detail_tokens: torch.Tensor | None = None,
                intrinsics_in: torch.Tensor | None = None) -> dict:
        """Stage 3. ``enc``: the encoder's output; ``pose_embed (B, V, D)``: ``model.embed_pose`` of
        the refined pose's camera-embedding input; ``stage2_layers``: stage 2's ``layers``. Returns
        ``layers`` (list of (B, V, N, D), the last after ``dec_norm_point``) and ``head``
        (``downstream_head2`` outputs with a (B, V) leading shape).

        NVS model only: ``detail_tokens (B*V, N, E)`` (second image path) pass
        ``decoder_embed_stage2`` and are added to the fresh tokens; ``intrinsics_in (B, V, 4)``
        (``[fx, fy, cx, cy] / cfg.intrinsics_scale``) pass ``decoder_embed_fxfycxcy`` and are added
        to ``pose_embed``."""
        cfg = self.cfg
        tokens, pos, states = enc["tokens"], enc["pos"], enc["states"]
        N = tokens.shape[1]
        if intrinsics_in is not None:
            pose_embed = pose_embed + self.decoder_embed_fxfycxcy(intrinsics_in.to(tokens.dtype))
        f = self.decoder_embed_point(tokens)
        if detail_tokens is not None:
            f = f + self.decoder_embed_stage2(detail_tokens)
        f = f.reshape(B, V, N, -1)
        D = f.shape[-1]
        pos_all = pos.repeat(V, 1)
        cam = camera_tokens(self.pose_token_ref_point, self.pose_token_source_point, B, V) + pose_embed
        layers = []
        for i in range(cfg.dec_depth):
            mem = stage2_layers[i] + self.cam_cond_embed_point_pre[i](cam)[:, :, None]
            f = self.dec_blocks_point_cross[i](f.reshape(B * V, N, D), mem.reshape(B * V, N, D), pos, pos)
            f = f.reshape(B, V, N, D)
            cam, f = global_layer(self.dec_blocks_point[i], self.cam_cond_encoder_point[i],
                                  self.cam_cond_embed_point[i], cam, f, pos_all)
            f = inject_encoder_state(f, i, cfg, states, self.enc_inject_stage3, self.inject_stage3)
            layers.append(f)
        head = finish_decoder(layers, self.dec_norm_point, self.downstream_head2, tokens, cfg, hw, B, V,
                              local_features)
        return {"layers": layers, "head": head}
