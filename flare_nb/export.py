"""Write a FLARE reconstruction to standard files (``flare-nb`` CLI, notebook 08).

All inputs follow the README "Conventions": ``c2w (V, 4, 4)`` camera-to-world with OpenCV
axes, ``K (V, 3, 3)`` in pixels with OpenCV pixel centres (the top-left pixel's centre is
(0, 0)), images ``(V, 3, H, W)`` in [0, 1], pointmaps ``(V, H, W, 3)`` in the world frame
(FLARE: view 0's camera frame) and confidences ``(V, H, W)``. Each writer converts to its
format's own conventions, and each is read back by that format's own reader in
``tests/test_export.py``:

================  =====================================================================
file              format and conversion
================  =====================================================================
cameras.json      ours: ``c2w`` (OpenCV) and ``K`` (OpenCV pixel centres) as written here
COLMAP text       ``cameras.txt`` (one ``PINHOLE`` camera per image, ``cx, cy`` + 0.5:
                  COLMAP puts the top-left pixel centre at (0.5, 0.5), see
                  :func:`flare_nb.cameras.gsplat_K`), ``images.txt`` (WORLD-TO-CAMERA
                  ``QW QX QY QZ TX TY TZ``, quaternion of ``R_w2c`` with w >= 0, no 2D
                  points), ``points3D.txt`` (the point cloud, empty tracks). Read with
                  ``pycolmap.Reconstruction(dir)`` / :func:`flare_nb.scenes.scene.load_colmap`
transforms.json   nerfstudio / instant-ngp: ``transform_matrix`` = c2w in OpenGL axes
                  (y up, z backward), ``fl_x fl_y cx cy w h`` with ``cx, cy`` + 0.5;
                  read with :func:`flare_nb.scenes.scene.load_nerf`
points.ply        ``x y z red green blue confidence`` (:func:`flare_nb.render.ply.save_points_ply`)
gaussians.ply     standard 3DGS layout (:func:`flare_nb.render.ply.save_gaussians_ply`)
================  =====================================================================

Gaussians without a Gaussian head (:func:`pointmap_gaussians`): one isotropic Gaussian
per confident pixel, centred on its global point, standard deviation = the pixel's
footprint ``z / f`` (``z`` its depth in its own camera, ``f`` the focal in pixels), opacity
0.9, colour = the pixel's colour as the SH DC term. It is a way to look at the pointmap
with a splat viewer, not FLARE's trained Gaussians.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from flare_nb import camera_rule, cameras
from flare_nb.render.ply import save_gaussians_ply, save_points_ply
from flare_nb.render.splats import gaussians_from_pointmap, render_views
from flare_nb.viz import plot_cameras

#: the field of view assumed when no focal can be estimated (degrees, horizontal)
FALLBACK_FOV_DEG = 60.0
#: Gaussians of a pointmap (:func:`pointmap_gaussians`): one pixel's footprint, and their opacity
POINTMAP_FOOTPRINT = 1.0
POINTMAP_OPACITY = 0.9

__all__ = ["confident_mask", "colored_points", "write_cameras_json", "write_colmap_text",
           "write_transforms_json", "write_points_ply", "pointmap_gaussians", "export_cameras", "write_gaussians_ply",
           "render_gaussians", "thin_gaussians", "save_image", "save_render_grid", "save_summary_figure", "fov_K", "matrix_list",
           "FALLBACK_FOV_DEG"]


# ----------------------------------------------------------------------------- checks
def _tensor(x, name: str, shape_tail: tuple) -> torch.Tensor:
    t = torch.as_tensor(x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x)).to(torch.float64)
    if t.ndim != len(shape_tail) + 1 or tuple(t.shape[1:]) != shape_tail:
        raise ValueError(f"{name} must have shape (V, {', '.join(map(str, shape_tail))}), got {tuple(t.shape)}")
    return t


def _cams(c2w, K, names, hw):
    c2w = _tensor(c2w, "c2w", (4, 4))
    V = c2w.shape[0]
    K = torch.as_tensor(K.detach().cpu() if isinstance(K, torch.Tensor) else np.asarray(K)).to(torch.float64)
    if K.shape == (3, 3):
        K = K.expand(V, 3, 3)
    if tuple(K.shape) != (V, 3, 3):
        raise ValueError(f"K must be (3, 3) or ({V}, 3, 3) for {V} cameras, got {tuple(K.shape)}")
    if not torch.isfinite(c2w).all() or not torch.isfinite(K).all():
        raise ValueError("c2w and K must be finite")
    if (K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any():
        raise ValueError(f"focal lengths must be positive, got fx {K[:, 0, 0].tolist()}")
    names = [str(n) for n in names]
    if len(names) != V or len(set(names)) != V:
        raise ValueError(f"names must be {V} distinct image names, got {names}")
    H, W = (int(s) for s in hw)
    if H <= 0 or W <= 0:
        raise ValueError(f"hw must be a positive (H, W), got {hw}")
    return c2w, K.contiguous(), names, (H, W)


def fov_K(H: int, W: int, fov_deg: float = FALLBACK_FOV_DEG) -> torch.Tensor:
    """``K (3, 3)`` float32 with a ``fov_deg`` horizontal field of view and the centred principal
    point ``((W-1)/2, (H-1)/2)``: the fallback when no focal could be estimated."""
    f = 0.5 * W / math.tan(math.radians(fov_deg) / 2)
    return cameras.intrinsics_from_focal(f, H, W)



def export_cameras(rec) -> dict:
    """The cameras the exports get from a :class:`flare_nb.inference.Reconstruction` (the one
    rule of the ``flare-nb`` command and notebook 08). Intrinsics: the known ones
    (``rec.K_given``) if given, else the focal of view 0's global pointmap (else of its
    camera-centric one, else a :data:`FALLBACK_FOV_DEG` field of view). Poses:
    :data:`flare_nb.camera_rule.CAMERA_RULE` -- the PnP cameras when every view's PnP inlier
    fraction reaches :data:`flare_nb.camera_rule.MIN_INLIER_FRACTION`, else the refined pose
    head. Returns ``c2w (V, 4, 4)``, ``K (V, 3, 3)`` float32, ``pose_source``,
    ``focal_source``, ``inlier_fractions`` (or None) and ``notes`` (one line per fallback)."""
    V, (H, W) = rec.n_views, rec.hw
    notes = []
    focal_source, K = "view 0's global pointmap (FLARE demo)", rec.K
    K_given = getattr(rec, "K_given", None)
    if K_given is not None:
        K, focal_source = K_given, "given (known intrinsics)"
    elif K is None:
        try:
            K = cameras.intrinsics_from_focal(cameras.estimate_focal(rec.pts3d_cam[0]), H, W)
            focal_source = "view 0's camera-centric pointmap (fallback: the global one gave no focal)"
        except (ValueError, TypeError):
            K = fov_K(H, W, FALLBACK_FOV_DEG)
            focal_source = f"none could be estimated: {FALLBACK_FOV_DEG:.0f} degree field of view assumed"
        notes.append(f"focal: {focal_source}")
    fractions = camera_rule.inlier_fractions(getattr(rec, "pnp_info", None))
    if rec.c2w_pnp is not None and camera_rule.pnp_trusted(rec.pnp_info):
        c2w, pose_source = rec.c2w_pnp, "pnp (FLARE demo: PnP-RANSAC on the global pointmaps)"
    elif rec.c2w_pnp is not None:
        c2w = rec.c2w_refined.clone().double()
        conf = getattr(rec, "conf_global", None)
        s = None if conf is None else camera_rule.pose_head_scale(c2w, rec.pts3d_global, conf, K)
        units = "translation in the network's units"
        if s is not None:
            c2w[:, :3, 3] *= s
            units = f"translation x {s:.4g} into the pointmaps' units (least-squares reprojection)"
        pose_source = (f"refined pose head (PnP inliers in the weakest view {min(fractions):.0%} < "
                       f"{camera_rule.MIN_INLIER_FRACTION:.0%}; {units})")
        notes.append(f"poses: {pose_source}")
    else:
        c2w, pose_source = rec.c2w_refined, "refined pose head (PnP not available; translation in the network's units)"
        notes.append(f"poses: {pose_source}")
    return {"c2w": c2w.float(), "K": K.float().expand(V, 3, 3).clone(), "pose_source": pose_source,
            "focal_source": focal_source, "inlier_fractions": fractions, "notes": notes}

# ----------------------------------------------------------------------------- points
def confident_mask(conf: torch.Tensor, drop: float = 0.5, points: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean ``(V, H, W)``: per view, the pixels whose confidence is above the view's
    ``drop``-quantile (``drop`` in [0, 1): the fraction of least confident pixels dropped;
    0 keeps every pixel) and, if ``points (V, H, W, 3)`` is given, whose point is finite."""
    if not 0.0 <= float(drop) < 1.0:
        raise ValueError(f"confidence threshold must be a fraction in [0, 1) of pixels to drop, got {drop}")
    c = conf.detach().cpu().to(torch.float64)
    if c.ndim != 3:
        raise ValueError(f"conf must be (V, H, W), got {tuple(c.shape)}")
    keep = torch.isfinite(c)
    if points is not None:
        keep &= torch.isfinite(points.detach().cpu()).all(-1)
    if drop > 0:
        for i in range(c.shape[0]):
            vals = c[i][keep[i]]
            if vals.numel() and vals.min() < vals.max():    # all equal: nothing to rank, keep all
                keep[i] &= c[i] > torch.quantile(vals, float(drop))
    return keep


def colored_points(pts: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, conf: torch.Tensor | None = None,
                   max_points: int | None = None, seed: int = 0):
    """Flatten the masked pixels: ``points (N, 3)`` float32, ``colors (N, 3)`` float in [0, 1],
    ``conf (N,)`` (or None) and ``pixel (N, 3)`` int64 ``(view, row, column)``, from
    ``pts (V, H, W, 3)``, ``images (V, 3, H, W)``, ``mask (V, H, W)``. ``max_points``: a fixed-seed
    random subset of at most that many."""
    idx = torch.nonzero(mask.cpu())
    if max_points is not None and len(idx) > max_points:
        g = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(len(idx), generator=g)[:max_points].sort().values]
    v, r, c = idx.unbind(1)
    P = pts.detach().cpu().float()[v, r, c]
    C = images.detach().cpu().float().permute(0, 2, 3, 1)[v, r, c].clamp(0, 1)
    cf = None if conf is None else conf.detach().cpu().float()[v, r, c]
    return P, C, cf, idx


def write_points_ply(path, pts, images, conf, mask, max_points: int | None = None) -> tuple[Path, int]:
    """The masked global points with their colours and confidences as a PLY; returns
    ``(path, N)``."""
    P, C, cf, _ = colored_points(pts, images, mask, conf, max_points)
    return save_points_ply(path, P, C, cf), len(P)


# ----------------------------------------------------------------------------- cameras.json
def matrix_list(x) -> list:
    """A matrix as nested lists of floats (JSON)."""
    return [[float(v) for v in row] for row in x.tolist()]


def write_cameras_json(path, c2w, K, names, hw, extra: dict | None = None, per_view: list | None = None) -> Path:
    """``cameras.json``: ``{"convention", "width", "height", "views": [{"index", "image",
    "c2w", "K", "fx", "fy", "cx", "cy"} + per_view[i]], **extra}`` (see module docstring)."""
    c2w, K, names, (H, W) = _cams(c2w, K, names, hw)
    views = []
    for i in range(len(names)):
        v = {"index": i, "image": names[i], "c2w": matrix_list(c2w[i]), "K": matrix_list(K[i]),
             "fx": float(K[i, 0, 0]), "fy": float(K[i, 1, 1]), "cx": float(K[i, 0, 2]), "cy": float(K[i, 1, 2])}
        if per_view:
            v.update(per_view[i])
        views.append(v)
    doc = {"convention": "c2w: camera-to-world 4x4, OpenCV camera axes (x right, y down, z forward); "
                         "K: pixels, OpenCV pixel centres (top-left pixel centre at (0, 0)); "
                         "world frame = view 0's camera frame (FLARE)",
           "width": W, "height": H, "views": views}
    doc.update(extra or {})
    path = Path(path)
    path.write_text(json.dumps(doc, indent=2))
    return path


# ----------------------------------------------------------------------------- COLMAP
def write_colmap_text(folder, c2w, K, names, hw, points=None, colors=None) -> list[Path]:
    """A COLMAP text model in ``folder``: ``cameras.txt``, ``images.txt``, ``points3D.txt``.

    One ``PINHOLE`` camera per image (id = image id = view index + 1) with ``cx, cy`` shifted
    by +0.5 px to COLMAP's pixel convention; ``images.txt`` holds the world-to-camera pose
    ``R_w2c`` as a (w, x, y, z) quaternion with w >= 0 and ``t_w2c``, and an empty 2D-point
    line; ``points3D.txt`` the optional ``points (N, 3)`` with ``colors (N, 3)`` (uint8 or
    float in [0, 1]), error 0 and empty tracks. Returns the three paths.
    """
    c2w, K, names, (H, W) = _cams(c2w, K, names, hw)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    Kc = cameras.gsplat_K(K)
    w2c = cameras.invert_pose(c2w)
    q = cameras.matrix_to_quat(w2c[:, :3, :3])
    V = len(names)
    cam_lines = ["# Camera list with one line of data per camera:",
                 "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
                 f"# Number of cameras: {V}"]
    img_lines = ["# Image list with two lines of data per image:",
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)",
                 f"# Number of images: {V}, mean observations per image: 0"]
    for i in range(V):
        if any(ch.isspace() for ch in names[i]):
            raise ValueError(f"COLMAP image names cannot contain whitespace, got {names[i]!r}")
        fx, fy, cx, cy = (float(Kc[i, 0, 0]), float(Kc[i, 1, 1]), float(Kc[i, 0, 2]), float(Kc[i, 1, 2]))
        cam_lines.append(f"{i + 1} PINHOLE {W} {H} {fx!r} {fy!r} {cx!r} {cy!r}")
        qw, qx, qy, qz = (float(v) for v in q[i])
        tx, ty, tz = (float(v) for v in w2c[i, :3, 3])
        img_lines.append(f"{i + 1} {qw!r} {qx!r} {qy!r} {qz!r} {tx!r} {ty!r} {tz!r} {i + 1} {names[i]}")
        img_lines.append("")
    pt_lines = ["# 3D point list with one line of data per point:",
                "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    if points is not None:
        P = torch.as_tensor(np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points),
                            dtype=torch.float64)
        if P.ndim != 2 or P.shape[1] != 3:
            raise ValueError(f"points must be (N, 3), got {tuple(P.shape)}")
        if colors is None:
            rgb = np.full((len(P), 3), 128, np.uint8)
        else:
            c = np.asarray(colors.detach().cpu() if isinstance(colors, torch.Tensor) else colors)
            if c.shape != (len(P), 3):
                raise ValueError(f"colors must be ({len(P)}, 3), got {c.shape}")
            rgb = c if c.dtype == np.uint8 else np.round(np.clip(c.astype(np.float64), 0, 1) * 255).astype(np.uint8)
        pt_lines.append(f"# Number of points: {len(P)}, mean track length: 0")
        Pn = P.numpy()
        for j in range(len(Pn)):
            x, y, z = Pn[j]
            r, g, b = rgb[j]
            pt_lines.append(f"{j + 1} {x:.7g} {y:.7g} {z:.7g} {r} {g} {b} 0")
    out = []
    for name, lines in (("cameras.txt", cam_lines), ("images.txt", img_lines), ("points3D.txt", pt_lines)):
        p = folder / name
        p.write_text("\n".join(lines) + "\n")
        out.append(p)
    return out


# ----------------------------------------------------------------------------- transforms.json
def write_transforms_json(path, c2w, K, file_paths, hw, ply_file: str | None = None) -> Path:
    """nerfstudio-style ``transforms.json``: ``transform_matrix`` = c2w in OpenGL axes,
    ``fl_x fl_y cx cy w h`` at the top level when all views share K (per frame otherwise),
    ``cx, cy`` = OpenCV + 0.5 (instant-ngp / nerfstudio pixel centres), ``camera_model``
    ``"PINHOLE"``. ``file_paths`` relative to the json's folder."""
    c2w, K, file_paths, (H, W) = _cams(c2w, K, file_paths, hw)
    Kc = cameras.gsplat_K(K)
    gl = cameras.opencv_to_opengl(c2w)

    def intr(k):
        return {"fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2]),
                "w": W, "h": H}

    shared = bool((Kc == Kc[:1]).all())
    doc = {"camera_model": "PINHOLE"}
    if shared:
        doc.update(intr(Kc[0]))
    frames = []
    for i, fp in enumerate(file_paths):
        fr = {"file_path": fp, "transform_matrix": matrix_list(gl[i])}
        if not shared:
            fr.update(intr(Kc[i]))
        frames.append(fr)
    doc["frames"] = frames
    if ply_file:
        doc["ply_file_path"] = ply_file
    path = Path(path)
    path.write_text(json.dumps(doc, indent=2))
    return path


# ----------------------------------------------------------------------------- Gaussians
def pointmap_gaussians(pts, images, mask, c2w, K) -> dict:
    """One isotropic Gaussian per masked pixel (module docstring): the export's choice of
    :func:`flare_nb.render.splats.gaussians_from_pointmap` (the one pointmap-to-Gaussians), with
    the footprint of one pixel (:data:`POINTMAP_FOOTPRINT`) and opacity :data:`POINTMAP_OPACITY`.

    ``pts (V, H, W, 3)`` world points, ``images (V, 3, H, W)`` in [0, 1], ``mask (V, H, W)``,
    ``c2w (V, 4, 4)``, ``K (V, 3, 3)`` or ``(3, 3)``. The depth of a point is ``|z|`` in its own
    camera (at least 1e-6), so ``scales`` = ``|z| / fx``. Float32 on the CPU; colours as the SH
    DC term (``sh_degree`` 0).
    """
    c2w = _tensor(c2w, "c2w", (4, 4))
    V = c2w.shape[0]
    K = torch.as_tensor(K.detach().cpu() if isinstance(K, torch.Tensor) else K, dtype=torch.float64)
    K = K.expand(V, 3, 3) if K.shape == (3, 3) else K
    P = pts.detach().cpu().double()
    z = cameras.transform_points(cameras.invert_pose(c2w), P)[..., 2]
    return gaussians_from_pointmap(P.float(), images.detach().cpu().float().clamp(0, 1),
                                   z.abs().clamp_min(1e-6).float(), K.float().contiguous(),
                                   valid=mask.detach().cpu().bool(), footprint=POINTMAP_FOOTPRINT,
                                   opacity=POINTMAP_OPACITY)


def write_gaussians_ply(path, g: dict) -> Path:
    """Gaussians in ``flare_nb.render.rasterize`` argument names (``means, quats, scales, opacities,
    colors`` RGB ``(N, 3)`` with ``sh_degree`` None, or SH ``(N, K, 3)``) as a 3DGS PLY."""
    colors = g["colors"].detach().float().cpu()
    kw = {"rgb": colors.clamp(0, 1)} if colors.ndim == 2 else {"sh": colors}
    return save_gaussians_ply(path, g["means"].detach().float().cpu(), g["quats"].detach().float().cpu(),
                              g["scales"].detach().float().cpu().clamp_min(1e-12),
                              g["opacities"].detach().float().cpu().reshape(-1), **kw)


def thin_gaussians(g: dict, max_gaussians: int, seed: int = 0) -> dict:
    """A fixed-seed random subset of at most ``max_gaussians`` of ``g``, with every scale
    multiplied by ``sqrt(N / max_gaussians)`` so that the splats still cover the surface (a
    preview for slow CPU rendering; the PLY keeps them all). ``g`` itself if small enough."""
    N = len(g["means"])
    if max_gaussians is None or N <= max_gaussians:
        return g
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:max_gaussians].sort().values
    out = {k: (v[idx] if isinstance(v, torch.Tensor) and len(v) == N else v) for k, v in g.items()}
    out["scales"] = out["scales"] * math.sqrt(N / max_gaussians)
    return out


def render_gaussians(g: dict, c2w, K, hw, device="cpu", background=(1.0, 1.0, 1.0),
                     max_gaussians: int | None = None) -> torch.Tensor:
    """A preview render of ``g`` into the cameras ``c2w (V, 4, 4)``, ``K (V, 3, 3)`` (OpenCV pixel
    centres) with :func:`flare_nb.render.splats.render_views` (the one renderer of our cameras),
    one camera at a time with the Gaussians far outside its view culled first (bounded memory);
    ``max_gaussians``: render :func:`thin_gaussians` instead. Returns ``(V, H, W, 3)`` float32
    in [0, 1] on the CPU."""
    g = thin_gaussians(g, max_gaussians)
    c2w, K, _, (H, W) = _cams(c2w, K, [str(i) for i in range(len(c2w))], hw)
    dev = torch.device(device)
    g = {k: (v.detach().to(dev, torch.float32).contiguous() if isinstance(v, torch.Tensor) and v.is_floating_point()
             else v) for k, v in g.items()}
    g["opacities"] = g["opacities"].reshape(-1)
    c2w, K = c2w.to(dev, torch.float32), K.to(dev, torch.float32)
    bg = torch.tensor(background, dtype=torch.float32, device=dev)
    w2c = cameras.invert_pose(c2w)
    out = []
    for i in range(len(c2w)):
        # cheap pre-cull: centres in front of the camera and within a generous image margin
        Xc = g["means"] @ w2c[i, :3, :3].T + w2c[i, :3, 3]
        z = Xc[:, 2].clamp_min(1e-9)
        u = K[i, 0, 0] * Xc[:, 0] / z + K[i, 0, 2]
        v = K[i, 1, 1] * Xc[:, 1] / z + K[i, 1, 2]
        keep = torch.nonzero((Xc[:, 2] > 0.01) & (u > -W) & (u < 2 * W) & (v > -H) & (v < 2 * H)).squeeze(1)
        if len(keep) == 0:
            out.append(bg.cpu().expand(H, W, 3).clone())
            continue
        gi = {k: (v[keep] if isinstance(v, torch.Tensor) and len(v) == len(g["means"]) else v) for k, v in g.items()}
        r = render_views(gi, c2w[i:i + 1], K[i:i + 1], (H, W), background=bg)
        out.append(r.rgb[0].permute(1, 2, 0).clamp(0, 1).cpu())
    return torch.stack(out)


# ----------------------------------------------------------------------------- images
def save_image(path, img) -> Path:
    """``img (3, H, W)`` or ``(H, W, 3)`` float in [0, 1] -> 8-bit PNG at ``path``."""
    from PIL import Image

    a = img.detach().cpu().float() if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img)).float()
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.permute(1, 2, 0)
    a = (a.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    path = Path(path)
    Image.fromarray(a).save(path)
    return path


def save_render_grid(path, inputs: torch.Tensor, renders: torch.Tensor) -> Path:
    """Inputs ``(V, 3, H, W)`` on the top row, renders ``(V, H, W, 3)`` below, as one PNG."""
    top = torch.cat(list(inputs.detach().cpu().float().permute(0, 2, 3, 1)), dim=1)
    bottom = torch.cat(list(renders.detach().cpu().float()), dim=1)
    return save_image(path, torch.cat([top, bottom], dim=0))


def save_summary_figure(path, c2w, K, hw, points, colors, images, title: str = "") -> Path:
    """One PNG: the input views (view 0 = reference) and a 3D plot of the cameras and points
    (:func:`flare_nb.viz.plot_cameras`)."""
    from matplotlib.figure import \
        Figure  # a pyplot-free figure: never touches the notebook's backend


    V = images.shape[0]
    ncol = min(V, 4)
    nrow = math.ceil(V / ncol)
    fig = Figure(figsize=(3 * ncol + 6, max(3 * nrow, 6)))
    gs = fig.add_gridspec(nrow, ncol + 2)
    for i in range(V):
        ax = fig.add_subplot(gs[i // ncol, i % ncol])
        ax.imshow(images[i].detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(f"view {i}" + (" (reference)" if i == 0 else ""), fontsize=9)
        ax.axis("off")
    ax3 = fig.add_subplot(gs[:, ncol:], projection="3d")
    pts = None if points is None or len(points) == 0 else points
    plot_cameras(c2w, K, hw, ax=ax3, points=pts, colors=None if pts is None else colors, max_points=20000)
    ax3.set_title("cameras and points", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=80)
    return path
