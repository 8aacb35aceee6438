"""Tests of flare_nb.viz: frustum geometry (OpenCV conventions) and the figures it draws."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Line3DCollection, Path3DCollection  # noqa: E402

from flare_nb.cameras import invert_pose, project_points  # noqa: E402
from flare_nb.scenes.synthetic import make_scene, pointmaps  # noqa: E402
from flare_nb.viz import frustum_points, plot_cameras, plotly_cameras, show_depth, show_images  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    return make_scene(1, n_views=5, size=(128, 64), mode="orbit")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _cloud(s):
    ok = s.depth > 0
    return pointmaps(s, "world")[ok], s.images.permute(0, 2, 3, 1)[ok]


def test_frustum_apex_and_corners_follow_opencv_conventions(scene):
    F = frustum_points(scene.c2w, scene.K, scene.hw, scale=0.7)
    assert F.shape == (5, 8, 3)
    assert np.allclose(F[:, 0], scene.c2w[:, :3, 3].numpy(), atol=1e-6)
    # the 4 corners project back onto the image border (OpenCV centres: -0.5 .. W-0.5) at z = 0.7
    X = torch.from_numpy(F[:, 1:5]).double()
    uv, z = project_points(X, scene.K.double(), invert_pose(scene.c2w.double()))
    H, W = scene.hw
    want = torch.tensor([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]], dtype=torch.float64)
    assert torch.allclose(uv, want.expand(5, 4, 2), atol=1e-4)
    assert torch.allclose(z, torch.full_like(z, 0.7), atol=1e-5)
    # the "up" marker sits above the image (negative v: OpenCV y points down)
    uv_up, _ = project_points(torch.from_numpy(F[:, 7:8]).double(), scene.K.double(), invert_pose(scene.c2w.double()))
    assert (uv_up[..., 1] < -0.5).all()


def test_frustum_defaults_from_K_and_hw(scene):
    a = frustum_points(scene.c2w, scene.K[0], None, scale=1.0)       # hw from the principal point
    b = frustum_points(scene.c2w, scene.K, scene.hw, scale=1.0)
    assert np.allclose(a, b)
    c = frustum_points(torch.eye(4), None, (64, 64), scale=1.0)[0]   # default 60 degree field of view
    half_width = c[2, 0] - c[0, 0]
    assert np.isclose(half_width, np.tan(np.radians(30)), rtol=1e-6)


def test_plot_cameras_draws_one_frustum_per_camera_and_the_points(scene):
    P, C = _cloud(scene)
    ax = plot_cameras(scene.c2w, scene.K, scene.hw, points=P, colors=C, max_points=500)
    frusta = [c for c in ax.collections if isinstance(c, Line3DCollection)]
    clouds = [c for c in ax.collections if isinstance(c, Path3DCollection)]
    assert len(frusta) == scene.n_views
    assert len(clouds) == 1 and len(clouds[0].get_offsets()) == 500
    ax.figure.canvas.draw()                                            # segments are projected on draw
    assert all(len(f.get_segments()) == 10 for f in frusta)
    # onto an existing axis, without points
    fig = plt.figure()
    ax2 = fig.add_subplot(projection="3d")
    assert plot_cameras(scene.c2w[:2], ax=ax2) is ax2
    assert sum(isinstance(c, Line3DCollection) for c in ax2.collections) == 2


def test_plot_cameras_errors(scene):
    with pytest.raises(ValueError, match="c2w"):
        plot_cameras(torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="K"):
        plot_cameras(scene.c2w, torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match="colors"):
        plot_cameras(scene.c2w, points=torch.zeros(10, 3), colors=torch.zeros(9, 3))
    with pytest.raises(ValueError, match="3D axis"):
        plot_cameras(scene.c2w, ax=plt.figure().add_subplot())


def test_plotly_cameras_has_one_trace_per_camera_plus_points(scene):
    P, C = _cloud(scene)
    fig = plotly_cameras(scene.c2w, scene.K, scene.hw, points=P, colors=C, max_points=300)
    assert len(fig.data) == scene.n_views + 1
    assert [t.mode for t in fig.data] == ["lines"] * scene.n_views + ["markers"]
    assert len(fig.data[-1].x) == 300 and len(fig.data[-1].marker.color) == 300
    assert fig.data[0].name == "view 0"
    # frustum line vertices are the frustum_points (None separates segments)
    F = frustum_points(scene.c2w, scene.K, scene.hw, scale=0.5)
    f2 = plotly_cameras(scene.c2w, scene.K, scene.hw, scale=0.5, names=scene.names)
    assert len(f2.data) == scene.n_views and f2.data[2].name == scene.names[2]
    xs = [x for x in f2.data[0].x if x is not None]
    assert np.isclose(xs[0], F[0, 0, 0]) and np.isclose(xs[1], F[0, 1, 0])
    with pytest.raises(ValueError, match="names"):
        plotly_cameras(scene.c2w, names=["a"])


def test_show_images_and_depth(scene):
    fig = show_images(scene.images, titles=scene.names)
    axes = [a for a in fig.axes if a.images]
    assert len(axes) == scene.n_views and axes[1].get_title() == scene.names[1]
    assert len(show_images(scene.images.permute(0, 2, 3, 1).numpy()).axes) == scene.n_views
    assert len(show_images(scene.images[0]).axes) == 1
    with pytest.raises(ValueError, match="titles"):
        show_images(scene.images, titles=["a"])
    with pytest.raises(ValueError, match="RGB"):
        show_images(torch.zeros(2, 4, 8, 8))

    fig = show_depth(scene.depth, colorbar=True)
    ims = [a.images[0] for a in fig.axes if a.images]
    assert len(ims) == scene.n_views
    data = ims[0].get_array()
    assert np.array_equal(np.ma.getmaskarray(data), (scene.depth[0] == 0).numpy())   # no-data pixels blank
    inv = show_depth(scene.depth[0], inverse=True, colorbar=False)
    d0 = scene.depth[0].numpy()
    got = [a.images[0] for a in inv.axes if a.images][0].get_array()
    assert np.allclose(got[d0 > 0], 1.0 / d0[d0 > 0])
    with pytest.raises(ValueError, match="depth"):
        show_depth(torch.zeros(1, 2, 3, 4))
