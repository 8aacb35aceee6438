"""``FlareModel``: the FLARE network, stage by stage (notebooks 01-05; NVS parts in ``flare_nb.model.nvs``).

``FlareModel(cfg)`` is built from one module per stage, each with its own ``forward``::

    model.encoder            # Encoder: images -> patch tokens (ViT)
    model.pose_predictor     # CoarsePosePredictor, stage 1: coarse tokens -> camera tokens, coarse pose
    model.embed_pose         # the pose embedding shared by stages 2 and 3
    model.camera_centric     # CameraCentric, stage 2: pose-conditioned tokens, refined pose, head 1
    model.global_projector   # GlobalProjector, stage 3: every view in view 0's frame, head 2
    model.detail_encoder     # NVS model: the second image path (shallow CNN + 4 encoder blocks)
    model.gaussian_head      # NVS model: one Gaussian per pixel

Inside each stage the modules carry the released checkpoint's names, so a parameter's released
name is its name without the stage (``RELEASED_PREFIX``; ``gaussian_head`` is the released
``downstream_head4``). ``model.released_names()`` is that map, generated from the module tree;
checkpoints on disk use the released names (``data/flare_reference/manifest_geometry_pose.json``
minus the keys of modules never used at inference, ``OMITTED_KEYS_PREFIXES``).

Forward::

    out = model(images)            # images (B, V, 3, H, W) in [-1, 1], V >= 2, H, W multiples of 64
    out.pose_enc_stage2[-1]        # (B, V, 9) refined pose of every view relative to view 0
    out.pts3d_cam, out.conf_cam    # (B, V, H, W, 3), (B, V, H, W): each view in its own camera frame
    out.pts3d_global               # (B, V, H, W, 3) every view in view 0's camera frame

NVS model (``cfg.kind == "nvs"``, ``official_nvs()`` / ``tiny_nvs()``; ``flare_nb.model.nvs``)::

    out = model(images, intrinsics=fxfycxcy)   # (B, V, 4) [fx, fy, cx, cy] pixels of the input
    out.gaussians_raw["opacity_raw"]           # (B, V, H, W, 1) raw Gaussian head outputs
    out.gaussians[b]                           # scene b: means, quats, scales, opacities, colors,
                                               # sh_degree (flare_nb.render.rasterize.rasterize arguments)
    out.pts3d_cam is None                      # the NVS model has no camera-centric head

Poses: camera-to-world relative to view 0, OpenCV axes, translation up to scale (README
"Conventions"); see ``decode_pose_encoding`` for the 9-number layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from flare_nb.model.blocks import Mlp
from flare_nb.model.camera_centric import CameraCentric, camera_embed_input
from flare_nb.model.config import FlareConfig
from flare_nb.model.encoder import Encoder
from flare_nb.model.gaussian_head import activate_gaussians
from flare_nb.model.global_projector import GlobalProjector
from flare_nb.model.nvs import (DetailEncoder, camera_embed_input_baseline,
                                intrinsics_vector, make_gaussian_head,
                                run_gaussian_head)
from flare_nb.model.pose_encoding import (RIGID_TOLERANCE, check_camera_poses,
                                         decode_pose_encoding, given_pose_encoding)
from flare_nb.model.pose_predictor import CoarsePosePredictor

__all__ = ["FlareModel", "FlareOutput", "identity_pose_encoding", "RELEASED_PREFIX", "STAGE_MODULES", "OMITTED_KEYS_PREFIXES", "NVS_OMITTED_KEYS_PREFIXES",
           "omitted_key_prefixes", "INERT_PARAMETERS", "check_camera_poses", "given_pose_encoding",
           "RIGID_TOLERANCE"]

#: The stage modules of ``FlareModel`` (attribute names, in call order; the NVS model adds the last two).
STAGE_MODULES = ("encoder", "pose_predictor", "camera_centric", "global_projector", "detail_encoder",
                 "gaussian_head")
#: What replaces a stage's attribute name in the released state-dict names: the modules inside a
#: stage carry their released names, the Gaussian head is released as ``downstream_head4``.
#: Parameters outside the stages (``embed_pose``) have their released names already.
RELEASED_PREFIX = {**{s: "" for s in STAGE_MODULES}, "gaussian_head": "downstream_head4."}

#: Released state-dict keys of modules that never take part in the inference forward pass;
#: ``FlareModel`` does not build them and the checkpoint loader reports and skips them.
OMITTED_KEYS_PREFIXES = (
    "mask_token", "dec_norm.", "patch_embed_coarse.", "patch_embed_test_.", "enc_blocks_stage2.",
    "enc_norm_stage2.", "cnn_wobn.", "cnn_proj.", "cnn_fusion.", "downstream_head4.",
)
#: the same for the NVS model (``kind="nvs"``): it builds the NVS parts but not head 1
NVS_OMITTED_KEYS_PREFIXES = ("mask_token", "dec_norm.", "patch_embed_test_.", "downstream_head1.")


def omitted_key_prefixes(kind: str = "geometry") -> tuple:
    """Key prefixes of released modules that ``FlareModel`` of config kind ``kind`` does not build."""
    if kind not in ("geometry", "nvs"):
        raise ValueError(f"kind must be 'geometry' or 'nvs', got {kind!r}")
    return OMITTED_KEYS_PREFIXES if kind == "geometry" else NVS_OMITTED_KEYS_PREFIXES

#: Parameters that ``FlareModel`` holds (they are in the released checkpoint) but whose value
#: cannot change any output: the coarsest DPT fusion block has no skip input, and stage 1's
#: image tokens after its last layer are discarded (so that layer's write-back is skipped).
INERT_PARAMETERS = (
    "downstream_head1.dpt.scratch.refinenet4.resConfUnit1.", "downstream_head2.dpt.scratch.refinenet4.resConfUnit1.",
    "cam_cond_embed.{last}.",
)


def identity_pose_encoding(like: torch.Tensor) -> torch.Tensor:
    """Encodings ``(..., 9)`` of the identity pose (T = 0, q = (1, 0, 0, 0), focal logits 0),
    shaped like ``like``: what stages 2 and 3 receive when ``cfg.pose_conditioning`` is False."""
    out = torch.zeros_like(like).detach()
    out[..., 3] = 1.0
    return out


@dataclass
class FlareOutput:
    """What ``FlareModel.forward`` returns (B batch, V views, H x W pixels).

    * ``pose_enc_stage1``, ``pose_enc_stage2``: ``(iters, B, V, 9)`` raw pose encoding after
      every iteration of each pose head, ``[T, q (w x y z, unnormalised), focal logits]``.
    * ``pts3d_cam (B, V, H, W, 3)``, ``conf_cam (B, V, H, W)``: head 1, each view in its own
      camera frame; ``pts3d_global``, ``conf_global``: head 2, all views in view 0's frame.
    * ``local_features``: with ``local_features=True``, ``{"cam": ..., "global": ...}`` each
      ``(B, V, H, W, desc_dim + 1)`` raw MLP-branch channels of the two heads (the Gaussian
      head uses the global ones); else None. NVS model: ``{"global": ...}`` only.
    * ``intermediates``: named tensors the reference fixture records (same names, with the
      batch axis): ``patch_embed_out``, ``enc_norm_out``, ``stage1_cam_tokens``,
      ``stage2_cam_tokens``, ``stage2_camera_embed_in``, ``stage3_camera_embed_in``,
      ``stage2_tokens_last``, ``stage3_tokens_last``, ``stage{1,2}_pose_enc``,
      ``stage{1,2}_focal``, ``stage{1,2}_R``, ``stage1_coarse_tokens (B, V, Nc, enc_dim)``; NVS
      model also ``fxfycxcy_embed_in (B, V, 4)``,
      ``enc_stage2_norm_out (B, V, N, enc_dim)``, ``desc (B, V, H, W, desc_dim + 1)`` and
      ``cnn_detail (B, V, H, W, cnn_detail_dim)`` (full resolution, channels last).
    * NVS model only (None otherwise; ``pts3d_cam`` / ``conf_cam`` are None there):
      ``gaussians_raw``: the Gaussian head's raw outputs ``{opacity_raw, scaling_raw,
      rotation_raw, feature_dc_raw, feature_rest_raw}``, each ``(B, V, H, W, C)``;
      ``gaussians``: per scene ``b`` a dict of ``activate_gaussians`` (``means (N, 3)`` =
      ``pts3d_global[b]`` flattened in (view, row, column) order, ``quats``, ``scales``,
      ``opacities``, ``colors``, ``sh_degree``), N = V H W, in view 0's camera frame.
    """

    pose_enc_stage1: torch.Tensor
    pose_enc_stage2: torch.Tensor
    pts3d_cam: torch.Tensor | None
    conf_cam: torch.Tensor | None
    pts3d_global: torch.Tensor
    conf_global: torch.Tensor
    local_features: dict | None = None
    intermediates: dict = field(default_factory=dict)
    gaussians_raw: dict | None = None
    gaussians: list | None = None

    def cameras(self, stage: int = 2, iteration: int = -1) -> dict:
        """``decode_pose_encoding`` of one iteration: ``T (B,V,3)``, ``quaternion``, ``R (B,V,3,3)``, ``focal``."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 (coarse) or 2 (refined), got {stage!r}")
        return decode_pose_encoding((self.pose_enc_stage1 if stage == 1 else self.pose_enc_stage2)[iteration])


class FlareModel(nn.Module):
    """The FLARE network: released ``geometry_pose`` model with ``official_geometry()``, released
    ``NVS`` model (Gaussians) with ``official_nvs()``.

    Build: ``FlareModel(cfg)``; weights from ``flare_nb.model.checkpoint.load_flare_checkpoint``.
    Stages (one module each, called in this order by ``forward``): ``encoder`` ->
    ``pose_predictor`` -> ``camera_centric`` -> ``global_projector`` (NVS: ``detail_encoder``
    before stage 3, ``gaussian_head`` after it).
    """

    def __init__(self, cfg: FlareConfig | None = None):
        super().__init__()
        cfg = cfg if cfg is not None else FlareConfig()
        if not isinstance(cfg, FlareConfig):
            raise TypeError(f"FlareModel expects a FlareConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.pose_predictor = CoarsePosePredictor(cfg)
        self.embed_pose = Mlp(cfg.pose_embed_dim, cfg.dec_dim, cfg.dec_dim)
        self.camera_centric = CameraCentric(cfg)
        self.global_projector = GlobalProjector(cfg)
        if cfg.kind == "nvs":      # modules are created in the released model's order
            self.detail_encoder = DetailEncoder(cfg)
            self.global_projector.add_nvs_inputs(cfg)
            self.gaussian_head = make_gaussian_head(cfg)

    # ------------------------------------------------------------------ released names
    def released_names(self) -> dict[str, str]:
        """``{our state-dict name: released name}`` for every entry of ``state_dict()`` (alias
        names included), generated from the module tree with ``RELEASED_PREFIX``: e.g.
        ``encoder.enc_blocks.0.attn.qkv.weight`` -> ``enc_blocks.0.attn.qkv.weight``,
        ``gaussian_head.color.weight`` -> ``downstream_head4.color.weight``."""
        out = {}
        for name in self.state_dict(keep_vars=True):
            stage, _, rest = name.partition(".")
            out[name] = RELEASED_PREFIX[stage] + rest if stage in RELEASED_PREFIX else name
        if len(set(out.values())) != len(out):
            raise RuntimeError("two parameters of FlareModel map to one released name")
        return out

    def released_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict()`` under the released names (what checkpoints on disk hold)."""
        names = self.released_names()
        return {names[k]: v for k, v in self.state_dict().items()}

    def load_released_state_dict(self, state_dict: dict, strict: bool = True) -> tuple[list, list]:
        """``load_state_dict`` for a state dict in released names; returns ``(missing, unexpected)``
        in released names. With ``strict`` either is an error (RuntimeError, model untouched)."""
        ours = {v: k for k, v in self.released_names().items()}
        missing = sorted(k for k in ours if k not in state_dict)
        unexpected = sorted(k for k in state_dict if k not in ours)
        if strict and (missing or unexpected):
            raise RuntimeError(f"state dict does not fit FlareModel: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.load_state_dict({ours[k]: v for k, v in state_dict.items() if k in ours}, strict=False)
        return missing, unexpected

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def omitted_keys(reference_keys, kind: str = "geometry") -> list[str]:
        """The keys of ``reference_keys`` (e.g. a released state dict) that a model of config
        kind ``kind`` omits."""
        prefixes = omitted_key_prefixes(kind)
        return sorted(k for k in reference_keys if k.startswith(prefixes))

    def inert_parameter_names(self) -> list[str]:
        """Names (``named_parameters``) of held parameters that cannot influence any output (see
        ``INERT_PARAMETERS``, in released names)."""
        pre = tuple(p.replace("{last}", str(self.cfg.dec_depth - 1)) for p in INERT_PARAMETERS)
        released = self.released_names()
        return [n for n, _ in self.named_parameters() if released[n].startswith(pre)]

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
                                 "resize / crop them first (flare_nb.scenes.preprocess)")
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
                             "e.g. 512x384 -> crop with flare_nb.scenes.preprocess")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"images must be normalised to [-1, 1] ((x - 0.5) / 0.5), got values in "
                             f"[{lo:.3g}, {hi:.3g}]")
        if lo >= 0.0:
            raise ValueError(f"images look like [0, 1] images (min {lo:.3g} >= 0); the model expects "
                             "[-1, 1]: use x * 2 - 1 (flare_nb.scenes.preprocess.to_model_input)")
        return images

    @staticmethod
    def _teacher(pose_teacher, stage: str):
        if pose_teacher is None:
            return None
        if not isinstance(pose_teacher, dict) or not set(pose_teacher) <= {"stage1", "stage2"}:
            raise ValueError("pose_teacher must be None or a dict with keys 'stage1' / 'stage2', each a "
                             "sequence of per-iteration (B, V, 9) encodings or None")
        return pose_teacher.get(stage)

    def _conditioning_pose(self, pose_enc, stage: int, pose_noise, given):
        """The pose encoding ``(B, V, 9)`` that conditions stage ``stage`` (2 or 3): the previous
        stage's last one, with the training pose noise, the ablation without pose conditioning
        or the known poses applied."""
        if pose_noise is not None:
            pose_enc = pose_noise(pose_enc.detach(), stage)
        if not self.cfg.pose_conditioning:       # ablation (notebook 06): a constant, pose-free camera embedding
            pose_enc = identity_pose_encoding(pose_enc)
        return given if given is not None else pose_enc

    def _embed_pose(self, camera_embed_in, enc):
        """``embed_pose`` of a camera-embedding input ``(B, V, 7)`` in the tokens' dtype -> ``(B, V, D)``."""
        return self.embed_pose(camera_embed_in.to(enc["tokens"].dtype))

    # ------------------------------------------------------------------ forward
    def forward(self, images, pose_teacher: dict | None = None, local_features: bool = False,
                pose_noise=None, intrinsics=None, camera_poses=None) -> FlareOutput:
        """Run the cascade.

        Args:
            images: ``(B, V, 3, H, W)`` in [-1, 1] (view 0 is the reference view).
            pose_teacher: optional teacher forcing, ``{"stage1": seq, "stage2": seq}``; ``seq[k]``
                (None or ``(B, V, 9)``) replaces the running pose encoding at the start of pose
                iteration ``k`` (see ``PoseHead``). Used for the parity test; free when None.
            local_features: also run the MLP (descriptor) branch of both DPT heads.
            pose_noise: optional training augmentation, ``pose_noise(pose_enc (B, V, 9), stage)
                -> (B, V, 9)`` applied to the (detached) pose fed to stage 2 (``stage=2``, the
                last coarse pose) and stage 3 (``stage=3``, the last refined pose); the returned
                pose encodings are unchanged. ``flare_nb.train.augment.pose_noise_hook`` builds one.
                Free when None.
            intrinsics: NVS model only (required there, ignored by the geometry model, as by
                the release): ``(B, V, 4)`` ``[fx, fy, cx, cy]`` in pixels of ``images`` (or
                ``(B, V, 3, 3)`` matrices K). Embedded as ``/ cfg.intrinsics_scale`` (2000).
            camera_poses: geometry model only: known camera-to-world poses ``(B, V, 4, 4)`` (or
                ``(V, 4, 4)`` for B = 1), any world frame and scale, OpenCV axes, the release's
                known-pose mode (``wpose=True``): their ``given_pose_encoding`` replaces the
                predicted pose in the camera embeddings of stages 2 and 3. Both pose heads still
                run and are returned, but nothing downstream uses them; the pointmaps stay in
                view 0's camera frame at the model's own scale. Checked by ``check_camera_poses``.
        """
        images = self.check_images(images)
        B, V, _, H, W = images.shape
        cfg = self.cfg
        nvs = cfg.kind == "nvs"
        fxfycxcy = intrinsics_vector(intrinsics, B, V).to(images.device) if nvs else None
        given = None
        if camera_poses is not None:
            if nvs or not cfg.pose_conditioning or pose_noise is not None:
                raise ValueError("camera_poses (known poses) work with the geometry model only, with pose "
                                 "conditioning on and without pose_noise")
            given = given_pose_encoding(check_camera_poses(camera_poses, B, V)).to(images.device)
        flat = images.reshape(B * V, 3, H, W)
        enc = self.encoder(flat, keep_states=set(cfg.inject_enc_states))
        s1 = self.pose_predictor(enc["tokens"], enc["grid"], B, V, self._teacher(pose_teacher, "stage1"))
        cam_in2 = camera_embed_input(self._conditioning_pose(s1["pose_enc"][-1], 2, pose_noise, given))
        s2 = self.camera_centric(enc, self._embed_pose(cam_in2, enc), B, V, (H, W),
                                 self._teacher(pose_teacher, "stage2"), local_features)
        pose3 = self._conditioning_pose(s2["pose_enc"][-1], 3, pose_noise, given)
        if nvs:  # second image path, intrinsics, baseline-normalised pose (flare_nb.model.nvs)
            st2 = self.detail_encoder(flat)
            fx_in = fxfycxcy / cfg.intrinsics_scale
            cam_in3 = camera_embed_input_baseline(pose3)
            s3 = self.global_projector(enc, self._embed_pose(cam_in3, enc), s2["layers"], B, V, (H, W), True,
                                       detail_tokens=st2["tokens"], intrinsics_in=fx_in)
        else:
            cam_in3 = camera_embed_input(pose3)
            s3 = self.global_projector(enc, self._embed_pose(cam_in3, enc), s2["layers"], B, V, (H, W),
                                       local_features)
        N = enc["tokens"].shape[1]
        inter = {
            "patch_embed_out": enc["patch"].reshape(B, V, N, -1),
            "enc_norm_out": enc["tokens"].reshape(B, V, N, -1),
            "stage1_coarse_tokens": s1["coarse_tokens"],
            "stage1_cam_tokens": s1["cam_tokens"],
            "stage2_cam_tokens": s2["cam_tokens"],
            "stage2_camera_embed_in": cam_in2,
            "stage3_camera_embed_in": cam_in3,
            "stage2_tokens_last": s2["layers"][-1],
            "stage3_tokens_last": s3["layers"][-1],
        }
        for s, pe in (("stage1", s1["pose_enc"]), ("stage2", s2["pose_enc"])):
            cams = decode_pose_encoding(pe, cfg.focal_min, cfg.focal_max)
            inter[f"{s}_pose_enc"] = pe
            inter[f"{s}_focal"] = cams["focal"]
            inter[f"{s}_R"] = cams["R"]
        h1, h2 = s2["head"], s3["head"]
        if not nvs:
            lf = {"cam": h1["local_features"], "global": h2["local_features"]} if local_features else None
            return FlareOutput(pose_enc_stage1=s1["pose_enc"], pose_enc_stage2=s2["pose_enc"],
                               pts3d_cam=h1["pts3d"], conf_cam=h1["conf"], pts3d_global=h2["pts3d"],
                               conf_global=h2["conf"], local_features=lf, intermediates=inter)
        desc = h2["local_features"]
        raw = run_gaussian_head(self.gaussian_head, desc, st2["detail"])
        inter.update(fxfycxcy_embed_in=fx_in, enc_stage2_norm_out=st2["tokens"].reshape(B, V, N, -1), desc=desc,
                     cnn_detail=st2["detail"].reshape(B, V, *st2["detail"].shape[1:]).permute(0, 1, 3, 4, 2))
        gaussians = [activate_gaussians({k: v[b] for k, v in raw.items()}, h2["pts3d"][b]) for b in range(B)]
        return FlareOutput(pose_enc_stage1=s1["pose_enc"], pose_enc_stage2=s2["pose_enc"], pts3d_cam=None,
                           conf_cam=None, pts3d_global=h2["pts3d"], conf_global=h2["conf"],
                           local_features={"global": desc} if local_features else None, intermediates=inter,
                           gaussians_raw=raw, gaussians=gaussians)
