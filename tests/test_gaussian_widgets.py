"""flare_nb.nb.gaussian_widgets: the callbacks behind notebook 05's parameter and orbit widgets."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from flare_nb.nb.gaussian_widgets import (make_orbit_widget, make_toy_widget, orbit_view, toy_camera,  # noqa: E402
                                       toy_gaussians, toy_view)
from flare_nb.render.splats import orbit_c2w  # noqa: E402


def test_toy_camera_and_gaussians():
    c2w, K = toy_camera(64)
    assert c2w.shape == (1, 4, 4) and K.shape == (1, 3, 3)
    assert float(K[0, 0, 2]) == 31.5 and float(K[0, 0, 0]) == 64
    g = toy_gaussians((0.3, 0.2, 0.1), 0.5, (0, 0, 90))
    assert g["means"].shape == (3, 3) and g["colors"].shape == (3, 3) and g["sh_degree"] is None
    # 90 degrees about z: (w, x, y, z) = (cos 45, 0, 0, sin 45)
    torch.testing.assert_close(g["quats"][0], torch.tensor([math.sqrt(0.5), 0, 0, math.sqrt(0.5)], dtype=torch.float64))
    assert float(g["opacities"][0]) == 0.5
    for bad, msg in (((0.0, 0.1, 0.1), "scales"), ((0.1, 0.1), "3 finite")):
        with pytest.raises(ValueError, match=msg):
            toy_gaussians(bad)
    with pytest.raises(ValueError, match="opacity"):
        toy_gaussians(opacity=1.2)
    with pytest.raises(ValueError, match="size"):
        toy_camera(4)


def test_toy_view_covariance_known_answer():
    """The red Gaussian sits on the optical axis at z = 3 with f = size: its 2D covariance is
    (f/z)^2 diag(sx^2, sy^2) + 0.3 I; a 90 degree turn about z swaps the axes."""
    size = 48
    _, info = toy_view(0.3, 0.1, 0.2, 0.8, size=size, draw=False)
    J2 = (size / 3.0) ** 2
    want = torch.diag(torch.tensor([J2 * 0.09 + 0.3, J2 * 0.01 + 0.3], dtype=torch.float64))
    torch.testing.assert_close(info["cov2d"], want)
    torch.testing.assert_close(info["mean2d"], torch.tensor([(size - 1) / 2] * 2, dtype=torch.float64))
    torch.testing.assert_close(info["cov3d"], torch.diag(torch.tensor([0.09, 0.01, 0.04], dtype=torch.float64)))
    _, turned = toy_view(0.3, 0.1, 0.2, 0.8, rz=90, size=size, draw=False)
    torch.testing.assert_close(turned["cov2d"], want.flip(0).flip(1))
    assert info["image"].shape == (size, size, 3)


def test_toy_view_parameters_change_the_image():
    size = 48
    _, base = toy_view(size=size, draw=False)
    c = (size - 1) // 2
    red = base["image"][c, c]
    assert red[0] > 0.6 and red[1] < 0.4                            # the red Gaussian covers the centre
    _, wide = toy_view(scale_x=0.6, size=size, draw=False)
    assert wide["radii"][0] > base["radii"][0] and wide["radii"][1] == base["radii"][1]
    # lower opacity: more of the white background / the Gaussians behind shows through
    _, faint = toy_view(opacity=0.2, size=size, draw=False)
    assert float((faint["image"][c, c] - red).abs().sum()) > 0.5
    assert faint["radii"][0] < base["radii"][0]                    # gsplat's extent shrinks with opacity
    # opacity 0: the red Gaussian is culled and the image is just the other two
    _, gone = toy_view(opacity=0.0, size=size, draw=False)
    assert int(gone["radii"].abs().sum()) == 0
    assert float(gone["image"][c, c].min()) > 0.9                  # white background at the centre
    # a tilt about x brings the z scale into view along the image's y
    _, tilt = toy_view(0.3, 0.05, 0.4, 0.8, rx=90, size=size, draw=False)
    assert tilt["cov2d"][1, 1] > 10 * toy_view(0.3, 0.05, 0.4, 0.8, size=size, draw=False)[1]["cov2d"][1, 1]


def test_toy_view_draws():
    ax, info = toy_view(size=32)
    assert ax is not None and len(ax.patches) == 2 and len(ax.images) == 1   # ellipse + extent box
    plt.close("all")


def test_orbit_view_matches_direct_render():
    # two Gaussians at the world origin and +x; view from azimuth 0 (along +x)
    g = {"means": torch.tensor([[0.0, 0, 0], [0.5, 0, 0]]), "quats": torch.tensor([[1.0, 0, 0, 0]] * 2),
         "scales": torch.full((2, 3), 0.15), "opacities": torch.tensor([0.9, 0.9]),
         "colors": torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]), "sh_degree": None}
    K = torch.tensor([[40.0, 0, 15.5], [0, 40.0, 15.5], [0, 0, 1]])
    _, info = orbit_view(g, (0, 0, 0), 2.0, 0.0, 0.0, K, (32, 32), reference=(1, 0, 0), draw=False)
    torch.testing.assert_close(info["c2w"], orbit_c2w((0, 0, 0), 2.0, 0, 0, reference=(1, 0, 0)))
    assert info["image"].shape == (3, 32, 32) and info["alpha"].shape == (32, 32)
    # from +x the blue Gaussian (x = 0.5) is in front of the red one: the centre is blue, expected depth near 1.5
    centre = info["image"][:, 15:17, 15:17].mean((1, 2))
    assert centre[2] > 0.7 and centre[0] < 0.25
    assert 1.5 < float(info["depth"][15:17, 15:17].mean()) < 1.6   # expected depth: mostly the front one
    # from the other side (azimuth 180) it is red
    _, back = orbit_view(g, (0, 0, 0), 2.0, 180.0, 0.0, K, (32, 32), reference=(1, 0, 0), draw=False)
    centre = back["image"][:, 15:17, 15:17].mean((1, 2))
    assert centre[0] > 0.7 and centre[2] < 0.25
    ax, _ = orbit_view(g, (0, 0, 0), 2.0, 30.0, 10.0, K, (32, 32))
    assert len(ax.images) == 1
    plt.close("all")
    with pytest.raises(ValueError, match="one \\(3, 3\\)"):
        orbit_view(g, (0, 0, 0), 2.0, 0.0, 0.0, K[None], (32, 32))


def test_widgets_build():
    pytest.importorskip("ipywidgets")
    w = make_toy_widget(size=32)
    assert {c.description for c in w.children if hasattr(c, "description")} >= {"scale x", "opacity", "rz (deg)"}
    g = toy_gaussians()
    K = toy_camera(32)[1][0]
    w2 = make_orbit_widget(g, (0, 0, 3), K, (32, 32), radius=3.0, azimuth_deg=-90, elevation_deg=0, up=(0, -1, 0))
    assert {c.description for c in w2.children if hasattr(c, "description")} >= {"azimuth", "elevation", "radius"}
    plt.close("all")
