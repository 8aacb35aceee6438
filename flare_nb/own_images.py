"""Your own photos through FLARE, step by step (notebook 08).

The ``flare-nb reconstruct`` command (:mod:`flare_nb.cli`) runs these steps in one go; the
notebook runs them one at a time with these helpers around :mod:`flare_nb.scenes.preprocess`,
:mod:`flare_nb.scenes.reference_view`, :mod:`flare_nb.inference` and :mod:`flare_nb.export`:

* :func:`photo_table`, :func:`load_photos`, :func:`crop_box`, :func:`plot_preprocessing` --
  the photos, their EXIF orientation and the official scale-to-cover + centre crop;
* :func:`plot_similarity` -- the reference-view choice;
* :func:`confidence_points`, :func:`plot_confidence`, :func:`confidence_callback`,
  :func:`make_confidence_widget` -- the confidence-threshold widget and its plain callback;
* :func:`list_files`, :func:`read_back_exports` -- what was written, read back by each
  format's own reader.

Conventions as in the README: ``c2w (V, 4, 4)`` camera-to-world, OpenCV axes; ``K`` OpenCV
pixel centres; images ``(V, 3, H, W)`` in [0, 1]; pointmaps ``(V, H, W, 3)``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from flare_nb.export import colored_points, confident_mask
from flare_nb.render.ply import load_gaussians_ply, load_points_ply
from flare_nb.scenes.preprocess import (check_one_orientation, load_image,
                                        load_images)
from flare_nb.scenes.scene import load_colmap, load_nerf
from flare_nb.viz import plot_cameras
from flare_nb.panel import figure_panel

__all__ = ["photo_table", "load_photos", "crop_box", "plot_preprocessing", "plot_similarity",
           "confidence_points", "plot_confidence", "confidence_callback", "make_confidence_widget", "list_files",
           "human_size", "read_back_exports"]

EXIF_ORIENTATION = 0x0112


# ----------------------------------------------------------------------------- photos
def photo_table(paths) -> list[dict]:
    """Per photo: ``name``, ``bytes``, ``stored_size`` (W, H as stored in the file),
    ``exif_orientation`` (1 = upright, 6 / 8 = rotated 90 degrees, None = no tag) and
    ``size`` (W, H after the orientation is applied, what the model sees before resizing)."""
    from PIL import Image


    rows = []
    for p in map(Path, paths):
        with Image.open(p) as im:
            stored, orient = im.size, im.getexif().get(EXIF_ORIENTATION)
        rows.append({"name": p.name, "bytes": p.stat().st_size, "stored_size": stored, "exif_orientation": orient,
                     "size": load_image(p).size})
    return rows


def load_photos(paths, size) -> tuple[torch.Tensor, list[dict], list[str]]:
    """The CLI's preprocessing: ``(images (V, 3, H, W) in [0, 1], info, notes)``.

    Each photo is oriented by its EXIF tag and scaled-to-cover + centre-cropped to ``size =
    (W, H)`` (:func:`flare_nb.scenes.preprocess.load_images`); portrait photos get the transposed
    target. A set that mixes portrait and landscape photos is refused (ValueError,
    :func:`flare_nb.scenes.preprocess.check_one_orientation`). ``info``: per view ``path``,
    ``src_size``, ``scale``, ``resized``, ``crop_left_top``, ``size``; ``notes`` is empty
    (kept for callers)."""

    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wh = [load_image(p).size for p in paths]
    check_one_orientation([Path(p).name for p in paths], wh, size)
    x01, _, info = load_images(paths, size=size)
    return x01, info, notes


def crop_box(info: dict) -> tuple[float, float, float, float]:
    """The part of the (oriented) source photo the model sees: ``(x0, y0, x1, y1)`` in source
    pixels (pixel corners, ``0 .. W``), from one ``info`` record of :func:`load_photos`:
    the crop ``[left, left + W_t) x [top, top + H_t)`` of the resized image divided by the
    scale ``s``. ValueError for a record without resizing."""
    if "scale" not in info or "crop_left_top" not in info:
        raise ValueError(f"info of {info.get('path', 'this image')} has no resize/crop record (was size given?)")
    s = float(info["scale"])
    (left, top), (W, H) = info["crop_left_top"], info["size"]
    return left / s, top / s, (left + W) / s, (top + H) / s


def plot_preprocessing(paths, info: list[dict], images: torch.Tensor, max_views: int = 4):
    """Top row: each photo (oriented) with the crop the model sees as a red box and its sizes;
    bottom row: the model input ``images (V, 3, H, W)``. At most ``max_views`` columns.
    Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle


    n = min(len(paths), max_views)
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 5.2), squeeze=False)
    for i in range(n):
        im = load_image(paths[i])
        x0, y0, x1, y1 = crop_box(info[i])
        ax = axes[0, i]
        ax.imshow(im)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="red", linewidth=2))
        ax.set_title(f"{Path(paths[i]).name[:22]}\n{im.size[0]}x{im.size[1]}, s = {info[i]['scale']:.3f}", fontsize=8)
        ax.axis("off")
        axes[1, i].imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        axes[1, i].set_title(f"input {info[i]['size'][0]}x{info[i]['size'][1]}", fontsize=8)
        axes[1, i].axis("off")
    fig.tight_layout()
    return fig


def plot_similarity(S: torch.Tensor, scores: torch.Tensor, ref: int, names=None):
    """The ``(V, V)`` similarity matrix (:func:`flare_nb.scenes.reference_view.similarity_matrix`) and
    each view's mean similarity to the others, the chosen reference ``ref`` highlighted.
    Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    V = S.shape[0]
    names = [str(i) for i in range(V)] if names is None else [str(n)[:14] for n in names]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    m = a.imshow(S.numpy(), vmin=float(S.min()), vmax=1.0, cmap="viridis")
    a.set_xticks(range(V), names, rotation=60, fontsize=7)
    a.set_yticks(range(V), names, fontsize=7)
    for i in range(V):
        for j in range(V):
            a.text(j, i, f"{float(S[i, j]):.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(m, ax=a, fraction=0.046)
    a.set_title("similarity (histogram + thumbnail)", fontsize=9)
    col = ["tab:red" if i == ref else "tab:blue" for i in range(V)]
    b.bar(np.arange(V), scores.numpy(), color=col)
    b.set_xticks(range(V), names, rotation=60, fontsize=7)
    b.set_ylim(float(scores.min()) - 0.05, float(scores.max()) + 0.02)
    b.set_title(f"mean similarity to the others: reference = {names[ref]} (red)", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- cameras
# ----------------------------------------------------------------------------- confidence widget
def confidence_points(pts: torch.Tensor, conf: torch.Tensor, images: torch.Tensor, drop: float,
                      max_points: int | None = None) -> dict:
    """Keep each view's points above its ``drop``-quantile of confidence
    (:func:`flare_nb.export.confident_mask`, ``drop`` in [0, 1)). ``pts (V, H, W, 3)``,
    ``conf (V, H, W)``, ``images (V, 3, H, W)``. Returns ``mask (V, H, W)``, ``n_kept``,
    ``n_total``, ``fraction``, ``per_view (V,)`` kept fractions, ``points (N, 3)``,
    ``colors (N, 3)`` (at most ``max_points``, fixed-seed subset) and ``drop``."""

    mask = confident_mask(conf, drop, pts)
    P, C, _, _ = colored_points(pts, images, mask, max_points=max_points)
    n = int(mask.sum())
    return {"mask": mask, "n_kept": n, "n_total": mask.numel(), "fraction": n / mask.numel(),
            "per_view": mask.flatten(1).float().mean(1), "points": P, "colors": C, "drop": float(drop)}


def plot_confidence(res: dict, c2w=None, K=None, hw=None):
    """Left: the kept pixels of each view (white = kept); right: the kept points in 3D with
    the cameras (:func:`flare_nb.viz.plot_cameras`). Returns the figure."""
    import matplotlib.pyplot as plt


    mask = res["mask"]
    V = mask.shape[0]
    fig = plt.figure(figsize=(2.2 * V + 5, 4))
    gs = fig.add_gridspec(1, V + 3)
    for i in range(V):
        ax = fig.add_subplot(gs[0, i])
        ax.imshow(mask[i].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"view {i}: {float(res['per_view'][i]):.0%}", fontsize=8)
        ax.axis("off")
    ax3 = fig.add_subplot(gs[0, V:], projection="3d")
    if c2w is not None:
        plot_cameras(c2w, K, hw, ax=ax3, points=res["points"] if len(res["points"]) else None,
                     colors=res["colors"] if len(res["points"]) else None, max_points=8000)
    elif len(res["points"]):
        P, C = res["points"].numpy(), res["colors"].numpy()
        ax3.scatter(P[:, 0], P[:, 1], P[:, 2], c=C, s=1, depthshade=False, linewidths=0)
    ax3.set_title(f"drop {res['drop']:.0%}: {res['n_kept']} of {res['n_total']} points kept", fontsize=9)
    return fig


def _confidence_line(res: dict) -> str:
    return (f"drop the least confident {res['drop']:.0%} per view: {res['n_kept']} of {res['n_total']} points kept "
            f"({res['fraction']:.1%})")


def confidence_callback(pts, conf, images, drop: float = 0.5, c2w=None, K=None, hw=None, show: bool = True,
                        max_points: int = 8000) -> dict:
    """What the confidence widget draws, as a plain call: :func:`confidence_points`, one printed
    line and (``show``) :func:`plot_confidence`. Returns the dict of :func:`confidence_points`."""
    res = confidence_points(pts, conf, images, drop, max_points=max_points)
    print(_confidence_line(res))
    if show:
        import matplotlib.pyplot as plt

        plot_confidence(res, c2w, K, hw)
        plt.show()
    return res


def make_confidence_widget(pts, conf, images, c2w=None, K=None, hw=None, value: float = 0.5,
                           max_points: int = 8000):
    """A slider (fraction of each view's least confident points to drop, 0-0.95) above the
    line and figure of :func:`confidence_callback`, as a :func:`flare_nb.panel.figure_panel`
    (drawn without output capture, so a headless papermill run does not stall on it). Display
    it as a cell's last expression."""
    import ipywidgets as W


    def draw(drop):
        res = confidence_points(pts, conf, images, drop, max_points=max_points)
        return [_confidence_line(res), plot_confidence(res, c2w, K, hw)]

    return figure_panel(draw, {"drop": W.FloatSlider(value=value, min=0.0, max=0.95, step=0.05, description="drop",
                                                     continuous_update=False)})


# ----------------------------------------------------------------------------- files
def human_size(n: int) -> str:
    """``1536`` -> ``"1.5 KB"``."""
    n = float(n)
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def list_files(folder) -> list[tuple[str, int]]:
    """Every file under ``folder`` (recursively, sorted): ``(relative path, bytes)``.
    FileNotFoundError if ``folder`` is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such output folder: {folder}")
    return [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()]


def read_back_exports(folder) -> dict:
    """Read the exports in ``folder`` back with each format's reader and return what they hold:
    ``cameras_json_views``, ``cameras_json_c2w (V, 4, 4)``, ``colmap_images``,
    ``colmap_points`` (pycolmap), ``colmap_c2w`` (:func:`flare_nb.scenes.scene.load_colmap`, in
    image-name order), ``transforms_c2w`` (:func:`flare_nb.scenes.scene.load_nerf`, OpenCV),
    ``points`` (points.ply), ``gaussians`` (gaussians.ply). Any reader's error propagates
    (FileNotFoundError names the missing file)."""
    import json

    import pycolmap


    folder = Path(folder)
    for name in ("cameras.json", "transforms.json", "points.ply", "gaussians.ply", "sparse/0/cameras.txt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing; expected the exports of notebook 08 / flare-nb")
    doc = json.loads((folder / "cameras.json").read_text())
    model = pycolmap.Reconstruction(str(folder / "sparse" / "0"))
    colmap = load_colmap(folder / "sparse" / "0", folder / "images")
    nerf = load_nerf(folder / "transforms.json")
    return {"cameras_json_views": len(doc["views"]),
            "cameras_json_c2w": torch.tensor([v["c2w"] for v in doc["views"]], dtype=torch.float64),
            "colmap_images": model.num_reg_images(), "colmap_points": model.num_points3D(),
            "colmap_c2w": colmap.c2w, "transforms_c2w": nerf.c2w,
            "points": len(load_points_ply(folder / "points.ply")["points"]),
            "gaussians": len(load_gaussians_ply(folder / "gaussians.ply")["means"])}
