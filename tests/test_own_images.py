"""flare_nb.own_images: notebook 08's steps (photos, crop, cameras, confidence widget, exports)."""
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")

from flare_nb import cameras, export, own_images as oi  # noqa: E402


def _photo(path, wh, orientation=None, seed=0):
    a = np.random.default_rng(seed).integers(0, 255, (wh[1], wh[0], 3), dtype=np.uint8)
    im = Image.fromarray(a)
    if orientation is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[oi.EXIF_ORIENTATION] = orientation
        im.save(path, exif=exif)
    return path


def test_photo_table_applies_exif_orientation(tmp_path):
    p1 = _photo(tmp_path / "a.jpg", (200, 100), orientation=6)       # stored landscape, shown portrait
    p2 = _photo(tmp_path / "b.png", (200, 100))
    rows = oi.photo_table([p1, p2])
    assert rows[0]["stored_size"] == (200, 100) and rows[0]["exif_orientation"] == 6 and rows[0]["size"] == (100, 200)
    assert rows[1]["exif_orientation"] is None and rows[1]["size"] == (200, 100) and rows[1]["bytes"] > 0


def test_crop_box_known_answer(tmp_path):
    p = _photo(tmp_path / "a.png", (200, 100))
    x, info, notes = oi.load_photos([p, p], (64, 64))
    # s = max(64/200, 64/100) = 0.64 -> 128x64, crop 32 px from the left: source columns 50..150
    assert x.shape == (2, 3, 64, 64) and notes == []
    x0, y0, x1, y1 = oi.crop_box(info[0])
    assert (x0, y0, x1, y1) == pytest.approx((50.0, 0.0, 150.0, 100.0), abs=1e-5)
    with pytest.raises(ValueError, match="no resize/crop record"):
        oi.crop_box({"path": "x.png", "size": (64, 64)})
    fig = oi.plot_preprocessing([p, p], info, x)
    assert len(fig.axes) == 4


def test_load_photos_mixed_orientation_refused(tmp_path):
    a = _photo(tmp_path / "a.png", (200, 100))
    b = _photo(tmp_path / "b.png", (100, 200), seed=1)
    with pytest.raises(ValueError, match=r"mix portrait \(b.png\) and landscape \(a.png\)"):
        oi.load_photos([a, b], (128, 64))
    x, _, notes = oi.load_photos([a, b], (64, 64))                       # a square target fits both
    assert x.shape == (2, 3, 64, 64) and notes == []
    x, _, notes = oi.load_photos([b, b], (128, 64))
    assert x.shape == (2, 3, 128, 64) and notes == []                  # both portrait: transposed target


def _rec(K=True, pnp=True, cam_pts=None, inliers=(90, 80, 70), K_given=None):
    V, H, W = 3, 16, 16
    c2w = torch.eye(4).repeat(V, 1, 1)
    c2w[1, 0, 3] = 1.0
    return SimpleNamespace(n_views=V, hw=(H, W), K=cameras.intrinsics_from_focal(20.0, H, W) if K else None,
                           c2w_pnp=c2w * 2 if pnp else None, c2w_refined=c2w,
                           pnp_info={"n_points": [100] * V, "n_inliers": list(inliers)} if pnp else None,
                           pts3d_cam=cam_pts if cam_pts is not None else torch.zeros(V, H, W, 3), K_given=K_given)


def test_export_cameras_rules():
    c = export.export_cameras(_rec())
    assert c["pose_source"].startswith("pnp") and c["K"].shape == (3, 3, 3) and c["K"][2, 0, 0] == 20.0
    c = export.export_cameras(_rec(pnp=False))
    assert c["pose_source"].startswith("refined") and torch.equal(c["c2w"], _rec().c2w_refined)
    c = export.export_cameras(_rec(K=False))                             # zeros: no focal vote anywhere
    assert "60 degree" in c["focal_source"] and c["K"][0, 0, 0] == pytest.approx(export.fov_K(16, 16)[0, 0])
    depth = torch.full((3, 16, 16), 2.0)
    pts = cameras.unproject_depth(depth, cameras.intrinsics_from_focal(30.0, 16, 16).expand(3, 3, 3))
    c = export.export_cameras(_rec(K=False, cam_pts=pts))
    assert "camera-centric" in c["focal_source"] and c["K"][0, 0, 0] == pytest.approx(30.0, rel=1e-4)


def test_export_cameras_pnp_rule_and_known_intrinsics():
    from flare_nb import camera_rule

    edge = round(100 * camera_rule.MIN_INLIER_FRACTION)
    c = export.export_cameras(_rec(inliers=(90, edge, 70)))                 # exactly the threshold: PnP kept
    assert c["pose_source"].startswith("pnp") and c["inlier_fractions"] == [0.9, edge / 100, 0.7]
    c = export.export_cameras(_rec(inliers=(90, edge - 1, 70)))             # one view below it: pose head
    assert c["pose_source"].startswith("refined") and torch.equal(c["c2w"], _rec().c2w_refined)
    assert f"{(edge - 1) / 100:.0%}" in c["pose_source"] and c["notes"]
    Kg = cameras.intrinsics_from_focal(33.0, 16, 16).expand(3, 3, 3).clone()
    Kg[2, 0, 0] = 44.0
    c = export.export_cameras(_rec(K_given=Kg))
    assert c["focal_source"].startswith("given") and torch.equal(c["K"], Kg)


def test_pnp_settings_scale_with_the_image():
    from flare_nb import camera_rule

    assert camera_rule.pnp_settings(128, 128)["reproj_px"] == 1.0               # never below 1 px
    assert camera_rule.pnp_settings(384, 512)["reproj_px"] == 1.0               # the release's 1 px at 512
    assert camera_rule.pnp_settings(768, 1024)["reproj_px"] == 2.0
    assert camera_rule.pnp_settings(64, 64)["iterations"] == camera_rule.PNP_DEFAULT_ITERATIONS
    assert camera_rule.pnp_settings(64, 64, 7)["iterations"] == 7
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="--pnp-iterations"):
            camera_rule.pnp_settings(64, 64, bad)


def test_confidence_points_and_widget():
    g = torch.Generator().manual_seed(0)
    V, H, W = 2, 8, 8
    pts = torch.randn(V, H, W, 3, generator=g)
    pts[0, 0, 0] = float("nan")
    conf = 1 + torch.rand(V, H, W, generator=g)
    img = torch.rand(V, 3, H, W, generator=g)
    all_ = oi.confidence_points(pts, conf, img, 0.0)
    assert all_["n_kept"] == V * H * W - 1 and all_["points"].shape == (V * H * W - 1, 3)
    half = oi.confidence_points(pts, conf, img, 0.5)
    assert half["n_kept"] < all_["n_kept"] and abs(half["fraction"] - 0.5) < 0.05
    assert half["per_view"].shape == (V,)
    kept_conf = conf[half["mask"]]
    assert kept_conf.min() > conf[~half["mask"] & torch.isfinite(pts).all(-1)].min()
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\)"):
        oi.confidence_points(pts, conf, img, 1.0)
    res = oi.confidence_callback(pts, conf, img, 0.25, show=False)
    assert res["drop"] == 0.25
    fig = oi.plot_confidence(res, torch.eye(4).repeat(V, 1, 1), None, (H, W))
    assert len(fig.axes) == V + 1
    import ipywidgets as Wd

    w = oi.make_confidence_widget(pts, conf, img, value=0.3)
    sl = [c for c in w.children if isinstance(c, Wd.FloatSlider)]
    assert len(sl) == 1 and sl[0].value == 0.3 and sl[0].max == 0.95


def test_list_files_human_size_and_read_back(tmp_path):
    assert oi.human_size(512) == "512 B" and oi.human_size(1536) == "1.5 KB" and oi.human_size(3 * 2 ** 20) == "3.0 MB"
    with pytest.raises(FileNotFoundError, match="no such output folder"):
        oi.list_files(tmp_path / "nope")
    V, H, W = 2, 8, 8
    c2w = torch.eye(4).repeat(V, 1, 1)
    c2w[1, :3, :3] = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    c2w[1, :3, 3] = torch.tensor([1.0, 0.0, 0.5])
    K = cameras.intrinsics_from_focal(10.0, H, W)
    img = torch.rand(V, 3, H, W, generator=torch.Generator().manual_seed(0))
    pts = torch.rand(V, H, W, 3, generator=torch.Generator().manual_seed(1)) + torch.tensor([0, 0, 2.0])
    mask = torch.ones(V, H, W, dtype=torch.bool)
    (tmp_path / "images").mkdir()
    names = [f"{k:03d}_v.png" for k in range(V)]
    for k in range(V):
        export.save_image(tmp_path / "images" / names[k], img[k])
    with pytest.raises(FileNotFoundError, match="cameras.json is missing"):
        oi.read_back_exports(tmp_path)
    export.write_points_ply(tmp_path / "points.ply", pts, img, torch.ones(V, H, W), mask)
    export.write_cameras_json(tmp_path / "cameras.json", c2w, K, names, (H, W))
    P, C, _, _ = export.colored_points(pts, img, mask)
    export.write_colmap_text(tmp_path / "sparse" / "0", c2w, K, names, (H, W), P, C)
    export.write_transforms_json(tmp_path / "transforms.json", c2w, K, [f"images/{n}" for n in names], (H, W))
    export.write_gaussians_ply(tmp_path / "gaussians.ply", export.pointmap_gaussians(pts, img, mask, c2w, K))
    files = dict(oi.list_files(tmp_path))
    assert {"cameras.json", "sparse/0/images.txt", "images/000_v.png", "gaussians.ply"} <= set(files)
    assert all(n > 0 for n in files.values())
    b = oi.read_back_exports(tmp_path)
    assert b["cameras_json_views"] == b["colmap_images"] == V
    assert b["colmap_points"] == b["points"] == b["gaussians"] == V * H * W
    for key in ("cameras_json_c2w", "colmap_c2w", "transforms_c2w"):
        assert torch.allclose(b[key].double(), c2w.double(), atol=1e-5), key
