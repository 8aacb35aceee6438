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
``points.ply``, ``gaussians.ply``, ``renders/``, ``summary.png``, ``images/``, ``report.md``.

Cameras written: the demo's PnP cameras and the focal from view 0's global pointmap when they
could be computed (they share the pointmap's frame and units); otherwise the refined
pose-head cameras and, without a focal, a 60-degree field of view -- each fallback is noted
in ``cameras.json`` ("pose_source", "focal_source") and in ``report.md``.

Bad input (unreadable photos, missing checkpoint, existing output folder, too little memory,
...) raises ValueError / FileNotFoundError / :class:`CliError` with a one-line message.
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from flare_nb import export
from flare_nb.device import resolve_device
from flare_nb.inference import load_model, reconstruct, resolve_config
from flare_nb.scenes import reference_view
from flare_nb.scenes.preprocess import (IMAGE_EXTENSIONS, load_image,
                                        load_images, oriented_size)

__all__ = ["reconstruct_to_folder", "RunReport", "collect_images", "estimate_memory_bytes", "check_memory",
           "default_size", "MEMORY_MODEL", "CliError", "DEFAULT_MAX_VIEWS"]

DEFAULT_MAX_VIEWS = 8          # FLARE is trained on 2-8 views
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


def _decode_all(paths) -> tuple[list[Path], list[str], list[str]]:
    """Decode every file once; unreadable ones are dropped with a warning. Returns
    ``(good paths, warnings, error messages)``."""

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
def reconstruct_to_folder(inputs, out, checkpoint=None, config="tiny", size=None, device="auto", ref_view="auto",
        conf_threshold: float = 0.5, force: bool = False, max_views: int = DEFAULT_MAX_VIEWS,
        pnp_iterations: int = 10_000, render: bool = True, title: str = "flare-nb reconstruct") -> dict:
    """The whole ``flare-nb reconstruct`` (module docstring); returns a dict with ``files``
    ({name: bytes}), ``timings`` (seconds per stage), ``order`` (input index of each view),
    ``weights_random``, ``out`` and ``report`` (the :class:`RunReport` written to ``report.md``).
    Raises ValueError / FileNotFoundError on bad input."""

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
    auto_orient = len({oriented_size(size, s) for s in wh}) == 1
    if not auto_orient:
        msg = f"the photos mix portrait and landscape; all are centre-cropped to {size[0]}x{size[1]}"
        _warn(msg)
        notes.append(msg)
    x01, _, info = load_images(good, size=size, auto_orient=auto_orient)
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
    rec = reconstruct(model, x01, device=dev, pnp_iterations=pnp_iterations)
    for k, v in rec.timings.items():
        if k != "preprocess":
            timings[k] = v
    notes += rec.notes
    _say("      " + ", ".join(f"{k} {v:.2f} s" for k, v in rec.timings.items() if k != "preprocess"))

    # cameras: the demo's focal + PnP if possible, else the fallbacks (export.export_cameras)
    chosen = export.export_cameras(rec)
    c2w, Ks, pose_source, focal_source = chosen["c2w"], chosen["K"], chosen["pose_source"], chosen["focal_source"]
    K = Ks[0]
    notes += chosen["notes"]

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
             "order": order, "pose_head": {"coarse_c2w": [export.matrix_list(m) for m in rec.c2w_coarse],
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
    timings["total"] = time.perf_counter() - t_all

    result = {"out": out, "timings": timings, "order": order, "weights_random": random_w,
              "n_points": len(P), "focal": float(K[0, 0]), "size": (W, H)}
    report = RunReport(title=title, out=out, photos=good, order=order, stems=stems,
                       src_sizes=[d["src_size"] for d in info], weights=model.weights_label,
                       weights_random=random_w, config=cfg_name, device=str(dev), autocast=str(rec.autocast),
                       size=(W, H), focal=float(K[0, 0]), focal_source=focal_source, pose_source=pose_source,
                       n_points=len(P), conf_threshold=conf_threshold, n_gaussians=len(g["means"]),
                       gaussian_source=g_source, reference=ref, reference_how=how, scores=scores, timings=timings,
                       notes=notes)
    report.write()
    result["report"] = report
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

    def write(self) -> Path:
        """Write ``out/report.md`` (it lists itself among the files) and return its path."""
        W, H = self.size
        L = [f"# {self.title}", ""]
        if self.weights_random:
            L += ["> **RANDOM WEIGHTS.** No trained checkpoint was found or given, so the cameras, points and",
                  "> Gaussians below show the data flow and file formats only; they are not a reconstruction.", ""]
        L += [f"* weights: {self.weights} (config `{self.config}`)", f"* device: {self.device} (autocast {self.autocast})",
              f"* views: {len(self.photos)} at {W}x{H} (WxH)", f"* focal: {self.focal:.2f} px ({self.focal_source})",
              f"* cameras: {self.pose_source}", f"* points: {self.n_points} (least confident "
              f"{self.conf_threshold:.0%} of each view's pixels dropped)",
              f"* Gaussians: {self.n_gaussians}, from {self.gaussian_source}", "",
              "## Views", "", f"Reference view: input {self.reference} ({self.photos[self.reference].name}), "
              f"{self.reference_how}.", "",
              "| view | input | file | source size | similarity |", "|---|---|---|---|---|"]
        for k, i in enumerate(self.order):
            sim = "" if self.scores is None else f"{float(self.scores[i]):.3f}"
            L.append(f"| {k} | {i} | `{self.stems[k]}` (from `{self.photos[i].name}`) | "
                     f"{'x'.join(map(str, self.src_sizes[i]))} | {sim} |")
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
