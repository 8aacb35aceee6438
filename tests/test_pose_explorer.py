"""flare_nb.nb.pose_explorer: pose perturbation, reprojection, model response, the widget
(notebooks 02, 04 and 08)."""
import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from flare_nb import cameras  # noqa: E402
from flare_nb.nb import explore, pose_explorer as pe
from flare_nb.scenes import synthetic
from flare_nb.model.config import tiny  # noqa: E402
from flare_nb.model.pose_encoding import decode_c2w, move_camera_in_encoding  # noqa: E402
from flare_nb.model.flare import FlareModel  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FlareModel(tiny()).eval()


@pytest.fixture(scope="module")
def scene():
    return synthetic.make_scene(3, n_views=3, size=64, mode="orbit", n_threads=1)


@pytest.fixture(scope="module")
def exact_cache(model, scene):
    """The model's cache, but the reprojected points and the cameras are the scene's exact ones."""
    return pe.prepare_explorer(model, scene.images, c2w=cameras.relative_to_view0(scene.c2w.double()).float(),
                               K=scene.K, points=synthetic.pointmaps(scene, "view0"))


@pytest.fixture(scope="module")
def model_cache(model, scene):
    return pe.prepare_explorer(model, scene.images)


# ----------------------------------------------------------------------------- pose encodings
def test_perturb_pose_enc_single_axis_matches_explore():
    g = torch.Generator().manual_seed(0)
    pose = torch.randn(3, 9, generator=g)
    for axis, kw in (("x", dict(rx=12.0, tx=0.3)), ("y", dict(ry=-7.0, ty=0.2)), ("z", dict(rz=20.0, tz=-0.4))):
        rot, tr = [v for k, v in kw.items() if k.startswith("r")][0], [v for k, v in kw.items() if k.startswith("t")][0]
        ref = explore.perturb_view_pose(pose, 1, rot, tr, axis)
        got = move_camera_in_encoding(pose, 1, (kw.get("rx", 0.0), kw.get("ry", 0.0), kw.get("rz", 0.0)),
                                      (kw.get("tx", 0.0), kw.get("ty", 0.0), kw.get("tz", 0.0)))
        assert torch.allclose(got, ref, atol=1e-5), axis
    assert torch.equal(move_camera_in_encoding(pose, 2), pose)


def test_translation_unit():
    c2w = torch.eye(4).repeat(3, 1, 1)
    assert pe.translation_unit(c2w) == 1.0                                  # all at one place
    c2w[1, :3, 3] = torch.tensor([3.0, 0, 0])
    c2w[2, :3, 3] = torch.tensor([0, 0, 6.0])
    assert pe.translation_unit(c2w) == pytest.approx(3.0)                  # (0 + 3 + 6) / 3


# ----------------------------------------------------------------------------- reprojection
def test_reprojection_of_exact_pointmap_is_pixel_grid(scene):
    pts = synthetic.pointmaps(scene, "world")
    valid = scene.depth > 0
    H, W = scene.hw
    for v in range(scene.n_views):
        r = pe.reproject_pointmap(pts[v:v + 1], scene.images[v:v + 1], scene.c2w[v], scene.K[v], scene.hw,
                                  valid[v:v + 1])
        grid = cameras.pixel_grid(H, W)
        err = (r["uv"][0] - grid).norm(dim=-1)[valid[v]].max()
        assert err < 1e-3
        assert torch.allclose(r["z"][0][valid[v]], scene.depth[v][valid[v]], atol=1e-4)
        assert torch.equal(r["visible"][0], valid[v])
        # every valid pixel sees its own point: the splat is the photo there
        assert torch.allclose(r["image"][valid[v]], scene.images[v].permute(1, 2, 0)[valid[v]])
        assert (r["image"][~valid[v]] == 1.0).all() and r["coverage"] == pytest.approx(valid[v].float().mean().item())


def test_reprojection_zbuffer_keeps_the_nearest_point():
    K = torch.tensor([[10.0, 0, 1.5], [0, 10.0, 1.5], [0, 0, 1]])
    pts = torch.zeros(2, 1, 1, 3)
    pts[0, 0, 0] = torch.tensor([0.0, 0.0, 5.0])       # far, red
    pts[1, 0, 0] = torch.tensor([0.0, 0.0, 2.0])       # near, green, same pixel
    img = torch.zeros(2, 3, 1, 1)
    img[0, 0], img[1, 1] = 1.0, 1.0
    r = pe.reproject_pointmap(pts, img, torch.eye(4), K, (4, 4))
    assert r["depth"][2, 2] == pytest.approx(2.0) and r["image"][2, 2].tolist() == [0.0, 1.0, 0.0]
    assert r["coverage"] == pytest.approx(1 / 16)
    behind = pe.reproject_pointmap(-pts, img, torch.eye(4), K, (4, 4))
    assert behind["coverage"] == 0.0 and not behind["visible"].any()


def test_reprojection_errors(scene):
    pts = synthetic.pointmaps(scene, "world")
    with pytest.raises(ValueError, match=r"points must be pointmaps \(V, H, W, 3\)"):
        pe.reproject_pointmap(pts[0], scene.images, scene.c2w[0], scene.K[0], scene.hw)
    with pytest.raises(ValueError, match="images must be"):
        pe.reproject_pointmap(pts, scene.images[:1], scene.c2w[0], scene.K[0], scene.hw)
    with pytest.raises(ValueError, match="for one camera"):
        pe.reproject_pointmap(pts, scene.images, scene.c2w, scene.K[0], scene.hw)
    with pytest.raises(ValueError, match="mask must be"):
        pe.reproject_pointmap(pts, scene.images, scene.c2w[0], scene.K[0], scene.hw, mask=torch.ones(2, 2))


# ----------------------------------------------------------------------------- explore_pose
def test_zero_perturbation(model, exact_cache, scene):
    s = pe.explore_pose(model, exact_cache, 1)
    assert torch.equal(s["c2w_perturbed"], s["c2w_base"])
    assert s["response"].abs().max() == 0 and s["naive"].abs().max() == 0
    assert s["rotation_deg"] == pytest.approx(0.0, abs=1e-4) and s["centre_shift"] == 0.0
    valid = scene.depth > 0
    grid = cameras.pixel_grid(*scene.hw)
    assert (s["uv"][1] - grid).norm(dim=-1)[valid[1]].max() < 1e-3        # view 1's own points land on its grid
    assert s["response"].shape == (3,) and s["reprojection"].shape == (*scene.hw, 3)
    s2 = pe.explore_pose(model, exact_cache, 2, stage=2)
    assert s2["response"].abs().max() == 0


def test_known_rotation_moves_the_frustum(model, exact_cache):
    from flare_nb.viz import frustum_points

    s = pe.explore_pose(model, exact_cache, 1, ry=90.0, tz=0.5)
    old, new = s["c2w_base"][1].double(), s["c2w_perturbed"][1].double()
    # pan by +90 deg about the camera's y axis: the new optical axis is the old x axis
    assert torch.allclose(new[:3, 2], old[:3, 0], atol=1e-5)
    assert torch.allclose(new[:3, 1], old[:3, 1], atol=1e-5)
    # tz = 0.5 units moves the centre along the OLD optical axis (translation before rotation: c2w D)
    assert torch.allclose(new[:3, 3], old[:3, 3] + 0.5 * s["unit"] * old[:3, 2], atol=1e-4)
    F = frustum_points(s["c2w_perturbed"], s["K"], s["hw"], scale=1.0)[1]
    axis = F[1:5].mean(0) - F[0]                                           # apex -> image-plane centre
    axis = axis / ((axis ** 2).sum() ** 0.5)
    assert torch.allclose(torch.as_tensor(axis), old[:3, 0], atol=0.02)
    assert s["rotation_deg"] == pytest.approx(90.0, abs=1e-3)
    assert torch.equal(s["c2w_perturbed"][[0, 2]], s["c2w_base"][[0, 2]])
    # the conditioning pose moved by the same motion in its own frame
    D = torch.eye(4, dtype=torch.float64)
    D[:3, :3] = cameras.euler_to_matrix(0, 90, 0)
    D[2, 3] = 0.5 * s["pose_enc_base"][:, :3].double().norm(dim=-1).mean()
    assert torch.allclose(decode_c2w(s["pose_enc_new"][1]), decode_c2w(s["pose_enc_base"][1]) @ D, atol=1e-5)


def test_response_of_the_model(model, model_cache):
    s = pe.explore_pose(model, model_cache, 1, ry=15.0, tx=0.2)
    assert s["naive"][1] > 0 and s["naive"][[0, 2]].abs().max() == 0     # naive: only the moved view moves
    assert s["response"].shape == (3,) and torch.isfinite(s["response"]).all()
    # stage 3 re-run with the moved pose is the same as explore's one-axis experiment for one axis
    s1 = pe.explore_pose(model, model_cache, 2, rz=-8.0)
    ref = explore.perturbation_response(model, model_cache, 2, -8.0, 0.0, "z")
    assert torch.allclose(s1["response"], ref["learned"], atol=1e-6)
    assert torch.allclose(s1["naive"], ref["naive"], atol=1e-6)


def test_prepare_explorer_defaults(model_cache, scene):
    c = model_cache
    assert c["c2w"].shape == (3, 4, 4) and c["K"].shape == (3, 3, 3)
    assert torch.allclose(c["c2w"][0], torch.eye(4), atol=1e-5)           # relative to view 0
    R = c["c2w"][:, :3, :3].double()
    assert (R.transpose(1, 2) @ R - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-5
    assert c["points"].shape == (3, 64, 64, 3) and c["mask"].dtype == torch.bool
    assert 0 < len(c["cloud"]) <= 4000 and c["cloud_colors"].shape == c["cloud"].shape
    assert "tau" in c["c2w_source"]


def test_explore_errors(model, exact_cache, scene):
    with pytest.raises(ValueError, match=r"view must be an int in \[0, 3\)"):
        pe.explore_pose(model, exact_cache, 5)
    with pytest.raises(ValueError, match="stage must be 2"):
        pe.explore_pose(model, exact_cache, 1, stage=1)
    with pytest.raises(ValueError, match="finite"):
        pe.explore_pose(model, exact_cache, 1, tx=math.inf)
    with pytest.raises(ValueError, match=r"images must be in \[0, 1\]"):
        pe.prepare_explorer(model, scene.images * 2 - 1)
    with pytest.raises(ValueError, match="c2w must be"):
        pe.prepare_explorer(model, scene.images, c2w=torch.eye(4))
    with pytest.raises(ValueError, match="points must be"):
        pe.prepare_explorer(model, scene.images, points=torch.zeros(3, 8, 8, 3))


# ----------------------------------------------------------------------------- figure and widget
def test_plot_and_widget(model, exact_cache):
    import ipywidgets as W
    import matplotlib.pyplot as plt

    s = pe.explore_pose(model, exact_cache, 1, ry=10.0)
    fig = pe.plot_pose_explorer(s)
    assert len(fig.axes) == 3 and fig.axes[0].name == "3d"
    plt.close(fig)
    w = pe.make_pose_explorer(model, exact_cache)
    ctrl = {c.description: c for c in w.children if isinstance(c, (W.FloatSlider, W.Dropdown))}
    assert set(ctrl) == {"view", "rx (deg)", "ry (deg)", "rz (deg)", "tx", "ty", "tz", "pose fed to"}
    assert isinstance(ctrl["view"], W.Dropdown) and [v for _, v in ctrl["view"].options] == [0, 1, 2]
    assert all(isinstance(ctrl[k], W.FloatSlider) and ctrl[k].value == 0.0
               for k in ("rx (deg)", "ry (deg)", "rz (deg)", "tx", "ty", "tz"))
    plt.close("all")
