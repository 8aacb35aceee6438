"""Known camera intrinsics for ``flare-nb``: given on the command line, from a file, or from EXIF.

Semantics (``--intrinsics``): ``fx fy cx cy`` in pixels of the ORIGINAL photo as it is
displayed (after its EXIF orientation), before any resizing or cropping; principal point in
the OpenCV convention (the centre of the top-left pixel is ``(0, 0)``, so an exactly centred
principal point of a ``W x H`` photo is ``((W - 1) / 2, (H - 1) / 2)``; COLMAP and nerfstudio
put it at ``(W / 2, H / 2)``: subtract 0.5). ``flare-nb`` carries them through the official
resize + centre crop (:func:`flare_nb.scenes.preprocess.resize_crop`) into pixels of the model
input. Where they go: the geometry model has no intrinsics input (FLARE predicts the focal
through its pointmaps), so known intrinsics replace the estimated focal in PnP and in every
exported camera; the NVS model also takes them as input.

Sources, in order (:func:`resolve_intrinsics`; ``report.md`` says which one was used):

* ``given``: ``--intrinsics fx fy cx cy`` (one camera for every photo) or ``--intrinsics FILE``:
  a JSON object ``{"photo.jpg": [fx, fy, cx, cy], ...}`` or ``{"fx": .., "fy": .., "cx": ..,
  "cy": ..}`` (every photo), or a text file of lines ``photo.jpg fx fy cx cy`` (``#``
  comments allowed) or one line ``fx fy cx cy``. Every photo must be covered.
* ``EXIF``: when every photo's EXIF holds a focal length (:func:`exif_focal_px`):
  ``FocalLengthIn35mmFilm`` (``f_px = f35 / 36 mm * max(W, H)``: the 35 mm frame's long side
  is 36 mm), else ``FocalLength`` with the sensor's ``FocalPlaneXResolution`` (and its unit),
  rescaled when ``ExifImageWidth`` says the photo was resized; principal point at the centre.
  ``--intrinsics exif`` requires it (error naming the first photo without it).
* ``estimated``: FLARE's own focal from view 0's global pointmap (the release's demo);
  ``--intrinsics estimate`` forces it, ignoring EXIF.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["parse_intrinsics_option", "read_intrinsics_file", "exif_focal_px", "resolve_intrinsics", "K_matrix"]

EXIF_IFD = 0x8769
TAG_FOCAL = 0x920A
TAG_FOCAL_35 = 0xA405
TAG_PLANE_XRES = 0xA20E
TAG_PLANE_UNIT = 0xA210
TAG_EXIF_WIDTH = 0xA002
TAG_EXIF_HEIGHT = 0xA003
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}      # inch, cm, mm, micrometre


def _numbers(values, where: str) -> list[float]:
    try:
        nums = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected 4 numbers fx fy cx cy (pixels of the original photo), "
                         f"got {' '.join(map(str, values))!r}") from None
    if len(nums) != 4:
        raise ValueError(f"{where}: expected 4 numbers fx fy cx cy (pixels of the original photo), got {len(nums)}: "
                         f"{' '.join(map(str, values))}")
    fx, fy, cx, cy = nums
    if not all(math.isfinite(v) for v in nums) or fx <= 0 or fy <= 0:
        raise ValueError(f"{where}: fx and fy must be positive and all four values finite, got {nums}")
    return nums


def parse_intrinsics_option(values) -> tuple[str, object]:
    """``--intrinsics`` words -> ``(mode, value)``: ``("auto", None)`` (not given),
    ``("exif", None)``, ``("estimate", None)``, ``("all", [fx, fy, cx, cy])`` or ``("file", Path)``.
    ValueError naming the option for a wrong count or a missing file."""
    if not values:
        return "auto", None
    values = [str(v) for v in values]
    if len(values) == 1 and values[0].lower() in ("auto", "exif", "estimate"):
        return values[0].lower(), None
    if len(values) == 1:
        p = Path(values[0])
        if p.is_file():
            return "file", p
        try:
            float(values[0])
        except ValueError:
            raise FileNotFoundError(f"--intrinsics {values[0]}: no such file; pass fx fy cx cy (4 numbers), a file, "
                                    "'exif' or 'estimate'") from None
    return "all", _numbers(values, "--intrinsics")


def read_intrinsics_file(path, names: list[str]) -> dict[str, list[float]]:
    """``{photo name: [fx, fy, cx, cy]}`` for every name in ``names`` from ``path`` (JSON or
    text lines, module docstring). ValueError naming the file and what is wrong."""
    path = Path(path)
    where = f"--intrinsics {path}"
    text = path.read_text(errors="replace")
    table: dict[str, list[float]] = {}
    shared = None
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if set(doc) == {"fx", "fy", "cx", "cy"}:
            shared = _numbers([doc[k] for k in ("fx", "fy", "cx", "cy")], where)
        else:
            for k, v in doc.items():
                if isinstance(v, dict):
                    v = [v.get(c) for c in ("fx", "fy", "cx", "cy")]
                if not isinstance(v, (list, tuple)):
                    raise ValueError(f"{where}: the entry of {k!r} must be [fx, fy, cx, cy], got {v!r}")
                table[Path(k).name] = _numbers(v, f"{where} ({k})")
    else:
        for n, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) == 4 and shared is None and not table:
                try:
                    shared = _numbers(words, f"{where} line {n}")
                    continue
                except ValueError:
                    pass
            if len(words) != 5:
                raise ValueError(f"{where} line {n}: expected 'photo.jpg fx fy cx cy' (or one line 'fx fy cx cy'), "
                                 f"got {len(words)} values")
            table[Path(words[0]).name] = _numbers(words[1:], f"{where} line {n}")
    if shared is not None:
        if table:
            raise ValueError(f"{where}: mixes a line for every photo with per-photo lines; use one or the other")
        return {n: list(shared) for n in names}
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"{where} has no intrinsics for {len(missing)} photo(s): {', '.join(missing[:5])}; "
                         f"add a line '{missing[0]} fx fy cx cy' for each")
    return {n: table[n] for n in names}


def exif_focal_px(path) -> tuple[float, str] | None:
    """The focal length in pixels of the photo as displayed, from its EXIF, and how it was
    found; None without a usable tag."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        exif = im.getexif()
        try:
            sub = exif.get_ifd(EXIF_IFD)
        except (KeyError, AttributeError, ValueError):
            sub = {}
        tags = {**dict(exif), **dict(sub)}
        W, H = ImageOps.exif_transpose(im).size if exif.get(0x0112, 1) != 1 else im.size

    def num(tag):
        try:
            v = float(tags[tag])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
        return v if math.isfinite(v) and v > 0 else None

    f35 = num(TAG_FOCAL_35)
    if f35:
        return f35 / 36.0 * max(W, H), f"EXIF FocalLengthIn35mmFilm {f35:g} mm"
    f, xres = num(TAG_FOCAL), num(TAG_PLANE_XRES)
    unit = _UNIT_MM.get(int(num(TAG_PLANE_UNIT) or 2))
    if f and xres and unit:
        px = f * xres / unit                      # pixels of the sensor image
        ew = num(TAG_EXIF_WIDTH)
        eh = num(TAG_EXIF_HEIGHT)
        if ew and eh:                             # the photo was resized since: scale with it
            px *= max(W, H) / max(ew, eh)
        return px, f"EXIF FocalLength {f:g} mm and FocalPlaneXResolution"
    return None


def K_matrix(fx: float, fy: float, cx: float, cy: float):
    import torch

    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def resolve_intrinsics(option, photos, sizes) -> tuple[object, str, list[str]]:
    """``(K (V, 3, 3) float64 in original-photo pixels or None, source, notes)`` for the photos
    (``sizes``: each photo's (W, H) as displayed). ``source`` is ``"given"``, ``"EXIF"`` or
    ``"estimated"``. ``option`` is the ``--intrinsics`` value (a list of words or None)."""
    import torch

    mode, value = parse_intrinsics_option(option)
    names = [Path(p).name for p in photos]
    if mode == "all":
        return torch.stack([K_matrix(*value) for _ in photos]), "given", [
            f"intrinsics given: fx {value[0]:g}, fy {value[1]:g}, cx {value[2]:g}, cy {value[3]:g} px of the "
            "original photos (every photo)"]
    if mode == "file":
        table = read_intrinsics_file(value, names)
        return torch.stack([K_matrix(*table[n]) for n in names]), "given", [f"intrinsics given in {value}"]
    if mode == "estimate":
        return None, "estimated", []
    found = [exif_focal_px(p) for p in photos]
    if all(found):
        Ks = torch.stack([K_matrix(f, f, (W - 1) / 2, (H - 1) / 2) for (f, _), (W, H) in zip(found, sizes)])
        how = sorted({h for _, h in found})
        return Ks, "EXIF", [f"intrinsics from EXIF ({'; '.join(how)}), principal point at the photo centre"]
    if mode == "exif":
        first = names[found.index(None)]
        raise ValueError(f"--intrinsics exif: {first} has no focal length in its EXIF (FocalLengthIn35mmFilm or "
                         "FocalLength + FocalPlaneXResolution); pass --intrinsics fx fy cx cy, a file, or leave "
                         "--intrinsics out to let FLARE estimate the focal")
    notes = []
    if any(found):
        notes.append(f"EXIF focal found in {sum(map(bool, found))} of {len(found)} photos only: not used, the "
                     "focal is estimated")
    return None, "estimated", notes
