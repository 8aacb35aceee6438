"""flare_nb.export: every file read back by its format's own reader (pycolmap, open3d, plyfile,
flare_nb.scenes.scene). Notebook 08 / the flare-nb CLI."""
import json
import math

import numpy as np
import pytest
import roma
import torch
from PIL import Image

from flare_nb import cameras, export
from flare_nb.render.ply import load_gaussians_ply, load_points_ply
from flare_nb.scenes.scene import load_colmap, load_nerf

V, H, W = 3, 48, 64


@pytest.fixture(scope="module")
def cams():
    g = torch.Generator().manual_seed(0)
    c2w = torch.eye(4, dtype=torch.float64).repeat(V, 1, 1)
    c2w[:, :3, :3] = roma.rotvec_to_rotmat(0.4 * torch.randn(V, 3, generator=g, dtype=torch.float64))
    c2w[:, :3, 3] = torch.randn(V, 3, generator=g, dtype=torch.float64)
    K = torch.tensor([[[50.0 + 5 * i, 0, 31.2 + i], [0, 52.0 + 5 * i, 23.7 - i], [0, 0, 1]] for i in range(V)],
                     dtype=torch.float64)
    return c2w, K


def _write_images(folder, names, rng=0):
    folder.mkdir(parents=True, exist_ok=True)
    r = np.random.default_rng(rng)
    for n in names:
        Image.fromarray(r.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / n)


# ----------------------------------------------------------------------------- COLMAP
def test_colmap_text_read_by_pycolmap_with_matching_poses(tmp_path, cams):
    import pycolmap

    c2w, K = cams
    names = [f"{i:03d}_v.png" for i in range(V)]
    pts = torch.randn(50, 3, dtype=torch.float64)
    cols = torch.rand(50, 3)
    export.write_colmap_text(tmp_path / "sparse", c2w, K, names, (H, W), pts, cols)
    rec = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    assert len(rec.images) == V and len(rec.cameras) == V and len(rec.points3D) == 50
    w2c = cameras.invert_pose(c2w)
    for image in rec.images.values():
        i = names.index(image.name)
        np.testing.assert_allclose(np.asarray(image.cam_from_world().matrix()), w2c[i, :3].numpy(), atol=1e-9)
        cam = rec.cameras[image.camera_id]
        assert (cam.width, cam.height) == (W, H) and cam.model.name == "PINHOLE"
        # COLMAP's principal point is +0.5 px from ours
        np.testing.assert_allclose(cam.params, [K[i, 0, 0], K[i, 1, 1], K[i, 0, 2] + 0.5, K[i, 1, 2] + 0.5], atol=1e-9)
    got = np.stack([rec.points3D[j + 1].xyz for j in range(50)])
    np.testing.assert_allclose(got, pts.numpy(), rtol=1e-6, atol=1e-6)
    rgb = np.stack([rec.points3D[j + 1].color for j in range(50)])
    np.testing.assert_array_equal(rgb, np.round(cols.double().numpy() * 255).astype(np.uint8))


def test_colmap_round_trip_through_load_colmap(tmp_path, cams):
    c2w, K = cams
    names = [f"{i:03d}_v.png" for i in range(V)]
    _write_images(tmp_path / "images", names)
    export.write_colmap_text(tmp_path / "sparse" / "0", c2w, K, names, (H, W))
    scene = load_colmap(tmp_path / "sparse" / "0", tmp_path / "images")
    torch.testing.assert_close(scene.c2w.double(), c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(scene.K.double(), K, atol=1e-4, rtol=0)


def test_colmap_rejects_bad_names_and_focal(tmp_path, cams):
    c2w, K = cams
    with pytest.raises(ValueError, match="whitespace"):
        export.write_colmap_text(tmp_path, c2w, K, ["a b.png", "c.png", "d.png"], (H, W))
    with pytest.raises(ValueError, match="distinct"):
        export.write_colmap_text(tmp_path, c2w, K, ["a.png"] * 3, (H, W))
    bad = K.clone()
    bad[1, 0, 0] = -3
    with pytest.raises(ValueError, match="focal lengths must be positive"):
        export.write_colmap_text(tmp_path, c2w, bad, ["a.png", "b.png", "c.png"], (H, W))
    with pytest.raises(ValueError, match="K must be"):
        export.write_colmap_text(tmp_path, c2w, K[:2], ["a.png", "b.png", "c.png"], (H, W))


# ----------------------------------------------------------------------------- transforms.json
@pytest.mark.parametrize("shared", [True, False])
def test_transforms_json_round_trip_through_load_nerf(tmp_path, cams, shared):
    c2w, K = cams
    K = K[:1].expand(V, 3, 3) if shared else K
    names = [f"{i:03d}_v.png" for i in range(V)]
    _write_images(tmp_path / "images", names)
    export.write_transforms_json(tmp_path / "transforms.json", c2w, K, [f"images/{n}" for n in names], (H, W))
    doc = json.loads((tmp_path / "transforms.json").read_text())
    assert ("fl_x" in doc) == shared and ("fl_x" in doc["frames"][0]) != shared
    scene = load_nerf(tmp_path)
    torch.testing.assert_close(scene.c2w.double(), c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(scene.K.double(), K, atol=1e-4, rtol=0)
    # the file itself is OpenGL: the camera's y axis points the other way
    T = torch.tensor(doc["frames"][1]["transform_matrix"], dtype=torch.float64)
    torch.testing.assert_close(T[:3, 1], -c2w[1, :3, 1])


def test_cameras_json_holds_opencv_c2w(tmp_path, cams):
    c2w, K = cams
    export.write_cameras_json(tmp_path / "c.json", c2w, K, ["a", "b", "c"], (H, W), {"weights": "w"},
                              [{"src": i} for i in range(V)])
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["weights"] == "w" and (doc["width"], doc["height"]) == (W, H)
    torch.testing.assert_close(torch.tensor([v["c2w"] for v in doc["views"]], dtype=torch.float64), c2w)
    assert [v["cx"] for v in doc["views"]] == pytest.approx(K[:, 0, 2].tolist())
    assert [v["src"] for v in doc["views"]] == [0, 1, 2]


# ----------------------------------------------------------------------------- points / Gaussians
def _plane_scene(depth=2.0):
    """A fronto-parallel plane at z = depth seen by an identity camera: pointmap (1, H, W, 3), a
    smooth image (1, 3, H, W) and K."""
    K = export.fov_K(H, W, 60.0).double()
    pts = cameras.unproject_depth(torch.full((1, H, W), depth, dtype=torch.float64), K)
    u = torch.linspace(0, 1, W)
    v = torch.linspace(0, 1, H)
    img = torch.stack([u[None].expand(H, W), v[:, None].expand(H, W), 0.5 * (u[None] + v[:, None])])[None]
    return pts.float(), img, K


def test_confident_mask_drops_the_least_confident_fraction():
    g = torch.Generator().manual_seed(1)
    conf = torch.rand(2, 10, 10, generator=g)
    pts = torch.randn(2, 10, 10, 3, generator=g)
    pts[0, 0, 0, 1] = float("nan")
    m = export.confident_mask(conf, 0.3, pts)
    assert not m[0, 0, 0]
    assert abs(int(m[1].sum()) - 70) <= 1 and abs(int(m[0].sum()) - 69) <= 1
    assert bool((conf[1][m[1]].min() > conf[1][~m[1]].max()))
    assert bool(export.confident_mask(torch.ones(1, 4, 4), 0.5).all())      # nothing to rank: keep all
    with pytest.raises(ValueError, match="fraction"):
        export.confident_mask(conf, 1.0)


def test_points_ply_opens_with_open3d_and_plyfile(tmp_path):
    import open3d as o3d
    from plyfile import PlyData

    pts, img, _ = _plane_scene()
    conf = torch.rand(1, H, W, generator=torch.Generator().manual_seed(2))
    mask = export.confident_mask(conf, 0.5, pts)
    path, n = export.write_points_ply(tmp_path / "p.ply", pts, img, conf, mask)
    assert n == int(mask.sum()) > 0
    pc = o3d.io.read_point_cloud(str(path))
    np.testing.assert_allclose(np.asarray(pc.points), pts[mask].numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(pc.colors), img.permute(0, 2, 3, 1)[mask].numpy(), atol=1 / 255)
    v = PlyData.read(str(path))["vertex"]
    assert {"x", "y", "z", "red", "green", "blue", "confidence"} <= set(v.data.dtype.names)
    np.testing.assert_allclose(np.asarray(v["confidence"]), conf[mask].numpy(), atol=1e-7)
    assert torch.equal(load_points_ply(path)["points"], pts[mask])


def test_pointmap_gaussians_footprint_and_3dgs_ply(tmp_path):
    import open3d as o3d
    from plyfile import PlyData

    pts, img, K = _plane_scene(depth=2.0)
    mask = torch.ones(1, H, W, dtype=torch.bool)
    g = export.pointmap_gaussians(pts, img, mask, torch.eye(4)[None], K)
    assert g["means"].shape == (H * W, 3) and g["colors"].shape == (H * W, 1, 3) and g["sh_degree"] == 0
    torch.testing.assert_close(g["opacities"], torch.full((H * W,), export.POINTMAP_OPACITY))
    torch.testing.assert_close(g["scales"], torch.full((H * W, 3), 2.0 / float(K[0, 0])))   # z / f
    path = export.write_gaussians_ply(tmp_path / "g.ply", g)
    names = PlyData.read(str(path))["vertex"].data.dtype.names
    assert names[:9] == ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    assert names[-8:] == ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
    back = load_gaussians_ply(path)
    torch.testing.assert_close(back["means"], g["means"])
    torch.testing.assert_close(back["scales"], g["scales"], rtol=1e-5, atol=0)
    torch.testing.assert_close(back["opacities"], g["opacities"], rtol=1e-5, atol=0)
    assert len(o3d.io.read_point_cloud(str(path)).points) == H * W


def test_rendering_the_pointmap_gaussians_gives_back_the_image(tmp_path):
    pts, img, K = _plane_scene(depth=3.0)
    g = export.pointmap_gaussians(pts, img, torch.ones(1, H, W, dtype=torch.bool), torch.eye(4)[None], K)
    out = export.render_gaussians(g, torch.eye(4)[None], K[None], (H, W), background=(1.0, 0.0, 1.0))
    assert out.shape == (1, H, W, 3)
    inner = (slice(3, H - 3), slice(3, W - 3))                        # the border blends with the background
    err = (out[0][inner] - img[0].permute(1, 2, 0)[inner]).abs()
    # equal depths composite in index order, which biases colours by ~1-2 px of the gradient
    # (0.02-0.04); a flipped or shifted camera would be off by 0.3
    assert float(err.mean()) < 0.04 and float(err.max()) < 0.08
    # a camera looking the other way sees only the background
    back = torch.eye(4)[None].clone()
    back[0, :3, :3] = torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
    out2 = export.render_gaussians(g, back, K[None], (H, W), background=(1.0, 0.0, 1.0))
    torch.testing.assert_close(out2[0], torch.tensor([1.0, 0.0, 1.0]).expand(H, W, 3))
    export.save_render_grid(tmp_path / "grid.png", img, out)
    assert Image.open(tmp_path / "grid.png").size == (W, 2 * H)


def test_fov_K_and_summary_figure(tmp_path):
    K = export.fov_K(H, W, 90.0)
    assert float(K[0, 0]) == pytest.approx(W / 2 / math.tan(math.radians(45)))
    assert (float(K[0, 2]), float(K[1, 2])) == ((W - 1) / 2, (H - 1) / 2)
    pts, img, K = _plane_scene()
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 3] = 0.5
    p = export.save_summary_figure(tmp_path / "s.png", c2w, K.float(), (H, W), pts.reshape(-1, 3),
                                   img.permute(0, 2, 3, 1).reshape(-1, 3), img.repeat(2, 1, 1, 1), title="t")
    assert Image.open(p).size[0] > 200


def test_thin_gaussians_keeps_coverage():
    pts, img, K = _plane_scene(depth=3.0)
    g = export.pointmap_gaussians(pts, img, torch.ones(1, H, W, dtype=torch.bool), torch.eye(4)[None], K)
    t = export.thin_gaussians(g, 1000)
    assert len(t["means"]) == 1000 and t["sh_degree"] == g["sh_degree"] and len(t["pixel"]) == 1000
    torch.testing.assert_close(t["scales"][0], g["scales"][0] * math.sqrt(H * W / 1000))
    assert export.thin_gaussians(g, H * W) is g
    out = export.render_gaussians(g, torch.eye(4)[None], K[None], (H, W), background=(1.0, 0.0, 1.0),
                                  max_gaussians=1000)
    inner = (slice(4, H - 4), slice(4, W - 4))
    assert float((out[0][inner] - img[0].permute(1, 2, 0)[inner]).abs().mean()) < 0.08   # no holes of background
