"""``FlareConfig``: every dimension of the FLARE network in one frozen dataclass (notebook 01).

The released code hard-codes most of these numbers (ViT-L encoder, 768-d decoders, 12
layers, injections after decoder layers 2/5/8, DPT taps 0/6/9/12, 42 harmonic
frequencies, ...). Here each one is a field, so that the same classes build

* ``official_geometry()``: the released ``geometry_pose.pth`` network (1.40 G parameters),
* ``official_nvs()``: the released ``NVS.pth`` network (geometry trunk + shallow CNN, second
  image encoder, intrinsics embedding and Gaussian head; 1.33 G parameters built),
* ``tiny()``: a 2.8 M-parameter model with the same structure that runs
  4 views of 128x128 in well under a second on a laptop CPU (used by the tests and the
  training notebooks),
* ``tiny_nvs()``: ``tiny()`` plus small NVS parts (Gaussian head of SH degree 1).

Index conventions (0-based, as in the code):

* decoder layer ``i`` = ``dec_blocks*[i]``; "output of layer i" is what enters layer ``i+1``;
* encoder state ``k`` = the token tensor that *enters* encoder block ``k``
  (state 0 = patch-embedding output, state 4 = output of block 3);
* DPT tap 0 = encoder output (after ``enc_norm``), tap ``j >= 1`` = output of decoder layer
  ``j - 1`` (1-based layer ``j``; the last one after the decoder's final norm).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

__all__ = ["FlareConfig", "official_geometry", "official_nvs", "tiny", "tiny_nvs"]


@dataclass(frozen=True)
class FlareConfig:
    """All sizes of the FLARE geometry network. Defaults = the released geometry model.

    Fields (released value in brackets):

    * ``kind``: ``"geometry"`` or ``"nvs"`` ["geometry"]. ``"nvs"`` builds the NVS model
      (``FlareModel`` then also needs the intrinsics and returns Gaussians) and decides
      checkpoint compatibility.
    * image tokens: ``patch_size`` [16] pixels per token side; ``coarse_stride`` [4] tokens
      per coarse-token side (coarse grid = 1/64 of the image, so H and W must be multiples
      of ``patch_size * coarse_stride`` = 64).
    * encoder: ``enc_dim`` [1024], ``enc_depth`` [24], ``enc_heads`` [16], ``enc_mlp_ratio`` [4].
    * decoders (all three stages): ``dec_dim`` [768], ``dec_depth`` [12], ``dec_heads`` [12],
      ``dec_mlp_ratio`` [4]; ``norm_eps`` [1e-6] for every LayerNorm.
    * ``rope_base`` [100]: 2D RoPE base frequency.
    * pose heads: ``pose_dim`` [9] (T 3, quaternion 4, focal logits 2), ``pose_iters`` [4],
      ``pose_trunk_depth`` [4], ``pose_heads`` [8], ``pose_mlp_ratio`` [4] (trunk MLP),
      ``pose_branch_ratio`` [2] (hidden width of the delta MLP / ``dec_dim``),
      ``pose_harmonics`` [42] frequencies 2^0..2^41 (the released code derives it as
      ``(dec_dim // pose_dim) // 2``), ``focal_min`` / ``focal_max`` [0.1, 30].
    * ``pose_embed_dim`` [7]: input of ``embed_pose`` = [q (4), T / s (3)].
    * ``pose_conditioning`` [True]: stages 2 and 3 see the previous stage's pose. ``False`` is
      the "no pose conditioning" ablation (notebook 06): they get the identity pose of every
      view instead, i.e. a constant camera embedding that carries no pose information.
    * injections (stages 2 and 3): after decoder layers ``inject_layers`` [(2, 5, 8)] add
      ``Linear(LayerNorm(encoder state k))`` with ``k`` from ``inject_enc_states`` [(4, 10, 16)].
    * DPT heads: ``dpt_hooks`` [(0, 6, 9, 12)], ``dpt_layer_dims`` [(96, 192, 384, 768)],
      ``dpt_feature_dim`` [256], ``dpt_last_dim`` [128], ``desc_dim`` [24],
      ``desc_mlp_ratio`` [4].
    * NVS only (``kind="nvs"``; ignored otherwise, released NVS value in brackets):
      shallow CNN ``cnn_widths`` [(8, 16, 32)], ``cnn_fpn_dim`` [32], ``cnn_fusion_dim`` [64]
      (input channels of ``patch_embed_fine``; the RoPE-of-ones term uses groups of
      ``min(cnn_fusion_dim, 64)`` channels), ``cnn_detail_dim`` [16]; second image encoder of
      ``nvs_enc_depth`` [4] encoder blocks (width ``enc_dim``); Gaussian head ``gs_hidden``
      [20], ``sh_degree`` [4]; intrinsics embedding input ``[fx, fy, cx, cy] /
      intrinsics_scale`` [2000] (pixels). The NVS release injects encoder states (0, 1, 2).
    """

    kind: str = "geometry"
    patch_size: int = 16
    coarse_stride: int = 4
    enc_dim: int = 1024
    enc_depth: int = 24
    enc_heads: int = 16
    enc_mlp_ratio: float = 4.0
    dec_dim: int = 768
    dec_depth: int = 12
    dec_heads: int = 12
    dec_mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    rope_base: float = 100.0
    pose_dim: int = 9
    pose_iters: int = 4
    pose_trunk_depth: int = 4
    pose_heads: int = 8
    pose_mlp_ratio: float = 4.0
    pose_branch_ratio: int = 2
    pose_harmonics: int = 42
    focal_min: float = 0.1
    focal_max: float = 30.0
    pose_embed_dim: int = 7
    pose_conditioning: bool = True
    inject_layers: tuple = (2, 5, 8)
    inject_enc_states: tuple = (4, 10, 16)
    dpt_hooks: tuple = (0, 6, 9, 12)
    dpt_layer_dims: tuple = (96, 192, 384, 768)
    dpt_feature_dim: int = 256
    dpt_last_dim: int = 128
    desc_dim: int = 24
    desc_mlp_ratio: float = 4.0
    nvs_enc_depth: int = 4
    cnn_widths: tuple = (8, 16, 32)
    cnn_fpn_dim: int = 32
    cnn_fusion_dim: int = 64
    cnn_detail_dim: int = 16
    gs_hidden: int = 20
    sh_degree: int = 4
    intrinsics_scale: float = 2000.0
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        if self.kind not in ("geometry", "nvs"):
            raise ValueError(f"FlareConfig.kind must be 'geometry' or 'nvs', got {self.kind!r}")
        for name in ("inject_layers", "inject_enc_states", "dpt_hooks", "dpt_layer_dims", "cnn_widths"):
            if isinstance(getattr(self, name), list):  # e.g. from JSON / YAML
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self._check_nvs_fields()
        for name in ("patch_size", "coarse_stride", "enc_dim", "enc_depth", "enc_heads", "dec_dim",
                     "dec_depth", "dec_heads", "pose_dim", "pose_iters", "pose_trunk_depth",
                     "pose_heads", "pose_harmonics"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"FlareConfig.{name} must be a positive int, got {v!r}")
        for dim, heads, what in ((self.enc_dim, self.enc_heads, "enc"), (self.dec_dim, self.dec_heads, "dec"),
                                 (self.dec_dim, self.pose_heads, "pose")):
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"FlareConfig: {what} width {dim} must split into {heads} heads whose size "
                                 f"is a multiple of 4 (2D RoPE rotates pairs in two halves)")
        if len(self.inject_layers) != len(self.inject_enc_states):
            raise ValueError("FlareConfig: inject_layers and inject_enc_states must have the same length, got "
                             f"{self.inject_layers} and {self.inject_enc_states}")
        if any(not 0 <= i < self.dec_depth for i in self.inject_layers):
            raise ValueError(f"FlareConfig.inject_layers {self.inject_layers} must lie in [0, {self.dec_depth})")
        if any(not 0 <= k < self.enc_depth for k in self.inject_enc_states):
            raise ValueError(f"FlareConfig.inject_enc_states {self.inject_enc_states} must lie in "
                             f"[0, {self.enc_depth}) (state k enters encoder block k)")
        if len(self.dpt_hooks) != 4 or self.dpt_hooks[0] != 0 or any(
                not 1 <= h <= self.dec_depth for h in self.dpt_hooks[1:]):
            raise ValueError(f"FlareConfig.dpt_hooks must be (0, a, b, c) with 1 <= a, b, c <= dec_depth "
                             f"= {self.dec_depth}, got {self.dpt_hooks}")
        if self.dpt_hooks[-1] != self.dec_depth:
            raise ValueError(f"FlareConfig.dpt_hooks must end with the last layer {self.dec_depth} "
                             f"(the one after the final norm), got {self.dpt_hooks}")

    def _check_nvs_fields(self):
        for name in ("nvs_enc_depth", "cnn_fpn_dim", "cnn_fusion_dim", "cnn_detail_dim", "gs_hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"FlareConfig.{name} must be a positive int, got {v!r}")
        if len(self.cnn_widths) != 3 or any(not isinstance(w, int) or w < 1 for w in self.cnn_widths):
            raise ValueError(f"FlareConfig.cnn_widths must be three positive ints, got {self.cnn_widths!r}")
        if self.cnn_fusion_dim % min(self.cnn_fusion_dim, 64) or min(self.cnn_fusion_dim, 64) % 4:
            raise ValueError(f"FlareConfig.cnn_fusion_dim must be a multiple of 4 (<= 64) or of 64 (groups of "
                             f"the RoPE-of-ones term), got {self.cnn_fusion_dim}")
        if not isinstance(self.sh_degree, int) or not 0 <= self.sh_degree <= 4:
            raise ValueError(f"FlareConfig.sh_degree must be an int in 0..4, got {self.sh_degree!r}")
        if not self.intrinsics_scale > 0:
            raise ValueError(f"FlareConfig.intrinsics_scale must be positive, got {self.intrinsics_scale!r}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def multiple(self) -> int:
        """H and W must be multiples of this (64 released): one coarse token's side in pixels."""
        return self.patch_size * self.coarse_stride

    @property
    def pose_embed_width(self) -> int:
        """Width of the harmonic pose embedding: ``pose_dim * (2 * pose_harmonics + 1)`` (765)."""
        return self.pose_dim * (2 * self.pose_harmonics + 1)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **kw) -> "FlareConfig":
        return replace(self, **kw)


def official_geometry() -> FlareConfig:
    """The released ``geometry_pose.pth`` network (2105 state-dict keys, 1.40 G parameters)."""
    return FlareConfig(kind="geometry", notes="released geometry_pose.pth")


def official_nvs() -> FlareConfig:
    """The released ``NVS.pth`` network (2111 state-dict keys; 1.33 G parameters built).

    Same trunk sizes as ``official_geometry()``; in addition the shallow CNN
    (``cnn_wobn``/``cnn_fusion``/``cnn_proj``), the second image encoder
    (``patch_embed_fine``, 4 ``enc_blocks_stage2``, ``enc_norm_stage2``) whose tokens enter
    stage 3 through ``decoder_embed_stage2``, the intrinsics embedding
    ``decoder_embed_fxfycxcy`` (stage-3 camera tokens) and the Gaussian head
    ``downstream_head4`` (SH degree 4). ``inject_enc_states`` = (0, 1, 2): the NVS release
    injects the states entering blocks 0, 1, 2 of the (main) image encoder, i.e. the
    patch-embedding output and the outputs of blocks 0 and 1. Stage 3 normalises the
    translations by the baseline ``|T_0 - T_1|``; ``downstream_head1`` is not built (never
    called by the release).
    """
    return FlareConfig(kind="nvs", inject_enc_states=(0, 1, 2), notes="released NVS.pth")


def tiny() -> FlareConfig:
    """Same classes, small sizes: patch 16 and coarse stride 2 (sizes multiple of 32, so
    128x128 gives 8x8 tokens and 4x4 coarse tokens), 64-d/4-layer encoder, 64-d/4-layer
    decoders, 2 pose iterations of 1 trunk block, 8 harmonics. 2.83 M parameters (0.6 M of
    them in the two local-feature MLPs); 4 views of 128x128 take ~0.2 s on 2 CPU cores."""
    return FlareConfig(
        kind="geometry", patch_size=16, coarse_stride=2,
        enc_dim=64, enc_depth=4, enc_heads=2, enc_mlp_ratio=2.0,
        dec_dim=64, dec_depth=4, dec_heads=2, dec_mlp_ratio=2.0,
        pose_iters=2, pose_trunk_depth=1, pose_heads=2, pose_mlp_ratio=2.0, pose_harmonics=8,
        inject_layers=(0, 1, 2), inject_enc_states=(1, 2, 3),
        dpt_hooks=(0, 2, 3, 4), dpt_layer_dims=(16, 32, 32, 64), dpt_feature_dim=32, dpt_last_dim=16,
        desc_dim=8, desc_mlp_ratio=1.0, notes="tiny (tests, CPU training)")


def tiny_nvs() -> FlareConfig:
    """``tiny()`` with the NVS parts at small sizes: shallow CNN widths (4, 8, 8) -> 16-channel
    fused map and 8-channel detail map, a 1-block second encoder, Gaussian head of width 8 and
    SH degree 1; injections of encoder states (0, 1, 2) as in the NVS release. 4 views of
    128x128 run in a fraction of a second on a CPU (used by the tests and notebook 05)."""
    return tiny().replace(
        kind="nvs", inject_enc_states=(0, 1, 2), nvs_enc_depth=1, cnn_widths=(4, 8, 8), cnn_fpn_dim=8,
        cnn_fusion_dim=16, cnn_detail_dim=8, gs_hidden=8, sh_degree=1, notes="tiny NVS (tests, CPU training)")
