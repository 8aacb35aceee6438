"""flare_nb.render.ply: 3DGS Gaussian PLY and point-cloud PLY round trips, layout and errors."""
import math

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from flare_nb.render.ply import (C0, gaussian_property_names, load_gaussians_ply, load_points_ply, rgb_to_sh,
                          save_gaussians_ply, save_points_ply, sh_to_rgb)


def _gaussians(N=50, K=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(N, 4, generator=g)
    q = q / q.norm(dim=1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    return dict(means=torch.randn(N, 3, generator=g) * 3,
                quats=q,
                scales=torch.rand(N, 3, generator=g) * 0.5 + 1e-3,
                opacities=torch.rand(N, generator=g) * 0.98 + 0.01,
                sh=torch.randn(N, K, 3, generator=g))


@pytest.mark.parametrize("K", [1, 4, 16])
def test_gaussian_round_trip(tmp_path, K):
    g = _gaussians(K=K)
    p = save_gaussians_ply(tmp_path / "g.ply", **g)
    out = load_gaussians_ply(p)
    assert out["sh_degree"] == math.isqrt(K) - 1
    assert torch.equal(out["means"], g["means"])  # stored raw: bit-exact
    assert torch.equal(out["sh"], g["sh"])
    for k in ("quats", "scales", "opacities"):  # through log/logit/normalise: float32 precision
        assert out[k].dtype == torch.float32 and out[k].shape == g[k].shape
        torch.testing.assert_close(out[k], g[k], rtol=2e-6, atol=1e-7)


def test_gaussian_file_layout(tmp_path):
    """Binary little-endian, all float32, the 3DGS property order, raw (pre-activation) values."""
    g = _gaussians(N=7, K=16)
    p = save_gaussians_ply(tmp_path / "g.ply", **g)
    header = p.read_bytes()[:200].decode("ascii", "replace")
    assert "format binary_little_endian 1.0" in header
    v = PlyData.read(str(p))["vertex"].data
    assert list(v.dtype.names) == gaussian_property_names(16)
    assert len(v.dtype.names) == 3 + 3 + 3 + 45 + 1 + 3 + 4 == 62
    assert all(v.dtype[n] == np.dtype("<f4") for n in v.dtype.names)
    np.testing.assert_array_equal(v["nx"], 0)
    np.testing.assert_allclose(v["scale_1"], np.log(g["scales"][:, 1].double().numpy()), rtol=1e-6)
    o = g["opacities"].double().numpy()
    np.testing.assert_allclose(v["opacity"], np.log(o / (1 - o)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(v["rot_0"], g["quats"][:, 0].numpy())  # w first


def test_f_rest_channel_major_hand_built(tmp_path):
    """Degree 1 (K=4): f_rest_0..2 red's 3 coefficients, 3..5 green's, 6..8 blue's."""
    sh = torch.zeros(1, 4, 3)
    for k in range(4):
        for c in range(3):
            sh[0, k, c] = 10 * k + c  # value encodes (coefficient k, channel c)
    g = _gaussians(N=1, K=4)
    g["sh"] = sh
    p = save_gaussians_ply(tmp_path / "g.ply", **g)
    v = PlyData.read(str(p))["vertex"].data[0]
    assert [float(v[f"f_dc_{c}"]) for c in range(3)] == [0.0, 1.0, 2.0]
    assert [float(v[f"f_rest_{i}"]) for i in range(9)] == [10, 20, 30, 11, 21, 31, 12, 22, 32]


def test_f_rest_read_by_index_not_file_order(tmp_path):
    """A file whose f_rest properties are written shuffled is read by their index."""
    K, N = 4, 3
    rng = np.random.default_rng(0)
    vals = {n: rng.standard_normal(N).astype(np.float32) for n in gaussian_property_names(K)}
    vals["rot_0"] = np.abs(vals["rot_0"]) + 1
    names = gaussian_property_names(K)
    shuffled = names[:9] + names[9:18][::-1] + names[18:]
    arr = np.empty(N, dtype=[(n, "<f4") for n in shuffled])
    for n in shuffled:
        arr[n] = vals[n]
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "s.ply"))
    out = load_gaussians_ply(tmp_path / "s.ply")
    assert out["sh"][:, 2, 1].tolist() == vals["f_rest_4"].tolist()  # green (c=1), k=2: 1*3 + 1


def test_rgb_input_becomes_sh_dc_and_back(tmp_path):
    g = _gaussians(N=20, K=1)
    rgb = torch.rand(20, 3, generator=torch.Generator().manual_seed(1))
    del g["sh"]
    p = save_gaussians_ply(tmp_path / "rgb.ply", **g, rgb=rgb)
    v = PlyData.read(str(p))["vertex"].data
    assert not any(n.startswith("f_rest") for n in v.dtype.names)
    np.testing.assert_allclose(v["f_dc_2"], (rgb[:, 2].numpy() - 0.5) / 0.28209479, rtol=1e-6)
    out = load_gaussians_ply(p)
    assert out["sh"].shape == (20, 1, 3)
    torch.testing.assert_close(sh_to_rgb(out["sh"][:, 0]), rgb, rtol=0, atol=1e-6)
    assert C0 == pytest.approx(0.28209479, abs=1e-8)
    torch.testing.assert_close(sh_to_rgb(rgb_to_sh(rgb)), rgb)
    assert torch.allclose(rgb_to_sh(torch.full((3,), 0.5)), torch.zeros(3))


def test_gaussian_ply_readable_by_plyfile_and_open3d(tmp_path):
    o3d = pytest.importorskip("open3d")
    g = _gaussians(N=30, K=4)
    p = save_gaussians_ply(tmp_path / "g.ply", **g)
    assert PlyData.read(str(p))["vertex"].count == 30
    pc = o3d.io.read_point_cloud(str(p))
    np.testing.assert_allclose(np.asarray(pc.points), g["means"].numpy(), rtol=1e-6)


def test_points_round_trip_and_open3d(tmp_path):
    o3d = pytest.importorskip("open3d")
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(100, 3, generator=g)
    col = torch.randint(0, 256, (100, 3), generator=g, dtype=torch.uint8)
    conf = torch.rand(100, generator=g) * 5
    p = save_points_ply(tmp_path / "p.ply", pts, col, conf=conf)
    out = load_points_ply(p)
    assert torch.equal(out["points"], pts) and torch.equal(out["colors"], col) and torch.equal(out["conf"], conf)
    pc = o3d.io.read_point_cloud(str(p))
    np.testing.assert_array_equal(np.asarray(pc.points, dtype=np.float32), pts.numpy())
    np.testing.assert_allclose(np.asarray(pc.colors), col.numpy() / 255.0, atol=1e-7)
    # float colours in [0, 1] are rounded to uint8, no confidence -> None
    out2 = load_points_ply(save_points_ply(tmp_path / "f.ply", pts.numpy(), col.numpy() / 255.0))
    assert torch.equal(out2["colors"], col) and out2["conf"] is None


def test_missing_fields_named(tmp_path):
    arr = np.zeros(2, dtype=[(n, "<f4") for n in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                                                  "rot_0", "rot_1", "rot_2", "rot_3", "f_rest_0", "f_rest_2")])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "bad.ply"))
    with pytest.raises(ValueError, match=r"bad\.ply.*missing vertex properties.*scale_0.*scale_1.*scale_2.*f_rest_1"):
        load_gaussians_ply(tmp_path / "bad.ply")
    pts = np.zeros(2, dtype=[("x", "<f4"), ("z", "<f4")])
    PlyData([PlyElement.describe(pts, "vertex")]).write(str(tmp_path / "xz.ply"))
    with pytest.raises(ValueError, match=r"missing vertex properties \['y'\]"):
        load_points_ply(tmp_path / "xz.ply")
    with pytest.raises(FileNotFoundError, match="nope.ply"):
        load_gaussians_ply(tmp_path / "nope.ply")


def test_wrong_f_rest_count(tmp_path):
    names = gaussian_property_names(1) + ["f_rest_0", "f_rest_1", "f_rest_2", "f_rest_3"]
    arr = np.ones(2, dtype=[(n, "<f4") for n in names])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "r.ply"))
    with pytest.raises(ValueError, match="4 f_rest"):
        load_gaussians_ply(tmp_path / "r.ply")


def test_bad_inputs(tmp_path):
    g = _gaussians(N=5, K=4)
    f = tmp_path / "x.ply"
    with pytest.raises(ValueError, match="scales must be > 0"):
        save_gaussians_ply(f, **{**g, "scales": torch.log(g["scales"])})
    with pytest.raises(ValueError, match=r"opacities must lie in \[0, 1\]"):
        save_gaussians_ply(f, **{**g, "opacities": g["opacities"] * 10 - 5})
    with pytest.raises(ValueError, match="exactly one of sh"):
        save_gaussians_ply(f, **g, rgb=torch.rand(5, 3))
    with pytest.raises(ValueError, match="K must be"):
        save_gaussians_ply(f, **{**g, "sh": torch.zeros(5, 5, 3)})
    with pytest.raises(ValueError, match=r"quats must have shape \(5, 4\)"):
        save_gaussians_ply(f, **{**g, "quats": g["quats"][:4]})
    with pytest.raises(ValueError, match="zero quaternion"):
        save_gaussians_ply(f, **{**g, "quats": torch.zeros(5, 4)})
    with pytest.raises(ValueError, match="non-finite"):
        save_gaussians_ply(f, **{**g, "means": torch.full((5, 3), float("nan"))})
    with pytest.raises(ValueError, match=r"float colors must lie in \[0, 1\]"):
        save_points_ply(f, torch.zeros(2, 3), torch.full((2, 3), 255.0))


def test_saturated_opacity_stays_finite(tmp_path):
    g = _gaussians(N=3, K=1)
    g["opacities"] = torch.tensor([0.0, 1.0, 0.5])
    v = PlyData.read(str(save_gaussians_ply(tmp_path / "s.ply", **g)))["vertex"].data
    assert np.isfinite(v["opacity"]).all() and v["opacity"][0] < -15 and v["opacity"][1] > 15
