"""Classical baseline: COLMAP structure-from-motion through pycolmap, uncalibrated (notebook 07).

:func:`colmap_poses` runs the textbook pipeline on a handful of images, with nothing known
about the camera -- the same input FLARE gets:

1. the images are written as PNG files (no EXIF, so COLMAP cannot read a focal from them);
2. SIFT features on the CPU (``pycolmap.extract_features``), one camera shared by all views
   (``CameraMode.SINGLE``), model ``SIMPLE_RADIAL`` (``f, cx, cy, k``) or ``SIMPLE_PINHOLE``
   (``f, cx, cy``), focal unknown: COLMAP's prior is ``1.2 * max(W, H)``, then refined;
3. exhaustive matching with geometric verification (``pycolmap.match_exhaustive``);
4. incremental mapping (``pycolmap.incremental_mapping``); the reconstruction with the most
   registered images (then the most 3D points) is kept.

Views COLMAP could not register (too few matches, or outside the kept reconstruction) are
reported, never dropped: their rows of ``c2w`` and ``K`` are NaN and ``registered`` is False.
:func:`flare_nb.eval.evaluate.evaluate_poses` counts every pair touching such a view as a failure.

Conventions (README "Conventions"): COLMAP stores ``cam_from_world`` (world-to-camera, OpenCV
axes, the same axes as ours) and puts the top-left pixel centre at (0.5, 0.5). The pose is
inverted with :func:`flare_nb.cameras.invert_pose` into our camera-to-world ``c2w``, and ``K``
is shifted by -0.5 px with :func:`flare_nb.cameras.opencv_K`. The radial distortion ``k`` of
``SIMPLE_RADIAL`` is not part of ``K`` (pinhole); it is returned in ``extra`` for inspection.

Deterministic: ``pycolmap.set_random_seed(seed)``, every ``random_seed`` option set to
``seed`` and every ``num_threads`` option set to 1 (same input + seed -> identical poses).
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flare_nb.cameras import invert_pose, opencv_K
from flare_nb.scenes.preprocess import load_images

__all__ = ["BaselineResult", "colmap_poses", "CAMERA_MODELS"]

CAMERA_MODELS = ("SIMPLE_RADIAL", "SIMPLE_PINHOLE")  # one focal, principal point, (radial k)


@dataclass
class BaselineResult:
    """What a pose baseline returns for ``V`` input views.

    * ``c2w``        float32 ``(V, 4, 4)`` camera-to-world, OpenCV axes, in the baseline's own
      world frame and scale (align with :func:`flare_nb.cameras.align_trajectories` before
      comparing absolute poses); rows of unregistered views are NaN;
    * ``registered`` bool ``(V,)``;
    * ``K``          float32 ``(V, 3, 3)`` estimated intrinsics in pixels of the input images,
      OpenCV pixel centres; NaN for unregistered views;
    * ``n_points``   number of triangulated 3D points of the kept reconstruction (0 if none);
    * ``time_s``     wall time of the whole run (writing images, features, matching, mapping);
    * ``points``     float32 ``(n_points, 3)`` the 3D points in the same world frame as ``c2w``;
    * ``model_dir``  folder of the kept COLMAP model when ``work_dir`` was given, else None;
    * ``extra``      dict: ``camera_model``, ``params`` (COLMAP's camera parameters),
      ``n_reconstructions``, ``mean_reprojection_error`` (px).
    """
    c2w: torch.Tensor
    registered: torch.Tensor
    K: torch.Tensor
    n_points: int
    time_s: float
    points: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3))
    model_dir: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_registered(self) -> int:
        return int(self.registered.sum())


def _as_images(images) -> torch.Tensor:
    """``(V, 3, H, W)`` float in [0, 1] from a tensor / array or a list of image paths."""
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, Path)):

        missing = [str(p) for p in images if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"colmap_poses: no such image file(s): {', '.join(missing)}")
        images, _, _ = load_images(list(images), None)
        return images
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"colmap_poses: images must be a (V, 3, H, W) tensor in [0, 1] or a list of "
                        f"image paths, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"colmap_poses: images must be (V, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"colmap_poses: images must be float in [0, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ValueError("colmap_poses: image values must be finite and in [0, 1] "
                         f"(got min {float(images.min()):.3g}, max {float(images.max()):.3g})")
    return images


def _write_pngs(images: torch.Tensor, folder: Path) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, im in enumerate(images):
        a = (im.detach().cpu().float().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        name = f"{i:04d}.png"
        Image.fromarray(a).save(folder / name)
        names.append(name)
    return names


@contextlib.contextmanager
def _colmap_log_level(level: int):
    """Silence glog below ``level`` (0 info, 1 warning, 2 error) for the duration."""
    import pycolmap

    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = level
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def _options(seed: int, camera_model: str):
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model          # focal prior 1.2 max(W, H): no EXIF in our PNGs
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = 1
    extraction.use_gpu = False
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = 1
    matching.use_gpu = False
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = seed
    verification.ransac.num_threads = 1
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = 1
    mapping.random_seed = seed
    mapping.mapper.num_threads = 1
    mapping.mapper.random_seed = seed
    mapping.triangulation.random_seed = seed
    mapping.ba_refine_principal_point = False   # COLMAP's default: keep it at the image centre
    return reader, extraction, matching, verification, mapping


def colmap_poses(images, work_dir=None, seed: int = 0, camera_model: str = "SIMPLE_RADIAL",
                 verbose: bool = False) -> BaselineResult:
    """Uncalibrated COLMAP (SIFT + exhaustive matching + incremental mapping) on ``V`` views.

    Args:
        images: float ``(V, 3, H, W)`` in [0, 1] (e.g. ``Scene.images``), or a list of ``V``
            image paths of one size (decoded with :func:`flare_nb.scenes.preprocess.load_images`).
        work_dir: folder to keep COLMAP's files in (``images/``, ``database.db``, ``sparse/``);
            ``None`` uses a temporary folder that is deleted afterwards. An existing
            ``database.db`` there is replaced.
        seed: seed of every random choice (RANSAC, mapper); with 1 thread the output is
            identical for identical input.
        camera_model: ``"SIMPLE_RADIAL"`` (COLMAP's default) or ``"SIMPLE_PINHOLE"``; one
            camera shared by all views, focal unknown.
        verbose: let COLMAP print its log (otherwise silent: failures show in the result).

    Returns:
        :class:`BaselineResult`: ``c2w (V, 4, 4)`` OpenCV camera-to-world with NaN rows for
        unregistered views, ``registered (V,)``, ``K (V, 3, 3)``, ``n_points``, ``time_s``.
        Notebook 07.
    """
    import pycolmap


    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"colmap_poses: camera_model must be one of {CAMERA_MODELS}, got {camera_model!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"colmap_poses: seed must be a non-negative int, got {seed!r}")
    t0 = time.perf_counter()
    images = _as_images(images)
    V, _, H, W = images.shape
    if V < 2:
        raise ValueError(f"colmap_poses: structure from motion needs at least 2 views, got {V}")

    tmp = None
    if work_dir is None:
        tmp = tempfile.mkdtemp(prefix="flare_nb_colmap_")
        root = Path(tmp)
    else:
        root = Path(work_dir)
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(f"colmap_poses: work_dir {root} is a file, expected a folder")
        root.mkdir(parents=True, exist_ok=True)
    try:
        img_dir, db, sparse = root / "images", root / "database.db", root / "sparse"
        for old in (img_dir, sparse):
            if old.exists():
                shutil.rmtree(old)
        db.unlink(missing_ok=True)
        names = _write_pngs(images, img_dir)
        sparse.mkdir()
        reader, extraction, matching, verification, mapping = _options(int(seed), camera_model)
        pycolmap.set_random_seed(int(seed))
        with _colmap_log_level(0 if verbose else 3):
            pycolmap.extract_features(db, img_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                      reader_options=reader, extraction_options=extraction,
                                      device=pycolmap.Device.cpu)
            pycolmap.match_exhaustive(db, matching_options=matching, verification_options=verification,
                                      device=pycolmap.Device.cpu)
            recs = pycolmap.incremental_mapping(db, img_dir, sparse, options=mapping)

        c2w = torch.full((V, 4, 4), float("nan"), dtype=torch.float64)
        K = torch.full((V, 3, 3), float("nan"), dtype=torch.float64)
        registered = torch.zeros(V, dtype=torch.bool)
        points = torch.zeros(0, 3)
        extra = dict(camera_model=camera_model, params=None, n_reconstructions=len(recs),
                     mean_reprojection_error=float("nan"))
        model_dir = None
        if recs:
            key = max(recs, key=lambda k: (recs[k].num_reg_images(), recs[k].num_points3D(), -k))
            rec = recs[key]
            index = {n: i for i, n in enumerate(names)}
            for image in rec.images.values():
                if not image.has_pose:
                    continue
                i = index[image.name]
                w2c = torch.eye(4, dtype=torch.float64)
                w2c[:3, :] = torch.from_numpy(np.asarray(image.cam_from_world().matrix(), dtype=np.float64))
                c2w[i] = invert_pose(w2c)
                cam = rec.cameras[image.camera_id]
                K[i] = opencv_K(torch.from_numpy(np.asarray(cam.calibration_matrix(), dtype=np.float64)))
                registered[i] = True
                extra["params"] = np.asarray(cam.params, dtype=np.float64).tolist()
            if rec.num_points3D():
                points = torch.from_numpy(np.stack([p.xyz for p in rec.points3D.values()])).float()
            extra["mean_reprojection_error"] = float(rec.compute_mean_reprojection_error())
            if tmp is None:
                model_dir = str(sparse / str(key))
        return BaselineResult(c2w=c2w.float(), registered=registered, K=K.float(), n_points=len(points),
                              time_s=time.perf_counter() - t0, points=points, model_dir=model_dir,
                              extra=extra)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
