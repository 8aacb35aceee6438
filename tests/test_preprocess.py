"""flare_nb.scenes.preprocess: official FLARE preprocessing (parity with the reference fixtures),
image loading edge cases, the portrait rule and error messages."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flare_nb.scenes import preprocess as pp
from flare_nb.scenes.preprocess import (check_size, from_model_input, images_to_tensor, load_image,
                                 load_images, oriented_size, resize_crop, to_model_input)

DATA = Path(__file__).resolve().parents[1] / "data"
GT = DATA / "real" / "flare_gt_cam"
REF = DATA / "flare_reference"


def _gt_K(name):
    lines = (GT / f"{name}.txt").read_text().split("\n")
    i = lines.index("intrinsic")
    return np.array(" ".join(lines[i + 1:i + 4]).split(), dtype=np.float64).reshape(3, 3)


@pytest.mark.parametrize("fixture, views, size", [
    ("parity_geometry_pose", ["00001", "00065", "00129"], (256, 192)),
    ("parity_nvs", ["00033", "00065"], (256, 256)),
])
def test_official_preprocessing_parity(fixture, views, size):
    ref = np.load(REF / f"{fixture}.npz")
    meta = json.loads((REF / f"{fixture}.json").read_text())
    images01, K, info = load_images([GT / f"{v}.png" for v in views], size,
                                    K=np.stack([_gt_K(v) for v in views]))
    x = to_model_input(images01).numpy()
    assert x.dtype == np.float32 and x.shape == ref["images"].shape[1:]
    np.testing.assert_array_equal(x, ref["images"][0])            # bit-identical pixels
    np.testing.assert_allclose(K.numpy(), ref["intrinsics_crop"], atol=1e-4, rtol=0)
    for rec, want in zip(info, meta["preprocessing"]):              # scale / resize / crop offsets
        assert rec["src_size"] == tuple(want["src_size"])
        assert rec["resized"] == tuple(want["resized"])
        assert rec["crop_left_top"] == tuple(want["crop_left_top"])
        assert rec["scale"] == pytest.approx(want["scale"], abs=1e-12)


def _blob(W, H, u0, v0, sigma=3.0):
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    a = 255 * np.exp(-((u - u0) ** 2 + (v - v0) ** 2) / (2 * sigma ** 2))
    return Image.fromarray(np.repeat(a.round().astype(np.uint8)[..., None], 3, 2))


def _centroid(img):
    a = np.asarray(img, dtype=np.float64)[..., 0]
    a = np.where(a > 0.05 * a.max(), a, 0)
    v, u = np.mgrid[:a.shape[0], :a.shape[1]]
    return (a * u).sum() / a.sum(), (a * v).sum() / a.sum()


@pytest.mark.parametrize("src, dst", [((300, 200), (128, 128)),   # shrink (LANCZOS), crop left
                                      ((90, 120), (192, 128)),    # enlarge (BICUBIC), crop top
                                      ((333, 177), (256, 128)),   # odd margins
                                      ((301, 203), (128, 128))])  # sub-pixel resize margin
def test_K_follows_the_pixels(src, dst):
    """A blob at pixel (u0, v0) must land where K_new K^-1 maps it (pixel-centre convention)."""
    W, H = src
    u0, v0 = 0.43 * W, 0.57 * H
    K = np.array([[100.0, 0, W / 2 - 0.5], [0, 100.0, H / 2 - 0.5], [0, 0, 1]])
    out, K_new = resize_crop(_blob(W, H, u0, v0, sigma=0.03 * max(W, H)), dst, K)
    assert out.size == dst
    want = K_new @ np.linalg.inv(K) @ np.array([u0, v0, 1.0])
    got = _centroid(out)
    assert np.hypot(got[0] - want[0], got[1] - want[1]) < 0.1, (got, want)
    s = K_new[0, 0] / K[0, 0]
    assert s == pytest.approx(max(dst[0] / W, dst[1] / H), rel=1e-6)


def test_resize_filter_lanczos_when_shrinking_bicubic_when_enlarging():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    small, _ = resize_crop(img, (40, 32))     # s = 0.5: exact 40x32, no crop
    big, _ = resize_crop(img, (160, 128))     # s = 2
    assert np.array_equal(np.asarray(small), np.asarray(img.resize((40, 32), Image.LANCZOS)))
    assert np.array_equal(np.asarray(big), np.asarray(img.resize((160, 128), Image.BICUBIC)))
    assert not np.array_equal(np.asarray(small), np.asarray(img.resize((40, 32), Image.BICUBIC)))


def test_portrait_rule():
    assert oriented_size((512, 384), (1080, 1920)) == (384, 512)        # H > 1.1 W: transposed
    assert oriented_size((512, 384), (1000, 1050)) == (512, 384)        # nearly square: kept
    assert oriented_size((512, 384), (1080, 1920), auto_orient=False) == (512, 384)
    assert oriented_size((384, 512), (1920, 1080)) == (384, 512)        # portrait target as given
    imgs, _, info = load_images([DATA / "real" / "fox" / "images" / "0001.jpg"], (512, 384))
    assert imgs.shape == (1, 3, 512, 384) and info[0]["size"] == (384, 512)


def test_mixed_orientations_are_refused(tmp_path):
    Image.new("RGB", (300, 200)).save(tmp_path / "land.png")
    Image.new("RGB", (200, 300)).save(tmp_path / "port.png")
    with pytest.raises(ValueError, match="auto_orient=False"):
        load_images([tmp_path / "land.png", tmp_path / "port.png"], (256, 192))
    imgs, _, _ = load_images([tmp_path / "land.png", tmp_path / "port.png"], (256, 192), auto_orient=False)
    assert imgs.shape == (2, 3, 192, 256)
    with pytest.raises(ValueError, match="size=\\(W, H\\)"):           # different sizes, no resize
        load_images([tmp_path / "land.png", tmp_path / "port.png"])


def test_check_size():
    assert check_size((512, 384)) == (512, 384)
    with pytest.raises(ValueError, match=r"width 500 .*512x384"):
        check_size((500, 384))
    with pytest.raises(ValueError, match="height 0"):
        check_size((256, 0))
    with pytest.raises(ValueError, match="int"):
        check_size((256.0, 192))
    with pytest.raises(ValueError, match="500"):
        load_images([GT / "00001.png", GT / "00033.png"], (500, 384))


def test_model_input_range_and_round_trip():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = to_model_input(x)
    assert torch.allclose(to_model_input(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(from_model_input(y), x, atol=1e-7)


def test_images_to_tensor():
    a = np.full((4, 6, 3), 255, np.uint8)
    t = images_to_tensor([a, Image.fromarray(a)])
    assert t.shape == (2, 3, 4, 6) and t.dtype == torch.float32 and float(t.min()) == 1.0
    with pytest.raises(ValueError, match="same size"):
        images_to_tensor([a, np.zeros((5, 6, 3), np.uint8)])
    with pytest.raises(ValueError, match="at least one"):
        images_to_tensor([])


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_load_image_converts_to_rgb8(tmp_path, mode):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    if mode == "I;16":
        src = Image.fromarray(gray.astype(np.uint16) * 257)            # 16-bit, full range
    elif mode == "P":
        src = Image.fromarray(np.repeat(gray[..., None], 3, 2)).convert("P")
    else:
        src = Image.fromarray(gray).convert(mode)
    ext = "tif" if mode == "CMYK" else "png"
    src.save(tmp_path / f"x.{ext}")
    im = load_image(tmp_path / f"x.{ext}")
    assert im.mode == "RGB" and im.size == (12, 10)
    a = np.asarray(im)
    if mode in ("L", "LA", "RGBA", "I;16"):
        assert np.abs(a[..., 0].astype(int) - gray).max() <= 1 and (a[..., 0] == a[..., 2]).all()


def test_load_image_honours_exif_rotation(tmp_path):
    img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))          # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6                                                  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        load_image(tmp_path / "notes.png")
    data = (GT / "00001.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png.*(corrupt|truncated)"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ValueError, match=r"K must be \(3, 3\) or \(2, 3, 3\)"):
        load_images([GT / "00001.png", GT / "00033.png"], K=np.eye(4))


@pytest.mark.skipif(pp.HEIF_SUPPORT, reason="pillow-heif installed: HEIC photos load")
def test_heic_without_pillow_heif_says_what_to_install(tmp_path):
    (tmp_path / "photo.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(ValueError, match="pillow-heif"):
        load_image(tmp_path / "photo.HEIC")
