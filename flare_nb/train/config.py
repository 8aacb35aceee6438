"""``TrainConfig``: every setting of a training run, read from YAML (notebook 06).

A run is described by one YAML file (``configs/tiny_synthetic.yaml`` is the shipped example)
with these sections; every key is optional and defaults to the value below::

    model: tiny                 # stage 1: tiny | official_geometry; stage 2: tiny_nvs | official_nvs
    model_overrides: {}         # FlareConfig fields to change, e.g. {dec_depth: 6}
    seed: 0                     # model init, data order, pose noise
    steps: 2000                 # optimizer steps (the cosine schedule ends here)
    batch_size: 4               # GLOBAL batch (scenes per step, summed over processes)
    stage: 1                    # cascade stage: 1 = pose + geometry; 2 = + Gaussian head, coarse pose frozen
    freeze_encoder: false       # the released model keeps its (pretrained) encoder frozen
    init_from: null             # stage 2: the stage-1 checkpoint whose shared weights start the NVS model
    data:    {kind: synthetic, n_views: 4, size: [128, 128], modes: [orbit, forward],
              train_seeds: [0, 1000000], val_seeds: [1000000, 1000016], n_objects: null, raycast: auto}
    optim:   {name: adamw, lr: 3.0e-4, weight_decay: 1.0e-5, betas: [0.9, 0.95], warmup_steps: 100,
              min_lr_ratio: 0.01, grad_clip: 1.0}
    loss:    {pose_weight: 5.0, pose_gamma: 0.8, pose_kind: l1, geometry_weight: 1.0,
              w_cam: 0.5, w_global: 1.0, conf_alpha: 0.2}
    pose_noise: {prob: 0.6, stage2_deg: 7.5, stage3_deg: 5.0, trans_std: 0.05}
    render:  {n_targets: 2, render_context: false, mse_weight: 1.0, ssim_weight: 0.2,
              depth_weight: 0.05, perceptual_weight: 0.0, vgg_weights: null}   # stage 2 only
    run:     {out_dir: runs/train, device: auto, amp: auto, log_every: 10, val_every: 200,
              ckpt_every: 200, resume: auto, progress: true, num_workers: 0, threads: 0, max_minutes: 0}

``run.*`` only says *how* a run executes (where, on what, how often it reports, when it
stops): it may change when a run is resumed, and so may ``data.raycast`` (which ray caster
renders the synthetic scenes: the same scenes up to float32 rounding). Every other field defines the run: a checkpoint refuses to
resume under a config that differs in any of them (:func:`config_diff`).

Seeds are half-open ranges ``[start, stop)`` or explicit lists. ``data.kind: scenes`` trains
on posed scenes loaded from ``data.paths`` (any format :func:`flare_nb.scenes.scene.load_scene`
reads, resized to ``data.size``); a dataset object can also be passed to
:func:`flare_nb.train.loop.train` directly.
Cascade stage 2 (``stage: 2``) trains the NVS model (``model: tiny_nvs``): each sample holds
``data.n_views`` context views plus ``render.n_targets`` held-out target views (interior
views of the sequence); the Gaussians predicted from the context are rendered into the
targets' ground-truth cameras and compared with the target images (:mod:`flare_nb.render.losses`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from flare_nb.scenes.preprocess import check_size
from flare_nb.scenes.synthetic import MODES, check_orbit_arc

__all__ = ["DataConfig", "OptimConfig", "LossConfig", "PoseNoiseConfig", "RenderConfig", "RunConfig", "TrainConfig",
           "load_config", "config_diff", "parse_override"]


@dataclass
class DataConfig:
    kind: str = "synthetic"            # synthetic | scenes
    n_views: int = 4                   # views per training sample (V >= 2)
    size: list = field(default_factory=lambda: [128, 128])   # (W, H), multiples of 64
    modes: list = field(default_factory=lambda: ["orbit", "forward"])
    train_seeds: list = field(default_factory=lambda: [0, 1_000_000])
    val_seeds: list = field(default_factory=lambda: [1_000_000, 1_000_016])
    n_objects: int | None = None
    orbit_arc: list = field(default_factory=lambda: [40.0, 200.0])   # degrees, first -> last orbit view
    orbit_arc_start: list | None = None   # curriculum: the arc range at step 0, widened linearly ...
    curriculum_steps: int = 0             # ... to orbit_arc over this many steps (0 = no curriculum)
    cache: bool = False                   # keep each rendered training scene in memory and reuse it (a
                                          # fixed pool: train_seeds [0, N) renders N scenes once)
    raycast: str = "auto"                 # synthetic scenes' ray caster: auto (open3d where installed, else
                                          # torch) | open3d | torch (on the training device; the CPU with
                                          # run.num_workers > 0); the same scenes up to float32 rounding
    paths: list = field(default_factory=list)      # kind: scenes -- scene folders / transforms.json
    val_paths: list = field(default_factory=list)


@dataclass
class OptimConfig:
    name: str = "adamw"                # adamw (released) | sgd (plain, no momentum: one step moves
                                       # the weights by exactly lr x gradient; used to check DDP)
    lr: float = 3e-4
    weight_decay: float = 1e-5
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01         # cosine decays to lr * min_lr_ratio
    grad_clip: float | None = 1.0      # max global gradient norm; null = off


@dataclass
class LossConfig:
    pose_weight: float = 5.0
    pose_gamma: float = 0.8
    pose_kind: str = "l1"              # l1 (released code) | huber (paper)
    pose_sign_invariant: bool = False  # rotation term: min over q_gt and -q_gt (released: off)
    geometry_weight: float = 1.0       # 0 trains the poses only (scenes without depth)
    w_cam: float = 0.5
    w_global: float = 1.0
    conf_alpha: float = 0.2
    match_weight: float = 0.0          # InfoNCE matching of head 1's descriptors (flare_nb.train.correspondence)
    match_samples: int = 256           # correspondences drawn per source view
    match_tau: float = 0.07            # softmax temperature of the matching loss


@dataclass
class PoseNoiseConfig:
    prob: float = 0.6                  # chance that a view's (non-reference) pose is perturbed
    stage2_deg: float = 7.5            # max rotation of the pose fed to stage 2
    stage3_deg: float = 5.0            # ... and to stage 3
    trans_std: float = 0.05            # translation noise, times the mean translation norm
    stage3_gt_prob: float = 0.0        # chance that a scene's pose fed to stage 3 is the ground truth
                                       # (then perturbed as above) instead of stage 2's refined pose;
                                       # 0 as released. Teaches stage 3 to follow its pose (notebook 04)
    stage3_follow_target: bool = False # with stage3_gt_prob > 0: in the scenes where stage 3 is fed the
                                       # (perturbed) true pose, its global target places each view's true
                                       # points with that perturbed pose, so following the pose is what the
                                       # loss rewards (flare_nb.train.losses.follow_target_poses)


@dataclass
class RenderConfig:
    """Stage 2's rendering loss: ``mse_weight * MSE + ssim_weight * (1 - SSIM) + perceptual_weight *
    VGG + depth_weight * depth`` on the rendered target views (context views too with
    ``render_context``). The depth term compares the rendered depth with the data's depth after a
    per-image least-squares scale and shift (the paper used a monocular depth network's output)."""
    n_targets: int = 2                 # held-out target views per sample (besides data.n_views)
    render_context: bool = False       # also render the context views themselves
    mse_weight: float = 1.0
    ssim_weight: float = 0.2
    depth_weight: float = 0.05
    perceptual_weight: float = 0.0     # needs vgg_weights (a local VGG16 state dict; no download)
    vgg_weights: str | None = None


@dataclass
class RunConfig:
    out_dir: str = "runs/train"
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    amp: str = "auto"                  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | off
    log_every: int = 10
    val_every: int = 200               # 0 = no periodic validation (one at the end)
    ckpt_every: int = 200
    resume: str | bool = "auto"        # auto | a checkpoint path | false (refuse an existing run)
    progress: bool = True
    num_workers: int = 0               # DataLoader worker processes rendering scenes
    threads: int = 0                   # torch.set_num_threads per process; 0 = leave as is
    max_minutes: float = 0             # stop after this wall time (minutes; 0 = off) with a final
                                       # validation, checkpoint and log; the same command resumes


@dataclass
class TrainConfig:
    model: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    seed: int = 0
    steps: int = 2000
    batch_size: int = 4
    stage: int = 1
    freeze_encoder: bool = False
    init_from: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pose_noise: PoseNoiseConfig = field(default_factory=PoseNoiseConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict | None, where: str = "config") -> "TrainConfig":
        """Build from a nested dict (unknown keys -> ``ValueError`` naming them and the known ones)."""
        return _build(cls, d or {}, where)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **overrides) -> "TrainConfig":
        """A copy with dotted-key overrides, e.g. ``cfg.replace(**{"optim.lr": 1e-3, "steps": 10})``."""
        d = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(d, key, value)
        return TrainConfig.from_dict(d, "overrides")

    def validate(self) -> "TrainConfig":
        """Check the values; ``ValueError`` naming the field and what is expected."""

        def need(ok, name, what):
            if not ok:
                raise ValueError(f"config field {name} = {_get_dotted(self.to_dict(), name)!r}: expected {what}")

        need(self.model in MODEL_CONFIGS, "model", f"one of {sorted(MODEL_CONFIGS)}")
        need(isinstance(self.model_overrides, dict), "model_overrides", "a mapping of FlareConfig fields")
        need(_is_int(self.seed) and self.seed >= 0, "seed", "a non-negative int")
        need(_is_int(self.steps) and self.steps >= 1, "steps", "a positive int")
        need(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "a positive int")
        need(self.stage in (1, 2), "stage", "1 (pose + geometry) or 2 (+ Gaussian head)")
        kind = MODEL_CONFIGS[self.model]
        need(self.stage == 2 or kind == "geometry", "model",
             f"a geometry model ({sorted(k for k, v in MODEL_CONFIGS.items() if v == 'geometry')}) for "
             "stage 1; the NVS models are trained in stage 2 (set stage: 2)")
        need(self.stage == 1 or kind == "nvs", "model",
             f"an NVS model ({sorted(k for k, v in MODEL_CONFIGS.items() if v == 'nvs')}) for stage 2, which "
             "adds the Gaussian head (start it from a stage-1 run with init_from)")
        need(self.init_from is None or isinstance(self.init_from, str), "init_from", "null or a checkpoint path")
        rd = self.render
        need(_is_int(rd.n_targets) and rd.n_targets >= 0, "render.n_targets", "a non-negative int")
        for name in ("mse_weight", "ssim_weight", "depth_weight", "perceptual_weight"):
            v = getattr(rd, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, f"render.{name}",
                 "a non-negative number")
        need(rd.perceptual_weight == 0 or bool(rd.vgg_weights), "render.vgg_weights",
             "a local VGG16 weights file when render.perceptual_weight > 0 (nothing is downloaded)")
        need(self.stage == 1 or rd.n_targets > 0 or rd.render_context, "render.n_targets",
             "at least 1 target view (or render.render_context: true) in stage 2, else nothing is rendered")
        d = self.data
        need(d.kind in ("synthetic", "scenes"), "data.kind", "'synthetic' or 'scenes'")
        need(_is_int(d.n_views) and d.n_views >= 2, "data.n_views",
             "an int >= 2 (FLARE needs at least 2 views per sample)")
        try:
            check_size(d.size)
        except ValueError as e:
            raise ValueError(f"config field data.size: {e}") from None
        need(isinstance(d.modes, (list, tuple)) and len(d.modes) > 0 and all(m in MODES for m in d.modes),
             "data.modes", f"a non-empty list drawn from {list(MODES)}")
        try:
            check_orbit_arc(d.orbit_arc)
        except ValueError as e:
            raise ValueError(f"config field data.orbit_arc: {e}") from None
        if d.orbit_arc_start is not None:
            try:
                check_orbit_arc(d.orbit_arc_start)
            except ValueError as e:
                raise ValueError(f"config field data.orbit_arc_start: {e}") from None
        need(isinstance(d.cache, bool), "data.cache", "true or false")
        need(d.raycast in ("auto", "open3d", "torch"), "data.raycast", "'auto', 'open3d' or 'torch'")
        L = self.loss
        need(isinstance(L.match_weight, (int, float)) and not isinstance(L.match_weight, bool) and L.match_weight >= 0,
             "loss.match_weight", "a non-negative number")
        need(_is_int(L.match_samples) and L.match_samples >= 1, "loss.match_samples", "a positive int")
        need(isinstance(L.match_tau, (int, float)) and L.match_tau > 0, "loss.match_tau", "a positive number")
        need(L.match_weight == 0 or MODEL_CONFIGS[self.model] == "geometry", "loss.match_weight",
             "0 for the NVS models (the matching loss uses the geometry model's camera-centric head)")
        need(_is_int(d.curriculum_steps) and d.curriculum_steps >= 0, "data.curriculum_steps", "a non-negative int")
        need(d.curriculum_steps == 0 or d.orbit_arc_start is not None, "data.orbit_arc_start",
             "an arc range [lo, hi] when data.curriculum_steps > 0")
        for name in ("train_seeds", "val_seeds"):
            seeds = getattr(d, name)
            need(isinstance(seeds, (list, tuple)) and all(_is_int(s) and s >= 0 for s in seeds), f"data.{name}",
                 "[start, stop) or a list of non-negative ints")
        if d.kind == "synthetic":
            need(len(seed_list(d.train_seeds)) > 0, "data.train_seeds", "a non-empty range [start, stop) with stop > start")
        else:
            need(len(d.paths) > 0, "data.paths", "at least one scene path when data.kind is 'scenes'")
        o = self.optim
        need(o.name in ("adamw", "sgd"), "optim.name", "adamw or sgd")
        need(o.lr > 0, "optim.lr", "a positive learning rate")
        need(o.weight_decay >= 0, "optim.weight_decay", "a non-negative number")
        need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "two numbers in [0, 1)")
        need(_is_int(o.warmup_steps) and o.warmup_steps >= 0, "optim.warmup_steps", "a non-negative int")
        need(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "a number in [0, 1]")
        need(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", "a positive number or null")
        L = self.loss
        need(L.pose_kind in ("l1", "huber"), "loss.pose_kind", "'l1' or 'huber'")
        need(isinstance(L.pose_sign_invariant, bool), "loss.pose_sign_invariant", "true or false")
        need(L.pose_weight >= 0 and L.geometry_weight >= 0, "loss.pose_weight",
             "non-negative weights (loss.pose_weight, loss.geometry_weight)")
        need(L.pose_weight > 0 or L.geometry_weight > 0 or (self.stage == 2 and self.render.mse_weight > 0),
             "loss.pose_weight", "at least one positive loss weight")
        n = self.pose_noise
        need(0 <= n.prob <= 1, "pose_noise.prob", "a probability in [0, 1]")
        need(isinstance(n.stage3_gt_prob, (int, float)) and not isinstance(n.stage3_gt_prob, bool)
             and 0 <= n.stage3_gt_prob <= 1, "pose_noise.stage3_gt_prob", "a probability in [0, 1]")
        need(isinstance(n.stage3_follow_target, bool), "pose_noise.stage3_follow_target", "true or false")
        need(not n.stage3_follow_target or n.stage3_gt_prob > 0, "pose_noise.stage3_follow_target",
             "pose_noise.stage3_gt_prob > 0 with it (it changes the target of the scenes fed the true pose)")
        need(not n.stage3_follow_target or (self.stage == 1 and self.model_overrides.get("pose_conditioning", True)),
             "pose_noise.stage3_follow_target", "false in stage 2 (the renders keep the true cameras) and "
             "without pose conditioning (stage 3 never sees the pose)")
        need(n.stage2_deg >= 0 and n.stage3_deg >= 0 and n.trans_std >= 0, "pose_noise.stage2_deg",
             "non-negative noise magnitudes")
        r = self.run
        need(r.amp in ("auto", "bf16", "off"), "run.amp", "'auto', 'bf16' or 'off'")
        for name in ("log_every", "val_every", "ckpt_every", "num_workers", "threads"):
            v = getattr(r, name)
            need(_is_int(v) and v >= 0, f"run.{name}", "a non-negative int")
        need(isinstance(r.max_minutes, (int, float)) and not isinstance(r.max_minutes, bool) and r.max_minutes >= 0,
             "run.max_minutes", "a non-negative number of minutes (0 = no time limit)")
        need(r.log_every >= 1 and r.ckpt_every >= 1, "run.log_every", "run.log_every and run.ckpt_every >= 1")
        need(r.resume in ("auto", False, None) or isinstance(r.resume, str), "run.resume",
             "'auto', false or a checkpoint path")
        return self


# Model presets by name (functions of flare_nb.model.config) -> their kind: stage 1 trains the geometry
# model, stage 2 the NVS model (geometry + Gaussian head).
MODEL_CONFIGS = {"tiny": "geometry", "official_geometry": "geometry", "tiny_nvs": "nvs", "official_nvs": "nvs"}

#: Top-level sections that only say how a run executes; they may change on resume.
RUNTIME_SECTIONS = ("run",)
#: Single keys that may change on resume too: how the synthetic scenes are ray cast.
RUNTIME_KEYS = ("data.raycast",)


def seed_list(spec) -> list[int]:
    """``[start, stop)`` (two ints, stop > start) -> ``range(start, stop)``; any other list is
    taken as the seeds themselves."""
    spec = list(spec)
    if len(spec) == 2 and spec[1] > spec[0]:
        return list(range(int(spec[0]), int(spec[1])))
    return [int(s) for s in spec]


def load_config(path, overrides: dict | list | None = None) -> TrainConfig:
    """Read a YAML config file; ``overrides`` is a dict ``{"optim.lr": 1e-3}`` or a list of
    ``"key=value"`` strings (values parsed as YAML). Returns a validated :class:`TrainConfig`."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training config: no such file {path}")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a YAML mapping of config sections, got {type(d).__name__}")
    if isinstance(overrides, (list, tuple)):
        overrides = dict(parse_override(s) for s in overrides)
    for key, value in (overrides or {}).items():
        _set_dotted(d, key, value)
    return TrainConfig.from_dict(d, str(path)).validate()


def parse_override(text: str) -> tuple[str, object]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)`` (the value is parsed as YAML)."""
    import yaml

    if "=" not in text:
        raise ValueError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def config_diff(saved: dict, current: dict, ignore=RUNTIME_SECTIONS, ignore_keys=RUNTIME_KEYS) -> list[str]:
    """Differences ``"key: saved -> current"`` between two config dicts, ignoring ``ignore``
    sections and the dotted keys ``ignore_keys``. A key the saved config lacks (a checkpoint
    written before the key existed) counts as its default value, so such runs still resume."""
    out = []
    defaults = TrainConfig().to_dict()

    def default(name):
        d = defaults
        for part in name.split("."):
            if not isinstance(d, dict) or part not in d:
                return "<missing>"
            d = d[part]
        return d

    def walk(a, b, prefix):
        for k in sorted(set(a) | set(b)):
            if not prefix and k in ignore:
                continue
            name = f"{prefix}{k}"
            if name in ignore_keys:
                continue
            va, vb = a.get(k, default(name)), b.get(k, "<missing>")
            if isinstance(va, dict) and isinstance(vb, dict):
                walk(va, vb, name + ".")
            elif _norm(va) != _norm(vb):
                out.append(f"{name}: {va!r} -> {vb!r}")

    walk(saved, current, "")
    return out


# ---------------------------------------------------------------------------- helpers
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _norm(v):
    if isinstance(v, tuple):
        return [_norm(x) for x in v]
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


def _build(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} in {cls.__name__}; known keys: {sorted(known)}")
    kw = {}
    for name, value in d.items():
        f = known[name]
        sub = _SECTIONS.get((cls, name))
        if sub is not None:
            kw[name] = _build(sub, value or {}, f"{where} [{name}]")
        else:
            if isinstance(value, tuple):
                value = list(value)
            if f.type in ("float", "float | None") and isinstance(value, (int, str)) and not isinstance(value, bool):
                try:
                    value = float(value)       # YAML reads 3e-4 (no dot) as a string
                except ValueError:
                    raise ValueError(f"{where}: {name} = {value!r} is not a number") from None
            kw[name] = value
    return cls(**kw)


_SECTIONS = {(TrainConfig, "data"): DataConfig, (TrainConfig, "optim"): OptimConfig,
             (TrainConfig, "loss"): LossConfig, (TrainConfig, "pose_noise"): PoseNoiseConfig,
             (TrainConfig, "render"): RenderConfig, (TrainConfig, "run"): RunConfig}


def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ValueError(f"override {key!r}: {p!r} is not a section")
    d[parts[-1]] = value


def _get_dotted(d: dict, key: str):
    for p in key.split("."):
        d = d.get(p) if isinstance(d, dict) else None
    return d


assert all(dataclasses.is_dataclass(c) for c in _SECTIONS.values())
