"""Tests of flare_nb.render.rasterize against a brute-force float64 per-pixel reference and gsplat."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from flare_nb.render import rasterize as R
from flare_nb.render.rasterize import RenderOutput, eval_sh, project_gaussians, rasterize


# ----------------------------------------------------------------------------- reference
def reference_render(means, quats, scales, opac, rgb, viewmat, K, W, H, bg, near=0.01):
    """Obviously-correct float64 renderer of one camera: project every Gaussian, then walk
    them in depth order and composite every pixel with gsplat's cut-offs."""
    means, quats, scales, opac, rgb, viewmat, K, bg = (
        np.asarray(torch.as_tensor(a).detach().cpu(), dtype=np.float64)
        for a in (means, quats, scales, opac, rgb, viewmat, K, bg))
    rot = Rotation.from_quat(quats[:, [1, 2, 3, 0]]).as_matrix()  # scipy wants (x, y, z, w)
    Rc, t = viewmat[:3, :3], viewmat[:3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    py, px = np.mgrid[0:H, 0:W] + 0.5
    T = np.ones((H, W))
    col = np.zeros((H, W, 3))
    dep = np.zeros((H, W))
    done = np.zeros((H, W), bool)
    z_all = means @ Rc[2] + t[2]
    for g in np.argsort(z_all, kind="stable"):
        mc = Rc @ means[g] + t
        x, y, z = mc
        if z < near or opac[g] < 1 / 255:
            continue
        cov = Rc @ rot[g] @ np.diag(scales[g] ** 2) @ rot[g].T @ Rc.T
        u = np.clip(x / z, -(cx / fx + 0.15 * W / fx), (W - cx) / fx + 0.15 * W / fx)
        v = np.clip(y / z, -(cy / fy + 0.15 * H / fy), (H - cy) / fy + 0.15 * H / fy)
        J = np.array([[fx / z, 0, -fx * u / z], [0, fy / z, -fy * v / z]])
        conic = np.linalg.inv(J @ cov @ J.T + 0.3 * np.eye(2))
        dx, dy = fx * x / z + cx - px, fy * y / z + cy - py
        sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
        alpha = np.minimum(0.999, opac[g] * np.exp(-sigma))
        use = ~done & (alpha >= 1 / 255) & (sigma >= 0)
        nxt = T * (1 - alpha)
        stop = use & (nxt <= 1e-4)
        done |= stop
        use &= ~stop
        w = np.where(use, alpha * T, 0.0)
        col += w[..., None] * rgb[g]
        dep += w * z
        T = np.where(use, nxt, T)
    a = 1 - T
    return col + T[..., None] * bg, dep / np.maximum(a, 1e-10), a


def psnr(a, b):
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-30))


def look_at(eye, target):
    """world-to-camera (OpenCV) looking from eye at target."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, [0, -1, 0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    Rw = np.stack([r, d, f])  # rows: camera axes in world
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = Rw, -Rw @ eye
    return m


def make_scene(n=120, seed=0, dtype=torch.float32, W=48, H=36):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.8
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.2 + 0.02
    opac = torch.rand(n, generator=g, dtype=torch.float64)
    opac[: n // 4] = 0.9995  # the 0.999 clamp triggers and pixels terminate early
    opac[n // 4: n // 4 + 3] = 0.002  # below 1/255: culled
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    viewmats = torch.tensor(np.stack([look_at([0.3, -0.2, -3.0], [0, 0, 0]),
                                      look_at([2.5, 0.5, -1.5], [0.1, 0, 0])]))
    Ks = torch.tensor([[[50.0, 0, 22.0], [0, 52.0, 19.0], [0, 0, 1]],
                       [[40.0, 0, 25.0], [0, 40.0, 17.0], [0, 0, 1]]], dtype=torch.float64)
    # Gaussians at the image border (in camera 0) and behind / at camera 0
    cam2world = torch.linalg.inv(viewmats[0])
    for i, p in enumerate([[1.3, 0.0, 3.0], [-1.35, 1.0, 3.0], [0.2, 1.1, 3.0],
                           [0.0, 0.0, -1.0], [0.1, 0.1, 0.005], [0.5, 0.0, 0.3],
                           [0.1, 0.05, 1.5], [-0.1, 0.0, 1.8], [0.0, 0.1, 2.0]]):
        means[i] = (cam2world @ torch.tensor(p + [1.0], dtype=torch.float64))[:3]
    scales[6:9] = 0.25  # three big opaque Gaussians in front of camera 0: pixels terminate
    opac[6:9] = 0.9995
    bg = torch.tensor([[0.1, 0.3, 0.6], [0.9, 0.2, 0.0]], dtype=torch.float64)
    t = [means, quats, scales, opac, colors, viewmats, Ks]
    return [x.to(dtype) for x in t], W, H, bg.to(dtype)


# ------------------------------------------------------------------------------- images
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_bruteforce_reference_float32(seed):
    (means, quats, scales, opac, colors, vm, Ks), W, H, bg = make_scene(seed=seed)
    out = rasterize(means, quats, scales, opac, colors, vm, Ks, W, H, background=bg, backend="torch")
    assert isinstance(out, RenderOutput)
    assert out.rgb.shape == (2, H, W, 3) and out.depth.shape == (2, H, W, 1) and out.alpha.shape == (2, H, W, 1)
    for c in range(2):
        rgb, dep, a = reference_render(means, quats, scales, opac, colors, vm[c], Ks[c], W, H, bg[c])
        assert psnr(out.rgb[c], rgb) >= 45
        assert psnr(out.alpha[c, ..., 0], a) >= 45
        hit = a > 0.5
        assert hit.sum() > 50
        rel = np.abs(out.depth[c, ..., 0].numpy()[hit] - dep[hit]) / dep[hit]
        assert np.median(rel) < 1e-4 and rel.max() < 1e-2
    # something saturated (the 0.999 clamp) and some pixel fully covered
    assert float(out.alpha.max()) > 0.999


def test_matches_bruteforce_reference_float64_exactly():
    (means, quats, scales, opac, colors, vm, Ks), W, H, bg = make_scene(seed=3, dtype=torch.float64)
    out = rasterize(means, quats, scales, opac, colors, vm, Ks, np.int64(W), np.int64(H), background=bg[0])
    rgb, dep, a = reference_render(means, quats, scales, opac, colors, vm[0], Ks[0], W, H, bg[0])
    assert psnr(out.rgb[0], rgb) > 100
    assert np.abs(out.alpha[0, ..., 0].numpy() - a).max() < 1e-9


def test_saturated_pixel_stops_before_transmittance_drops_to_1e_4():
    """Known answer: two big opaque Gaussians on the optical axis. The front one is clamped
    to alpha 0.999 (T -> 1e-3); the back one would take T to 1e-6 <= 1e-4, so it is not
    composited and the pixel ends: rgb = 0.999 c_front + 0.001 bg, alpha = 0.999."""
    d = torch.float64
    means = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 2.0], [0.0, 0.0, 4.0]], dtype=d)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=d)
    scales = torch.full((3, 3), 0.8, dtype=d)
    opac = torch.tensor([0.9999, 0.9999, 0.9999], dtype=d)
    colors = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=d)
    K = torch.tensor([[[20.0, 0, 8.5], [0, 20.0, 8.5], [0, 0, 1]]], dtype=d)  # axis on pixel (8, 8)
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=d)
    out = rasterize(means, quats, scales, opac, colors, torch.eye(4, dtype=d)[None], K, 16, 16, background=bg)
    assert torch.allclose(out.rgb[0, 8, 8], 0.999 * colors[1] + 0.001 * bg, atol=1e-12)
    assert abs(float(out.alpha[0, 8, 8, 0]) - 0.999) < 1e-12
    assert abs(float(out.depth[0, 8, 8, 0]) - 2.0) < 1e-12
    # one pixel off the axis the front Gaussian is below the clamp: T stays above 1e-4 and
    # the green one shows through
    assert 0 < float(out.rgb[0, 8, 9, 1]) < 0.01


def test_chunking_does_not_change_result_or_gradients():
    (means, quats, scales, opac, colors, vm, Ks), W, H, bg = make_scene(seed=4, dtype=torch.float64)
    params = [p.clone().requires_grad_() for p in (means, quats, scales, opac, colors)]
    outs, grads = [], []
    for cv in (None, 64 * 48):  # one chunk per camera vs. chunks of ~48 entries
        o = R._rasterize_torch(*params, vm, Ks, W, H, bg, None, 0.01, chunk_values=cv)
        loss = (o.rgb * torch.linspace(0, 1, 3, dtype=torch.float64)).sum() + o.depth.sum() + o.alpha.sum()
        outs.append(torch.cat([o.rgb, o.depth, o.alpha], -1))
        grads.append(torch.autograd.grad(loss, params))
    assert torch.allclose(outs[0], outs[1], atol=1e-12)
    for g0, g1 in zip(*grads):
        assert torch.allclose(g0, g1, atol=1e-9)


def test_background_and_empty_scene():
    (means, quats, scales, opac, colors, vm, Ks), W, H, bg = make_scene()
    empty = [x[:0] for x in (means, quats, scales, opac, colors)]
    out = rasterize(*empty, vm, Ks, W, H, background=bg)
    assert torch.equal(out.rgb, bg[:, None, None, :].expand(2, H, W, 3))
    assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0
    out = rasterize(*empty, vm, Ks, W, H, background=bg[1])
    assert torch.equal(out.rgb, bg[1].expand(2, H, W, 3))
    out = rasterize(*empty, vm, Ks, W, H)
    assert out.rgb.abs().max() == 0
    # a background under a half-transparent scene adds exactly T * background
    full = rasterize(means, quats, scales, opac, colors, vm, Ks, W, H, background=bg)
    black = rasterize(means, quats, scales, opac, colors, vm, Ks, W, H)
    assert torch.allclose(full.rgb, black.rgb + (1 - black.alpha) * bg[:, None, None, :], atol=1e-6)


def test_empty_and_fully_culled_scenes_backpropagate_zeros():
    (means, quats, scales, opac, colors, vm, Ks), W, H, bg = make_scene(n=20)
    for sl in (slice(0, 0), slice(3, 5)):  # no Gaussians; two behind / at camera 0
        params = [p[sl].clone().requires_grad_() for p in (means, quats, scales, opac, colors)]
        out = rasterize(*params, vm[:1], Ks[:1], W, H, background=bg[0])
        assert torch.equal(out.rgb[0], bg[0].expand(H, W, 3))
        (out.rgb.sum() + out.depth.sum() + out.alpha.sum()).backward()
        for p in params:
            assert p.grad is not None and p.grad.shape == p.shape and not p.grad.any()


def test_gaussians_behind_camera_render_background():
    (means, quats, scales, opac, colors, vm, Ks), W, H, bg = make_scene()
    behind = torch.tensor([[0.0, 0.0, -2.0], [0.3, 0.1, -0.5], [0.0, 0.0, 0.0]])
    n = len(behind)
    eye = torch.eye(4)[None]
    out = rasterize(behind, quats[:n], torch.full((n, 3), 0.5), torch.full((n,), 0.9), colors[:n],
                    eye, Ks[:1], W, H, background=bg[0])
    assert out.alpha.max() == 0
    assert torch.equal(out.rgb[0], bg[0].expand(H, W, 3))
    proj = project_gaussians(behind, quats[:n], torch.full((n, 3), 0.5), torch.full((n,), 0.9), eye, Ks[:1], W, H)
    assert not proj.visible.any() and proj.radii.abs().max() == 0


def test_non_unit_quaternions_are_normalised():
    (means, quats, scales, opac, colors, vm, Ks), W, H, bg = make_scene()
    a = rasterize(means, quats, scales, opac, colors, vm, Ks, W, H)
    b = rasterize(means, quats * 7.5, scales, opac, colors, vm, Ks, W, H)
    assert torch.allclose(a.rgb, b.rgb, atol=1e-5)


# --------------------------------------------------------------------------- projection
def test_projection_matches_gsplat_torch_impl():
    from gsplat.cuda._torch_impl import _fully_fused_projection

    (means, quats, scales, opac, colors, vm, Ks), W, H, bg = make_scene(n=300, dtype=torch.float64)
    covars = R.covariance_3d(quats, scales)
    radii_g, m2_g, depth_g, conics_g, _ = _fully_fused_projection(means, covars, vm, Ks, W, H)
    ours = project_gaussians(means, quats, scales, None, vm, Ks, W, H)
    vis = ours.visible & (depth_g > 0.01)
    assert vis.sum() > 200
    assert torch.equal(ours.visible, (radii_g > 0).all(-1) | ((radii_g > 0).any(-1) & ours.visible))
    assert torch.allclose(ours.means2d[vis], m2_g[vis], atol=1e-9)
    assert torch.allclose(ours.conics[vis], conics_g[vis], rtol=1e-9, atol=1e-12)
    assert torch.allclose(ours.depths, depth_g, atol=1e-12)
    assert torch.equal(ours.radii[vis], radii_g[vis].to(torch.int32))
    # the opacity-aware extent only shrinks the boxes
    with_op = project_gaussians(means, quats, scales, opac, vm, Ks, W, H)
    assert (with_op.radii <= ours.radii).all()
    assert (with_op.radii[:, opac < 0.5] < ours.radii[:, opac < 0.5]).any()


# ------------------------------------------------------------------- spherical harmonics
@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_sh_matches_gsplat_and_renders_like_rgb(degree):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    (means, quats, scales, opac, colors, vm, Ks), W, H, bg = make_scene(n=60, dtype=torch.float64)
    g = torch.Generator().manual_seed(degree)
    K = (degree + 1) ** 2
    sh = torch.randn(60, K, 3, generator=g, dtype=torch.float64) * 0.3
    dirs = torch.randn(60, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(eval_sh(degree, dirs, sh), _spherical_harmonics(degree, dirs, sh), atol=1e-12)
    out = rasterize(means, quats, scales, opac, sh, vm, Ks, W, H, background=bg)
    campos = torch.linalg.inv(vm)[:, :3, 3]
    for c in range(2):
        rgb = torch.clamp_min(_spherical_harmonics(degree, means - campos[c], sh) + 0.5, 0)
        ref = rasterize(means, quats, scales, opac, rgb, vm[c:c + 1], Ks[c:c + 1], W, H, background=bg[c])
        assert torch.allclose(out.rgb[c], ref.rgb[0], atol=1e-12)
    if degree >= 1:  # a lower sh_degree ignores the higher bands
        low = rasterize(means, quats, scales, opac, sh, vm, Ks, W, H, sh_degree=degree - 1)
        cut = rasterize(means, quats, scales, opac, sh[:, : degree ** 2], vm, Ks, W, H)
        assert torch.allclose(low.rgb, cut.rgb, atol=1e-12)
        assert not torch.allclose(low.rgb, out.rgb)


# ---------------------------------------------------------------------------- gradients
def _tiny_scene(sh=False):
    g = torch.Generator().manual_seed(7)
    n = 6
    means = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.25
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = 0.12 + 0.08 * torch.rand(n, 3, generator=g, dtype=torch.float64)  # anisotropic
    opac = 0.3 + 0.6 * torch.rand(n, generator=g, dtype=torch.float64)
    colors = (torch.randn(n, 4, 3, generator=g, dtype=torch.float64) * 0.3 if sh
              else torch.rand(n, 3, generator=g, dtype=torch.float64))
    vm = torch.tensor(look_at([0.2, -0.1, -2.0], [0, 0, 0]))[None]
    Ks = torch.tensor([[[14.0, 0, 7.5], [0, 14.0, 6.0], [0, 0, 1]]], dtype=torch.float64)
    bg = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    return [means, quats, scales, opac, colors], vm, Ks, bg


@pytest.mark.parametrize("sh", [False, True])
def test_gradcheck_all_inputs(sh):
    params, vm, Ks, bg = _tiny_scene(sh)
    params = [p.requires_grad_() for p in params]

    def f(*p):
        o = rasterize(*p, vm, Ks, 15, 12, background=bg)
        return o.rgb, o.depth, o.alpha

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)
    loss = sum((o * torch.rand(o.shape, generator=torch.Generator().manual_seed(1), dtype=o.dtype)).sum()
               for o in f(*params))
    for name, gr in zip(["means", "quats", "scales", "opacities", "colors"], torch.autograd.grad(loss, params)):
        assert gr.abs().sum() > 0, f"zero gradient for {name}"


def test_gradients_match_finite_differences_with_saturated_gaussians():
    params, vm, Ks, bg = _tiny_scene()
    params[3][:3] = 0.9995  # clamp at 0.999 and early termination
    params = [p.requires_grad_() for p in params]
    wts = torch.rand(12, 15, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss(*p):
        o = rasterize(*p, vm, Ks, 15, 12, background=bg)
        return (o.rgb[0] * wts).sum() + (o.alpha[0, ..., 0] * wts[..., 0]).sum() + 0.1 * o.depth.sum()

    grads = torch.autograd.grad(loss(*params), params)
    g = torch.Generator().manual_seed(3)
    for i, name in enumerate(["means", "quats", "scales", "opacities", "colors"]):
        d = torch.randn(params[i].shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            hi = [p + (1e-6 * d if j == i else 0) for j, p in enumerate(params)]
            lo = [p - (1e-6 * d if j == i else 0) for j, p in enumerate(params)]
            fd = (loss(*hi) - loss(*lo)) / 2e-6
        an = (grads[i] * d).sum()
        assert abs(float(fd - an)) <= 1e-4 * max(1.0, abs(float(fd))), name


# ---------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    (means, quats, scales, opac, colors, vm, Ks), W, H, bg = make_scene(n=10)
    args = dict(means=means, quats=quats, scales=scales, opacities=opac, colors=colors,
                viewmats=vm, Ks=Ks, width=W, height=H)

    def call(**kw):
        return rasterize(**dict(args, **kw))

    q0 = quats.clone()
    q0[3] = 0
    with pytest.raises(ValueError, match="quaternion"):
        call(quats=q0)
    with pytest.raises(ValueError, match="scales must be >= 0"):
        call(scales=-scales)
    s_nan = scales.clone()
    s_nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="scales contains NaN"):
        call(scales=s_nan)
    with pytest.raises(ValueError, match="opacities must lie in"):
        call(opacities=opac + 1)
    with pytest.raises(ValueError, match=r"quats must be \(10, 4\)"):
        call(quats=quats[:9])
    with pytest.raises(ValueError, match="means must be"):
        call(means=means[:, :2])
    with pytest.raises(ValueError, match="Ks must be"):
        call(Ks=Ks[:1])
    with pytest.raises(ValueError, match="colors must be"):
        call(colors=torch.rand(10, 5, 3))
    with pytest.raises(ValueError, match="sh_degree"):
        call(sh_degree=1)
    with pytest.raises(ValueError, match="sh_degree"):
        call(colors=torch.rand(10, 4, 3), sh_degree=2)
    with pytest.raises(ValueError, match="background must be"):
        call(background=torch.rand(4))
    with pytest.raises(ValueError, match="dtype"):
        call(scales=scales.double())
    with pytest.raises(ValueError, match="device"):
        call(colors=colors.to("meta"))
    with pytest.raises(ValueError, match="backend"):
        call(backend="cuda")
    with pytest.raises(ValueError, match="CUDA"):
        call(backend="gsplat")
    with pytest.raises(ValueError, match="width and height"):
        call(width=0)
    with pytest.raises(TypeError, match="means must be a torch.Tensor"):
        call(means=means.numpy())
