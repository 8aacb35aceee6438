"""``FlareModel``: the FLARE geometry network, stage by stage (notebooks 01-04).

``FlareModel(cfg)`` registers the modules of each stage (``encoder``, ``pose_predictor``,
``camera_centric``, ``global_projector``) directly on itself, so its ``state_dict`` names
are exactly the released checkpoint's (``data/flare_reference/manifest_geometry_pose.json``)
minus the keys of modules never used at inference (``OMITTED_KEYS_PREFIXES``).

Forward::

    out = model(images)            # images (B, V, 3, H, W) in [-1, 1], V >= 2, H, W multiples of 64
    out.pose_enc_stage2[-1]        # (B, V, 9) refined pose of every view relative to view 0
    out.pts3d_cam, out.conf_cam    # (B, V, H, W, 3), (B, V, H, W): each view in its own camera frame
    out.pts3d_global               # (B, V, H, W, 3) every view in view 0's camera frame

Poses: camera-to-world relative to view 0, OpenCV axes, translation up to scale (README
"Conventions"); see ``decode_pose_encoding`` for the 9-number layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .camera_centric import CameraCentricMixin
from .config import FlareConfig
from .encoder import EncoderMixin
from .global_projector import GlobalProjectorMixin
from .pose_predictor import PosePredictorMixin, decode_pose_encoding

__all__ = ["FlareModel", "FlareOutput", "OMITTED_KEYS_PREFIXES", "INERT_PARAMETERS"]

#: Released state-dict keys of modules that never take part in the inference forward pass;
#: ``FlareModel`` does not build them and the checkpoint loader reports and skips them.
OMITTED_KEYS_PREFIXES = (
    "mask_token", "dec_norm.", "patch_embed_coarse.", "patch_embed_test_.", "enc_blocks_stage2.",
    "enc_norm_stage2.", "cnn_wobn.", "cnn_proj.", "cnn_fusion.", "downstream_head4.",
)

#: Parameters that ``FlareModel`` holds (they are in the released checkpoint) but whose value
#: cannot change any output: the coarsest DPT fusion block has no skip input, and stage 1's
#: image tokens after its last layer are discarded (so that layer's write-back is skipped).
INERT_PARAMETERS = (
    "downstream_head1.dpt.scratch.refinenet4.resConfUnit1.", "downstream_head2.dpt.scratch.refinenet4.resConfUnit1.",
    "cam_cond_embed.{last}.",
)


@dataclass
class FlareOutput:
    """What ``FlareModel.forward`` returns (B batch, V views, H x W pixels).

    * ``pose_enc_stage1``, ``pose_enc_stage2``: ``(iters, B, V, 9)`` raw pose encoding after
      every iteration of each pose head, ``[T, q (w x y z, unnormalised), focal logits]``.
    * ``pts3d_cam (B, V, H, W, 3)``, ``conf_cam (B, V, H, W)``: head 1, each view in its own
      camera frame; ``pts3d_global``, ``conf_global``: head 2, all views in view 0's frame.
    * ``local_features``: with ``local_features=True``, ``{"cam": ..., "global": ...}`` each
      ``(B, V, H, W, desc_dim + 1)`` raw MLP-branch channels of the two heads (the Gaussian
      head uses the global ones); else None.
    * ``intermediates``: named tensors the reference fixture records (same names, with the
      batch axis): ``patch_embed_out``, ``enc_norm_out``, ``stage1_cam_tokens``,
      ``stage2_cam_tokens``, ``stage2_camera_embed_in``, ``stage3_camera_embed_in``,
      ``stage2_tokens_last``, ``stage3_tokens_last``, ``stage{1,2}_pose_enc``,
      ``stage{1,2}_focal``, ``stage{1,2}_R``.
    """

    pose_enc_stage1: torch.Tensor
    pose_enc_stage2: torch.Tensor
    pts3d_cam: torch.Tensor
    conf_cam: torch.Tensor
    pts3d_global: torch.Tensor
    conf_global: torch.Tensor
    local_features: dict | None = None
    intermediates: dict = field(default_factory=dict)

    def cameras(self, stage: int = 2, iteration: int = -1) -> dict:
        """``decode_pose_encoding`` of one iteration: ``T (B,V,3)``, ``quaternion``, ``R (B,V,3,3)``, ``focal``."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 (coarse) or 2 (refined), got {stage!r}")
        return decode_pose_encoding((self.pose_enc_stage1 if stage == 1 else self.pose_enc_stage2)[iteration])


class FlareModel(EncoderMixin, PosePredictorMixin, CameraCentricMixin, GlobalProjectorMixin, nn.Module):
    """The FLARE geometry network (released ``geometry_pose`` model with ``official_geometry()``).

    Build: ``FlareModel(cfg)``; weights from ``flare_nb.checkpoint.load_flare_checkpoint``.
    Stages (one mixin each): ``encode`` -> ``predict_coarse_pose`` -> ``camera_centric`` ->
    ``global_projection``.
    """

    def __init__(self, cfg: FlareConfig | None = None):
        super().__init__()
        cfg = cfg if cfg is not None else FlareConfig()
        if not isinstance(cfg, FlareConfig):
            raise TypeError(f"FlareModel expects a FlareConfig, got {type(cfg).__name__}")
        if cfg.kind != "geometry":
            raise NotImplementedError(
                f"FlareModel builds the geometry network only; config kind {cfg.kind!r} needs the NVS "
                "modules (second encoder, intrinsics embedding, Gaussian head), which are not implemented yet")
        self.cfg = cfg
        self._build_encoder(cfg)
        self._build_pose_predictor(cfg)
        self._build_camera_centric(cfg)
        self._build_global_projector(cfg)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def omitted_keys(reference_keys) -> list[str]:
        """The keys of ``reference_keys`` (e.g. a released state dict) that this class omits."""
        return sorted(k for k in reference_keys if k.startswith(OMITTED_KEYS_PREFIXES))

    def inert_parameter_names(self) -> list[str]:
        """Names of held parameters that cannot influence any output (see ``INERT_PARAMETERS``)."""
        pre = tuple(p.replace("{last}", str(self.cfg.dec_depth - 1)) for p in INERT_PARAMETERS)
        return [n for n, _ in self.named_parameters() if n.startswith(pre)]

    def check_images(self, images) -> torch.Tensor:
        """Validate the model input and return it as one ``(B, V, 3, H, W)`` tensor.

        Accepts a tensor ``(B, V, 3, H, W)`` or a list of ``V`` tensors ``(3, H, W)`` /
        ``(B, 3, H, W)``. Raises ValueError for: fewer than 2 views, views of different sizes,
        H or W not a positive multiple of ``cfg.multiple`` (64 released), values outside
        [-1, 1], and input that looks like [0, 1] images (no negative value at all).
        """
        if isinstance(images, (list, tuple)):
            if not all(isinstance(t, torch.Tensor) for t in images):
                raise TypeError("images must be a tensor (B, V, 3, H, W) or a list of view tensors")
            sizes = {tuple(t.shape[-2:]) for t in images}
            if len(sizes) > 1:
                raise ValueError(f"all views must have the same size, got sizes {sorted(sizes)} (H, W); "
                                 "resize / crop them first (flare_nb.preprocess)")
            if len(images) < 2:
                raise ValueError(f"FLARE needs at least 2 views, got {len(images)}")
            images = torch.stack([t if t.ndim == 4 else t[None] for t in images], dim=1)
        if not isinstance(images, torch.Tensor) or images.ndim != 5 or images.shape[2] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be (B, V, 3, H, W) (batch, views, RGB, height, width), got {shape}")
        B, V, _, H, W = images.shape
        if V < 2:
            raise ValueError(f"FLARE needs at least 2 views per scene, got V = {V} (shape {tuple(images.shape)})")
        m = self.cfg.multiple
        if H < m or W < m or H % m or W % m:
            raise ValueError(f"image size {H}x{W} (HxW) must be a positive multiple of {m} "
                             f"(patch {self.cfg.patch_size} x coarse stride {self.cfg.coarse_stride}); "
                             "e.g. 512x384 -> crop with flare_nb.preprocess")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"images must be normalised to [-1, 1] ((x - 0.5) / 0.5), got values in "
                             f"[{lo:.3g}, {hi:.3g}]")
        if lo >= 0.0:
            raise ValueError(f"images look like [0, 1] images (min {lo:.3g} >= 0); the model expects "
                             "[-1, 1]: use x * 2 - 1 (flare_nb.preprocess.to_model_input)")
        return images

    @staticmethod
    def _teacher(pose_teacher, stage: str):
        if pose_teacher is None:
            return None
        if not isinstance(pose_teacher, dict) or not set(pose_teacher) <= {"stage1", "stage2"}:
            raise ValueError("pose_teacher must be None or a dict with keys 'stage1' / 'stage2', each a "
                             "sequence of per-iteration (B, V, 9) encodings or None")
        return pose_teacher.get(stage)

    # ------------------------------------------------------------------ forward
    def forward(self, images, pose_teacher: dict | None = None, local_features: bool = False) -> FlareOutput:
        """Run the cascade.

        Args:
            images: ``(B, V, 3, H, W)`` in [-1, 1] (view 0 is the reference view).
            pose_teacher: optional teacher forcing, ``{"stage1": seq, "stage2": seq}``; ``seq[k]``
                (None or ``(B, V, 9)``) replaces the running pose encoding at the start of pose
                iteration ``k`` (see ``PoseHead``). Used for the parity test; free when None.
            local_features: also run the MLP (descriptor) branch of both DPT heads.
        """
        images = self.check_images(images)
        B, V, _, H, W = images.shape
        cfg = self.cfg
        enc = self.encode(images.reshape(B * V, 3, H, W), keep_states=set(cfg.inject_enc_states))
        s1 = self.predict_coarse_pose(enc["tokens"], enc["grid"], B, V, self._teacher(pose_teacher, "stage1"))
        s2 = self.camera_centric(enc, B, V, (H, W), s1["pose_enc"][-1], self._teacher(pose_teacher, "stage2"),
                                 local_features)
        s3 = self.global_projection(enc, B, V, (H, W), s2["layers"], s2["pose_enc"][-1], local_features)
        N = enc["tokens"].shape[1]
        inter = {
            "patch_embed_out": enc["patch"].reshape(B, V, N, -1),
            "enc_norm_out": enc["tokens"].reshape(B, V, N, -1),
            "stage1_cam_tokens": s1["cam_tokens"],
            "stage2_cam_tokens": s2["cam_tokens"],
            "stage2_camera_embed_in": s2["camera_embed_in"],
            "stage3_camera_embed_in": s3["camera_embed_in"],
            "stage2_tokens_last": s2["layers"][-1],
            "stage3_tokens_last": s3["layers"][-1],
        }
        for s, pe in (("stage1", s1["pose_enc"]), ("stage2", s2["pose_enc"])):
            cams = decode_pose_encoding(pe, cfg.focal_min, cfg.focal_max)
            inter[f"{s}_pose_enc"] = pe
            inter[f"{s}_focal"] = cams["focal"]
            inter[f"{s}_R"] = cams["R"]
        h1, h2 = s2["head"], s3["head"]
        lf = {"cam": h1["local_features"], "global": h2["local_features"]} if local_features else None
        return FlareOutput(pose_enc_stage1=s1["pose_enc"], pose_enc_stage2=s2["pose_enc"],
                           pts3d_cam=h1["pts3d"], conf_cam=h1["conf"], pts3d_global=h2["pts3d"],
                           conf_global=h2["conf"], local_features=lf, intermediates=inter)
