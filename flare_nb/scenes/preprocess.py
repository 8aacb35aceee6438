"""Image loading and the official FLARE input preprocessing (notebooks 00 and 08).

The preprocessing reproduces the official FLARE data path (its ``CustomDataset`` / Re10K
loaders, checked pixel-identical against ``data/flare_reference``):

1. scale ``s = max(W_t / W, H_t / H) + 1e-8`` so that the image *covers* the target size;
2. resize to ``(floor(W s), floor(H s))`` with PIL ``LANCZOS`` when shrinking (``s < 1``),
   ``BICUBIC`` otherwise;
3. centre-crop to ``(W_t, H_t)``; the crop's left/top offset is ``round(0.5 * margin)`` with
   numpy's round-half-to-even (a margin of 201 px gives an offset of 100);
4. intrinsics follow with the pixel-*corner* convention: ``f' = f s`` and
   ``c' = (c + 0.5) s - 0.5 - 0.5 (N s - floor(N s))`` (``N`` = W for cx, H for cy; the last
   term is the sub-pixel share of the resize that the official code also subtracts), then
   minus the integer crop offset;
5. the model input is ``(u8 / 255 - 0.5) / 0.5`` in [-1, 1]; we keep images in [0, 1]
   (``Scene.images``) and convert with :func:`to_model_input`.

Portrait images (official rule, from ``_crop_resize_if_necessary`` of the FLARE datasets):
the target size is given landscape (``W_t >= H_t``); when an image is clearly portrait,
``H > 1.1 W``, the target is transposed to ``(H_t, W_t)``. So ``size=(512, 384)`` turns a
1080x1920 phone photo into a 384x512 input, not a strip cut out of its middle. Images whose
aspect lies between keep the landscape target. A target given portrait (``W_t < H_t``) is used
as given. (The official gradio demo instead always centre-crops to landscape 512x384; pass
``auto_orient=False`` for that.) All views of a scene must end up the same size.

Sizes must be multiples of 64 (FLARE's coarse pose stage works on 64-px tokens): see
:func:`check_size`.

Shapes: images ``(V, 3, H, W)`` float32; ``K`` ``(V, 3, 3)`` float32, OpenCV pixel centres
(README "Conventions").
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # annotations only
    import torch

# torch is imported where tensors are made, so that checking sizes and decoding photos (the
# flare-nb command's checks before any work) does not wait for it

try:  # optional: HEIC/HEIF photos straight from a phone
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORT = True
except ImportError:  # pragma: no cover - depends on the environment
    HEIF_SUPPORT = False

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".heif")
PORTRAIT_RATIO = 1.1  # H > 1.1 W counts as portrait (official rule)
PATCH = 64            # H and W must be multiples of this


# --------------------------------------------------------------------------- loading
def load_image(path) -> Image.Image:
    """Open ``path`` as an 8-bit RGB ``PIL.Image`` with its EXIF orientation applied.

    Grayscale, RGBA/LA (alpha dropped), palette, CMYK and 16-bit images are converted to 8-bit
    RGB (16-bit values are scaled by 255/65535, not clipped). Raises ``FileNotFoundError`` for
    a missing file and ``ValueError`` naming the file for one that is not a readable image
    (corrupt, truncated, another format, HEIC without ``pillow-heif``, or more pixels than PIL's
    decompression-bomb limit, ``2 * Image.MAX_IMAGE_PIXELS``). PIL's warning for images above
    ``Image.MAX_IMAGE_PIXELS`` is silenced: callers report big photos themselves.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ValueError(f"expected an image file, got a folder: {path}")
    if path.suffix.lower() in (".heic", ".heif") and not HEIF_SUPPORT:
        raise ValueError(f"{path} is a HEIC/HEIF photo; install pillow-heif "
                         "(`pip install pillow-heif`) to read it, or convert it to JPEG/PNG")
    try:
        with warnings.catch_warnings():           # PIL's size warning: the caller reports big photos
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # decode now, so truncated / corrupt data fails here
                im = ImageOps.exif_transpose(im)
                return _to_rgb8(im)
    except Image.DecompressionBombError:
        w, h = _stored_size(path)
        raise ValueError(f"{path} is {w}x{h} ({w * h / 1e6:.0f} megapixels), more than the "
                         f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels PIL decodes; downscale it "
                         "(e.g. to 8000 px on the long side)") from None
    except UnidentifiedImageError as e:
        raise ValueError(f"{path} is not an image PIL can read (expected JPEG, PNG, ...): {e}") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path} could not be decoded (corrupt or truncated image file?): {e}") from None


def _stored_size(path) -> tuple[int, int]:
    """Width and height as stored in the file header (no decoding, no size limit)."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:
            return im.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _to_rgb8(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        scale = 255.0 if a.max() <= 1.0 else 1.0
        a = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")  # L, LA, RGBA, P, CMYK, YCbCr, 1 ...


# --------------------------------------------------------------------------- sizes
def check_size(size) -> tuple[int, int]:
    """``size`` as ``(W, H)`` -- the workbook's one size order, as the CLI's ``WxH`` -- both
    positive multiples of 64 (an int means square). Returns ``(W, H)`` as ints, else
    ``ValueError`` naming the bad value and the nearest valid sizes."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2:
        raise ValueError(f"size must be an int or a pair (W, H) of ints, got {size!r}")
    W, H = size
    for name, v in (("width", W), ("height", H)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise ValueError(f"image {name} must be an int, got {v!r}")
    bad = [(n, v) for n, v in (("width", W), ("height", H)) if v <= 0 or v % PATCH]
    if bad:
        msg = ", ".join(f"{n} {v}" for n, v in bad)
        lo = f"{max(PATCH, (W // PATCH) * PATCH)}x{max(PATCH, (H // PATCH) * PATCH)}"
        hi = f"{max(PATCH, -(-W // PATCH) * PATCH)}x{max(PATCH, -(-H // PATCH) * PATCH)}"
        raise ValueError(f"image size {W}x{H} (WxH) is not usable: {msg} is not a positive multiple of {PATCH}; "
                         f"sizes must be multiples of {PATCH} (FLARE's coarse pose stage uses 64-px tokens); nearest valid "
                         f"size {_nearest(W)}x{_nearest(H)} (round down {lo}, round up {hi})")
    return int(W), int(H)


def _nearest(v: int) -> int:
    return max(PATCH, int(round(v / PATCH)) * PATCH)


def oriented_size(size, image_wh, auto_orient: bool = True) -> tuple[int, int]:
    """Target ``(W_t, H_t)`` for an image of size ``image_wh = (W, H)``: the official portrait
    rule transposes a landscape target when ``H > 1.1 W`` (see module docstring)."""
    Wt, Ht = size
    W, H = image_wh
    if auto_orient and Wt > Ht and H > PORTRAIT_RATIO * W:
        return Ht, Wt
    return Wt, Ht


# --------------------------------------------------------------------------- resize + crop
def resize_crop(img: Image.Image, size, K=None):
    """Official rescale + centre crop of one RGB ``PIL.Image`` to ``size = (W_t, H_t)``.

    ``K``: optional 3x3 intrinsics (array or tensor, OpenCV pixel centres) of ``img``.
    Returns ``(img_cropped, K_new)``: the ``W_t x H_t`` PIL image and the float64 numpy 3x3 K
    of the crop (``None`` if ``K`` was ``None``). No orientation logic here (see
    :func:`oriented_size`); ``size`` need not be a multiple of 64 at this level.
    """
    Wt, Ht = int(size[0]), int(size[1])
    if Wt <= 0 or Ht <= 0:
        raise ValueError(f"target size must be positive, got {Wt}x{Ht}")
    W, H = img.size
    s = max(Wt / W, Ht / H) + 1e-8
    Wr, Hr = math.floor(W * s), math.floor(H * s)
    resample = Image.LANCZOS if s < 1 else Image.BICUBIC
    resized = img.resize((Wr, Hr), resample=resample)
    left = int(np.round(0.5 * (Wr - Wt)))
    top = int(np.round(0.5 * (Hr - Ht)))
    out = resized.crop((left, top, left + Wt, top + Ht))
    K_new = None
    if K is not None:
        import torch

        K = np.array(K.detach().cpu().numpy() if torch.is_tensor(K) else K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"K must be 3x3, got shape {K.shape}")
        K_new = K.copy()
        K_new[:2, :] *= s                       # focal, skew (and the corner-shifted centre below)
        K_new[0, 2] = (K[0, 2] + 0.5) * s - 0.5 - 0.5 * (W * s - Wr) - left
        K_new[1, 2] = (K[1, 2] + 0.5) * s - 0.5 - 0.5 * (H * s - Hr) - top
        K_new[2] = K[2]
    return out, K_new


# --------------------------------------------------------------------------- tensors
def pil_to_tensor01(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float32 ``(3, H, W)`` in [0, 1] (``u8 / 255``)."""
    import torch

    a = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(a.astype(np.float32) / np.float32(255.0)).permute(2, 0, 1).contiguous()


def to_model_input(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (any shape) -> the model's [-1, 1] input ``(x - 0.5) / 0.5``."""
    return (x01 - 0.5) / 0.5


def from_model_input(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_model_input`: [-1, 1] -> [0, 1]."""
    return x * 0.5 + 0.5


def images_to_tensor(images) -> torch.Tensor:
    """A list of same-size PIL images (or ``(H, W, 3)`` uint8 arrays) -> float32
    ``(V, 3, H, W)`` in [0, 1]. ``ValueError`` if the sizes differ."""
    import torch

    ts = [pil_to_tensor01(im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)))
          for im in images]
    if not ts:
        raise ValueError("images_to_tensor needs at least one image")
    shapes = {tuple(t.shape) for t in ts}
    if len(shapes) > 1:
        raise ValueError(f"all images must have the same size to be stacked, got (3,H,W) shapes "
                         f"{sorted(shapes)}; pass size=(W, H) to resize them")
    return torch.stack(ts)


def check_one_orientation(names, image_wh, size) -> None:
    """Raise ValueError (one line naming the photos) when images of sizes ``image_wh`` (W, H)
    would get different targets from ``size`` (:func:`oriented_size`), i.e. the set mixes
    portrait and landscape photos. The release preprocesses each view at its own orientation
    and passes a per-view ``true_shape`` (its heads split such a batch by orientation);
    ``flare_nb`` runs one orientation per call and does not crop one of them away silently."""
    targets = [oriented_size(size, wh) for wh in image_wh]
    if len(set(targets)) <= 1:
        return
    port = [str(n) for n, t in zip(names, targets) if t[0] < t[1]]
    land = [str(n) for n, t in zip(names, targets) if t[0] >= t[1]]
    raise ValueError(f"the photos mix portrait ({', '.join(port)}) and landscape ({', '.join(land)}) views; the "
                     "released model takes each view at its own orientation (per-view true_shape), which "
                     "flare_nb does not reproduce: reconstruct one orientation at a time, or rotate or crop the "
                     "photos to one orientation first")


def load_images(paths, size=None, K=None, auto_orient: bool = True):
    """Load images, optionally run the official preprocessing to ``size = (W, H)``.

    ``paths``: a list of image files. ``K``: optional intrinsics of the files as shipped,
    ``(3, 3)`` (shared) or ``(V, 3, 3)``. ``size=None`` keeps the images as they are (they must
    all have the same size). With ``size`` (multiples of 64, landscape or square; portrait
    images get the transposed target, see module docstring) images and K follow the official
    rescale + centre crop.

    Returns ``(images01, K_new, info)``: float32 ``(V, 3, H, W)`` in [0, 1]; float32
    ``(V, 3, 3)`` or ``None``; ``info`` a list with, per view, ``path``, ``src_size`` (W, H),
    ``size`` (W, H) and, when resized, ``scale``, ``resized`` and ``crop_left_top``.
    """
    import torch

    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("load_images needs at least one image path, got none")
    if size is not None:
        size = check_size(size)
    Ks = None
    if K is not None:
        Ks = torch.as_tensor(K, dtype=torch.float64)
        if Ks.shape == (3, 3):
            Ks = Ks.expand(len(paths), 3, 3)
        if tuple(Ks.shape) != (len(paths), 3, 3):
            raise ValueError(f"K must be (3, 3) or ({len(paths)}, 3, 3) for {len(paths)} images, "
                             f"got {tuple(torch.as_tensor(K).shape)}")
    imgs, Ks_out, info = [], [], []
    for i, p in enumerate(paths):
        im = load_image(p)
        rec = {"path": str(p), "src_size": im.size}
        Ki = None if Ks is None else Ks[i].numpy()
        if size is not None:
            target = oriented_size(size, im.size, auto_orient)
            W, H = im.size
            s = max(target[0] / W, target[1] / H) + 1e-8
            rec.update(scale=s, resized=(math.floor(W * s), math.floor(H * s)))
            rec["crop_left_top"] = (int(np.round(0.5 * (rec["resized"][0] - target[0]))),
                                    int(np.round(0.5 * (rec["resized"][1] - target[1]))))
            im, Ki = resize_crop(im, target, Ki)
        rec["size"] = im.size
        imgs.append(im)
        Ks_out.append(Ki)
        info.append(rec)
    sizes = {r["size"] for r in info}
    if len(sizes) > 1:
        detail = ", ".join(f"{Path(r['path']).name}: {r['size'][0]}x{r['size'][1]}" for r in info)
        hint = ("pass size=(W, H) to resize them" if size is None else
                "the views mix portrait and landscape photos; pass auto_orient=False to crop all "
                "of them to the same landscape size")
        raise ValueError(f"images must all end up the same size, got {detail}; {hint}")
    images01 = images_to_tensor(imgs)
    K_new = None if Ks is None else torch.from_numpy(np.stack(Ks_out)).float()
    return images01, K_new, info
