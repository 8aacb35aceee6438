"""flare_nb.render.splats (notebook 05): pointmap -> Gaussians, rendering in our conventions, masked
PSNR, 2D covariances, orbit cameras, and the gradient-descent fit."""
import math

import pytest
import torch

from flare_nb import cameras
from flare_nb.render.ply import sh_to_rgb
from flare_nb.render.rasterize import project_gaussians
from flare_nb.cameras import look_at_point
from flare_nb.render.splats import (covariance_2d, fit_gaussians, gaussians_from_pointmap, masked_psnr,
                             orbit_c2w, orbit_params, perturb_gaussians, render_views)


def _plane_scene(V=2, H=32, W=32, z=2.0, seed=0):
    """A fronto-parallel textured plane at depth z seen by V cameras shifted along x."""
    g = torch.Generator().manual_seed(seed)
    K = torch.tensor([[40.0, 0, (W - 1) / 2], [0, 40.0, (H - 1) / 2], [0, 0, 1]]).expand(V, 3, 3).clone()
    c2w = torch.eye(4).repeat(V, 1, 1)
    c2w[:, 0, 3] = torch.linspace(-0.1, 0.1, V)
    depth = torch.full((V, H, W), z)
    Xc = cameras.unproject_depth(depth, K)
    points = cameras.transform_points(c2w, Xc)
    images = torch.rand(V, 3, H, W, generator=g)
    return points, images, depth, K, c2w


# ----------------------------------------------------------------------------- gaussians_from_pointmap
def test_gaussians_from_pointmap_values():
    points, images, depth, K, _ = _plane_scene()
    valid = torch.ones_like(depth, dtype=torch.bool)
    valid[0, 3, 5] = False
    g = gaussians_from_pointmap(points, images, depth, K, valid=valid, footprint=0.7, opacity=0.9)
    N = int(valid.sum())
    assert g["means"].shape == (N, 3) and g["quats"].shape == (N, 4) and g["scales"].shape == (N, 3)
    assert g["opacities"].shape == (N,) and g["colors"].shape == (N, 1, 3) and g["sh_degree"] == 0
    # (view, row, column) order, and each Gaussian sits on its pixel's point with its pixel's colour
    v, i, j = g["pixel"][100]
    torch.testing.assert_close(g["means"][100], points[v, i, j])
    torch.testing.assert_close(sh_to_rgb(g["colors"][100, 0]), images[v, :, i, j])
    assert not bool((g["pixel"] == torch.tensor([0, 3, 5])).all(1).any())   # the masked pixel has none
    torch.testing.assert_close(g["scales"], torch.full((N, 3), 0.7 * 2.0 / 40.0))
    assert torch.all(g["quats"] == torch.tensor([1.0, 0, 0, 0]))
    assert torch.all(g["opacities"] == 0.9)
    # default mask: depth > 0
    depth2 = depth.clone()
    depth2[1, :4] = 0
    assert gaussians_from_pointmap(points, images, depth2, K)["means"].shape[0] == 2 * 32 * 32 - 4 * 32


def test_footprint_is_pixels_in_own_view():
    """A Gaussian made with footprint f projects (in its own view, centre of the image) to a
    2D std of f pixels (plus gsplat's 0.3 px^2 low-pass)."""
    points, images, depth, K, c2w = _plane_scene(V=2, H=33, W=33)
    g = gaussians_from_pointmap(points, images, depth, K, footprint=1.5)
    centre = ((g["pixel"] == torch.tensor([0, 16, 16])).all(1)).nonzero()[0, 0]
    proj = project_gaussians(g["means"][centre:centre + 1], g["quats"][centre:centre + 1],
                             g["scales"][centre:centre + 1], None, cameras.invert_pose(c2w[:1]),
                             cameras.gsplat_K(K[:1]), 33, 33)
    cov = covariance_2d(proj)[0, 0]
    torch.testing.assert_close(cov, torch.eye(2) * (1.5 ** 2 + 0.3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw, msg", [
    (dict(footprint=0.0), "footprint"), (dict(opacity=1.5), "opacity"), (dict(opacity=0.0), "opacity"),
])
def test_gaussians_from_pointmap_bad_values(kw, msg):
    points, images, depth, K, _ = _plane_scene()
    with pytest.raises(ValueError, match=msg):
        gaussians_from_pointmap(points, images, depth, K, **kw)


def test_gaussians_from_pointmap_bad_shapes():
    points, images, depth, K, _ = _plane_scene()
    with pytest.raises(ValueError, match="points must be"):
        gaussians_from_pointmap(points[..., :2], images, depth, K)
    with pytest.raises(ValueError, match="images must be"):
        gaussians_from_pointmap(points, images[:, :, :4], depth, K)
    with pytest.raises(ValueError, match="depth must be"):
        gaussians_from_pointmap(points, images, depth[0], K)
    with pytest.raises(ValueError, match="K must be"):
        gaussians_from_pointmap(points, images, depth, K[0])
    with pytest.raises(ValueError, match="valid must be"):
        gaussians_from_pointmap(points, images, depth, K, valid=(depth > 0)[0])
    with pytest.raises(ValueError, match="valid must be"):
        gaussians_from_pointmap(points, images, depth, K, valid=(depth > 0).float())
    depth0 = depth.clone()
    depth0[0, 0, 0] = 0
    with pytest.raises(ValueError, match="depth <= 0"):
        gaussians_from_pointmap(points, images, depth0, K, valid=torch.ones_like(depth, dtype=torch.bool))


# ----------------------------------------------------------------------------- render_views / masked_psnr
def test_render_views_reproduces_pixels():
    """Small, nearly opaque Gaussians at the exact pointmap re-render a plane's images; the
    conventions (c2w -> viewmats, OpenCV K -> gsplat K) must be right for pixel alignment."""
    points, images, depth, K, c2w = _plane_scene(V=2, H=32, W=32)
    images = torch.nn.functional.avg_pool2d(images, 3, 1, 1)  # smooth texture: splats blur a little
    g = gaussians_from_pointmap(points[:1], images[:1], depth[:1], K[:1], footprint=0.05, opacity=1.0)
    out = render_views(g, c2w[:1], K[:1], (32, 32))
    assert out.rgb.shape == (1, 3, 32, 32) and out.depth.shape == (1, 32, 32) and out.alpha.shape == (1, 32, 32)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert float(masked_psnr(out.rgb[inner], images[:1][inner])) > 30
    torch.testing.assert_close(out.depth[0, 2:-2, 2:-2], depth[0, 2:-2, 2:-2], rtol=1e-4, atol=1e-4)
    # shifting K by a pixel instead misaligns it: much worse
    K_bad = K[:1].clone()
    K_bad[:, 0, 2] += 1
    bad = render_views(g, c2w[:1], K_bad, (32, 32))
    assert float(masked_psnr(bad.rgb[inner], images[:1][inner])) < float(masked_psnr(out.rgb[inner], images[:1][inner])) - 5


def test_render_views_errors():
    points, images, depth, K, c2w = _plane_scene()
    g = gaussians_from_pointmap(points, images, depth, K)
    with pytest.raises(ValueError, match="c2w must be"):
        render_views(g, c2w[0], K, (32, 32))
    with pytest.raises(ValueError, match="K must be"):
        render_views(g, c2w, K[:1], (32, 32))
    with pytest.raises(ValueError, match="hw must be"):
        render_views(g, c2w, K, (0, 32))
    with pytest.raises(KeyError, match="opacities"):
        render_views({k: v for k, v in g.items() if k != "opacities"}, c2w, K, (32, 32))


def test_masked_psnr():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0, :, 0, 0] = 1.0      # one wrong pixel in image 0
    b[1] = 0.1               # image 1 off by 0.1 everywhere
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    p = masked_psnr(b, a, mask)
    assert p.shape == (2,)
    assert abs(float(p[0]) - 10 * math.log10(16)) < 1e-4 and abs(float(p[1]) - 20) < 1e-4
    mask[0, 0, 0] = False    # hide the wrong pixel
    assert math.isinf(float(masked_psnr(b, a, mask)[0]))
    torch.testing.assert_close(masked_psnr(b, a), p)
    with pytest.raises(ValueError, match="empty"):
        masked_psnr(b, a, torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="same|one shape"):
        masked_psnr(b, a[:1])
    with pytest.raises(ValueError, match="mask must be"):
        masked_psnr(b, a, mask[0])


def test_covariance_2d_known_answer():
    """On the optical axis the Jacobian is diag(f/z, f/z): cov2d = (f/z)^2 Sigma_xy + 0.3 I."""
    q = torch.tensor([[math.cos(0.3), 0.2, -0.4, math.sin(0.3)]], dtype=torch.float64)
    s = torch.tensor([[0.3, 0.1, 0.05]], dtype=torch.float64)
    from flare_nb.render.rasterize import covariance_3d
    Sigma = covariance_3d(q, s)[0]
    K = torch.tensor([[[50.0, 0, 20], [0, 60.0, 20], [0, 0, 1]]], dtype=torch.float64)
    proj = project_gaussians(torch.tensor([[0.0, 0, 2.5]], dtype=torch.float64), q, s, None,
                             torch.eye(4, dtype=torch.float64)[None], K, 40, 40)
    J = torch.diag(torch.tensor([50 / 2.5, 60 / 2.5], dtype=torch.float64))
    torch.testing.assert_close(covariance_2d(proj)[0, 0], J @ Sigma[:2, :2] @ J + 0.3 * torch.eye(2, dtype=torch.float64))


# ----------------------------------------------------------------------------- orbit cameras
def test_orbit_c2w_geometry():
    target = torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    for az, el in ((0, 0), (37, 20), (-120, -45), (200, 80)):
        T = orbit_c2w(target, 2.0, az, el, up)
        R, c = T[:3, :3], T[:3, 3]
        torch.testing.assert_close(R.T @ R, torch.eye(3, dtype=torch.float64))
        assert abs(float(torch.det(R)) - 1) < 1e-12                       # right-handed
        assert abs(float((c - target).norm()) - 2.0) < 1e-12
        torch.testing.assert_close(R[:, 2], (target - c) / (target - c).norm())  # looks at target
        assert abs(float(R[:, 0] @ up)) < 1e-12                           # no roll
        assert float(R[:, 1] @ up) < 0                                    # image y points down
        assert abs(math.degrees(math.asin(float((c - target) @ up) / 2.0)) - el) < 1e-9
        # the target projects to the principal point
        uv, z = cameras.project_points(target[None], torch.eye(3, dtype=torch.float64), cameras.invert_pose(T))
        assert float(z[0]) > 0 and float(uv.abs().max()) < 1e-12
    # azimuth 0 lies along the reference direction, 90 along up x reference
    c0 = orbit_c2w([0, 0, 0], 1.0, 0, 0, reference=(1, 0, 0))[:3, 3]
    c90 = orbit_c2w([0, 0, 0], 1.0, 90, 0, reference=(1, 0, 0))[:3, 3]
    torch.testing.assert_close(c0, torch.tensor([1.0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(c90, torch.tensor([0.0, 1, 0], dtype=torch.float64))


def test_orbit_params_round_trip():
    target, up, ref = (0.1, 0.2, -0.3), (0.2, -0.1, 1.0), (1.0, 0.0, 0.0)
    for r, az, el in ((1.5, 10.0, 30.0), (0.7, -170.0, -60.0), (3.0, 95.0, 5.0)):
        T = orbit_c2w(target, r, az, el, up, ref)
        r2, az2, el2 = orbit_params(T, target, up, ref)
        assert abs(r2 - r) < 1e-9 and abs(az2 - az) < 1e-9 and abs(el2 - el) < 1e-9
        torch.testing.assert_close(orbit_c2w(target, r2, az2, el2, up, ref), T)


def test_orbit_errors():
    with pytest.raises(ValueError, match="radius"):
        orbit_c2w((0, 0, 0), 0.0, 0, 0)
    with pytest.raises(ValueError, match="elevation"):
        orbit_c2w((0, 0, 0), 1.0, 0, 90)
    with pytest.raises(ValueError, match="target"):
        orbit_c2w((0, 0), 1.0, 0, 0)
    with pytest.raises(ValueError, match="finite"):
        orbit_c2w((0, 0, 0), 1.0, float("nan"), 0)
    with pytest.raises(ValueError, match="parallel"):
        orbit_c2w((0, 0, 0), 1.0, 0, 0, up=(0, 0, 1), reference=(0, 0, 2))
    with pytest.raises(ValueError, match="on the target"):
        orbit_params(torch.eye(4), (0, 0, 0))
    with pytest.raises(ValueError, match="one \\(4, 4\\)"):
        orbit_params(torch.eye(4)[None], (0, 0, 0))


def test_look_at_point():
    target = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    c2w = torch.stack([orbit_c2w(target, 2.0 + 0.3 * i, 40 * i, 10 + 5 * i) for i in range(4)])
    torch.testing.assert_close(look_at_point(c2w), target)
    torch.testing.assert_close(look_at_point(c2w.float()), target.float(), rtol=1e-5, atol=1e-5)
    parallel = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    parallel[:, 0, 3] = torch.arange(3.0)
    with pytest.raises(ValueError, match="parallel"):
        look_at_point(parallel)
    with pytest.raises(ValueError, match="V >= 2"):
        look_at_point(c2w[:1])


# ----------------------------------------------------------------------------- fitting
def test_perturb_gaussians():
    points, images, depth, K, _ = _plane_scene()
    g = gaussians_from_pointmap(points, images, depth, K)
    a = perturb_gaussians(g, means_noise=2.0, color_noise=0.3, seed=3)
    b = perturb_gaussians(g, means_noise=2.0, color_noise=0.3, seed=3)
    for k in ("means", "colors"):
        assert torch.equal(a[k], b[k])
    # means noise is in units of each Gaussian's scale
    d = (a["means"] - g["means"]) / g["scales"]
    assert 1.7 < float(d.std()) < 2.3
    rgb = sh_to_rgb(a["colors"][:, 0])
    assert float(rgb.min()) >= -1e-6 and float(rgb.max()) <= 1 + 1e-6
    assert torch.equal(a["scales"], g["scales"]) and a["scales"] is not g["scales"]
    same = perturb_gaussians(g, 0.0, 0.0)
    torch.testing.assert_close(same["means"], g["means"])
    torch.testing.assert_close(same["colors"], g["colors"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="noise"):
        perturb_gaussians(g, -1.0)


def test_fit_gaussians_improves_and_records():
    points, images, depth, K, c2w = _plane_scene(V=2, H=24, W=24)
    images = torch.nn.functional.avg_pool2d(images, 3, 1, 1)
    g = gaussians_from_pointmap(points, images, depth, K, footprint=0.6)
    start = perturb_gaussians(g, means_noise=2.0, color_noise=0.4, seed=0)
    seen = []
    fitted, hist = fit_gaussians(start, images, c2w, K, steps=25, callback=lambda s, h: seen.append(s))
    assert seen == list(range(25))
    assert len(hist["loss"]) == 25 and len(hist["psnr"]) == 26
    assert hist["psnr"][-1] > hist["psnr"][0] + 3
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    for k in ("means", "quats", "scales", "opacities", "colors"):
        assert fitted[k].shape == g[k].shape and not fitted[k].requires_grad
    assert (fitted["scales"] > 0).all() and ((fitted["opacities"] > 0) & (fitted["opacities"] < 1)).all()
    assert torch.equal(fitted["pixel"], g["pixel"])          # extra entries are carried along
    # the final PSNR is that of the returned Gaussians
    again = render_views(fitted, c2w, K, (24, 24)).rgb.clamp(0, 1)
    assert abs(float(masked_psnr(again, images).mean()) - hist["psnr"][-1]) < 1e-3
    # deterministic
    _, hist2 = fit_gaussians(start, images, c2w, K, steps=3)
    assert hist2["loss"] == hist["loss"][:3]


def test_fit_gaussians_gradients_reach_every_parameter():
    points, images, depth, K, c2w = _plane_scene(V=2, H=16, W=16)
    g = gaussians_from_pointmap(points, images, depth, K, footprint=0.8, opacity=0.6)
    g["scales"] = g["scales"] * torch.linspace(0.8, 1.2, 3)   # anisotropic: quaternions get gradients
    start = perturb_gaussians(g, 1.0, 0.2, seed=1)
    fitted, _ = fit_gaussians(start, images, c2w, K, steps=1, ssim_weight=0.5)
    for k in ("means", "quats", "scales", "opacities", "colors"):
        assert not torch.equal(fitted[k], start[k]), k


def test_fit_gaussians_errors():
    points, images, depth, K, c2w = _plane_scene()
    g = gaussians_from_pointmap(points, images, depth, K)
    with pytest.raises(ValueError, match="targets must be"):
        fit_gaussians(g, images[:1], c2w, K)
    with pytest.raises(ValueError, match="steps"):
        fit_gaussians(g, images, c2w, K, steps=-1)
    with pytest.raises(ValueError, match="ssim_weight"):
        fit_gaussians(g, images, c2w, K, ssim_weight=2.0)
    with pytest.raises(ValueError, match="SSIM window"):
        fit_gaussians(g, images[..., :8, :8], c2w, K)
    with pytest.raises(KeyError, match="means"):
        fit_gaussians({"colors": g["colors"]}, images, c2w, K)
    zero, hist = fit_gaussians(g, images, c2w, K, steps=0)
    assert hist["loss"] == [] and len(hist["psnr"]) == 1
    torch.testing.assert_close(zero["means"], g["means"])
