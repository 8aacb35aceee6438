"""The reconstruction pipeline: photos in, a folder of standard files out (notebook 08).

:func:`reconstruct_to_folder` is the whole ``flare-nb reconstruct`` / ``flare-nb demo``
(:mod:`flare_nb.cli` only parses the arguments and calls it); from Python::

    from flare_nb.pipeline import reconstruct_to_folder
    res = reconstruct_to_folder(["a.jpg", "b.jpg", "c.jpg"], "out", size=(128, 128))
    res["files"], res["timings"], res["report"]

Pipeline (each step timed and printed): collect the photos (non-images and unreadable files
skipped with a warning; more than ``--max-views`` are subsampled evenly) -> load the model
(``flare_nb.inference.load_model``; RANDOM weights are announced loudly) -> memory check
(:func:`estimate_memory_bytes`) -> preprocess (EXIF orientation, 16-bit / grayscale / RGBA,
official resize + centre crop, ``flare_nb.scenes.preprocess``) -> choose the reference view
(:mod:`flare_nb.scenes.reference_view`) and put it first -> ``flare_nb.inference.reconstruct``
(pose heads, pointmaps, focal, PnP cameras as the released demo) -> exports
(:mod:`flare_nb.export`): ``cameras.json``, ``sparse/0/`` (COLMAP text), ``transforms.json``,
``points.ply``, ``gaussians.ply``, ``renders/``, ``summary.png``, ``images/``, ``report.md``,
``scene.html`` (offline 3D page, :mod:`flare_nb.scene_page`) and ``scene.glb`` (:mod:`flare_nb.glb`).
``model="nvs"`` runs the NVS model (:mod:`flare_nb.nvs_run`); ``dtype="bf16"`` keeps the weights in
bfloat16 (:mod:`flare_nb.bf16`).

Cameras written: the demo's PnP cameras and the focal from view 0's global pointmap when they
could be computed (they share the pointmap's frame and units); otherwise the refined
pose-head cameras and, without a focal, a 60-degree field of view -- each fallback is noted
in ``cameras.json`` ("pose_source", "focal_source") and in ``report.md``.

Output folder (:mod:`flare_nb.outdir`): checked before any work, written into a staging folder
beside ``out`` and renamed into place when complete; ``force`` replaces exactly the files an
earlier run listed in its manifest (``.flare-nb-manifest.json``), never a file of yours or an
input photo. A run that fails or is interrupted removes its staging folder and says that
``out`` was not changed (the error's ``out_note``).

Bad input (unreadable photos, a bad checkpoint, option or ``poses`` file, an existing output
folder, too little memory, ...) raises ValueError / FileNotFoundError / :class:`CliError` with a
one-line message, before any output exists; Ctrl-C raises :class:`Interrupted`. This module
imports torch; :mod:`flare_nb.cli` imports it only after parsing the arguments, so that
``flare-nb --help`` is quick and a Ctrl-C while torch loads is still answered in one line.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from flare_nb import camera_rule, export
from flare_nb import video as video_module
from flare_nb.intrinsics import parse_intrinsics_option, resolve_intrinsics
from flare_nb.cameras import invert_pose, opengl_to_opencv
from flare_nb.device import resolve_device
from flare_nb.inference import default_checkpoint, empty_model, load_model, reconstruct
from flare_nb.model import config as config_module
from flare_nb.model.checkpoint import read_checkpoint_info
from flare_nb.model.pose_encoding import check_camera_poses
from flare_nb.outdir import StagedOutput, manifest_files
from flare_nb.scenes import reference_view
from flare_nb.scenes.preprocess import (IMAGE_EXTENSIONS, check_one_orientation,
                                        check_size, load_image, load_images,
                                        oriented_size)
from flare_nb import nvs_run
from flare_nb.bf16 import to_bf16_weights
from flare_nb.glb import write_scene_glb
from flare_nb.nvs_run import nvs_cameras
from flare_nb.scene_page import write_scene_page

__all__ = ["reconstruct_to_folder", "RunReport", "collect_images", "estimate_memory_bytes", "check_memory",
           "default_size", "MEMORY_MODEL", "CliError", "Interrupted", "DEFAULT_MAX_VIEWS", "read_poses",
           "match_poses", "check_options", "resolve_ref_view", "planned_files", "precheck_checkpoint"]

DEFAULT_MAX_VIEWS = 8          # FLARE is trained on 2-8 views
MOST_VIEWS = 16                # --max-views / --views accept up to this many (with a warning above TRAINED_VIEWS)
TRAINED_VIEWS = 8              # the released model was trained on 2-8 views (the shipped tiny ones on 4)
CPU_RENDER_MAX_GAUSSIANS = 40_000   # the CPU rasterizer renders a thinned preview beyond this
OUR_FILES = ("cameras.json", "transforms.json", "points.ply", "gaussians.ply", "summary.png", "renders.png",
             "report.md", "scene.html", "scene.glb", "sparse/0/cameras.txt", "sparse/0/images.txt", "sparse/0/points3D.txt")
MIN_PHOTO_SIDE = 32            # photos smaller than this (px, either side) are skipped
MAX_UPSCALE = 2.0              # photos enlarged more than this are reported
MIN_KEPT_FRACTION = 0.5        # photos whose centre crop keeps less of their width / height are reported
BIG_PHOTO_PIXELS = 50e6        # photos larger than this are reported (decoding time and memory)


class CliError(ValueError):
    """An error whose message is shown to the user as is (one line, no traceback)."""


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _warn(msg: str) -> None:
    print(f"flare-nb: warning: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs
def default_size(config: str, checkpoint=None) -> tuple[int, int]:
    """The model's native input size (W, H): for the tiny models the size their checkpoint was
    trained at (its ``image_size``, :func:`flare_nb.model.checkpoint.read_checkpoint_info`;
    ``checkpoint`` None = ``data/checkpoints/tiny_geometry.pt``), 128x128 for a checkpoint that does
    not say; 512x384 for the released models. Photos are resized to it keeping their aspect and
    centre-cropped (:mod:`flare_nb.scenes.preprocess`)."""
    if not config.startswith("tiny"):
        return (512, 384)
    info = _tiny_checkpoint_info(config, checkpoint)
    return (128, 128) if info is None or info.image_size is None else (info.image_size[1], info.image_size[0])


def _tiny_checkpoint_info(config: str, checkpoint):
    """The ``CheckpointInfo`` of the tiny model's checkpoint (given, or the default geometry one), None
    when there is no such file or it does not describe itself."""
    if not config.startswith("tiny"):
        return None
    path = Path(checkpoint) if checkpoint not in (None, "") else (default_checkpoint() if config == "tiny" else None)
    return read_checkpoint_info(path) if path is not None and path.is_file() else None


def collect_images(inputs, max_views: int = DEFAULT_MAX_VIEWS) -> tuple[list[Path], list[str]]:
    """Image files from ``inputs`` (one folder, or files and folders), and warnings.

    Folders are listed (not recursively, hidden files ignored) and sorted by name; files
    whose extension is not an image type are skipped with a warning, and so are the files an
    earlier ``flare-nb`` run wrote into a folder (its manifest, :mod:`flare_nb.outdir`). A file
    given twice, or byte-identical copies of one photo, are used once, with a warning. More than
    ``max_views`` images are subsampled evenly (first and last kept), with a warning; the files
    are not decoded here. Raises FileNotFoundError for a missing path and ValueError when fewer
    than 2 different images are found.
    """
    import hashlib


    if isinstance(max_views, bool) or not isinstance(max_views, int) or max_views < 2:
        raise ValueError(f"--max-views must be an integer >= 2, got {max_views!r}")
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("no input given: pass a folder of photos or at least 2 image files")
    files, ours = [], []
    for p in inputs:
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
        if p.is_dir():
            skip = manifest_files(p)
            listed = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            ours += [q for q in listed if q.resolve() in skip]
            files += [q for q in listed if q.resolve() not in skip]
        else:
            files.append(p)
    warns = []
    if ours:
        warns.append(f"skipping {len(ours)} file(s) an earlier flare-nb run wrote into {ours[0].parent} "
                     f"({', '.join(q.name for q in ours[:4])}{', ...' if len(ours) > 4 else ''}); they are not photos")
    images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
    other = [f for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS]
    where = str(inputs[0]) if len(inputs) == 1 else f"the {len(inputs)} inputs"
    if other:
        names = ", ".join(f.name for f in other[:5]) + (", ..." if len(other) > 5 else "")
        warns.append(f"skipping {len(other)} file(s) that are not images ({names}); expected "
                     f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}")
    if not images:
        raise ValueError(f"no images found in {where}" + (f" (only {len(other)} non-image file(s))" if other else "")
                         + "; expected at least 2 photos (JPEG, PNG, ...)")
    # the same file twice, or identical copies: keep the first
    seen_path, seen_hash, unique, dups = {}, {}, [], []
    for f in images:
        rp = f.resolve()
        if rp in seen_path:
            dups.append(f"{f} is given twice")
            continue
        seen_path[rp] = f
        try:
            h = hashlib.sha256(f.read_bytes()).hexdigest()
        except OSError:
            h = None                                # unreadable: reported when decoded
        if h is not None and h in seen_hash:
            dups.append(f"{f.name} is identical to {seen_hash[h].name}")
            continue
        if h is not None:
            seen_hash[h] = f
        unique.append(f)
    if dups:
        warns.append(f"using {len(dups)} duplicate photo(s) once ({'; '.join(dups[:3])}{'; ...' if len(dups) > 3 else ''}):"
                     " FLARE needs photos of the scene from different viewpoints")
    images = unique
    if len(images) < 2:
        what = "different image" if dups else "image"
        raise ValueError(f"FLARE needs at least 2 different photos of the scene, found 1 {what} in {where}: "
                         f"{images[0]}" + (f" ({'; '.join(dups[:2])})" if dups else ""))
    if len(images) > max_views:
        n = len(images)
        keep = sorted({round(i * (n - 1) / (max_views - 1)) for i in range(max_views)})
        images = [images[i] for i in keep]
        warns.append(f"found {n} images; FLARE is trained on 2-8 views, using {len(images)} evenly spaced "
                     f"ones ({images[0].name} ... {images[-1].name}); pass --max-views N to change")
    return images, warns


def read_poses(path) -> dict[str, "torch.Tensor"]:
    """Camera-to-world poses (OpenCV axes, float64 ``(4, 4)``) by image file name, for ``--poses``.

    ``path``: a nerfstudio / instant-ngp ``transforms.json`` (or a folder holding one):
    ``frames[].transform_matrix`` is camera-to-world in OpenGL axes and is converted; or a
    COLMAP model folder (``cameras``/``images`` ``.txt`` or ``.bin``, also ``sparse/0`` below
    it): ``cam_from_world`` is inverted. Keys are the base names of ``file_path`` / the
    COLMAP image names. Raises FileNotFoundError / ValueError with one line naming the file."""



    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--poses: no such file or folder: {path}")
    js = path / "transforms.json" if path.is_dir() else path
    if js.is_file():
        try:
            meta = json.loads(js.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"--poses {js}: not valid JSON ({e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
            raise ValueError(f"--poses {js}: expected a transforms.json object with a 'frames' list")
        out = {}
        for i, fr in enumerate(meta["frames"]):
            try:
                T = torch.tensor(fr["transform_matrix"], dtype=torch.float64)
                name = Path(str(fr["file_path"])).name
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"--poses {js}: frame {i} needs 'file_path' and a numeric 4x4 "
                                 "'transform_matrix'") from None
            if T.shape == (3, 4):
                T = torch.cat((T, T.new_tensor([[0, 0, 0, 1]])))
            if T.shape != (4, 4):
                raise ValueError(f"--poses {js}: frame {i} ({name}): transform_matrix must be 4x4, "
                                 f"got {tuple(T.shape)}")
            out[name] = opengl_to_opencv(T[None])[0]
        return out
    model_dir = next((d for d in (path, path / "sparse" / "0", path / "sparse")
                      if any((d / f"images.{e}").is_file() for e in ("txt", "bin"))), None)
    if model_dir is None:
        raise ValueError(f"--poses {path}: expected a transforms.json or a COLMAP model folder "
                         "(cameras/images/points3D .txt or .bin)")
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as e:  # noqa: BLE001 - pycolmap raises several types
        raise ValueError(f"--poses {model_dir}: pycolmap could not read the COLMAP model ({e})") from None
    out = {}
    for image in rec.images.values():
        if hasattr(image, "has_pose") and not image.has_pose:
            continue
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :] = torch.as_tensor(image.cam_from_world().matrix(), dtype=torch.float64)
        out[Path(image.name).name] = invert_pose(w2c[None])[0]
    return out


def match_poses(poses: dict, photos, source) -> "torch.Tensor":
    """``(V, 4, 4)`` poses of ``photos`` from :func:`read_poses` output, matched by file name
    (exact, else by name without extension). One missing photo -> ValueError naming it."""

    by_stem = {}
    for k, v in poses.items():
        by_stem.setdefault(Path(k).stem, []).append(v)
    out = []
    for p in photos:
        p = Path(p)
        if p.name in poses:
            out.append(poses[p.name])
        elif len(by_stem.get(p.stem, [])) == 1:
            out.append(by_stem[p.stem][0])
        else:
            listed = ", ".join(sorted(poses)[:6]) + (", ..." if len(poses) > 6 else "")
            raise ValueError(f"--poses {source} has no pose for the photo {p.name} (it lists {len(poses)}: "
                             f"{listed}); give a pose for every photo or leave that photo out")
    return torch.stack(out)


def _decode_all(paths, size=None) -> tuple[list[Path], list[tuple[int, int]], list[str], list[str]]:
    """Decode every file once; unreadable ones and photos smaller than ``MIN_PHOTO_SIDE`` are
    dropped with a warning naming them; big photos are reported. Returns ``(good paths, their
    oriented sizes (W, H), warnings, error messages)``."""

    good, sizes, warns, errors = [], [], [], []
    for p in paths:
        try:
            wh = load_image(p).size
        except (ValueError, OSError) as e:
            errors.append(str(e))
            continue
        if min(wh) < MIN_PHOTO_SIDE:
            errors.append(f"{p} is {wh[0]}x{wh[1]} px, smaller than the minimum {MIN_PHOTO_SIDE} px per side")
            continue
        if wh[0] * wh[1] > BIG_PHOTO_PIXELS:
            warns.append(f"{p} is {wh[0]}x{wh[1]} ({wh[0] * wh[1] / 1e6:.0f} megapixels): decoding it takes about "
                         f"{decode_bytes(wh[0] * wh[1]) / 1e9:.1f} GB and a few seconds (counted in the memory check); "
                         "a downscaled copy gives the same result faster")
        good.append(p)
        sizes.append(wh)
    if errors:
        warns.append(f"skipping {len(errors)} unusable image(s): " + " | ".join(errors[:3])
                     + (" | ..." if len(errors) > 3 else ""))
    return good, sizes, warns, errors


def _preprocess_warnings(paths, sizes, size, auto_orient: bool) -> list[str]:
    """What the resize + centre crop does to unusual photos: strong upscaling, and crops that
    keep less than ``MIN_KEPT_FRACTION`` of a photo's width or height."""

    warns = []
    for p, (W, H) in zip(paths, sizes):
        Wt, Ht = oriented_size(size, (W, H), auto_orient)
        s = max(Wt / W, Ht / H)
        kept_w, kept_h = Wt / (W * s), Ht / (H * s)
        if min(kept_w, kept_h) < MIN_KEPT_FRACTION:
            side, frac = ("width", kept_w) if kept_w < kept_h else ("height", kept_h)
            warns.append(f"{p.name} is {W}x{H}: the centre crop to {Wt}x{Ht} keeps only {frac:.2%} of its {side}; "
                         f"crop it yourself to the part that matters (aspect near {Wt}:{Ht})")
        if s > MAX_UPSCALE:
            warns.append(f"{p.name} is {W}x{H}: enlarged {s:.1f}x to {Wt}x{Ht}, so it holds little detail; "
                         "use a larger photo or a smaller --size")
    return warns


# ----------------------------------------------------------------------------- memory guard
#: Peak memory model of one reconstruction (bytes), ``estimate_memory_bytes``:
#:
#: * ``base`` (the Python process with torch, PIL, matplotlib and pycolmap loaded: the demo
#:   peaked at 0.49 GB with an estimate of 0.46 GB from base = 350 MB, so 400 MB) + weights
#:   ``n_params * 4`` (x 1.5 on CUDA: bf16 copies under autocast);
#: * tokens ``a * V * N * max(enc_dim, dec_dim * dec_mlp_ratio) * 4``, N = HW / patch^2
#:   (encoder / decoder activations of the widest layer);
#: * global attention ``c * heads * (V N)^2 * 4``: the score matrix, if the attention kernel
#:   materialised it. ``scaled_dot_product_attention`` uses fused kernels (CPU float32, CUDA
#:   bf16) that do not, and the calibration shows no quadratic growth, so ``c = 0``;
#: * pixels ``b * V * H * W * dpt_feature_dim * 4`` (the DPT heads at full resolution) plus
#:   ``e`` bytes per pixel for the exports (points, Gaussians, rendering).
#:
#: Calibration (tiny model, CPU, extra peak RSS of ``reconstruct``): V x W x H = 2x128x128:
#: 43 MB, 8x128x128: 78 MB, 8x256x256: 191 MB, 4x512x384: 258 MB, 8x512x384: 463 MB, i.e.
#: linear in V H W at ~2.3-2.9 x ``dpt_feature_dim * 4`` bytes per pixel: ``b = 3``. ``a`` is
#: a margin (the tiny model's tokens are too narrow to measure it separately).
MEMORY_MODEL = {"a": 12.0, "b": 3.0, "c": 0.0, "e": 200.0, "base": 400e6, "d": 14.0}
#: ``d``: bytes per pixel of decoding the largest photo (:func:`decode_bytes`): PIL holds RGB
#: as 4 bytes per pixel, and the decoded image, its EXIF-rotated copy and the 8-bit RGB copy
#: coexist (12 bytes per pixel) plus the resize's intermediate; photos are decoded one at a
#: time, and the memory is counted as still held during the reconstruction (the allocator
#: does not always give it back). ``benchmarks/bench_memory.py`` prints estimate and measured
#: peak side by side.


def decode_bytes(pixels: float) -> float:
    """Estimated peak memory (bytes) of decoding and preprocessing one photo of ``pixels`` pixels."""
    return MEMORY_MODEL["d"] * float(pixels)


def estimate_memory_bytes(cfg, n_params: int, V: int, H: int, W: int, device: str = "cpu",
                          photo_pixels: float = 0, param_bytes: int = 4) -> float:
    """Estimated peak memory (bytes) of a reconstruction of ``V`` views of ``H x W`` with a model
    of config ``cfg`` (:data:`MEMORY_MODEL`); ``photo_pixels``: pixels of the largest photo
    (decoded on the CPU: counted for CPU runs); ``param_bytes``: 4 (float32 weights) or 2
    (``--dtype bf16``; activations are still counted at 4 bytes, an upper bound; loading still
    peaks at the float32 weights, which are rounded after loading)."""
    m = MEMORY_MODEL
    N = (H // cfg.patch_size) * (W // cfg.patch_size)
    width = max(cfg.enc_dim, int(cfg.dec_dim * cfg.dec_mlp_ratio))
    cuda = str(device).startswith("cuda")
    weights = n_params * param_bytes * (1.5 if cuda and param_bytes == 4 else 1.0)
    tokens = m["a"] * V * N * width * 4
    attention = m["c"] * max(cfg.enc_heads, cfg.dec_heads) * (V * N) ** 2 * 4
    pixels = m["b"] * V * H * W * cfg.dpt_feature_dim * 4 + m["e"] * V * H * W
    decode = 0.0 if cuda else decode_bytes(photo_pixels)
    total = m["base"] + weights + tokens + attention + pixels + decode
    if param_bytes < 4:     # bf16: the weights are loaded as float32 first, then rounded (flare_nb.bf16)
        total = max(total, m["base"] + n_params * 4 + decode)
    return total


def available_memory_bytes(device) -> float | None:
    """Free memory of ``device`` (CUDA: ``mem_get_info``; CPU: MemAvailable of /proc/meminfo),
    None when unknown. ``$FLARE_NB_MEMORY_GB`` overrides it (tests, shared machines)."""
    env = os.environ.get("FLARE_NB_MEMORY_GB")
    if env:
        return float(env) * 1e9
    if str(device).startswith("cuda"):

        return float(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(cfg, n_params: int, V: int, size, device, photo_pixels: float = 0,
                 param_bytes: int = 4) -> tuple[float, float | None]:
    """Refuse (ValueError) when the estimate exceeds the free memory, saying how many views
    and which size would fit (or what the smallest run needs). Returns ``(estimate,
    available)`` in bytes."""
    W, H = size
    est = lambda v, h, w: estimate_memory_bytes(cfg, n_params, v, h, w, device, photo_pixels, param_bytes)  # noqa: E731
    need = est(V, H, W)
    have = available_memory_bytes(device)
    if have is None or need <= have:
        return need, have
    fit_v = max((v for v in range(2, V) if est(v, H, W) <= have), default=None)
    fit_s = None
    for w in range(W - 64, 63, -64):                  # same aspect, every smaller width
        h = max(64, round(w * H / W / 64) * 64)
        if est(V, h, w) <= have:
            fit_s = (w, h)
            break
    hints = []
    if fit_v:
        hints.append(f"at most {fit_v} views at {W}x{H} (--max-views {fit_v})")
    if fit_s:
        hints.append(f"{V} views at --size {fit_s[0]}x{fit_s[1]}")
    if hints:
        hint = "would fit: " + " or ".join(hints)
    else:
        least = est(2, 64, 64)
        hint = (f"the smallest run (2 views at --size 64x64) needs about {least / 1e9:.2f} GB"
                + (" (most of it the model and decoding the largest photo)" if least > have else
                   "; pass a smaller --size or fewer photos") + ("; free some memory" if least > have else ""))
    raise ValueError(f"not enough memory on {device}: {V} views of {W}x{H} need about {need / 1e9:.1f} GB, "
                     f"{have / 1e9:.1f} GB free; {hint}")


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ----------------------------------------------------------------------------- the run
class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what state ``--out`` was left in."""


def check_options(conf_threshold=0.5, pnp_iterations=None, max_views=DEFAULT_MAX_VIEWS) -> None:
    """ValueError naming the option for values the run cannot use (checked before any work)."""
    try:
        q = float(conf_threshold)
    except (TypeError, ValueError):
        q = float("nan")
    if not 0.0 <= q < 1.0:
        raise ValueError(f"--conf-threshold must be a fraction in [0, 1) of the least confident pixels to drop, "
                         f"got {conf_threshold}")
    if pnp_iterations is not None and (isinstance(pnp_iterations, bool) or not isinstance(pnp_iterations, int)
                                       or pnp_iterations < 1):
        raise ValueError(f"--pnp-iterations must be a positive integer (RANSAC iterations of the PnP cameras, "
                         f"default {camera_rule.PNP_DEFAULT_ITERATIONS}), got {pnp_iterations!r}")
    if isinstance(max_views, bool) or not isinstance(max_views, int) or max_views < 2:
        raise ValueError(f"--max-views must be an integer >= 2, got {max_views!r}")
    if max_views > MOST_VIEWS:
        raise ValueError(f"--max-views must be at most {MOST_VIEWS} (FLARE was trained on 2-{TRAINED_VIEWS} views), "
                         f"got {max_views}")


def resolve_ref_view(ref_view, names) -> int | None:
    """``--ref-view``: None for ``auto``, else the index of the view (an index or a file name);
    ValueError naming the option otherwise."""
    if str(ref_view) == "auto":
        return None
    if str(ref_view) in names:
        return names.index(str(ref_view))
    try:
        ref = int(str(ref_view))
    except ValueError:
        ref = None
    if ref is None or not 0 <= ref < len(names):
        raise ValueError(f"--ref-view must be 'auto', a view index in 0..{len(names) - 1} or one of the file "
                         f"names {names}, got {ref_view!r}")
    return ref


def planned_files(photos, n_views: int | None = None, render: bool = True) -> list[str]:
    """Every relative path a run on ``photos`` may write (the image names depend on the order
    chosen later, so every position is listed)."""
    n = len(photos) if n_views is None else n_views
    names = list(OUR_FILES)
    names += [f"images/{k:03d}_{Path(p).stem.replace(' ', '_')}.png" for k in range(n) for p in photos]
    if render:
        names += [f"renders/view_{k:03d}.png" for k in range(n)]
    return names


def precheck_checkpoint(path: Path) -> None:
    """What can be told about ``--checkpoint`` without reading it (no torch needed): it exists,
    has a known suffix, and its first bytes are those of a zip archive, a pickle or a
    safetensors header. FileNotFoundError / ValueError naming the file; the full check is
    :func:`flare_nb.model.checkpoint.read_state_dict`."""

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    suffix = path.suffix.lower()
    if suffix not in (".pth", ".pt", ".bin", ".safetensors"):
        raise ValueError(f"unknown checkpoint format {suffix!r} ({path}); expected .pth, .pt or .safetensors")
    with open(path, "rb") as f:
        head = f.read(8)
    if suffix == ".safetensors":
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            with open(path, "rb") as f:
                f.seek(8)
                ok = 0 < n <= path.stat().st_size - 8 and isinstance(json.loads(f.read(n)), dict)
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise ValueError(f"{path} is not a valid .safetensors file (its header is not a JSON table of "
                             "tensors); copy or download it again")
        return
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (a damaged or truncated zip archive); "
                         "copy or download it again")
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        raise ValueError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle: random or "
                         "other data); expected a .pth/.pt state dict or a .safetensors file")


def _resolve_config(config):
    """``"tiny"`` / ``"official_geometry"`` / a FlareConfig (as :func:`flare_nb.inference.resolve_config`,
    without importing torch)."""

    if isinstance(config, config_module.FlareConfig):
        return config
    names = sorted(n for n in config_module.__all__ if n != "FlareConfig")
    if not isinstance(config, str) or config.strip() not in names:
        raise ValueError(f"--config must be one of {names}, got {config!r}")
    return getattr(config_module, config.strip())()


def _count_parameters(cfg) -> int:
    return sum(p.numel() for p in empty_model(cfg, allocate=False).parameters())


def reconstruct_to_folder(inputs, out, checkpoint=None, config="tiny", size=None, device="auto", ref_view="auto",
        conf_threshold: float = 0.5, force: bool = False, max_views: int = DEFAULT_MAX_VIEWS,
        pnp_iterations: int | None = None, render: bool = True, title: str = "flare-nb reconstruct",
        poses=None, intrinsics=None, views: int = DEFAULT_MAX_VIEWS, model: str = "geometry", dtype: str = "fp32",
        geometry_checkpoint=None) -> dict:
    """The whole ``flare-nb reconstruct`` (module docstring); returns a dict with ``files``
    ({name: bytes}), ``timings`` (seconds per stage), ``order`` (input index of each view),
    ``weights_random`` and ``out``. Raises ValueError / FileNotFoundError on bad input (before
    any output exists), :class:`Interrupted` on Ctrl-C; whatever fails, ``--out`` is left as it
    was (or marked incomplete, :mod:`flare_nb.outdir`) and the error's ``out_note`` says which.

    ``poses``: optional ``--poses`` file or folder (:func:`read_poses`), one camera-to-world
    pose per photo matched by file name; passed to ``reconstruct(camera_poses=...)``, the
    release's known-pose mode.

    ``intrinsics``: the ``--intrinsics`` words (None: EXIF when every photo has a focal
    there, else estimated; :mod:`flare_nb.intrinsics`). ``inputs`` may be ONE video file:
    ``views`` sharp, evenly spread frames are taken from it (:mod:`flare_nb.video`).

    ``model``: ``"geometry"`` or ``"nvs"`` (the NVS model of the ``config`` size, its Gaussian
    head's Gaussians in ``gaussians.ply`` and the renders; intrinsics given (``intrinsics``) or
    estimated with the geometry model of ``geometry_checkpoint``, :mod:`flare_nb.nvs_run`). ``dtype``: ``"fp32"`` or
    ``"bf16"`` (bfloat16 weights, :mod:`flare_nb.plan`)."""

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    out = Path(out)
    check_options(conf_threshold, pnp_iterations, max_views)
    config, checkpoint, geometry_checkpoint, param_dtype = _output_options(model, config, checkpoint, dtype,
                                                                            geometry_checkpoint)
    cfg = _resolve_config(config)
    cfg_name = config if isinstance(config, str) else "custom"
    size = None if size is None else check_size(tuple(size))
    dname = str(device).strip().lower()
    if not (dname in ("auto", "cpu", "cuda") or (dname.startswith("cuda:") and dname[5:].isdigit())):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    ckpt = None if checkpoint in (None, "") else Path(checkpoint)
    if ckpt is not None:
        precheck_checkpoint(ckpt)
    info = _tiny_checkpoint_info(cfg_name, ckpt)
    if info is not None and info.model_config.kind == cfg.kind:
        cfg = info.model_config                           # the model load_model builds (memory estimate)
        if ckpt is None:                                  # the default checkpoint told the config: load it
            ckpt = default_checkpoint()
    if size is None:
        size = default_size(cfg_name, ckpt)

    # 1. photos (or a video's frames) and the output folder, before any work
    t0 = time.perf_counter()
    parse_intrinsics_option(intrinsics)                   # a wrong count or missing file: refused now
    frames_dir, video_note = None, None
    ins = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if len(ins) == 1 and video_module.is_video(ins[0]):
        import tempfile

        if isinstance(views, bool) or not isinstance(views, int) or not 2 <= views <= MOST_VIEWS:
            raise ValueError(f"--views must be an integer between 2 and {MOST_VIEWS}, got {views!r}")
        frames_dir = Path(tempfile.mkdtemp(prefix="flare-nb-frames-"))
        try:
            files, picks, sharp = video_module.extract_frames(ins[0], views, frames_dir)
        except BaseException:
            import shutil

            shutil.rmtree(frames_dir, ignore_errors=True)
            raise
        video_note = (f"video {ins[0]}: frames {', '.join(map(str, picks))} (0-based; the sharpest, by variance of "
                      f"the Laplacian, of {views} equal runs of frames)")
        _say("[0/6] " + video_note)
        inputs, max_views = files, max(max_views, views)
    try:
        return _reconstruct_paths(inputs, out, checkpoint, cfg, cfg_name, size, device, ref_view, conf_threshold,
                                  force, max_views, pnp_iterations, render, title, poses, intrinsics, video_note,
                                  ckpt, timings, notes, t0, t_all, param_dtype, geometry_checkpoint)
    finally:
        if frames_dir is not None:
            import shutil

            shutil.rmtree(frames_dir, ignore_errors=True)


def _reconstruct_paths(inputs, out, checkpoint, cfg, cfg_name, size, device, ref_view, conf_threshold, force,
                       max_views, pnp_iterations, render, title, poses, intrinsics, video_note, ckpt, timings, notes,
                       t0, t_all, param_dtype=torch.float32, geometry_checkpoint=None) -> dict:
    if video_note:
        notes.append(video_note)
    paths, warns = collect_images(inputs, max_views)
    folder = StagedOutput(out, force, paths)
    folder.check(planned_files(paths, render=render))
    stage = folder.begin()                       # proves --out can be created, before any work
    try:
        good, sizes, auto_orient, ref_given = _check_photos(paths, size, ref_view, folder, warns, notes)
        given = None
        if poses is not None:

            given = match_poses(read_poses(poses), good, poses)
            try:
                check_camera_poses(given, 1, len(good))
            except ValueError as e:
                raise ValueError(f"--poses {poses}: {e}") from None
            if cfg.kind != "geometry":
                raise ValueError("--poses works with the geometry model only")
        K_photo, intr_source, intr_notes = resolve_intrinsics(intrinsics, good, sizes)
        notes += intr_notes
        if len(good) > TRAINED_VIEWS:
            msg = (f"{len(good)} views: the released FLARE model was trained on 2-{TRAINED_VIEWS} views (the shipped "
                   "tiny models on 4); with more, expect poorer cameras and pointmaps than the paper's")
            _warn(msg)
            notes.append(msg)
        timings["collect_and_decode"] = time.perf_counter() - t0
        _say(f"[1/6] {len(good)} photos: {', '.join(p.name for p in good)}; intrinsics: {intr_source}")

        try:
            dev = resolve_device(device)
        except RuntimeError:
            raise ValueError(f"--device {device}: no CUDA GPU is visible here; use --device auto or cpu") from None
        # memory guard, decoding the largest photo included
        n_params = _count_parameters(cfg)
        need, have = check_memory(cfg, n_params, len(good), size, dev, max(w * h for w, h in sizes),
                                  param_bytes=param_dtype.itemsize)
        result = _run_staged(stage, good, cfg, cfg_name, ckpt, size, dev, ref_given, auto_orient, conf_threshold,
                             pnp_iterations, render, title, notes, timings, need, have, given, poses,
                             (K_photo, intr_source), param_dtype, geometry_checkpoint)
        files = folder.commit()
    except KeyboardInterrupt:
        raise Interrupted(folder.abort()) from None
    except OSError as e:
        note = folder.abort()
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        err = OSError(f"could not write the outputs for --out {out}{where}: {e.strerror or e}; {note}; "
                      "free some space or choose another --out")
        err.out_note = note
        raise err from None
    except BaseException as e:
        e.out_note = folder.abort()
        raise
    result["out"] = out
    result["files"] = {n: (out / n).stat().st_size for n in files}
    result["timings"]["total"] = time.perf_counter() - t_all
    _say("[6/6] done: " + str(out))
    for name, n in result["files"].items():
        _say(f"      {name:34s} {_human(n):>10s}")
    _say("      time per stage: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    if result["weights_random"]:
        _say("*** RANDOM WEIGHTS were used: the files above are NOT a reconstruction (see report.md).")
    return result


def _check_photos(paths, size, ref_view, folder, warns, notes):
    """Decode the photos once, check ``--ref-view``, collect and print every warning.
    Returns ``(good paths, their sizes, auto_orient, reference index or None)``."""

    good, sizes, w2, errors = _decode_all(paths)
    warns = warns + w2
    if len(good) < 2:
        detail = " | ".join(errors[:3]) if errors else "no readable image"
        raise ValueError(f"need at least 2 readable photos, got {len(good)} of {len(paths)}: {detail}")
    check_one_orientation([p.name for p in good], sizes, size)   # mixed portrait + landscape: refused
    auto_orient = True
    warns += _preprocess_warnings(good, sizes, size, auto_orient)
    for old in folder.leftovers():
        warns.append(f"{old} is the INCOMPLETE output of an interrupted run (not used); delete it")
    for w in warns:
        _warn(w)
        notes.append(w)
    ref_given = resolve_ref_view(ref_view, [p.name for p in good])
    return good, sizes, auto_orient, ref_given


def _output_options(model, config, checkpoint, dtype, geometry_checkpoint):
    """``--model``, ``--dtype`` and ``--geometry-checkpoint``, checked before any work. Returns
    ``(config name, checkpoint, geometry checkpoint, parameter dtype)``."""

    if model not in nvs_run.MODELS:
        raise ValueError(f"--model must be one of {list(nvs_run.MODELS)}, got {model!r}")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    gck = None if geometry_checkpoint in (None, "") else Path(geometry_checkpoint)
    if model == "geometry":
        if gck is not None:
            raise ValueError("--geometry-checkpoint is for --model nvs (it estimates the NVS model's intrinsics); "
                             "with the geometry model pass --checkpoint")
        return config, checkpoint, None, dtypes[dtype]
    if not isinstance(config, str):
        raise ValueError("--model nvs needs --config tiny or official_geometry")
    config = nvs_run.nvs_config_name(config)
    if checkpoint in (None, ""):
        checkpoint = nvs_run.default_checkpoint(config)
    if gck is not None:
        precheck_checkpoint(gck)
    elif config != "tiny_nvs":
        raise ValueError("--model nvs --config official_geometry needs --geometry-checkpoint geometry_pose.pth: "
                         "the released geometry model estimates the intrinsics the NVS model takes")
    return config, checkpoint, gck, dtypes[dtype]


def _load_model_checked(ckpt, cfg, dev, dtype=None):

    try:
        model = load_model(ckpt, cfg, device=dev)
        if dtype == torch.bfloat16:             # bf16 storage; float32 compute on the CPU (flare_nb.bf16)

            to_bf16_weights(model, compute_float32=dev.type == "cpu")
        return model
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # noqa: BLE001 - never pass on a reader's advice (e.g. unsafe loading)
        raise ValueError(f"{ckpt} could not be read as a FLARE checkpoint ({type(e).__name__}); expected a "
                         ".pth/.pt state dict or a .safetensors file") from None


def _run_staged(stage, good, cfg, cfg_name, ckpt, size, dev, ref_given, auto_orient, conf_threshold, pnp_iterations,
                render, title, notes, timings, need, have, given=None, poses=None, known=(None, "estimated"),
                param_dtype=None, geometry_checkpoint=None) -> dict:
    """Steps 2-5 of :func:`reconstruct_to_folder`, every file written into the staging folder ``stage``."""


    # 2. model
    t0 = time.perf_counter()
    model = _load_model_checked(ckpt, cfg, dev, param_dtype)
    timings["load_model"] = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    random_w = bool(getattr(model, "weights_random", False))
    _say(f"[2/6] model {cfg_name} ({n_params / 1e6:.2f} M parameters) on {dev}: {model.weights_label}")
    if random_w:
        _say("*" * 78 + "\n*** RANDOM WEIGHTS: no trained checkpoint was found or given. The outputs show the\n"
             "*** data flow and file formats only; cameras and points are NOT a reconstruction.\n" + "*" * 78)

    # 3. preprocessing + reference view
    t0 = time.perf_counter()
    K_photo, intr_source = known
    x01, K_input, info = load_images(good, size=size, auto_orient=auto_orient, K=K_photo)
    timings["preprocess"] = time.perf_counter() - t0
    same = [(i, j) for i in range(len(good)) for j in range(i) if torch.equal(x01[i], x01[j])]
    if same:
        msg = (f"{len(same)} pair(s) of photos are identical after preprocessing ("
               + ", ".join(f"{good[i].name} = {good[j].name}" for i, j in same[:3])
               + "): their cameras coincide at best; use photos from different viewpoints")
        _warn(msg)
        notes.append(msg)
    H, W = x01.shape[-2:]
    t0 = time.perf_counter()
    if ref_given is None:
        ref, scores = reference_view.choose_reference_view(x01)
        how = "auto (most central by colour-histogram + thumbnail similarity)"
    else:
        ref, scores, how = ref_given, None, "given"
    order = reference_view.reference_order(len(good), ref)
    x01 = x01[order]
    timings["reference_view"] = time.perf_counter() - t0
    _say(f"[3/6] preprocessed to {W}x{H} (WxH); reference view: {good[ref].name} (input {ref}, {how}); "
         f"memory estimate {need / 1e9:.2f} GB" + (f" of {have / 1e9:.1f} GB free" if have else ""))

    # 4. FLARE
    _say(f"[4/6] running FLARE on {len(good)} views ...")
    if given is not None:
        _say(f"      camera poses given ({poses}): they replace the predicted poses in stages 2 and 3")
        notes.append(f"camera poses given from {poses} (the release's known-pose mode); the pose heads still "
                     "run and the exported cameras are solved from the pointmaps as usual")
    nvs = cfg.kind == "nvs"
    if param_dtype == torch.bfloat16:
        notes.append("weights in bfloat16 (--dtype bf16): outputs differ from float32 by the bf16 rounding "
                     "(benchmarks/bench_bf16.py measures it)")
    K_nvs = None
    if nvs:
        K_nvs = ((K_input[order], intr_source) if K_input is not None else
                 _nvs_intrinsics(x01, cfg_name, geometry_checkpoint, dev, param_dtype, notes, timings))
    K_model = K_nvs[0] if nvs else (None if K_input is None else K_input[order])
    rec = reconstruct(model, x01, device=dev, pnp=not nvs, pnp_iterations=pnp_iterations,
                      camera_poses=None if given is None else given[order], intrinsics=K_model)
    for k, v in rec.timings.items():
        if k != "preprocess":
            timings[k] = v
    notes += rec.notes
    _say("      " + ", ".join(f"{k} {v:.2f} s" for k, v in rec.timings.items() if k != "preprocess"))

    # cameras: the demo's focal + PnP if possible, else the fallbacks (export.export_cameras)
    if nvs:

        chosen = nvs_cameras(rec, K_nvs[0], pnp_iterations, K_nvs[1])
    else:
        chosen = export.export_cameras(rec)
    fractions = chosen.get("inlier_fractions")
    pnp_set = camera_rule.pnp_settings(H, W, pnp_iterations)
    camera_lines = [f"rule: {camera_rule.CAMERA_RULE}",
                    f"PnP: SQPnP RANSAC, at most {pnp_set['iterations']} iterations (adaptive stop at confidence "
                    f"{pnp_set['ransac_confidence']}), {pnp_set['reproj_px']:g} px inlier threshold, at most "
                    f"{pnp_set['max_points']} of each view's 40 % most confident pixels",
                    "PnP inlier fraction per view: " + ("not solved" if fractions is None else
                                                        ", ".join(f"{f:.0%}" for f in fractions)),
                    f"chosen: {chosen['pose_source']}"]
    _say("      cameras: " + chosen["pose_source"] + ("" if fractions is None else
         " (inliers " + ", ".join(f"{f:.0%}" for f in fractions) + ")"))
    c2w, Ks, pose_source, focal_source = chosen["c2w"], chosen["K"], chosen["pose_source"], chosen["focal_source"]
    K = Ks[0]
    notes += chosen["notes"]

    # 5. exports, into the staging folder
    _say("[5/6] writing files ...")
    out = stage
    stems = [f"{k:03d}_{good[i].stem.replace(' ', '_')}.png" for k, i in enumerate(order)]
    t0 = time.perf_counter()
    (out / "images").mkdir(exist_ok=True)
    for k in range(len(order)):
        export.save_image(out / "images" / stems[k], x01[k])
    mask = export.confident_mask(rec.conf_global, conf_threshold, rec.pts3d_global)
    P, C, cf, _ = export.colored_points(rec.pts3d_global, x01, mask, rec.conf_global)
    export.write_points_ply(out / "points.ply", rec.pts3d_global, x01, rec.conf_global, mask)
    timings["export_points"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    per_view = [{"source_file": str(good[i]), "input_index": i, "src_size": list(info[i]["src_size"])} for i in order]
    extra = {"weights": model.weights_label, "weights_random": random_w, "config": cfg_name,
             "pose_source": pose_source, "focal_source": focal_source,
             "focal": float(K[0, 0]), "reference_view": {"input_index": ref, "file": str(good[ref]), "how": how},
             "order": order,
             "given_poses": None if rec.c2w_given is None else {
                 "file": str(poses), "c2w_relative_to_view0": [export.matrix_list(m) for m in rec.c2w_given]},
             "pose_head": {"coarse_c2w": [export.matrix_list(m) for m in rec.c2w_coarse],
                                           "refined_c2w": [export.matrix_list(m) for m in rec.c2w_refined]},
             "notes": notes}
    export.write_cameras_json(out / "cameras.json", c2w, Ks, stems, (H, W), extra, per_view)
    Pc, Cc, _, _ = export.colored_points(rec.pts3d_global, x01, mask, max_points=100_000)
    export.write_colmap_text(out / "sparse" / "0", c2w, Ks, stems, (H, W), Pc, Cc)
    export.write_transforms_json(out / "transforms.json", c2w, Ks, [f"images/{s}" for s in stems], (H, W),
                                 ply_file="points.ply")
    timings["export_cameras"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    g = getattr(rec, "gaussians", None)
    if g is not None:
        g_source = "the model's Gaussian head (NVS)"
    else:
        g = export.pointmap_gaussians(rec.pts3d_global, x01, mask, c2w, Ks)
        g_source = ("no Gaussian head in this model: one isotropic Gaussian per confident pixel, "
                    f"sigma = pixel footprint z / f, opacity {export.POINTMAP_OPACITY}, SH DC = pixel colour")
    export.write_gaussians_ply(out / "gaussians.ply", g)
    timings["export_gaussians"] = time.perf_counter() - t0

    if render:
        t0 = time.perf_counter()
        (out / "renders").mkdir(exist_ok=True)
        rdev = dev if dev.type == "cuda" else torch.device("cpu")
        cap = None if rdev.type == "cuda" else CPU_RENDER_MAX_GAUSSIANS
        if cap is not None and len(g["means"]) > cap:
            msg = (f"renders: a random {cap} of the {len(g['means'])} Gaussians with scales x "
                   f"{math.sqrt(len(g['means']) / cap):.2f} (CPU preview; gaussians.ply holds all)")
            _say("      " + msg)
            notes.append(msg)
        renders = export.render_gaussians(g, c2w, Ks, (H, W), device=rdev, max_gaussians=cap)
        for k in range(len(order)):
            export.save_image(out / "renders" / f"view_{k:03d}.png", renders[k])
        export.save_render_grid(out / "renders.png", x01, renders)
        timings["render"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    export.save_summary_figure(out / "summary.png", c2w, Ks, (H, W), P, C, x01,
                               title=("RANDOM WEIGHTS - not a reconstruction" if random_w else model.weights_label))
    timings["summary_figure"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _write_scene_files(out, P, C, c2w, Ks, x01, stems, g, title)
    timings["scene_page"] = time.perf_counter() - t0

    result = {"timings": timings, "order": order, "weights_random": random_w,
              "n_points": len(P), "focal": float(K[0, 0]), "size": (W, H)}
    report = RunReport(title=title, out=out, photos=good, order=order, stems=stems,
                       src_sizes=[d["src_size"] for d in info], weights=model.weights_label,
                       weights_random=random_w, config=cfg_name, device=str(dev), autocast=str(rec.autocast),
                       size=(W, H), focal=float(K[0, 0]), focal_source=focal_source, pose_source=pose_source,
                       n_points=len(P), conf_threshold=conf_threshold, n_gaussians=len(g["means"]),
                       gaussian_source=g_source, reference=ref, reference_how=how, scores=scores, timings=timings,
                       notes=notes, intrinsics_source=intr_source, camera_lines=camera_lines)
    report.write()
    result["report"] = report
    return result


CONF_THRESHOLD_HELP = camera_rule.CONF_THRESHOLD_HELP


def conf_threshold_text(q: float) -> str:
    """The report's line on the points kept."""
    return (f"the least confident {q:.0%} of each view's pixels dropped: a per-view quantile of the confidence, "
            "not an absolute value")


def _nvs_intrinsics(x01, cfg_name, geometry_checkpoint, dev, param_dtype, notes, timings):
    """``(K (V, 3, 3), source)`` for the NVS model: estimated with the geometry model of the same
    size (:func:`flare_nb.nvs_run.estimate_intrinsics`), which is freed before the NVS model runs."""

    t0 = time.perf_counter()
    geo_cfg = nvs_run.geometry_config_name(cfg_name)
    geo = _load_model_checked(geometry_checkpoint, _resolve_config(geo_cfg), dev, param_dtype)
    K, src, more = nvs_run.estimate_intrinsics(x01, geo, dev)
    del geo
    timings["intrinsics"] = time.perf_counter() - t0
    fx = ", ".join(f"{float(k[0, 0]):.1f}" for k in K)
    _say(f"      intrinsics {src}: fx = fy = {fx} px")
    notes += [f"NVS intrinsics {src}: fx = fy = {fx} px"] + more
    return K, src


def _write_scene_files(out, P, C, c2w, Ks, x01, stems, g, title):
    """``scene.html`` (offline 3D page, :mod:`flare_nb.scene_page`) and ``scene.glb`` (:mod:`flare_nb.glb`)."""

    H, W = x01.shape[-2:]
    write_scene_page(out / "scene.html", P, C, c2w, Ks, x01, stems, g["means"], title=title)
    write_scene_glb(out / "scene.glb", P, C, c2w, Ks, (H, W))


def _files(out: Path) -> dict:
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}


@dataclass
class RunReport:
    """What ``report.md`` says about one run (:meth:`write`)."""
    title: str
    out: Path
    photos: list              #: the readable input photos, in input order
    order: list               #: input index of each view (the reference view first)
    stems: list               #: the file name each view is written under, in view order
    src_sizes: list           #: (W, H) of each photo as stored, in input order
    weights: str              #: ``model.weights_label``
    weights_random: bool
    config: str
    device: str
    autocast: str
    size: tuple               #: (W, H) of the model input
    focal: float
    focal_source: str
    pose_source: str
    n_points: int
    conf_threshold: float
    n_gaussians: int
    gaussian_source: str
    reference: int            #: input index of the reference view
    reference_how: str
    scores: object            #: per-photo reference-view similarity (input order) or None
    timings: dict
    notes: list
    intrinsics_source: str = "estimated"   #: "given", "EXIF" or "estimated"
    camera_lines: list = None              #: the camera rule, the PnP settings and what they gave

    def write(self) -> Path:
        """Write ``out/report.md`` (it lists itself among the files) and return its path."""
        W, H = self.size
        L = [f"# {self.title}", ""]
        if self.weights_random:
            L += ["> **RANDOM WEIGHTS.** No trained checkpoint was found or given, so the cameras, points and",
                  "> Gaussians below show the data flow and file formats only; they are not a reconstruction.", ""]
        L += [f"* weights: {self.weights} (config `{self.config}`)", f"* device: {self.device} (autocast {self.autocast})",
              f"* views: {len(self.photos)} at {W}x{H} (WxH)", f"* focal: {self.focal:.2f} px ({self.focal_source})",
              f"* intrinsics: {self.intrinsics_source}",
              f"* cameras: {self.pose_source}", f"* points: {self.n_points} ({conf_threshold_text(self.conf_threshold)})",
              f"* Gaussians: {self.n_gaussians}, from {self.gaussian_source}", "",
              "## Views", "", f"Reference view: input {self.reference} ({self.photos[self.reference].name}), "
              f"{self.reference_how}.", "",
              "| view | input | file | source size | similarity |", "|---|---|---|---|---|"]
        for k, i in enumerate(self.order):
            sim = "" if self.scores is None else f"{float(self.scores[i]):.3f}"
            L.append(f"| {k} | {i} | `{self.stems[k]}` (from `{self.photos[i].name}`) | "
                     f"{'x'.join(map(str, self.src_sizes[i]))} | {sim} |")
        if self.camera_lines:
            L += ["", "## Cameras", ""] + [f"* {c}" for c in self.camera_lines]
        L += ["", "## Confidence threshold", "", CONF_THRESHOLD_HELP.replace("Q", f"Q = {self.conf_threshold:g}", 1)]
        L += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
        L += [f"| {k} | {v:.3f} |" for k, v in self.timings.items()]
        if self.notes:
            L += ["", "## Notes", ""] + [f"* {n}" for n in self.notes]
        L += ["", "## Files", "", "| file | size |", "|---|---|"]
        path = self.out / "report.md"
        path.write_text("\n".join(L) + "\n")     # first pass, so report.md lists itself
        L += [f"| `{k}` | {_human(v)} |" for k, v in _files(self.out).items()]
        L += ["", "Conventions: `cameras.json` camera-to-world, OpenCV axes, K with OpenCV pixel centres; "
              "`sparse/0` COLMAP text (world-to-camera, +0.5 px principal point); `transforms.json` nerfstudio "
              "(OpenGL camera-to-world). World frame = view 0's camera frame."]
        path.write_text("\n".join(L) + "\n")
        return path
