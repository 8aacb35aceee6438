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

from flare_nb.model.blocks import CameraBlock, SelfBlock
from flare_nb.model.dpt import DPTHead
from flare_nb.model.pose_predictor import camera_step, camera_tokens, make_pose_head

__all__ = ["camera_embed_input", "make_dpt_head", "run_dpt", "global_layer", "inject_encoder_state", "finish_decoder",
           "CameraCentric"]


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


def global_layer(block: nn.Module, cam_block: nn.Module, cam_embed: nn.Module, cam: torch.Tensor,
                 f: torch.Tensor, pos_all: torch.Tensor):
    """The part of a stage-2 / stage-3 layer shared by both: global self-attention ``block`` over
    the tokens of all views at once (``f (B, V, N, D)``, positions ``pos_all (V N, 2)``), then the
    per-view camera step (:func:`~flare_nb.model.pose_predictor.camera_step`). Returns ``cam, f``."""
    B, V, N, D = f.shape
    f = block(f.reshape(B, V * N, D), pos_all).reshape(B, V, N, D)
    return camera_step(cam_block, cam_embed, cam, f)


def inject_encoder_state(f: torch.Tensor, i: int, cfg, states: dict, norms: nn.ModuleList,
                         linears: nn.ModuleList) -> torch.Tensor:
    """After decoder layer ``i`` in ``cfg.inject_layers`` (the j-th of them): ``f (B, V, N, D) +
    linears[j](norms[j](state))`` with ``state (B*V, N, E)`` the encoder tokens entering block
    ``cfg.inject_enc_states[j]``; ``f`` unchanged after other layers. Stages 2 and 3."""
    if i not in cfg.inject_layers:
        return f
    j = cfg.inject_layers.index(i)
    return f + linears[j](norms[j](states[cfg.inject_enc_states[j]])).reshape(f.shape)


def finish_decoder(layers: list, norm: nn.Module, head: DPTHead | None, enc_tokens, cfg, hw, B: int, V: int,
                   local_features: bool):
    """The end of stages 2 and 3: ``norm`` on the last layer (in place in ``layers``), then the DPT
    ``head`` (:func:`run_dpt`; None when the model has no such head)."""
    layers[-1] = norm(layers[-1])
    return None if head is None else run_dpt(head, enc_tokens, layers, cfg.dpt_hooks, hw, B, V, local_features)


class CameraCentric(nn.Module):
    """Stage 2, ``model.camera_centric``: ``decoder_embed_fine``, ``adaLN_modulation``,
    ``dec_blocks_fine``, ``cam_cond_encoder_fine``, ``cam_cond_embed_fine``, ``enc_inject_stage2``,
    ``inject_stage2``, ``dec_norm_fine``, ``dec_cam_norm_fine``, ``pose_token_{ref,source}_fine``,
    ``pose_head_stage2``, ``downstream_head1`` (None in the NVS model, which never calls it).

    The pose embedding ``model.embed_pose`` is shared with stage 3 and lives on the model;
    ``forward`` takes its output. See :meth:`forward` for the shapes.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        D, E = cfg.dec_dim, cfg.enc_dim
        n_inj = len(cfg.inject_layers)
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
        self.downstream_head1 = make_dpt_head(cfg) if cfg.kind != "nvs" else None

    def forward(self, enc: dict, pose_embed: torch.Tensor, B: int, V: int, hw, teacher=None,
                local_features: bool = False) -> dict:
        """Stage 2.

        ``enc``: the encoder's output (``tokens (B*V, N, E)``, ``pos``, ``states``);
        ``pose_embed (B, V, D)``: ``model.embed_pose`` of the coarse pose's ``camera_embed_input``.
        Returns ``layers`` (list of ``dec_depth`` tensors (B, V, N, D), the last after
        ``dec_norm_fine``), ``cam_tokens (B, V, D)``, ``pose_enc (iters, B, V, 9)`` and ``head``
        (``downstream_head1`` outputs with a (B, V) leading shape; None in the NVS model).
        """
        cfg = self.cfg
        tokens, pos, states = enc["tokens"], enc["pos"], enc["states"]
        N = tokens.shape[1]
        f = self.decoder_embed_fine(tokens).reshape(B, V, N, -1)
        pos_all = pos.repeat(V, 1)
        cam = camera_tokens(self.pose_token_ref_fine, self.pose_token_source_fine, B, V)
        layers = []
        for i in range(cfg.dec_depth):
            shift, scale, _gate = self.adaLN_modulation[i](pose_embed).chunk(3, dim=-1)
            cam = cam * (1 + scale) + shift
            cam, f = global_layer(self.dec_blocks_fine[i], self.cam_cond_encoder_fine[i], self.cam_cond_embed_fine[i],
                                  cam, f, pos_all)
            f = inject_encoder_state(f, i, cfg, states, self.enc_inject_stage2, self.inject_stage2)
            layers.append(f)
        head = finish_decoder(layers, self.dec_norm_fine, self.downstream_head1, tokens, cfg, hw, B, V,
                              local_features)
        cam = self.dec_cam_norm_fine(cam)
        return {"layers": layers, "cam_tokens": cam, "pose_enc": self.pose_head_stage2(cam, teacher), "head": head}
