"""Known intrinsics (given / EXIF), a video as input, more views, and their bad input.

Unit tests of :mod:`flare_nb.intrinsics` and :mod:`flare_nb.video` on files the tests write,
then hostile input through the real ``flare-nb`` command with the machinery of
``tests/test_bad_input.py`` (one line ``flare-nb: error: ...``, exit status 2, nothing outside
the run's output folder changed, no traceback).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from flare_nb import intrinsics as intr
from flare_nb import video
from flare_nb.scenes.preprocess import load_images
from flare_nb.scenes.synthetic import make_scene
from cli_helpers import finished_case
from test_bad_input import FAST, photos, run_case


# ----------------------------------------------------------------------------- intrinsics
def test_option_parsing():
    assert intr.parse_intrinsics_option(None) == ("auto", None)
    assert intr.parse_intrinsics_option(["exif"]) == ("exif", None)
    assert intr.parse_intrinsics_option(["500", "510", "320", "240"]) == ("all", [500.0, 510.0, 320.0, 240.0])
    with pytest.raises(ValueError, match="expected 4 numbers.*got 3"):
        intr.parse_intrinsics_option(["500", "320", "240"])
    with pytest.raises(ValueError, match="positive"):
        intr.parse_intrinsics_option(["-5", "500", "320", "240"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        intr.parse_intrinsics_option(["nothere.json"])


def test_intrinsics_files(tmp_path):
    names = ["a.jpg", "b.jpg"]
    j = tmp_path / "k.json"
    j.write_text(json.dumps({"a.jpg": [1, 2, 3, 4], "dir/b.jpg": {"fx": 5, "fy": 6, "cx": 7, "cy": 8}}))
    assert intr.read_intrinsics_file(j, names) == {"a.jpg": [1, 2, 3, 4], "b.jpg": [5, 6, 7, 8]}
    t = tmp_path / "k.txt"
    t.write_text("# fx fy cx cy\n100 100 50 40\n")
    assert intr.read_intrinsics_file(t, names) == {"a.jpg": [100, 100, 50, 40], "b.jpg": [100, 100, 50, 40]}
    t.write_text("a.jpg 1 2 3 4\n")
    with pytest.raises(ValueError, match=r"no intrinsics for 1 photo\(s\): b.jpg"):
        intr.read_intrinsics_file(t, names)
    t.write_text("a.jpg 1 2 3\n")
    with pytest.raises(ValueError, match="line 1"):
        intr.read_intrinsics_file(t, names)


def _exif_photo(path: Path, size=(120, 80), f35=None, focal=None, xres=None, unit=None):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    exif = Image.Exif()
    sub = {}
    if f35 is not None:
        sub[intr.TAG_FOCAL_35] = f35
    if focal is not None:
        sub[intr.TAG_FOCAL] = focal
        sub[intr.TAG_PLANE_XRES] = xres
        sub[intr.TAG_PLANE_UNIT] = unit
    if sub:
        exif[intr.EXIF_IFD] = sub
    im.save(path, exif=exif)
    return path


def test_exif_focal(tmp_path):
    a = _exif_photo(tmp_path / "a.jpg", f35=36)
    f, how = intr.exif_focal_px(a)
    assert f == pytest.approx(120.0) and "35mm" in how                  # 36 mm equivalent: f = long side
    b = _exif_photo(tmp_path / "b.jpg", focal=4.0, xres=25.0, unit=4)    # 4 mm at 25 px/mm
    assert intr.exif_focal_px(b)[0] == pytest.approx(100.0)
    c = _exif_photo(tmp_path / "c.jpg")
    assert intr.exif_focal_px(c) is None
    K, src, _ = intr.resolve_intrinsics(None, [a, b], [(120, 80)] * 2)
    assert src == "EXIF" and K[1, 0, 0] == pytest.approx(100.0) and K[0, 0, 2] == pytest.approx(59.5)
    K, src, notes = intr.resolve_intrinsics(None, [a, c], [(120, 80)] * 2)    # not every photo: estimated
    assert K is None and src == "estimated" and "1 of 2" in notes[0]
    assert intr.resolve_intrinsics(["estimate"], [a, b], [(120, 80)] * 2)[1] == "estimated"
    with pytest.raises(ValueError, match="c.jpg has no focal length in its EXIF"):
        intr.resolve_intrinsics(["exif"], [a, c], [(120, 80)] * 2)


def test_known_intrinsics_follow_the_crop(tmp_path):
    """K of the original photo -> K of the model input: a pixel's ray is the same before and after."""
    p = _exif_photo(tmp_path / "p.png", size=(200, 100))
    K = intr.K_matrix(150.0, 140.0, 99.5, 49.5)
    _, Kn, info = load_images([p], size=(64, 64), K=K)
    s, (left, top) = info[0]["scale"], info[0]["crop_left_top"]
    u, v = 10.0, 20.0                                       # a pixel centre of the model input
    us, vs = (u + left + 0.5) / s - 0.5, (v + top + 0.5) / s - 0.5   # the same point in the original photo
    ray_in = ((u - Kn[0, 0, 2]) / Kn[0, 0, 0], (v - Kn[0, 1, 2]) / Kn[0, 1, 1])
    ray_src = ((us - K[0, 2]) / K[0, 0], (vs - K[1, 2]) / K[1, 1])
    assert float(ray_in[0]) == pytest.approx(float(ray_src[0]), abs=1e-4)
    assert float(ray_in[1]) == pytest.approx(float(ray_src[1]), abs=1e-4)


def test_pose_head_scale_recovers_the_pointmap_units():
    """Pose-head cameras whose translations are the true ones / 3: the factor is 3 up to the
    float32 rounding of the scene's rotations (R^T is R^-1 only to ~1e-7), since the pointmaps
    are exact."""
    from flare_nb import cameras
    from flare_nb.camera_rule import pose_head_scale

    sc = make_scene(seed=5, n_views=3, size=(64, 64), mode="orbit")
    c2w = torch.linalg.inv(sc.c2w[0].double()) @ sc.c2w.double()
    depth = sc.depth.double()
    pts = cameras.transform_points(c2w, cameras.unproject_depth(depth, sc.K.double()))
    pts[depth <= 0] = float("nan")
    conf = torch.ones(depth.shape, dtype=torch.float64) + torch.rand(depth.shape, generator=torch.Generator().manual_seed(0))
    head = c2w.clone()
    head[:, :3, 3] /= 3.0
    assert pose_head_scale(head, pts, conf, sc.K.double()) == pytest.approx(3.0, rel=1e-6)
    assert pose_head_scale(head[:1], pts[:1], conf[:1], sc.K.double()) is None        # one view: nothing to fit
    flat = head.clone()
    flat[:, :3, 3] = 0.0
    assert pose_head_scale(flat, pts, conf, sc.K.double()) is None                  # no translation to scale


# ----------------------------------------------------------------------------- video
def write_video(path: Path, n_frames: int = 12, size=(64, 64), blur=()) -> Path:
    """A video of a synthetic orbit scene (one rendered view per frame); frames in ``blur`` are
    blurred. MJPG in .avi, which OpenCV here writes and reads back."""
    sc = make_scene(seed=3, n_views=n_frames, size=size, mode="orbit")
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert w.isOpened()
    for k in range(n_frames):
        rgb = (sc.images[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if k in blur:
            bgr = cv2.GaussianBlur(bgr, (9, 9), 4)
        w.write(bgr)
    w.release()
    return path


def test_video_frames_sharp_and_spread(tmp_path):
    sharp = (1, 5, 6, 10)                                   # one sharp frame in each run of 3 frames
    v = write_video(tmp_path / "orbit.avi", 12, blur=tuple(k for k in range(12) if k not in sharp))
    picks, scores = video.pick_frames(v, 4)
    assert len(scores) == 12 and picks == list(sharp)
    out = tmp_path / "frames"
    out.mkdir()
    files, idx, _ = video.extract_frames(v, 4, out)
    assert idx == picks and [f.name for f in files] == [f"frame_{k:06d}.png" for k in picks]
    assert all(Image.open(f).size == (64, 64) for f in files)


def test_video_errors(tmp_path):
    v = write_video(tmp_path / "short.avi", 3)
    with pytest.raises(ValueError, match="only 3 frame.*fewer than the 5 views.*--views 3"):
        video.pick_frames(v, 5)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(ValueError, match="bad.mp4"):
        video.pick_frames(bad, 4)


# ----------------------------------------------------------------------------- the same words everywhere
def test_conf_threshold_wording_is_shared():
    from flare_nb import cli, data_dir
    from flare_nb.camera_rule import CONF_THRESHOLD_HELP

    norm = lambda t: " ".join(t.split())                    # noqa: E731  argparse rewraps lines
    sub = cli.build_parser()._subparsers._group_actions[0].choices["reconstruct"]
    assert norm(CONF_THRESHOLD_HELP) in norm(sub.format_help())
    nb = json.loads((data_dir().parent / "notebooks" / "08_your_own_images.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    tail = CONF_THRESHOLD_HELP.split("Q drops", 1)[1]
    assert sum(norm(tail) in norm(c) for c in cells) == 1


# ----------------------------------------------------------------------------- through the command
def _video_case(d: Path, n_frames: int, views: int) -> list:
    d.mkdir(parents=True, exist_ok=True)
    v = write_video(d / "walk.avi", n_frames)
    return ["reconstruct", v, "--out", d / "out", "--views", str(views)] + FAST


def _garbage_video(d: Path) -> list:
    d.mkdir(parents=True, exist_ok=True)
    (d / "clip.mp4").write_bytes(b"this is not a video\n" * 50)
    return ["reconstruct", d / "clip.mp4", "--out", d / "out"] + FAST


def _poses_missing_photo(d: Path) -> list:
    inp = photos(d / "in", 3)
    frames = [{"file_path": f"images/photo{i}.jpg", "transform_matrix": np.eye(4).tolist()} for i in range(2)]
    (d / "transforms.json").write_text(json.dumps({"fl_x": 50, "fl_y": 50, "cx": 32, "cy": 32, "w": 64, "h": 64,
                                                   "frames": frames}))
    return ["reconstruct", inp, "--out", d / "out", "--poses", d / "transforms.json"] + FAST


def _intrinsics_file_missing_photo(d: Path) -> list:
    inp = photos(d / "in", 3)
    (d / "K.txt").write_text("photo0.jpg 80 80 48 36\nphoto1.jpg 80 80 48 36\n")
    return ["reconstruct", inp, "--out", d / "out", "--intrinsics", d / "K.txt"] + FAST


CASES = [
    ("no_exif_but_exif_required", lambda d: ["reconstruct", photos(d / "in", 2), "--out", d / "out",
                                             "--intrinsics", "exif"] + FAST, 2,
     ["--intrinsics exif", "photo0.jpg has no focal length", "fx fy cx cy"], {}),
    ("intrinsics_three_numbers", lambda d: ["reconstruct", photos(d / "in", 2), "--out", d / "out",
                                            "--intrinsics", "500", "500", "320"] + FAST, 2,
     ["--intrinsics", "expected 4 numbers", "got 3"], {}),
    ("intrinsics_five_numbers", lambda d: ["reconstruct", photos(d / "in", 2), "--out", d / "out",
                                           "--intrinsics", "500", "500", "320", "240", "7"] + FAST, 2,
     ["--intrinsics", "expected 4 numbers", "got 5"], {}),
    ("intrinsics_file_missing_photo", _intrinsics_file_missing_photo, 2,
     ["K.txt", "no intrinsics for 1 photo", "photo2.jpg"], {}),
    ("video_shorter_than_views", lambda d: _video_case(d, 3, 5), 2,
     ["walk.avi", "only 3 frame", "fewer than the 5 views", "--views 3"], {}),
    ("video_unreadable", _garbage_video, 2, ["clip.mp4", "convert it"], {}),
    ("video_views_17", lambda d: _video_case(d, 4, 17), 2, ["--views", "between 2 and 16"], {}),
    ("max_views_17", lambda d: ["reconstruct", photos(d / "in", 2), "--out", d / "out", "--max-views", "17"], 2,
     ["--max-views", "at most 16"], {}),
    ("poses_missing_a_photo", _poses_missing_photo, 2, ["--poses", "photo2.jpg"], {}),
    ("video_run", lambda d: _video_case(d, 10, 3), 0, [],
     {"out": "out", "stdout": ["frames", "intrinsics: estimated"]}),
    ("video_12_views_run", lambda d: _video_case(d, 24, 12), 0, [],
     {"out": "out", "stdout": ["frames", "12 photos"], "stderr": ["12 views: the released FLARE model was trained on 2-8"],
      "cameras": 12}),
    ("intrinsics_given_run", lambda d: ["reconstruct", photos(d / "in", 2), "--out", d / "out",
                                        "--intrinsics", "80", "80", "47.5", "35.5"] + FAST, 0, [],
     {"out": "out", "stdout": ["intrinsics: given"]}),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("userpath")
    return {c[0]: run_case(c, root) for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_case(case, results):
    cid, _, status, words, opt = case
    r = results[cid]
    errors, err, out = finished_case(r, status)
    assert r["before"] == r["after"], "files outside --out changed"
    if status == 2:
        assert len(errors) == 1, err
        for w in words:
            assert w in errors[0], (w, errors[0])
        assert r["out"] is None or not r["out"].exists() or r["before_out"] is not None
        assert not (r["d"] / "out").exists()                       # nothing written on refusal
    else:
        assert not errors, err
        for w in opt.get("stdout", []):
            assert w in out, (w, out[-2000:])
        for w in opt.get("stderr", []):
            assert w in err, (w, err[-2000:])
        if "cameras" in opt:
            cams = json.loads((r["out"] / "cameras.json").read_text())
            assert len(cams["views"]) == opt["cameras"]
        report = (r["out"] / "report.md").read_text()
        assert "## Cameras" in report and "rule: PnP cameras when" in report
        assert "* intrinsics: " in report
        from flare_nb.camera_rule import CONF_THRESHOLD_HELP
        assert CONF_THRESHOLD_HELP.split("Q drops", 1)[1] in report
