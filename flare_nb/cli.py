"""The ``flare-nb`` command: FLARE on your own photos, with standard exports (notebook 08).

::

    flare-nb demo [--out flare_nb_demo]          # the bundled room scene (data/real/room)
    flare-nb reconstruct PHOTOS_OR_FOLDER --out DIR [--checkpoint PATH] [--config tiny|official_geometry]
             [--size 512x384] [--device auto] [--ref-view auto|N|NAME] [--conf-threshold Q] [--force]
             [--poses transforms.json|COLMAP_MODEL_DIR]

Pipeline (each step timed and printed): collect the photos (non-images and unreadable files
skipped with a warning; more than ``--max-views`` are subsampled evenly) -> load the model
(``flare_nb.inference.load_model``; RANDOM weights are announced loudly) -> memory check
(:func:`estimate_memory_bytes`) -> preprocess (EXIF orientation, 16-bit / grayscale / RGBA,
official resize + centre crop, ``flare_nb.preprocess``) -> choose the reference view
(:mod:`flare_nb.reference_view`) and put it first -> ``flare_nb.inference.reconstruct``
(pose heads, pointmaps, focal, PnP cameras as the released demo) -> exports
(:mod:`flare_nb.export`): ``cameras.json``, ``sparse/0/`` (COLMAP text), ``transforms.json``,
``points.ply``, ``gaussians.ply``, ``renders/``, ``summary.png``, ``images/``, ``report.md``.

Cameras written: the demo's PnP cameras and the focal from view 0's global pointmap when they
could be computed (they share the pointmap's frame and units); otherwise the refined
pose-head cameras and, without a focal, a 60-degree field of view -- each fallback is noted
in ``cameras.json`` ("pose_source", "focal_source") and in ``report.md``.

Errors (bad input, missing checkpoint, existing output folder, too little memory, ...) print
one line ``flare-nb: error: ...`` and exit with status 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch

__all__ = ["main", "build_parser", "collect_images", "parse_size", "estimate_memory_bytes", "check_memory",
           "run", "default_size", "MEMORY_MODEL", "read_poses", "match_poses"]

DEFAULT_MAX_VIEWS = 8          # FLARE is trained on 2-8 views
DEMO_VIEWS = 8
FALLBACK_FOV_DEG = 60.0
CPU_RENDER_MAX_GAUSSIANS = 40_000   # the CPU rasterizer renders a thinned preview beyond this
OUR_FILES = ("cameras.json", "transforms.json", "points.ply", "gaussians.ply", "summary.png", "renders.png",
             "report.md")


class CliError(Exception):
    """An error whose message is shown to the user as is (one line, no traceback)."""


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _warn(msg: str) -> None:
    print(f"flare-nb: warning: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs
def parse_size(text: str) -> tuple[int, int]:
    """``"512x384"`` -> ``(512, 384)`` (W, H), both positive multiples of 64 (``"256"`` = square)."""
    from .preprocess import check_size

    parts = str(text).lower().replace("*", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--size must look like 512x384 (width x height), got {text!r}") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2:
        raise ValueError(f"--size must look like 512x384 (width x height), got {text!r}")
    return check_size(*nums)


def default_size(config: str) -> tuple[int, int]:
    """The model's native input size (W, H): 128x128 for the tiny model (its training size),
    512x384 for the released models."""
    return (128, 128) if config.startswith("tiny") else (512, 384)


def collect_images(inputs, max_views: int = DEFAULT_MAX_VIEWS) -> tuple[list[Path], list[str]]:
    """Image files from ``inputs`` (one folder, or files and folders), and warnings.

    Folders are listed (not recursively, hidden files ignored) and sorted by name; files
    whose extension is not an image type are skipped with a warning. More than
    ``max_views`` images are subsampled evenly (first and last kept), with a warning; the
    files are not decoded here. Raises FileNotFoundError for a missing path and ValueError
    when fewer than 2 images are found.
    """
    from .preprocess import IMAGE_EXTENSIONS

    if isinstance(max_views, bool) or not isinstance(max_views, int) or max_views < 2:
        raise ValueError(f"--max-views must be an integer >= 2, got {max_views!r}")
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("no input given: pass a folder of photos or at least 2 image files")
    files = []
    for p in inputs:
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
        else:
            files.append(p)
    images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
    other = [f for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS]
    where = str(inputs[0]) if len(inputs) == 1 else f"the {len(inputs)} inputs"
    warns = []
    if other:
        names = ", ".join(f.name for f in other[:5]) + (", ..." if len(other) > 5 else "")
        warns.append(f"skipping {len(other)} file(s) that are not images ({names}); expected "
                     f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}")
    if not images:
        raise ValueError(f"no images found in {where}" + (f" (only {len(other)} non-image file(s))" if other else "")
                         + "; expected at least 2 photos (JPEG, PNG, ...)")
    if len(images) < 2:
        raise ValueError(f"FLARE needs at least 2 photos of the scene, found 1 image in {where}: {images[0]}")
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
    import json as _json

    from .cameras import invert_pose, opengl_to_opencv

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--poses: no such file or folder: {path}")
    js = path / "transforms.json" if path.is_dir() else path
    if js.is_file():
        try:
            meta = _json.loads(js.read_text())
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


def _decode_all(paths) -> tuple[list[Path], list[str], list[str]]:
    """Decode every file once; unreadable ones are dropped with a warning. Returns
    ``(good paths, warnings, error messages)``."""
    from .preprocess import load_image

    good, warns, errors = [], [], []
    for p in paths:
        try:
            load_image(p)
            good.append(p)
        except (ValueError, OSError) as e:
            errors.append(str(e))
    if errors:
        warns.append(f"skipping {len(errors)} unreadable image(s): " + " | ".join(errors[:3])
                     + (" | ..." if len(errors) > 3 else ""))
    return good, warns, errors


# ----------------------------------------------------------------------------- memory guard
#: Peak memory model of one reconstruction (bytes), ``estimate_memory_bytes``:
#:
#: * ``base`` (the Python process with torch loaded, ~320 MB measured) + weights
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
MEMORY_MODEL = {"a": 12.0, "b": 3.0, "c": 0.0, "e": 200.0, "base": 350e6}


def estimate_memory_bytes(cfg, n_params: int, V: int, H: int, W: int, device: str = "cpu") -> float:
    """Estimated peak memory (bytes) of a reconstruction of ``V`` views of ``H x W`` with a model
    of config ``cfg`` (:data:`MEMORY_MODEL`)."""
    m = MEMORY_MODEL
    N = (H // cfg.patch_size) * (W // cfg.patch_size)
    width = max(cfg.enc_dim, int(cfg.dec_dim * cfg.dec_mlp_ratio))
    weights = n_params * 4 * (1.5 if str(device).startswith("cuda") else 1.0)
    tokens = m["a"] * V * N * width * 4
    attention = m["c"] * max(cfg.enc_heads, cfg.dec_heads) * (V * N) ** 2 * 4
    pixels = m["b"] * V * H * W * cfg.dpt_feature_dim * 4 + m["e"] * V * H * W
    return m["base"] + weights + tokens + attention + pixels


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


def check_memory(cfg, n_params: int, V: int, size, device) -> tuple[float, float | None]:
    """Refuse (ValueError) when the estimate exceeds the free memory, saying how many views
    and which size would fit. Returns ``(estimate, available)`` in bytes."""
    W, H = size
    need = estimate_memory_bytes(cfg, n_params, V, H, W, device)
    have = available_memory_bytes(device)
    if have is None or need <= have:
        return need, have
    fit_v = max((v for v in range(2, V) if estimate_memory_bytes(cfg, n_params, v, H, W, device) <= have), default=None)
    fit_s = None
    for k in range(1, 64):
        w, h = W - 64 * k, round((W - 64 * k) * H / W / 64) * 64
        if w < 64 or h < 64:
            break
        if estimate_memory_bytes(cfg, n_params, V, h, w, device) <= have:
            fit_s = (w, h)
            break
    hints = []
    if fit_v:
        hints.append(f"at most {fit_v} views at {W}x{H} (--max-views {fit_v})")
    if fit_s:
        hints.append(f"{V} views at --size {fit_s[0]}x{fit_s[1]}")
    hint = " or ".join(hints) if hints else "even 2 views of 64x64 do not fit; free some memory"
    raise ValueError(f"not enough memory on {device}: {V} views of {W}x{H} need about {need / 1e9:.1f} GB, "
                     f"{have / 1e9:.1f} GB free; would fit: {hint}")


# ----------------------------------------------------------------------------- output folder
def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, expected a folder (new or empty)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"output folder {out} already exists and is not empty; pass --force to overwrite "
                         "it or choose another --out")


def _prepare_out(out: Path, force: bool) -> None:
    _check_out(out, force)
    if out.is_dir() and any(out.iterdir()):
        for name in OUR_FILES:                     # remove only what a previous run wrote
            (out / name).unlink(missing_ok=True)
        for sub, pattern in (("images", "[0-9][0-9][0-9]_*"), ("renders", "view_*.png"),
                             ("sparse/0", "*.txt")):
            for f in (out / sub).glob(pattern):
                f.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ----------------------------------------------------------------------------- the run
def run(inputs, out, checkpoint=None, config="tiny", size=None, device="auto", ref_view="auto",
        conf_threshold: float = 0.5, force: bool = False, max_views: int = DEFAULT_MAX_VIEWS,
        pnp_iterations: int = 10_000, render: bool = True, title: str = "flare-nb reconstruct",
        poses=None) -> dict:
    """The whole ``flare-nb reconstruct`` (module docstring); returns a dict with ``files``
    ({name: bytes}), ``timings`` (seconds per stage), ``order`` (input index of each view),
    ``weights_random`` and ``out``. Raises ValueError / FileNotFoundError on bad input.

    ``poses``: optional ``--poses`` file or folder (:func:`read_poses`), one camera-to-world
    pose per photo matched by file name; passed to ``reconstruct(camera_poses=...)``, the
    release's known-pose mode."""
    from . import export, reference_view
    from .device import resolve_device
    from .inference import load_model, reconstruct, resolve_config
    from .preprocess import check_one_orientation, load_image, load_images

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    out = Path(out)
    if not 0.0 <= float(conf_threshold) < 1.0:
        raise ValueError(f"--conf-threshold must be a fraction in [0, 1) of the least confident pixels to drop, "
                         f"got {conf_threshold}")
    cfg = resolve_config(config)
    cfg_name = config if isinstance(config, str) else "custom"
    size = default_size(cfg_name) if size is None else tuple(size)
    dev = resolve_device(device)

    # 1. photos
    t0 = time.perf_counter()
    paths, warns = collect_images(inputs, max_views)
    good, w2, errors = _decode_all(paths)
    for w in warns + w2:
        _warn(w)
        notes.append(w)
    if len(good) < 2:
        detail = errors[0] if errors else "no readable image"
        raise ValueError(f"need at least 2 readable photos, got {len(good)} of {len(paths)}: {detail}")
    given = None
    if poses is not None:
        from .model import check_camera_poses

        given = match_poses(read_poses(poses), good, poses)
        try:
            check_camera_poses(given, 1, len(good))
        except ValueError as e:
            raise ValueError(f"--poses {poses}: {e}") from None
    _check_out(out, force)
    timings["collect_and_decode"] = time.perf_counter() - t0
    _say(f"[1/6] {len(good)} photos: {', '.join(p.name for p in good)}")

    # 2. model
    t0 = time.perf_counter()
    ckpt = None if checkpoint in (None, "") else Path(checkpoint)
    if ckpt is not None and not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    try:
        model = load_model(ckpt, cfg, device=dev)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # unpickling errors, torch's RuntimeError on a non-zip file, ...
        raise ValueError(f"{ckpt} is not a FLARE checkpoint (could not be read: {type(e).__name__}: {e})") from None
    timings["load_model"] = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    random_w = bool(getattr(model, "weights_random", False))
    _say(f"[2/6] model {cfg_name} ({n_params / 1e6:.2f} M parameters) on {dev}: {model.weights_label}")
    if random_w:
        _say("*" * 78 + "\n*** RANDOM WEIGHTS: no trained checkpoint was found or given. The outputs show the\n"
             "*** data flow and file formats only; cameras and points are NOT a reconstruction.\n" + "*" * 78)

    # 3. memory guard + preprocessing + reference view
    need, have = check_memory(cfg, n_params, len(good), size, dev)
    t0 = time.perf_counter()
    wh = []
    for p in good:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wh.append(load_image(p).size)
    check_one_orientation([p.name for p in good], wh, size)
    x01, _, info = load_images(good, size=size)
    timings["preprocess"] = time.perf_counter() - t0
    H, W = x01.shape[-2:]
    t0 = time.perf_counter()
    if str(ref_view) == "auto":
        ref, scores = reference_view.choose_reference_view(x01)
        how = "auto (most central by colour-histogram + thumbnail similarity)"
    else:
        names = [p.name for p in good]
        if str(ref_view) in names:
            ref = names.index(str(ref_view))
        else:
            try:
                ref = int(ref_view)
            except ValueError:
                raise ValueError(f"--ref-view must be 'auto', a view index 0..{len(good) - 1} or one of the "
                                 f"file names {names}, got {ref_view!r}") from None
        scores = None
        how = "given"
    order = reference_view.reference_order(len(good), ref)
    x01 = x01[order]
    timings["reference_view"] = time.perf_counter() - t0
    _say(f"[3/6] preprocessed to {W}x{H} (WxH); reference view: {good[ref].name} (input {ref}, {how}); "
         f"memory estimate {need / 1e9:.2f} GB" + (f" of {have / 1e9:.1f} GB free" if have else ""))

    # 4. FLARE
    _say(f"[4/6] running FLARE on {len(good)} views ...")
    if given is not None:
        if cfg.kind != "geometry":
            raise ValueError("--poses works with the geometry model only")
        _say(f"      camera poses given ({poses}): they replace the predicted poses in stages 2 and 3")
        notes.append(f"camera poses given from {poses} (the release's known-pose mode); the pose heads still "
                     "run and the exported cameras are solved from the pointmaps as usual")
    rec = reconstruct(model, x01, device=dev, pnp_iterations=pnp_iterations,
                      camera_poses=None if given is None else given[order])
    for k, v in rec.timings.items():
        if k != "preprocess":
            timings[k] = v
    notes += rec.notes
    _say("      " + ", ".join(f"{k} {v:.2f} s" for k, v in rec.timings.items() if k != "preprocess"))

    # cameras: demo's focal + PnP if possible, else fallbacks
    focal_source = "view 0's global pointmap (FLARE demo)"
    K = rec.K
    if K is None:
        from . import cameras as cams
        try:
            f = cams.estimate_focal(rec.pts3d_cam[0])
            K = cams.intrinsics_from_focal(f, H, W)
            focal_source = "view 0's camera-centric pointmap (fallback: the global one gave no focal)"
        except ValueError:
            K = export.fov_K(H, W, FALLBACK_FOV_DEG)
            focal_source = f"none could be estimated: {FALLBACK_FOV_DEG:.0f} degree field of view assumed"
        notes.append(f"focal: {focal_source}")
    if rec.c2w_pnp is not None:
        c2w, pose_source = rec.c2w_pnp, "pnp (FLARE demo: PnP-RANSAC on the global pointmaps)"
    else:
        c2w, pose_source = rec.c2w_refined, "refined pose head (PnP not available; translation in the network's units)"
        notes.append(f"poses: {pose_source}")
    Ks = K.expand(len(good), 3, 3)

    # 5. exports
    _say("[5/6] writing files ...")
    _prepare_out(out, force)
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
                 "file": str(poses), "c2w_relative_to_view0": [export._mat(m) for m in rec.c2w_given]},
             "pose_head": {"coarse_c2w": [export._mat(m) for m in rec.c2w_coarse],
                                           "refined_c2w": [export._mat(m) for m in rec.c2w_refined]},
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
        g = export.gaussians_from_pointmap(rec.pts3d_global, x01, mask, c2w, Ks)
        g_source = ("no Gaussian head in this model: one isotropic Gaussian per confident pixel, "
                    "sigma = pixel footprint z / f, opacity 0.9, SH DC = pixel colour")
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
    timings["total"] = time.perf_counter() - t_all

    result = {"out": out, "timings": timings, "order": order, "weights_random": random_w,
              "n_points": len(P), "focal": float(K[0, 0]), "size": (W, H)}
    _write_report(out, title, result, good, order, stems, rec, model.weights_label, random_w, cfg_name, pose_source,
                  focal_source, g_source, len(g["means"]), how, ref, scores, conf_threshold, notes, dev, info)
    result["files"] = _files(out)
    _say("[6/6] done: " + str(out))
    for name, n in result["files"].items():
        _say(f"      {name:34s} {_human(n):>10s}")
    _say("      time per stage: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    if random_w:
        _say("*** RANDOM WEIGHTS were used: the files above are NOT a reconstruction (see report.md).")
    return result


def _files(out: Path) -> dict:
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}


def _write_report(out, title, result, good, order, stems, rec, label, random_w, cfg_name, pose_source, focal_source,
                  g_source, n_gauss, how, ref, scores, conf_threshold, notes, dev, info) -> None:
    W, H = result["size"]
    L = [f"# {title}", ""]
    if random_w:
        L += ["> **RANDOM WEIGHTS.** No trained checkpoint was found or given, so the cameras, points and",
              "> Gaussians below show the data flow and file formats only; they are not a reconstruction.", ""]
    L += [f"* weights: {label} (config `{cfg_name}`)", f"* device: {dev} (autocast {rec.autocast})",
          f"* views: {len(good)} at {W}x{H} (WxH)", f"* focal: {result['focal']:.2f} px ({focal_source})",
          f"* cameras: {pose_source}", f"* points: {result['n_points']} (least confident {conf_threshold:.0%} "
          "of each view's pixels dropped)", f"* Gaussians: {n_gauss}, from {g_source}", "",
          "## Views", "", f"Reference view: input {ref} ({good[ref].name}), {how}.", "",
          "| view | input | file | source size | similarity |", "|---|---|---|---|---|"]
    for k, i in enumerate(order):
        sim = "" if scores is None else f"{float(scores[i]):.3f}"
        L.append(f"| {k} | {i} | `{stems[k]}` (from `{good[i].name}`) | "
                 f"{'x'.join(map(str, info[i]['src_size']))} | {sim} |")
    L += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
    L += [f"| {k} | {v:.3f} |" for k, v in result["timings"].items()]
    if notes:
        L += ["", "## Notes", ""] + [f"* {n}" for n in notes]
    L += ["", "## Files", "", "| file | size |", "|---|---|"]
    (out / "report.md").write_text("\n".join(L) + "\n")     # first pass, so report.md lists itself
    files = _files(out)
    L += [f"| `{k}` | {_human(v)} |" for k, v in files.items()]
    L += ["", "Conventions: `cameras.json` camera-to-world, OpenCV axes, K with OpenCV pixel centres; "
          "`sparse/0` COLMAP text (world-to-camera, +0.5 px principal point); `transforms.json` nerfstudio "
          "(OpenGL camera-to-world). World frame = view 0's camera frame."]
    (out / "report.md").write_text("\n".join(L) + "\n")


# ----------------------------------------------------------------------------- argparse
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flare-nb", description="FLARE: poses, pointmaps and Gaussians from 2-8 "
                                "uncalibrated photos, exported as COLMAP / nerfstudio / PLY files.")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="{demo,reconstruct}")

    def common(q, out_default):
        q.add_argument("--out", default=out_default, help="output folder (new or empty; see --force)")
        q.add_argument("--checkpoint", default=None, help="FLARE checkpoint (.pth/.pt/.safetensors); default: "
                       "data/checkpoints/tiny_geometry.pt for the tiny model, else random weights")
        q.add_argument("--config", default="tiny", choices=["tiny", "official_geometry"],
                       help="model size: tiny (default) or official_geometry (the released model)")
        q.add_argument("--size", default=None, help="input size WxH, multiples of 64 (default: the model's "
                       "native size, 128x128 tiny, 512x384 official)")
        q.add_argument("--device", default="auto", help="auto | cpu | cuda")
        q.add_argument("--ref-view", default="auto", help="reference view: auto, an index or a file name")
        q.add_argument("--conf-threshold", type=float, default=0.5, metavar="Q",
                       help="drop the least confident fraction Q of each view's pixels (default 0.5)")
        q.add_argument("--max-views", type=int, default=DEFAULT_MAX_VIEWS,
                       help=f"subsample more photos than this evenly (default {DEFAULT_MAX_VIEWS})")
        q.add_argument("--pnp-iterations", type=int, default=10_000, help="RANSAC iterations of the PnP cameras")
        q.add_argument("--no-render", action="store_true", help="skip rendering the Gaussians")
        q.add_argument("--force", action="store_true", help="overwrite the files of an existing output folder")

    d = sub.add_parser("demo", help="reconstruct the bundled room scene (data/real/room)")
    common(d, "flare_nb_demo")
    d.add_argument("--views", type=int, default=DEMO_VIEWS, help=f"how many of the 8 room photos (default {DEMO_VIEWS})")
    r = sub.add_parser("reconstruct", help="reconstruct your own photos")
    r.add_argument("images", nargs="+", help="a folder of photos, or 2-8 image files")
    r.add_argument("--poses", default=None, metavar="FILE",
                   help="known camera poses: a transforms.json or a COLMAP model folder, matched to the "
                        "photos by file name (the release's known-pose mode)")
    common(r, None)
    return p


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).replace(":\n- ", ": ").replace("\n- ", "; ").split())
    return msg if len(msg) <= 600 else msg[:597] + "..."


def main(argv=None) -> int:
    """Entry point of ``flare-nb``; returns the exit status (0 ok, 2 error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        kw = dict(checkpoint=args.checkpoint, config=args.config, device=args.device, ref_view=args.ref_view,
                  conf_threshold=args.conf_threshold, force=args.force, max_views=args.max_views,
                  pnp_iterations=args.pnp_iterations, render=not args.no_render)
        kw["size"] = None if args.size is None else parse_size(args.size)
        if args.command == "demo":
            from . import data_dir

            room = data_dir() / "real" / "room"
            if not 2 <= args.views <= 8:
                raise ValueError(f"--views must be between 2 and 8 (the room scene has 8 photos), got {args.views}")
            photos = sorted(p for p in room.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:args.views]
            run(photos, args.out, title="flare-nb demo: data/real/room", **kw)
        else:
            if args.out is None:
                raise ValueError("reconstruct needs --out DIR (a new or empty folder)")
            run(args.images, args.out, poses=args.poses, **kw)
    except KeyboardInterrupt:
        print("flare-nb: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error becomes one line unless --debug
        if args.debug:
            raise
        kind = "" if isinstance(e, (ValueError, FileNotFoundError, CliError)) else f"{type(e).__name__}: "
        print(f"flare-nb: error: {kind}{_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # python -m flare_nb.cli
    sys.exit(main())
