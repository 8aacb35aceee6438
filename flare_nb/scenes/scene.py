"""``Scene``: the one container for posed multi-view data (notebook 00), and its loaders.

Conventions (stated once, for the whole workbook; see README "Conventions"):

* ``images``  float32 ``(V, 3, H, W)`` RGB in [0, 1] (the model's [-1, 1] comes from
  :func:`flare_nb.scenes.preprocess.to_model_input`).
* ``K``       float32 ``(V, 3, 3)`` pinhole intrinsics in pixels of *these* images, OpenCV
  pixel-centre convention: the centre of the top-left pixel is (0, 0).
* ``c2w``     float32 ``(V, 4, 4)`` camera-to-world, OpenCV axes (x right, y down, z forward).
* ``depth``   optional float32 ``(V, H, W)`` z-depth along the optical axis; 0 marks no data.
* ``names``   one string per view (file stem or generated id).

Loaders (below the class): :func:`load_mvsnet` (FLARE ``gt_cam`` / MVSNet), :func:`load_strecha`,
:func:`load_nerf` (NeRF / instant-ngp ``transforms.json``), :func:`load_colmap` and
:func:`load_scene` (detects the format). Checks that poses are right: :func:`epipolar_distances`,
:func:`flare_nb.cameras.look_at_point`.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from flare_nb.cameras import invert_pose, opengl_to_opencv
from flare_nb.scenes.preprocess import load_images


@dataclass
class Scene:
    images: torch.Tensor
    K: torch.Tensor
    c2w: torch.Tensor
    depth: torch.Tensor | None = None
    names: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        V = self.images.shape[0] if self.images.ndim == 4 else -1
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"Scene.images must be (V, 3, H, W), got {tuple(self.images.shape)}")
        if V < 2:
            raise ValueError(f"a scene needs at least 2 views, got {V} ({self.source or 'unnamed scene'})")
        H, W = self.images.shape[-2:]
        if tuple(self.K.shape) != (V, 3, 3):
            raise ValueError(f"Scene.K must be ({V}, 3, 3) for {V} images, got {tuple(self.K.shape)}")
        if tuple(self.c2w.shape) != (V, 4, 4):
            raise ValueError(f"Scene.c2w must be ({V}, 4, 4) for {V} images, got {tuple(self.c2w.shape)}")
        if self.depth is not None and tuple(self.depth.shape) != (V, H, W):
            raise ValueError(f"Scene.depth must be ({V}, {H}, {W}), got {tuple(self.depth.shape)}")
        if not self.names:
            self.names = [f"view{i:03d}" for i in range(V)]
        if len(self.names) != V:
            raise ValueError(f"Scene.names has {len(self.names)} entries for {V} images")

    @property
    def n_views(self) -> int:
        return self.images.shape[0]

    @property
    def hw(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def subset(self, idx) -> "Scene":
        """The views ``idx`` (a list of indices), in that order."""
        idx = list(idx)
        return replace(self, images=self.images[idx], K=self.K[idx], c2w=self.c2w[idx],
                       depth=None if self.depth is None else self.depth[idx],
                       names=[self.names[i] for i in idx])


# =========================================================================== loaders
# Every loader returns a ``Scene`` in the workbook's conventions (OpenCV c2w, K in pixels of the
# returned images with OpenCV pixel centres). ``size=(W, H)`` (multiples of 64) runs the official
# FLARE preprocessing (``flare_nb.scenes.preprocess``: rescale + centre crop, portrait rule) and updates
# K; ``size=None`` keeps the images as shipped. ``max_views`` keeps that many views evenly spaced
# over the (sorted) sequence, chosen before any image is decoded. Explained in notebook 00.

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # compared lower-case


def _folder(path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: no such folder {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"{what}: expected a folder, got the file {path}")
    return path


def _numbers(text: str, path: Path, what: str) -> np.ndarray:
    try:
        return np.array([float(t) for t in text.split()], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: cannot parse {what} (expected numbers): {e}") from None


def _field_number(value, where: str, field: str, positive: bool = False) -> float:
    """``value`` as a finite float (``positive``: > 0), else ValueError naming ``where`` and ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where}: '{field}' must be a number, got {type(value).__name__} {value!r}")
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"{where}: '{field}' must be a number, got {value!r}") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{where}: '{field}' must be a {'positive' if positive else 'finite'} number, got {value!r}")
    return v


def _check_K(K: np.ndarray, where: str, field: str) -> None:
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"{where}: '{field}' focal lengths must be positive, got fx={K[0, 0]:g} fy={K[1, 1]:g}")


def _image_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image file after its EXIF orientation, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            W, H = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path} is not a readable image: {e}") from None
    return (H, W) if orientation in (5, 6, 7, 8) else (W, H)


def rescale_K(K: np.ndarray, src_wh, dst_wh, where="") -> np.ndarray:
    """Intrinsics ``K (3, 3)`` given for an image of size ``src_wh = (W0, H0)`` -> for the same
    image resampled to ``dst_wh = (W, H)``. OpenCV pixel centres on both sides: ``f' = f s``,
    ``c' = (c + 0.5) s - 0.5``. ``ValueError`` if the aspect ratio changed by more than 1 %
    (a crop, a rotation or the wrong camera file)."""
    (W0, H0), (W, H) = src_wh, dst_wh
    sx, sy = W / W0, H / H0
    if abs(sx / sy - 1) > 0.01:
        raise ValueError(f"{where}: intrinsics are for a {W0:g}x{H0:g} image but the image is {W}x{H} "
                         "(different aspect ratio: cropped or rotated image, or the wrong camera file?)")
    K = np.array(K, dtype=np.float64)
    out = K.copy()
    out[0, :] *= sx
    out[1, :] *= sy
    out[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return out


def _pick(n: int, max_views) -> list[int]:
    if max_views is None or max_views >= n:
        return list(range(n))
    if max_views < 2:
        raise ValueError(f"max_views must be at least 2, got {max_views}")
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, max_views)})


def _build(paths, Ks, c2w, names, source: str, size, max_views, K_size=None) -> Scene:
    """Shared tail of the loaders. ``Ks (V, 3, 3)`` float64 for the images as shipped, or for
    ``K_size = (W0, H0)`` (one size for all views, or a list) when the files hold K for another
    resolution; ``c2w (V, 4, 4)`` OpenCV camera-to-world."""

    if len(paths) < 2:
        raise ValueError(f"{source}: a scene needs at least 2 views with both an image and a camera, "
                         f"found {len(paths)}")
    idx = _pick(len(paths), max_views)
    paths = [paths[i] for i in idx]
    names = [names[i] for i in idx]
    Ks = np.asarray(Ks, dtype=np.float64)[idx]
    c2w = np.asarray(c2w, dtype=np.float64)[idx]
    if K_size is not None:
        sizes = K_size if isinstance(K_size, list) else [K_size] * len(Ks)
        if isinstance(K_size, list):
            sizes = [sizes[i] for i in idx]
        Ks = np.stack([rescale_K(K, src, _image_size(p), where=str(p))
                       for K, src, p in zip(Ks, sizes, paths)])
    bad = [n for n, T in zip(names, c2w) if not np.isfinite(T).all()
           or abs(np.linalg.det(T[:3, :3]) - 1) > 1e-3
           or np.abs(T[:3, :3].T @ T[:3, :3] - np.eye(3)).max() > 1e-3]
    if bad:
        raise ValueError(f"{source}: the camera rotation of {', '.join(bad)} is not a rotation matrix "
                         "(not orthonormal with det +1)")
    images, K_new, _ = load_images(paths, size, K=Ks)
    return Scene(images=images, K=K_new, c2w=torch.from_numpy(c2w).float(), names=names,
                 source=source)


# --------------------------------------------------------------------------- MVSNet / FLARE
def read_mvsnet_cam(path) -> tuple[np.ndarray, np.ndarray]:
    """Parse an MVSNet / FLARE ``cam.txt``: returns ``(w2c (4, 4), K (3, 3))`` as float64.

    Layout: a line ``extrinsic`` then 4 rows (WORLD-TO-CAMERA, OpenCV axes), a line ``intrinsic``
    then 3 rows (pixels), optionally a depth-range line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MVSNet camera file not found: {path}")
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    out = {}
    for key, rows, cols in (("extrinsic", 4, 4), ("intrinsic", 3, 3)):
        if key not in lines:
            raise ValueError(f"{path}: no '{key}' line; expected an MVSNet camera file "
                             "('extrinsic' + 4x4 world-to-camera, 'intrinsic' + 3x3)")
        i = lines.index(key)
        vals = _numbers(" ".join(lines[i + 1:i + 1 + rows]), path, key)
        if vals.size != rows * cols or not np.isfinite(vals).all():
            raise ValueError(f"{path}: '{key}' must be followed by {rows} rows of {cols} finite "
                             f"numbers, got {vals.size} values")
        out[key] = vals.reshape(rows, cols)
    _check_K(out["intrinsic"], str(path), "intrinsic")
    if not np.allclose(out["extrinsic"][3], [0, 0, 0, 1]):
        raise ValueError(f"{path}: 'extrinsic' last row must be 0 0 0 1, got {out['extrinsic'][3].tolist()}")
    return out["extrinsic"], out["intrinsic"]


def load_mvsnet(folder, size=None, max_views=None) -> Scene:
    """Scene from MVSNet-style cameras (FLARE's ``assets/gt_cam``, ``data/real/flare_gt_cam``).

    Two layouts: ``NNNNN.txt`` next to ``NNNNN.png/jpg`` in one folder (FLARE), or
    ``cams/NNNNNNNN_cam.txt`` + ``images/NNNNNNNN.jpg`` (MVSNet / BlendedMVS / DTU). The
    extrinsic is world-to-camera and is inverted to ``c2w``; K is in pixels of the shipped image.
    Every camera needs its image and vice versa, else ``ValueError`` naming the orphans."""

    folder = _folder(folder, "MVSNet scene")
    if (folder / "cams").is_dir() and (folder / "images").is_dir():
        cam_files = sorted((folder / "cams").glob("*_cam.txt"))
        stems = {f: f.name[:-len("_cam.txt")] for f in cam_files}
        img_dir = folder / "images"
    else:
        cam_files = sorted(folder.glob("*.txt"))
        stems = {f: f.stem for f in cam_files}
        img_dir = folder
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    cam_stems = set(stems.values())
    no_image = [f.name for f in cam_files if stems[f] not in images]
    no_cam = [p.name for s, p in images.items() if s not in cam_stems]
    if no_image or no_cam:
        raise ValueError(f"{folder}: images and camera files do not pair up "
                         f"({len(images)} images, {len(cam_files)} camera files); "
                         f"cameras without image: {no_image or 'none'}; images without camera: "
                         f"{no_cam or 'none'}")
    w2c, Ks = zip(*(read_mvsnet_cam(f) for f in cam_files)) if cam_files else ((), ())
    c2w = invert_pose(torch.from_numpy(np.stack(w2c))).numpy() if w2c else np.zeros((0, 4, 4))
    names = [stems[f] for f in cam_files]
    return _build([images[n] for n in names], np.array(Ks).reshape(-1, 3, 3), c2w, names,
                  f"mvsnet:{folder}", size, max_views)


# --------------------------------------------------------------------------- Strecha
def read_strecha_camera(path):
    """Parse a Strecha ``.camera`` file: returns ``(K (3, 3), c2w (4, 4), (W, H))`` float64.

    26 numbers: rows 1-3 K, row 4 radial distortion (3), rows 5-7 R (camera-to-world rotation:
    its columns are the camera axes in the world), row 8 the camera centre C, row 9 ``W H`` of
    the image the K is for (3072 2048 for the original benchmark)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Strecha camera file not found: {path}")
    vals = _numbers(path.read_text(errors="replace"), path, "the Strecha camera")
    if vals.size != 26 or not np.isfinite(vals).all():
        raise ValueError(f"{path}: a Strecha .camera file holds 26 finite numbers (K 3x3, distortion "
                         f"3, R 3x3, centre 3, width height), got {vals.size}")
    K = vals[:9].reshape(3, 3)
    _check_K(K, str(path), "K (numbers 1-9)")
    if np.abs(vals[9:12]).max() > 0:
        warnings.warn(f"{path}: non-zero distortion {vals[9:12].tolist()} ignored (pinhole model)",
                      stacklevel=3)
    c2w = np.eye(4)
    c2w[:3, :3] = vals[12:21].reshape(3, 3)
    c2w[:3, 3] = vals[21:24]
    W, H = vals[24:26]
    if W <= 0 or H <= 0:
        raise ValueError(f"{path}: image size must be positive, got {W:g} {H:g}")
    return K, c2w, (float(W), float(H))


def load_strecha(folder, size=None, max_views=None) -> Scene:
    """Scene in the Strecha benchmark layout (``data/real/fountain-P11``): ``cameras/X.camera``
    for ``images/X`` (e.g. ``0000.jpg.camera`` for ``0000.jpg``). K is given for the original
    resolution written in the file and is rescaled to the shipped images (x0.25 here)."""
    folder = _folder(folder, "Strecha scene")
    cam_dir = _folder(folder / "cameras", "Strecha scene cameras")
    img_dir = _folder(folder / "images", "Strecha scene images")
    cam_files = sorted(cam_dir.glob("*.camera"))
    images = {p.name: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    cam_names = {f.name[:-len(".camera")] for f in cam_files}
    no_image = [f.name for f in cam_files if f.name[:-len(".camera")] not in images]
    no_cam = [n for n in images if n not in cam_names]
    if no_image or no_cam:
        raise ValueError(f"{folder}: images and camera files do not pair up "
                         f"({len(images)} images, {len(cam_files)} camera files); "
                         f"cameras without image: {no_image or 'none'}; images without camera: "
                         f"{no_cam or 'none'}")
    parsed = [read_strecha_camera(f) for f in cam_files]
    names = [f.name[:-len(".camera")] for f in cam_files]
    Ks = np.array([p[0] for p in parsed]).reshape(-1, 3, 3)
    c2w = np.array([p[1] for p in parsed]).reshape(-1, 4, 4)
    return _build([images[n] for n in names], Ks, c2w, [Path(n).stem for n in names],
                  f"strecha:{folder}", size, max_views, K_size=[p[2] for p in parsed])


# --------------------------------------------------------------------------- NeRF / instant-ngp
def _nerf_image(root: Path, file_path: str) -> Path:
    p = root / file_path
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return p
    for suf in (".png", ".jpg", ".jpeg"):  # Blender synthetic files list "./train/r_0"
        if p.with_name(p.name + suf).exists():
            return p.with_name(p.name + suf)
    return p


def _nerf_intrinsics(meta: dict, frame: dict, img_wh, where: str):
    """(K (3, 3) OpenCV centres, (w, h) the K is for) from global or per-frame NeRF keys."""
    get = lambda k: frame.get(k, meta.get(k))  # noqa: E731 - per-frame values override
    num = lambda k: _field_number(get(k), where, k, positive=k != "cx" and k != "cy")  # noqa: E731
    w, h = get("w"), get("h")
    w, h = (num("w"), num("h")) if w is not None and h is not None else map(float, img_wh)
    fx = num("fl_x") if get("fl_x") is not None else None
    fy = num("fl_y") if get("fl_y") is not None else None
    if fx is None and get("camera_angle_x") is not None:
        a = num("camera_angle_x")
        if a >= math.pi:
            raise ValueError(f"{where}: 'camera_angle_x' is a field of view in radians, below pi; got {a:g}")
        fx = 0.5 * w / math.tan(0.5 * a)
    if fy is None and get("camera_angle_y") is not None:
        a = num("camera_angle_y")
        if a >= math.pi:
            raise ValueError(f"{where}: 'camera_angle_y' is a field of view in radians, below pi; got {a:g}")
        fy = 0.5 * h / math.tan(0.5 * a)
    if fx is None and fy is None:
        raise ValueError(f"{where}: no focal length (expected 'fl_x'/'fl_y' or 'camera_angle_x')")
    fx = float(fx if fx is not None else fy)
    fy = float(fy if fy is not None else fx)
    # instant-ngp / nerfstudio put the top-left pixel centre at (0.5, 0.5): shift to OpenCV
    cx = num("cx") if get("cx") is not None else w / 2
    cy = num("cy") if get("cy") is not None else h / 2
    K = np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1.0]])
    return K, (w, h)


def _matrix(value, where: str, field: str) -> np.ndarray:
    """A rectangular list of lists of finite numbers as a float64 array, else ValueError."""
    if (not isinstance(value, list) or not value or not all(isinstance(r, list) for r in value)
            or len({len(r) for r in value}) != 1):
        raise ValueError(f"{where}: '{field}' must be a list of equally long rows of numbers, got {value!r:.120}")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for r in value for x in r):
        raise ValueError(f"{where}: '{field}' must hold numbers only, got {value!r:.120}")
    T = np.array(value, dtype=np.float64)
    if not np.isfinite(T).all():
        raise ValueError(f"{where}: '{field}' holds non-finite numbers (nan or inf)")
    return T


def load_nerf(path, size=None, max_views=None) -> Scene:
    """Scene from a NeRF / instant-ngp ``transforms.json`` (or the folder holding it), e.g.
    ``data/real/fox``.

    ``transform_matrix`` is camera-to-world in OpenGL axes and is converted to OpenCV. Intrinsics
    ``fl_x fl_y cx cy w h`` (global or per frame; ``camera_angle_x/y`` when no ``fl_x``) may be
    for another resolution than the images: K is rescaled to the actual image size, and the
    principal point is shifted by -0.5 px (instant-ngp pixel centres sit at +0.5). Distortion
    ``k1 k2 p1 p2`` is ignored with a warning. Frames whose image is missing are skipped with one
    ``warnings.warn`` naming them."""

    path = Path(path)
    json_path = path / "transforms.json" if path.is_dir() else path
    if not json_path.exists():
        raise FileNotFoundError(f"NeRF scene: no such file {json_path}")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise ValueError(f"{json_path}: expected a JSON object with a 'frames' list")
    root = json_path.parent
    paths, c2w, Ks, K_sizes, names, missing = [], [], [], [], [], []
    for i, fr in enumerate(meta["frames"]):
        if not isinstance(fr, dict):
            raise ValueError(f"{json_path}: frame {i} must be an object with 'file_path' and 'transform_matrix', "
                             f"got {type(fr).__name__} {fr!r}")
        if "file_path" not in fr or "transform_matrix" not in fr:
            raise ValueError(f"{json_path}: frame {i} lacks 'file_path' or 'transform_matrix'")
        if not isinstance(fr["file_path"], str) or not fr["file_path"]:
            raise ValueError(f"{json_path}: frame {i}: 'file_path' must be a path string, got {fr['file_path']!r}")
        img = _nerf_image(root, fr["file_path"])
        if not img.exists():
            missing.append(fr["file_path"])
            continue
        T = _matrix(fr["transform_matrix"], f"{json_path}: frame {i} ({fr['file_path']})", "transform_matrix")
        if T.shape == (3, 4):
            T = np.vstack([T, [0, 0, 0, 1]])
        if T.shape != (4, 4):
            raise ValueError(f"{json_path}: frame {i} ({fr['file_path']}): 'transform_matrix' must be "
                             f"4x4 or 3x4, got {T.shape}")
        W, H = _image_size(img)
        K, wh = _nerf_intrinsics(meta, fr, (W, H), f"{json_path} frame {i}")
        paths.append(img)
        c2w.append(T)
        Ks.append(K)
        K_sizes.append(wh)
        names.append(img.stem)
    if missing:
        warnings.warn(f"{json_path}: {len(missing)} of {len(meta['frames'])} frames skipped, image "
                      f"missing: {', '.join(missing)}", stacklevel=2)
    dist = {k: meta[k] for k in ("k1", "k2", "k3", "p1", "p2") if meta.get(k)}
    if dist:
        warnings.warn(f"{json_path}: lens distortion {dist} ignored (pinhole model); "
                      "undistort the images first if it matters", stacklevel=2)
    if c2w:
        c2w = opengl_to_opencv(torch.from_numpy(np.stack(c2w))).numpy()
    return _build(paths, np.array(Ks).reshape(-1, 3, 3), np.asarray(c2w).reshape(-1, 4, 4), names,
                  f"nerf:{json_path}", size, max_views, K_size=K_sizes)


# --------------------------------------------------------------------------- COLMAP
_PINHOLE_LIKE = {  # model -> (fx, fy, cx, cy) indices into params; distortion ignored
    "SIMPLE_PINHOLE": (0, 0, 1, 2), "PINHOLE": (0, 1, 2, 3), "SIMPLE_RADIAL": (0, 0, 1, 2),
    "RADIAL": (0, 0, 1, 2), "OPENCV": (0, 1, 2, 3), "FULL_OPENCV": (0, 1, 2, 3),
}


def load_colmap(model_dir, images_dir, size=None, max_views=None) -> Scene:
    """Scene from a COLMAP sparse model (``cameras/images.txt`` or ``.bin``, read by pycolmap)
    and its image folder.

    Camera models PINHOLE and SIMPLE_PINHOLE are exact; SIMPLE_RADIAL, RADIAL, OPENCV and
    FULL_OPENCV are treated as pinhole (distortion ignored, with a warning). COLMAP's principal
    point (pixel centres at +0.5) is shifted by -0.5 px; K is rescaled when the images are not
    the size the model was made for. ``cam_from_world`` is inverted to ``c2w``. Views are sorted
    by image name; registered images missing from ``images_dir`` are skipped with a warning."""
    import pycolmap


    model_dir = _folder(model_dir, "COLMAP model")
    images_dir = _folder(images_dir, "COLMAP images")
    for ext in ("txt", "bin"):
        have = [n for n in ("cameras", "images", "points3D") if (model_dir / f"{n}.{ext}").is_file()]
        if have:
            lost = [f"{n}.{ext}" for n in ("cameras", "images", "points3D") if n not in have]
            if lost:
                raise FileNotFoundError(f"{model_dir}: {', '.join(lost)} missing (found "
                                        f"{', '.join(f'{n}.{ext}' for n in have)}); a COLMAP sparse model has "
                                        f"cameras.{ext}, images.{ext} and points3D.{ext}")
            break
    else:
        raise FileNotFoundError(f"{model_dir}: no cameras.txt or cameras.bin; expected a COLMAP "
                                "sparse model folder (cameras, images, points3D)")
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as e:
        raise ValueError(f"{model_dir}: pycolmap could not read the COLMAP model: {e}") from None
    rows, missing, distorted = [], [], set()
    for image in rec.images.values():
        if hasattr(image, "has_pose") and not image.has_pose:
            continue
        cam = rec.cameras[image.camera_id]
        model = cam.model.name if hasattr(cam.model, "name") else str(cam.model)
        if model not in _PINHOLE_LIKE:
            raise ValueError(f"{model_dir}: camera {image.camera_id} has model {model}; supported: "
                             f"{', '.join(_PINHOLE_LIKE)} (undistort fisheye images first)")
        p = np.asarray(cam.params, dtype=np.float64)
        if not (cam.width > 0 and cam.height > 0):
            raise ValueError(f"{model_dir}: camera {image.camera_id}: 'width'/'height' must be positive, "
                             f"got {cam.width}x{cam.height}")
        if not (np.isfinite(p).all() and p[_PINHOLE_LIKE[model][0]] > 0 and p[_PINHOLE_LIKE[model][1]] > 0):
            raise ValueError(f"{model_dir}: camera {image.camera_id}: focal length 'params' must be positive "
                             f"and finite, got {p.tolist()}")
        if model not in ("PINHOLE", "SIMPLE_PINHOLE") and np.abs(p[len(set(_PINHOLE_LIKE[model])):]).max() > 0:
            distorted.add(model)
        fx, fy, cx, cy = (p[i] for i in _PINHOLE_LIKE[model])
        K = np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1.0]])
        path = images_dir / image.name
        if not path.exists():
            missing.append(image.name)
            continue
        w2c = np.eye(4)
        w2c[:3, :] = np.asarray(image.cam_from_world().matrix(), dtype=np.float64)
        rows.append((image.name, path, K, (float(cam.width), float(cam.height)), w2c))
    if missing:
        warnings.warn(f"{model_dir}: {len(missing)} registered images skipped, not in {images_dir}: "
                      f"{', '.join(sorted(missing))}", stacklevel=2)
    if distorted:
        warnings.warn(f"{model_dir}: camera model(s) {sorted(distorted)} have distortion parameters; "
                      "they are ignored (pinhole model)", stacklevel=2)
    rows.sort(key=lambda r: r[0])
    c2w = (invert_pose(torch.from_numpy(np.stack([r[4] for r in rows]))).numpy() if rows
           else np.zeros((0, 4, 4)))
    return _build([r[1] for r in rows], np.array([r[2] for r in rows]).reshape(-1, 3, 3), c2w,
                  [Path(r[0]).stem for r in rows], f"colmap:{model_dir}", size, max_views,
                  K_size=[r[3] for r in rows])


# --------------------------------------------------------------------------- any format
def detect_format(path) -> str:
    """``'nerf'``, ``'strecha'``, ``'colmap'`` or ``'mvsnet'`` for a scene path (see
    :func:`load_scene`); ``ValueError`` listing what was looked for otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scene: no such file or folder {path}")
    if path.is_file():
        if path.suffix == ".json":
            return "nerf"
        raise ValueError(f"{path}: a scene is a folder (or a NeRF transforms.json), got a file")
    if (path / "transforms.json").exists():
        return "nerf"
    if (path / "cameras").is_dir() and any((path / "cameras").glob("*.camera")):
        return "strecha"
    if _colmap_model_dir(path) is not None:
        return "colmap"
    if (path / "cams").is_dir() or any(
            "extrinsic" in f.read_text(errors="replace")[:200] for f in sorted(path.glob("*.txt"))[:3]):
        return "mvsnet"
    raise ValueError(f"{path}: unknown scene format; expected transforms.json (NeRF), "
                     "cameras/*.camera + images/ (Strecha), sparse/0 or cameras.txt/.bin (COLMAP), "
                     "or NNNNN.txt MVSNet cameras next to the images")


def _colmap_model_dir(path: Path):
    for d in (path, path / "sparse" / "0", path / "sparse"):
        if any((d / f"cameras.{e}").exists() for e in ("txt", "bin")):
            return d
    return None


def load_scene(path, size=None, max_views=None) -> Scene:
    """Load a posed scene in any supported format (detected by :func:`detect_format`).

    ``size=(W, H)`` (multiples of 64) runs the official preprocessing and updates K;
    ``max_views`` keeps that many views evenly spaced over the sorted sequence. For COLMAP the
    images are taken from ``path/images``."""
    fmt = detect_format(path)
    path = Path(path)
    if fmt == "nerf":
        return load_nerf(path, size, max_views)
    if fmt == "strecha":
        return load_strecha(path, size, max_views)
    if fmt == "colmap":
        return load_colmap(_colmap_model_dir(path), path / "images", size, max_views)
    return load_mvsnet(path, size, max_views)


# --------------------------------------------------------------------------- pose checks
def sift_matches(img_a: torch.Tensor, img_b: torch.Tensor, ratio: float = 0.75, max_features: int = 4000):
    """SIFT matches (Lowe ratio test) between two ``(3, H, W)`` [0, 1] images: returns
    ``(uv_a (N, 2), uv_b (N, 2))`` float64 numpy pixel coordinates (OpenCV centres)."""
    import cv2

    def gray(x):
        a = (x.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        return cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)

    sift = cv2.SIFT_create(nfeatures=max_features)
    ka, da = sift.detectAndCompute(gray(img_a), None)
    kb, db = sift.detectAndCompute(gray(img_b), None)
    if da is None or db is None or len(ka) < 2 or len(kb) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < ratio * n.distance]
    uv_a = np.array([ka[m.queryIdx].pt for m in good], dtype=np.float64).reshape(-1, 2)
    uv_b = np.array([kb[m.trainIdx].pt for m in good], dtype=np.float64).reshape(-1, 2)
    return uv_a, uv_b


def fundamental_matrix(K_a, c2w_a, K_b, c2w_b) -> np.ndarray:
    """``F (3, 3)`` with ``x_b^T F x_a = 0`` for pixels ``x = (u, v, 1)`` from two pinhole
    cameras (OpenCV ``K``, camera-to-world poses)."""
    K_a, K_b, c2w_a, c2w_b = (np.asarray(t, dtype=np.float64) for t in (K_a, K_b, c2w_a, c2w_b))
    rel = np.linalg.inv(c2w_b) @ c2w_a          # camera a -> camera b
    R, t = rel[:3, :3], rel[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(K_b).T @ tx @ R @ np.linalg.inv(K_a)


def epipolar_distances(scene: Scene, i: int, j: int, ratio: float = 0.75) -> np.ndarray:
    """Symmetric point-to-epipolar-line distances (pixels, ``(N,)``) of the SIFT matches between
    views ``i`` and ``j`` under the scene's K and c2w: a median of ~1 px means the poses are right
    (notebook 00)."""
    uv_a, uv_b = sift_matches(scene.images[i], scene.images[j], ratio)
    if len(uv_a) == 0:
        return np.zeros(0)
    F = fundamental_matrix(scene.K[i], scene.c2w[i], scene.K[j], scene.c2w[j])
    xa = np.c_[uv_a, np.ones(len(uv_a))]
    xb = np.c_[uv_b, np.ones(len(uv_b))]
    lb = xa @ F.T                                   # lines in image b
    la = xb @ F                                     # lines in image a
    d_b = np.abs((xb * lb).sum(1)) / np.hypot(lb[:, 0], lb[:, 1])
    d_a = np.abs((xa * la).sum(1)) / np.hypot(la[:, 0], la[:, 1])
    return 0.5 * (d_a + d_b)


