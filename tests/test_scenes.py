"""Scene loaders (flare_nb.scenes.scene): poses proved RIGHT on real data (SIFT matches on the
epipolar lines implied by the loaded K and c2w, cameras looking at a common point), format
details, a COLMAP round trip (text and binary) and clear errors on bad input."""
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch

from flare_nb.cameras import invert_pose, matrix_to_quat, opencv_to_opengl
from flare_nb.cameras import look_at_point
from flare_nb.scenes.scene import (detect_format, epipolar_distances, load_colmap, load_mvsnet, load_nerf,
                             load_scene, load_strecha)

DATA = Path(__file__).resolve().parents[1] / "data"
REAL = DATA / "real"
GT, FOUNTAIN, FOX = REAL / "flare_gt_cam", REAL / "fountain-P11", REAL / "fox"


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


_CACHE = {}


def scene(name, size=None):
    key = (name, size)
    if key not in _CACHE:
        _CACHE[key] = _quiet(load_scene, REAL / name, size=size)
    return _CACHE[key]


# ----------------------------------------------------------------------------- poses are right
@pytest.mark.parametrize("size", [None, (512, 384)])
@pytest.mark.parametrize("name", ["flare_gt_cam", "fountain-P11", "fox"])
def test_sift_matches_lie_on_epipolar_lines(name, size):
    s = scene(name, size)
    mid = s.n_views // 2
    for i, j in [(0, 1), (mid, mid + 1)]:
        d = epipolar_distances(s, i, j)
        assert len(d) >= 50, f"too few SIFT matches between {s.names[i]} and {s.names[j]}"
        assert np.median(d) < 2.0, f"{name} {s.names[i]}-{s.names[j]}: median {np.median(d):.2f} px"


@pytest.mark.parametrize("name, j, wrong", [
    ("flare_gt_cam", 1, lambda c2w: invert_pose(c2w)),  # extrinsic used without inverting
    ("fountain-P11", 1, lambda c2w: invert_pose(c2w)),  # R taken as world-to-camera
    ("fox", 4, lambda c2w: opencv_to_opengl(c2w)),      # OpenGL axes not converted
])
def test_epipolar_check_catches_wrong_conventions(name, j, wrong):
    """The check above can fail: the same pair under a wrong convention is far off."""
    s = scene(name)
    assert np.median(epipolar_distances(s, 0, j)) < 1.0
    bad = s.subset(range(s.n_views))
    bad.c2w = wrong(s.c2w)
    assert np.median(epipolar_distances(bad, 0, j)) > 5.0


@pytest.mark.parametrize("name", ["flare_gt_cam", "fountain-P11", "fox"])
def test_cameras_look_at_a_common_point(name):
    s = scene(name)
    c = look_at_point(s.c2w.double())
    w2c = invert_pose(s.c2w.double())
    x = (w2c[:, :3, :3] @ c + w2c[:, :3, 3])             # scene centre in each camera frame
    assert (x[:, 2] > 0).all(), "scene centre behind a camera"
    angle = torch.rad2deg(torch.acos(x[:, 2] / x.norm(dim=1)))
    assert angle.max() < 30, f"max angle between optical axis and scene centre {angle.max():.1f} deg"


# ----------------------------------------------------------------------------- format details
def test_mvsnet_extrinsic_is_world_to_camera():
    s = scene("flare_gt_cam")
    assert s.images.shape == (7, 3, 531, 948) and s.names[0] == "00001"
    lines = (GT / "00001.txt").read_text().split("\n")
    i = lines.index("extrinsic")
    E = torch.tensor(np.array(" ".join(lines[i + 1:i + 5]).split(), float).reshape(4, 4))
    torch.testing.assert_close(s.c2w[0].double() @ E, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)
    assert s.K[0, 0, 2] == pytest.approx(474.0)


def test_mvsnet_preprocessing_matches_reference_fixture():
    ref = np.load(DATA / "flare_reference" / "parity_geometry_pose.npz")
    s = scene("flare_gt_cam", (256, 192))
    idx = [s.names.index(n) for n in ("00001", "00065", "00129")]
    np.testing.assert_allclose(s.K[idx].numpy(), ref["intrinsics_crop"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal((s.images[idx].numpy() - 0.5) / 0.5, ref["images"][0])


def test_mvsnet_cams_images_layout(tmp_path):
    (tmp_path / "cams").mkdir()
    (tmp_path / "images").mkdir()
    for n in ("00001", "00033"):
        shutil.copy(GT / f"{n}.txt", tmp_path / "cams" / f"{n}_cam.txt")
        shutil.copy(GT / f"{n}.png", tmp_path / "images" / f"{n}.png")
    s = load_scene(tmp_path, size=(256, 192))
    ref = scene("flare_gt_cam", (256, 192))
    torch.testing.assert_close(s.c2w, ref.c2w[:2])
    torch.testing.assert_close(s.K, ref.K[:2])


def test_strecha_K_rescaled_to_image_size():
    s = scene("fountain-P11")
    assert s.images.shape == (11, 3, 512, 768)
    vals = np.array((FOUNTAIN / "cameras" / "0000.jpg.camera").read_text().split(), float)
    fx, cx = vals[0], vals[2]
    assert s.K[0, 0, 0] == pytest.approx(fx * 0.25, rel=1e-6)        # 3072 -> 768
    assert s.K[0, 0, 2] == pytest.approx((cx + 0.5) * 0.25 - 0.5, rel=1e-6)
    torch.testing.assert_close(s.c2w[0, :3, 3].double(), torch.tensor(vals[21:24]), atol=1e-5, rtol=0)


def test_nerf_fox_missing_frames_portrait_and_intrinsics():
    with pytest.warns(UserWarning) as rec:
        s = load_nerf(FOX, size=(512, 384), max_views=6)
    msgs = [str(w.message) for w in rec]
    assert any(re.search(r"17 of 67 frames skipped.*images/0005\.jpg.*images/0113\.jpg", m) for m in msgs)
    assert any("distortion" in m and "k1" in m for m in msgs)
    assert s.images.shape == (6, 3, 512, 384)                           # portrait kept portrait
    full = scene("fox")
    assert full.n_views == 50 and full.images.shape[-2:] == (512, 288)
    meta = json.loads((FOX / "transforms.json").read_text())
    r = 288 / meta["w"]
    assert full.K[0, 0, 0] == pytest.approx(meta["fl_x"] * r, rel=1e-6)
    assert full.K[0, 1, 2] == pytest.approx(meta["cy"] * r - 0.5, rel=1e-6)   # +0.5 convention
    T = torch.tensor(meta["frames"][0]["transform_matrix"], dtype=torch.float64)
    torch.testing.assert_close(opencv_to_opengl(full.c2w[0].double()), T, atol=1e-5, rtol=0)


def test_nerf_camera_angle_x_and_json_path(tmp_path):
    shutil.copytree(FOX / "images", tmp_path / "images")
    meta = json.loads((FOX / "transforms.json").read_text())
    for k in ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "p1", "p2", "camera_angle_y"):
        meta.pop(k)
    meta["frames"] = meta["frames"][:3]
    (tmp_path / "cams.json").write_text(json.dumps(meta))
    s = load_nerf(tmp_path / "cams.json")
    f = 0.5 * 288 / np.tan(0.5 * meta["camera_angle_x"])
    assert s.K[0, 0, 0] == pytest.approx(f, rel=1e-5) and s.K[0, 1, 1] == pytest.approx(f, rel=1e-5)
    assert s.K[0, 0, 2] == pytest.approx(143.5)                       # centre of a 288-px row


# ----------------------------------------------------------------------------- COLMAP round trip
def _write_colmap_text(folder: Path, s, model="PINHOLE", full_res=1):
    """Text model from a Scene: one camera per view (COLMAP +0.5 principal point)."""
    folder.mkdir(parents=True)
    H, W = s.hw
    w2c = invert_pose(s.c2w.double())
    q = matrix_to_quat(w2c[:, :3, :3])
    cams, imgs = [], []
    for i, K in enumerate(s.K.double()):
        fx, fy = K[0, 0] * full_res, K[1, 1] * full_res
        cx, cy = (K[0, 2] + 0.5) * full_res, (K[1, 2] + 0.5) * full_res
        params = {"PINHOLE": [fx, fy, cx, cy], "SIMPLE_RADIAL": [fx, cx, cy, 0.01]}[model]
        cams.append(f"{i + 1} {model} {W * full_res} {H * full_res} " + " ".join(f"{float(p)!r}" for p in params))
        pose = " ".join(repr(float(v)) for v in [*q[i], *w2c[i, :3, 3]])
        imgs.append(f"{i + 1} {pose} {i + 1} {s.names[i]}.jpg\n")
    (folder / "cameras.txt").write_text("\n".join(cams) + "\n")
    (folder / "images.txt").write_text("\n".join(imgs) + "\n")
    (folder / "points3D.txt").write_text("")


def test_colmap_text_and_binary_round_trip(tmp_path):
    ref = scene("fountain-P11")
    _write_colmap_text(tmp_path / "text", ref)
    (tmp_path / "bin").mkdir()
    pycolmap.Reconstruction(str(tmp_path / "text")).write_binary(str(tmp_path / "bin"))
    assert (tmp_path / "bin" / "cameras.bin").exists() and not (tmp_path / "bin" / "cameras.txt").exists()
    for model_dir in (tmp_path / "text", tmp_path / "bin"):
        s = load_colmap(model_dir, FOUNTAIN / "images")
        assert s.names == ref.names
        torch.testing.assert_close(s.K, ref.K, atol=1e-4, rtol=0)
        torch.testing.assert_close(s.c2w, ref.c2w, atol=1e-4, rtol=0)
        assert torch.equal(s.images, ref.images)


def test_colmap_full_resolution_distorted_model_and_scene_layout(tmp_path):
    ref = scene("fountain-P11", (512, 384))
    _write_colmap_text(tmp_path / "sparse" / "0", scene("fountain-P11"), model="SIMPLE_RADIAL", full_res=4)
    (tmp_path / "images").symlink_to(FOUNTAIN / "images")
    assert detect_format(tmp_path) == "colmap"
    with pytest.warns(UserWarning, match="SIMPLE_RADIAL"):
        s = load_scene(tmp_path, size=(512, 384))
    torch.testing.assert_close(s.c2w, ref.c2w, atol=1e-4, rtol=0)
    torch.testing.assert_close(s.K[:, [0, 1], [2, 2]], ref.K[:, [0, 1], [2, 2]], atol=1e-3, rtol=0)
    torch.testing.assert_close(s.K[:, 0, 0], ref.K[:, 0, 0], rtol=3e-3, atol=0)  # SIMPLE_: fx = fy


# ----------------------------------------------------------------------------- bad input
def test_missing_folders(tmp_path):
    for fn in (load_mvsnet, load_strecha, load_nerf, load_scene):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            fn(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_colmap(tmp_path / "nowhere", tmp_path)
    with pytest.raises(FileNotFoundError, match="cameras.txt or cameras.bin"):
        load_colmap(tmp_path, tmp_path)


def _gt_copy(tmp_path, names=("00001", "00033", "00065")):
    for n in names:
        shutil.copy(GT / f"{n}.txt", tmp_path / f"{n}.txt")
        shutil.copy(GT / f"{n}.png", tmp_path / f"{n}.png")
    return tmp_path


def test_broken_mvsnet_camera_file_is_named(tmp_path):
    _gt_copy(tmp_path)
    (tmp_path / "00033.txt").write_text("extrinsic\n1 0 0 0\n0 1 zero 0\n0 0 1 0\n0 0 0 1\n\nintrinsic\n1 0 0\n0 1 0\n0 0 1\n")
    with pytest.raises(ValueError, match=r"00033\.txt.*extrinsic"):
        load_mvsnet(tmp_path)
    (tmp_path / "00033.txt").write_text("intrinsic\n1 0 0\n0 1 0\n0 0 1\n")
    with pytest.raises(ValueError, match=r"00033\.txt: no 'extrinsic'"):
        load_mvsnet(tmp_path)


def test_broken_strecha_camera_file_is_named(tmp_path):
    shutil.copytree(FOUNTAIN, tmp_path / "f")
    (tmp_path / "f" / "cameras" / "0003.jpg.camera").write_text("2759.48 0 1520.69\n0 2764.16\n")
    with pytest.raises(ValueError, match=r"0003\.jpg\.camera.*26 finite numbers.*got 5"):
        load_strecha(tmp_path / "f")
    (tmp_path / "f" / "cameras" / "0003.jpg.camera").write_text(
        (FOUNTAIN / "cameras" / "0003.jpg.camera").read_text().replace("0.795163", "1.9"))
    with pytest.raises(ValueError, match="not a rotation"):
        load_strecha(tmp_path / "f")


def test_fewer_than_two_views(tmp_path):
    _gt_copy(tmp_path, ("00001",))
    with pytest.raises(ValueError, match="at least 2 views"):
        load_mvsnet(tmp_path)
    with pytest.raises(ValueError, match="max_views must be at least 2"):
        load_scene(GT, max_views=1)


def test_image_camera_mismatch_names_the_orphans(tmp_path):
    _gt_copy(tmp_path)
    shutil.copy(GT / "00097.png", tmp_path / "00097.png")
    with pytest.raises(ValueError, match=r"images without camera: \['00097.png'\]"):
        load_mvsnet(tmp_path)
    (tmp_path / "00097.png").unlink()
    (tmp_path / "00065.png").unlink()
    with pytest.raises(ValueError, match=r"cameras without image: \['00065.txt'\]"):
        load_mvsnet(tmp_path)
    shutil.copytree(FOUNTAIN, tmp_path / "f")
    (tmp_path / "f" / "images" / "0004.jpg").unlink()
    with pytest.raises(ValueError, match=r"0004\.jpg\.camera"):
        load_strecha(tmp_path / "f")


def test_size_not_multiple_of_64():
    with pytest.raises(ValueError, match=r"width 500 .*multiple of 64"):
        load_scene(GT, size=(500, 384))


def test_bad_nerf_json(tmp_path):
    (tmp_path / "transforms.json").write_text("{ not json")
    with pytest.raises(ValueError, match="transforms.json is not valid JSON"):
        load_nerf(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 10, "frames": [{"file_path": "a.png"}]}))
    with pytest.raises(ValueError, match="frame 0 lacks"):
        load_nerf(tmp_path)


def test_unknown_format(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown scene format"):
        load_scene(tmp_path)


# ----------------------------------------------------------------------------- malformed scene files
def _fox_copy(tmp_path, n=3):
    shutil.copytree(FOX / "images", tmp_path / "images")
    meta = json.loads((FOX / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:n]
    return meta


@pytest.mark.parametrize("edit, field", [
    (lambda m: m["frames"].__setitem__(1, 7), "frame 1 must be an object"),
    (lambda m: m["frames"][0].__setitem__("file_path", 12), "'file_path' must be a path string"),
    (lambda m: m.update(w=0), "'w' must be a positive number"),
    (lambda m: m.update(h=0), "'h' must be a positive number"),
    (lambda m: m["frames"][2].__setitem__("transform_matrix", [[1, 0, 0, 0], [0, 1, 0]]), "'transform_matrix' must be a list of equally long rows"),
    (lambda m: m["frames"][0].__setitem__("transform_matrix", [["a", 0, 0, 0]] * 4), "'transform_matrix' must hold numbers only"),
    (lambda m: m.update(fl_x="wide"), "'fl_x' must be a number"),
    (lambda m: [m.pop(k) for k in ("fl_x", "fl_y")] and m.update(camera_angle_x="ninety"), "'camera_angle_x' must be a number"),
    (lambda m: m.update(fl_x=-5.0), "'fl_x' must be a positive number"),
])
def test_load_nerf_names_file_and_field(tmp_path, edit, field):
    meta = _fox_copy(tmp_path)
    edit(meta)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        load_nerf(tmp_path)
    assert "transforms.json" in str(e.value) and field in str(e.value), str(e.value)


@pytest.mark.parametrize("lost", ["images.txt", "points3D.txt", "cameras.txt"])
def test_load_colmap_names_the_missing_model_file(tmp_path, lost):
    _write_colmap_text(tmp_path / "m", scene("fountain-P11"))
    (tmp_path / "m" / lost).unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_colmap(tmp_path / "m", FOUNTAIN / "images")
    msg = str(e.value)
    assert lost in msg and str(tmp_path / "m") in msg
    if lost != "cameras.txt":                       # the files that are there are not called missing
        assert "found cameras.txt" in msg


def test_load_colmap_rejects_zero_focal(tmp_path):
    _write_colmap_text(tmp_path / "m", scene("fountain-P11"))
    cams = (tmp_path / "m" / "cameras.txt").read_text().splitlines()
    parts = cams[0].split()
    parts[4] = "0.0"                                # fx of camera 1
    (tmp_path / "m" / "cameras.txt").write_text("\n".join([" ".join(parts)] + cams[1:]) + "\n")
    with pytest.raises(ValueError, match=r"camera 1: focal length 'params' must be positive"):
        load_colmap(tmp_path / "m", FOUNTAIN / "images")


def test_load_mvsnet_rejects_zero_focal_and_bad_extrinsic(tmp_path):
    _gt_copy(tmp_path)
    good = (tmp_path / "00033.txt").read_text()
    lines = good.splitlines()
    i = lines.index("intrinsic")
    lines[i + 1] = "0 0 0"
    (tmp_path / "00033.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"00033\.txt: 'intrinsic' focal lengths must be positive"):
        load_mvsnet(tmp_path)
    lines = good.splitlines()
    j = lines.index("extrinsic")
    lines[j + 4] = "0 0 1 1"
    (tmp_path / "00033.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"00033\.txt: 'extrinsic' last row must be 0 0 0 1"):
        load_mvsnet(tmp_path)


def test_load_strecha_rejects_zero_focal(tmp_path):
    shutil.copytree(FOUNTAIN, tmp_path / "f")
    cam = tmp_path / "f" / "cameras" / "0003.jpg.camera"
    vals = cam.read_text().split()
    vals[0] = "0"
    cam.write_text(" ".join(vals) + "\n")
    with pytest.raises(ValueError, match=r"0003\.jpg\.camera: 'K \(numbers 1-9\)' focal lengths must be positive"):
        load_strecha(tmp_path / "f")
