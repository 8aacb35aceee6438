"""Run FLARE on a set of photos: ``load_model`` + ``reconstruct`` (notebooks 01-04 and 08).

::

    model = load_model()                            # tiny; trained weights if data/checkpoints has them
    model = load_model("geometry_pose.pth", "official_geometry")   # the released model
    rec = reconstruct(model, ["a.jpg", "b.jpg"], size=(512, 384))
    rec.c2w_refined, rec.focal, rec.c2w_pnp, rec.pts3d_global, rec.timings

Pose encoding (``flare_nb.model.pose_predictor``): 9 numbers per view ``[T (3), q (4, w x y z, not
normalised), focal logits (2)]``. It is **camera-to-world**, relative to view 0: ``R(q)``
holds the camera's axes in view 0's frame and ``T`` is the camera centre in view 0's frame,
translations trained to have mean norm 1 over the views (README "Conventions"). Evidence: the
released training/evaluation code builds the ground truth as ``inv(c2w_0) @ c2w_i`` and
writes the predicted ``R(q)`` and ``T`` straight into the rotation block and last column of
that matrix; ``flare_nb.train.losses.gt_pose_targets`` does the same. So the decoded pose is
``c2w = [[R(q), T], [0, 0, 0, 1]]`` -- no inversion.

``reconstruct`` returns the pose-head cameras (coarse = stage 1, refined = stage 2), both
re-expressed with :func:`flare_nb.cameras.relative_to_view0` so view 0 is exactly the
identity (the network's own view-0 output is only close to it), and the demo's cameras:
one focal from view 0's global pointmap (:func:`flare_nb.cameras.estimate_focal`) and PnP on
the 40 % most confident pixels of each global pointmap (:func:`flare_nb.cameras.pnp_poses`,
SQPnP, 1 px).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flare_nb import camera_rule, cameras, data_dir
from flare_nb.device import autocast_dtype, resolve_device
from flare_nb.model import config as config_module
from flare_nb.model.checkpoint import CheckpointError, load_flare_checkpoint, read_checkpoint_info
from flare_nb.model.config import FlareConfig
from flare_nb.model.flare import FlareModel
from flare_nb.model.pose_encoding import check_camera_poses, decode_c2w
from flare_nb.model.reference import deterministic_fill
from flare_nb.scenes import preprocess
from flare_nb.scenes.preprocess import to_model_input

__all__ = ["Reconstruction", "load_model", "reconstruct", "resolve_config", "default_checkpoint", "STAGES",
           "LEGACY_TINY_SIZE", "native_size_wh", "checkpoint_native_size"]

#: native size (H, W) of a tiny-model checkpoint that does not describe itself (``{'model': sd}`` only)
LEGACY_TINY_SIZE = (128, 128)

#: the stage modules of ``FlareModel`` whose run time ``reconstruct`` reports (module, timing name), in call order
STAGES = (("encoder", "encoder"), ("pose_predictor", "stage1_coarse_pose"),
          ("camera_centric", "stage2_camera_centric"), ("global_projector", "stage3_global"))


# ----------------------------------------------------------------------------- loading
def resolve_config(config) -> FlareConfig:
    """``"tiny"`` / ``"official_geometry"`` / any other builder in :mod:`flare_nb.model.config`, or a
    ``FlareConfig`` (returned as is) -> ``FlareConfig``. ValueError names the valid choices."""
    if isinstance(config, FlareConfig):
        return config
    names = sorted(n for n in config_module.__all__ if n != "FlareConfig")
    if not isinstance(config, str) or config.strip() not in names:
        raise ValueError(f"config must be a FlareConfig or one of {names}, got {config!r}")
    return getattr(config_module, config.strip())()


def default_checkpoint() -> Path:
    """Where the workbook keeps the trained tiny model: ``data/checkpoints/tiny_geometry.pt``."""

    return data_dir() / "checkpoints" / "tiny_geometry.pt"


SMALL_WIDTH = 256      # encoder / decoder widths up to this: a model of a few million parameters


def empty_model(cfg: FlareConfig, allocate: bool = True) -> FlareModel:
    """A ``FlareModel(cfg)`` on the CPU whose weights are about to be overwritten (a checkpoint,
    :func:`~flare_nb.model.reference.deterministic_fill`). A large model (the released sizes) is
    built on the meta device and then allocated (``allocate=False``: left on the meta device, e.g.
    to count its parameters), so no time goes into initialising 1.4 G parameters; a small one (the
    tiny models) is built directly, which is faster than the meta route (0.07 s against 0.2-0.6 s),
    under a forked random state so the caller's stays as it was."""
    if cfg.enc_dim <= SMALL_WIDTH and cfg.dec_dim <= SMALL_WIDTH:
        with torch.random.fork_rng(devices=[]):
            return FlareModel(cfg)
    with torch.device("meta"):
        model = FlareModel(cfg)
    return model.to_empty(device="cpu") if allocate else model


def load_model(checkpoint=None, config="tiny", device="auto", dtype: torch.dtype | None = None,
               seed: int = 0) -> FlareModel:
    """A ``FlareModel`` in eval mode, with ``model.weights_label`` saying which weights it holds.

    Args:
        checkpoint: ``None`` or ``""`` = the default: for the tiny config
            ``data/checkpoints/tiny_geometry.pt`` if it exists, else RANDOM weights; for any
            other config RANDOM weights (the deterministic recipe of the reference fixtures,
            :func:`flare_nb.model.reference.deterministic_fill`, so no time goes into initialising
            1.4 G parameters). A path: ``.pth`` / ``.pt`` / ``.safetensors``, the released
            files or a ``flare_nb.train`` checkpoint, loaded strictly with
            :func:`flare_nb.model.checkpoint.load_flare_checkpoint` (wrong kind / shapes / keys raise
            ``CheckpointError``; a missing file ``FileNotFoundError``).
        config: ``"tiny"`` | ``"official_geometry"`` | a ``FlareConfig``.
        device: ``"auto"`` (CUDA if visible) | ``"cpu"`` | ``"cuda"``.
        dtype: parameter dtype (default float32; ``torch.bfloat16`` halves the memory).
        seed: seed of the random tiny weights (ignored when a checkpoint is loaded).

    A self-describing checkpoint (``model_config`` + ``image_size``, :mod:`flare_nb.model.checkpoint`)
    brings its own model: with ``config`` left at ``"tiny"`` (or ``tiny()`` / ``tiny_nvs()`` and a
    checkpoint of that kind) the file's ``FlareConfig`` is built (e.g. patch 8 trained at 64x64);
    any other ``config`` must equal the file's (``CheckpointError`` otherwise, one line).

    Sets ``model.weights_label`` (a sentence for notebook output), ``model.weights_random``
    (bool), ``model.load_report`` (``LoadReport`` or None) and ``model.native_size``: the
    ``(H, W)`` the weights were trained at -- the file's ``image_size``, ``LEGACY_TINY_SIZE``
    for a tiny checkpoint without one, ``None`` where unknown (random weights, the released
    models). Consumers default their image size to it (:func:`native_size_wh`). Notebook 01.
    """

    cfg = resolve_config(config)
    dev = resolve_device(device)
    if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    path = _default_path(checkpoint, cfg)
    is_tiny = cfg == config_module.tiny()
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (pass CHECKPOINT='' for the default weights)")

    info = read_checkpoint_info(path) if path is not None else None
    if info is not None:
        cfg = _checkpoint_config(cfg, info.model_config, path)
    native = _native_size(info, path, cfg)

    report = None
    if path is not None or not is_tiny:
        model = empty_model(cfg)
        if path is not None:
            try:
                report = load_flare_checkpoint(model, path)
            except CheckpointError as e:
                if info is None:
                    raise
                first = str(e).split("\n- ")[1] if "\n- " in str(e) else str(e)
                what, _, items = first.partition(": ")        # e.g. "85 shape mismatches", "k: (..) vs (..); ..."
                example = items.split("; " if "shape" in what else ", ")[0]
                raise CheckpointError(f"{path}: its model_config does not fit its weights ({what}"
                                      f"{', e.g. ' + example if example else ''}); export it again with "
                                      "scripts/export_checkpoint.py") from None
            label = f"trained weights from {path}"
        else:
            deterministic_fill(model)
            label = ("RANDOM weights (the reference fixtures' deterministic recipe; no checkpoint given): "
                     "outputs show shapes and data flow, not a reconstruction")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FlareModel(cfg)
        label = (f"RANDOM weights (seed {seed}; no checkpoint at {default_checkpoint()}): outputs show "
                 "shapes and data flow, not a reconstruction")
    model = model.to(device=dev, dtype=dtype or torch.float32).eval()
    model.weights_label = label
    model.weights_random = path is None
    model.load_report = report
    model.native_size = native
    return model


def _native_size(info, path, cfg):
    if info is not None and info.image_size is not None:
        return info.image_size
    if path is not None and cfg in (config_module.tiny(), config_module.tiny_nvs()):
        return LEGACY_TINY_SIZE
    return None


def _default_path(checkpoint, cfg: FlareConfig):
    if checkpoint is not None and not isinstance(checkpoint, (str, Path)):
        raise TypeError(f"checkpoint must be None, '' or a path, got {type(checkpoint).__name__}")
    path = Path(checkpoint) if checkpoint not in (None, "") else None
    if path is None and cfg == config_module.tiny() and default_checkpoint().is_file():
        path = default_checkpoint()
    return path


def checkpoint_native_size(checkpoint=None, config="tiny"):
    """The ``(H, W)`` that ``load_model(checkpoint, config).native_size`` would be, read from the file
    without building the model (None where unknown); e.g. to choose a notebook's image size first."""
    cfg = resolve_config(config)
    path = _default_path(checkpoint, cfg)
    if path is None or not path.is_file():
        return None
    info = read_checkpoint_info(path)
    if info is not None:
        cfg = _checkpoint_config(cfg, info.model_config, path)
    return _native_size(info, path, cfg)


def _checkpoint_config(cfg: FlareConfig, file_cfg: FlareConfig, path) -> FlareConfig:
    """The config to build for a checkpoint that carries ``file_cfg``: the file's when ``cfg``
    is a workbook default (``tiny()`` / ``tiny_nvs()`` of the file's kind), else ``cfg``, which
    must then equal the file's (``notes`` aside)."""
    if cfg in (config_module.tiny(), config_module.tiny_nvs()) and cfg.kind == file_cfg.kind:
        return file_cfg
    a, b = cfg.to_dict(), file_cfg.to_dict()
    diff = [k for k in a if k != "notes" and a[k] != b[k]]
    if diff:
        shown = ", ".join(f"{k} {b[k]!r} (asked {a[k]!r})" for k in diff[:4])
        raise CheckpointError(f"{path} was trained with another model config: {shown}"
                              f"{' ...' if len(diff) > 4 else ''}; leave config at 'tiny' to build the "
                              "checkpoint's own")
    return cfg


def native_size_wh(model, fallback=None):
    """``(W, H)`` -- the workbook's size order -- of ``model.native_size`` (set by :func:`load_model`
    and :func:`flare_nb.train.state.load_trained_model`), ``fallback`` when unknown."""
    hw = getattr(model, "native_size", None)
    return fallback if hw is None else (int(hw[1]), int(hw[0]))


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- result
@dataclass
class Reconstruction:
    """What :func:`reconstruct` returns (V views of H x W pixels, float32 CPU tensors).

    * ``images (V, 3, H, W)`` in [0, 1]: the (preprocessed) input; ``info`` per-view
      preprocessing records (paths input only).
    * ``c2w_coarse``, ``c2w_refined`` ``(V, 4, 4)``: pose heads of stage 1 and 2 (last
      iteration), camera-to-world, OpenCV axes, relative to view 0 (``[0]`` = identity),
      translation in the network's units (trained to mean norm 1).
    * ``pose_enc_coarse``, ``pose_enc_refined`` ``(iters, V, 9)``: raw encodings of every
      pose-head iteration (``[T, q wxyz, focal logits]``, see the module docstring).
    * ``focal``: pixels, from view 0's global pointmap (None if no pixel gave a valid vote);
      ``K (3, 3)`` with that focal and the centred principal point (or None).
    * ``c2w_pnp (V, 4, 4)``: camera-to-world from PnP on the global pointmaps (view 0's
      frame, pointmap units; view 0 ~ identity), None when skipped or impossible;
      ``pnp_info`` ``{"n_points": [...], "n_inliers": [...]}``.
    * ``pts3d_cam (V, H, W, 3)``, ``conf_cam (V, H, W)``: each view in its own camera frame
      (None for the NVS model, which has no camera-centric head); ``pts3d_global``,
      ``conf_global``: all views in view 0's camera frame.
    * ``K_given (V, 3, 3)``: the known intrinsics passed as ``intrinsics`` (model-input
      pixels), used by PnP instead of the estimated focal; None when not given.
    * ``c2w_given (V, 4, 4)``: the given camera poses (``camera_poses``) relative to view 0,
      in their own units; None when the poses were predicted.
    * ``gaussians``: NVS model only (else None): the Gaussian set of
      :func:`flare_nb.model.gaussian_head.activate_gaussians` (view 0's frame), float32 CPU tensors.
    * ``timings``: seconds per stage (``preprocess``, ``encoder``, ``stage1_coarse_pose``,
      ``stage2_camera_centric``, ``stage3_global`` (each stage's DPT head included),
      ``forward``, ``focal``, ``pnp``).
    * ``device``, ``autocast`` ("bf16" or "none"), ``weights_label``, ``notes`` (what was
      skipped and why).
    """

    images: torch.Tensor
    c2w_coarse: torch.Tensor
    c2w_refined: torch.Tensor
    pose_enc_coarse: torch.Tensor
    pose_enc_refined: torch.Tensor
    focal: float | None
    K: torch.Tensor | None
    c2w_pnp: torch.Tensor | None
    pnp_info: dict | None
    pts3d_cam: torch.Tensor | None
    conf_cam: torch.Tensor | None
    pts3d_global: torch.Tensor
    conf_global: torch.Tensor
    timings: dict
    device: str
    autocast: str
    weights_label: str
    info: list | None = None
    notes: list = field(default_factory=list)
    gaussians: dict | None = None
    c2w_given: torch.Tensor | None = None
    K_given: torch.Tensor | None = None

    @property
    def n_views(self) -> int:
        return self.images.shape[0]

    @property
    def hw(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def poses(self, which: str = "refined") -> torch.Tensor:
        """``c2w (V, 4, 4)`` of ``"coarse"``, ``"refined"``, ``"pnp"`` or ``"given"``."""
        out = {"coarse": self.c2w_coarse, "refined": self.c2w_refined, "pnp": self.c2w_pnp, "given": self.c2w_given}
        if which not in out:
            raise ValueError(f"which must be 'coarse', 'refined', 'pnp' or 'given', got {which!r}")
        if out[which] is None:
            raise ValueError(f"no {which} poses in this reconstruction: {'; '.join(self.notes) or 'pnp=False'}")
        return out[which]

    def summary(self) -> str:
        """A few lines for notebook output."""
        t = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in self.timings.items())
        f = "n/a" if self.focal is None else f"{self.focal:.1f} px"
        lines = [f"{self.n_views} views of {self.hw[0]}x{self.hw[1]} (HxW) on {self.device} "
                 f"(autocast {self.autocast}); focal {f}", f"weights: {self.weights_label}", f"timings: {t}"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


# ----------------------------------------------------------------------------- helpers
def _as_images01(images, size, multiple: int):
    """Input -> ``((V, 3, H, W) float32 in [0, 1], info, seconds)`` with all the checks."""
    from PIL import Image


    t0 = time.perf_counter()
    if size is not None:
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            size = (int(size), int(size))
        if not isinstance(size, (tuple, list)) or len(size) != 2:
            raise ValueError(f"size must be None, an int or (W, H), got {size!r}")
        size = preprocess.check_size(size)
    info = None
    if isinstance(images, (str, Path)):
        raise ValueError(f"images must be a list of at least 2 image paths (or a (V, 3, H, W) tensor), "
                         f"got the single path {images!r}")
    if isinstance(images, (list, tuple)) and images and all(isinstance(p, (str, Path)) for p in images):
        if len(images) < 2:
            raise ValueError(f"FLARE needs at least 2 views, got 1 image ({images[0]})")
        x, _, info = preprocess.load_images(images, size=size)
    else:
        if isinstance(images, (list, tuple)):
            if not images or not all(isinstance(t, torch.Tensor) for t in images):
                raise TypeError("images must be a (V, 3, H, W) tensor, a list of (3, H, W) tensors or a list of paths")
            shapes = sorted({tuple(t.shape) for t in images})
            if len(shapes) > 1:
                raise ValueError(f"all views must have the same size, got shapes {shapes}; pass size=(W, H) "
                                 "with file paths, or resize them first")
            images = torch.stack(list(images))
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor or a list of paths, got {type(images).__name__}")
        if images.ndim == 3:
            raise ValueError(f"FLARE needs at least 2 views, got one image of shape {tuple(images.shape)}; "
                             "pass (V, 3, H, W) with V >= 2")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (V, 3, H, W) RGB in [0, 1], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype} "
                             "(uint8? divide by 255)")
        x = images.detach().to("cpu", torch.float32)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0:
            raise ValueError(f"images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]: these look like "
                             "model inputs in [-1, 1]; reconstruct normalises itself, pass "
                             "flare_nb.scenes.preprocess.from_model_input(x) (x * 0.5 + 0.5)")
        if hi > 1.0 + 1e-6:
            raise ValueError(f"images must be in [0, 1], got values up to {hi:.3g} (0-255 images? divide by 255)")
        if size is not None and tuple(x.shape[-2:]) != (size[1], size[0]):
            # official path: 8-bit image -> scale to cover -> centre crop
            u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            x = torch.stack([preprocess.pil_to_tensor01(preprocess.resize_crop(Image.fromarray(a), size)[0])
                             for a in u8])
    V, _, H, W = x.shape
    if V < 2:
        raise ValueError(f"FLARE needs at least 2 views, got V = {V}")
    if H % multiple or W % multiple:
        raise ValueError(f"image size {W}x{H} (WxH) is not a multiple of {multiple} (the coarse pose "
                         f"tokens are {multiple} px); pass size=(W, H), e.g. size=(512, 384)")
    return x.contiguous(), info, time.perf_counter() - t0


@contextlib.contextmanager
def _stage_timer(model, timings: dict, sync):
    """Time each stage module of ``model`` (``STAGES``) while its forward runs: a forward pre-hook
    starts the clock, a forward hook stops it; the hooks are removed afterwards."""
    handles, started = [], {}
    for attr, name in STAGES:
        module = getattr(model, attr, None)
        if not isinstance(module, torch.nn.Module):
            continue

        def start(_module, _args, _name=name):
            sync()
            started[_name] = time.perf_counter()

        def stop(_module, _args, _out, _name=name):
            sync()
            timings[_name] = timings.get(_name, 0.0) + time.perf_counter() - started.pop(_name)

        handles += [module.register_forward_pre_hook(start), module.register_forward_hook(stop)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------- reconstruct
@torch.no_grad()
def reconstruct(model: FlareModel, images, size=None, device="auto", pnp: bool = True,
                pnp_iterations: int | None = None, seed: int = 0, intrinsics=None, camera_poses=None) -> Reconstruction:
    """Run FLARE's cascade on ``V >= 2`` views; view 0 is the reference frame.

    Args:
        model: a ``FlareModel`` (e.g. from :func:`load_model`); moved to ``device`` in place.
        images: ``(V, 3, H, W)`` float in **[0, 1]** (or a list of ``(3, H, W)``), or a list of
            image paths (loaded with the official preprocessing, :func:`flare_nb.scenes.preprocess.load_images`).
        size: ``(W, H)`` (multiples of 64) or an int for square: official scale-to-cover + centre
            crop (portrait photos get the transposed target). None: use the images as they are
            (H, W must be multiples of ``model.cfg.multiple``).
        device: ``"auto"`` | ``"cpu"`` | ``"cuda"``. On CUDA the forward runs under bf16
            autocast, on the CPU in float32.
        pnp: also solve the demo's PnP cameras with the bounded settings of
            :func:`flare_nb.camera_rule.pnp_settings` (``pnp_iterations`` RANSAC iterations,
            default 300 with an adaptive stop; the release runs 10 000).
        seed: OpenCV's RANSAC seed.
        intrinsics: known intrinsics, ``(V, 3, 3)`` K or ``(V, 4)`` ``[fx, fy, cx, cy]`` in
            pixels of the model input (after ``size``; OpenCV pixel centres). The NVS model
            takes them as input (required there, as in the release); with either model they
            replace the estimated focal in PnP and are kept in ``rec.K_given``.
        camera_poses: optional known camera-to-world poses ``(V, 4, 4)`` (OpenCV axes, any world
            frame and scale), one per view in the order of ``images``: the release's known-pose
            mode (``FlareModel(..., camera_poses=...)``, geometry model only). They replace the
            predicted poses in the camera embeddings of stages 2 and 3; the pointmaps stay in
            view 0's camera frame at the model's scale. ``rec.c2w_given`` holds them relative
            to view 0; the pose-head cameras are still reported.

    Raises ValueError for: one image, views of different sizes, a size that is not a multiple
    of 64, images in [-1, 1] (already normalised) or 0-255, non-float tensors, given poses
    of the wrong count or not rigid. Notebook 02.
    """
    if not isinstance(model, FlareModel):
        raise TypeError(f"model must be a FlareModel (flare_nb.inference.load_model), got {type(model).__name__}")
    dev = resolve_device(device)
    x01, info, t_pre = _as_images01(images, size, model.cfg.multiple)
    model.to(dev).eval()
    pdtype = next(model.parameters()).dtype
    if getattr(model, "bf16_weights", None) == "float32 compute":     # flare_nb.bf16: bf16 storage only
        pdtype = torch.float32
    V, _, H, W = x01.shape

    x = to_model_input(x01)[None].to(dev, pdtype)
    kw = {}
    c2w_given = None
    if camera_poses is not None:
        P = check_camera_poses(camera_poses, 1, V)
        kw["camera_poses"] = P
        c2w_given = cameras.relative_to_view0(P[0]).float()
    if model.cfg.kind == "nvs" and intrinsics is None:
        raise ValueError("the NVS model takes the intrinsics of the input views: pass intrinsics=(V, 3, 3) K "
                         f"in pixels of the {W}x{H} model input (or use the geometry model, which needs none)")
    K_given = None
    if intrinsics is not None:
        intr = torch.as_tensor(intrinsics, dtype=torch.float32)
        if intr.shape not in ((V, 3, 3), (V, 4)):
            raise ValueError(f"intrinsics must be (V, 3, 3) or (V, 4) for V = {V} views, got {tuple(intr.shape)}")
        if model.cfg.kind == "nvs":
            kw["intrinsics"] = intr[None].to(dev)
        if intr.shape == (V, 4):
            K_given = torch.zeros(V, 3, 3)
            K_given[:, 0, 0], K_given[:, 1, 1], K_given[:, 0, 2], K_given[:, 1, 2] = intr.unbind(-1)
            K_given[:, 2, 2] = 1.0
        else:
            K_given = intr.clone()
        if not torch.isfinite(K_given).all() or (K_given[:, 0, 0] <= 0).any() or (K_given[:, 1, 1] <= 0).any():
            raise ValueError("intrinsics must be finite with positive focal lengths")
    amp = autocast_dtype(dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    timings = {"preprocess": t_pre}
    ctx = torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext()
    sync()
    t0 = time.perf_counter()
    with _stage_timer(model, timings, sync), ctx:
        out = model(x, **kw)
    sync()
    timings["forward"] = time.perf_counter() - t0

    f32 = lambda t: t[0].detach().to("cpu", torch.float32)  # noqa: E731  drop the batch axis
    pts_cam = f32(out.pts3d_cam) if out.pts3d_cam is not None else None
    conf_cam = f32(out.conf_cam) if out.conf_cam is not None else None
    gaussians = None
    if out.gaussians is not None:
        gaussians = {k: (v.detach().to("cpu", torch.float32) if isinstance(v, torch.Tensor) else v)
                     for k, v in out.gaussians[0].items()}
    pts_glob, conf_glob = f32(out.pts3d_global), f32(out.conf_global)
    enc1 = out.pose_enc_stage1[:, 0].detach().to("cpu", torch.float32)
    enc2 = out.pose_enc_stage2[:, 0].detach().to("cpu", torch.float32)
    c2w_coarse = cameras.relative_to_view0(decode_c2w(enc1[-1])).float()
    c2w_refined = cameras.relative_to_view0(decode_c2w(enc2[-1])).float()

    notes = []
    focal = K = c2w_pnp = pnp_info = None
    t0 = time.perf_counter()
    try:
        focal = cameras.estimate_focal(pts_glob[0])
        K = cameras.intrinsics_from_focal(focal, H, W)
    except ValueError as e:
        notes.append(f"focal not estimated ({e})")
    timings["focal"] = time.perf_counter() - t0
    K_pnp = K if K_given is None else K_given
    if pnp and K_pnp is not None:
        t0 = time.perf_counter()
        try:
            c2w_pnp, pnp_info = cameras.pnp_poses(pts_glob, conf_glob, K_pnp, top=0.4, seed=seed, return_info=True,
                                                  **camera_rule.pnp_settings(H, W, pnp_iterations))
            c2w_pnp = c2w_pnp.float()
        except (ValueError, RuntimeError) as e:
            notes.append(f"PnP cameras not solved ({e})")
        timings["pnp"] = time.perf_counter() - t0
    elif pnp:
        notes.append("PnP skipped: no focal")
    return Reconstruction(
        images=x01, c2w_coarse=c2w_coarse, c2w_refined=c2w_refined, pose_enc_coarse=enc1, pose_enc_refined=enc2,
        focal=focal, K=K, c2w_pnp=c2w_pnp, pnp_info=pnp_info, pts3d_cam=pts_cam, conf_cam=conf_cam,
        pts3d_global=pts_glob, conf_global=conf_glob, timings=timings, device=str(dev),
        autocast="bf16" if amp is not None else "none",
        weights_label=getattr(model, "weights_label", "weights of unknown origin"), info=info, notes=notes,
        gaussians=gaussians, c2w_given=c2w_given, K_given=K_given)
