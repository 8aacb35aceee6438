"""Tests of flare_nb.cameras: every convention of the workbook, each checked once."""
import math

import pytest
import roma
import torch

from flare_nb import cameras as C


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rand_rot(n, seed=0, dtype=torch.float64):
    return C.quat_to_matrix(torch.randn(n, 4, generator=_gen(seed), dtype=dtype))


def _rand_pose(n, seed=0, dtype=torch.float64, t_scale=1.0):
    T = torch.eye(4, dtype=dtype).repeat(n, 1, 1)
    T[:, :3, :3] = _rand_rot(n, seed, dtype)
    T[:, :3, 3] = t_scale * torch.randn(n, 3, generator=_gen(seed + 100), dtype=dtype)
    return T


def _angle_deg(R1, R2):
    return torch.rad2deg(roma.rotmat_geodesic_distance(R1, R2))


def _K(f, H, W, dtype=torch.float64, cx=None, cy=None):
    cx = (W - 1) / 2 if cx is None else cx
    cy = (H - 1) / 2 if cy is None else cy
    return torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=dtype)


def _depth(H, W, seed=0, dtype=torch.float64):
    """A smooth, positive, non-planar depth map (a tilted wavy surface 2-4 units away)."""
    v, u = torch.meshgrid(torch.linspace(-1, 1, H, dtype=dtype), torch.linspace(-1, 1, W, dtype=dtype),
                          indexing="ij")
    ph = float(torch.rand((), generator=_gen(seed))) * 6.0
    return 3.0 + 0.4 * u - 0.3 * v + 0.3 * torch.sin(3 * u + ph) * torch.cos(2 * v)


# ----------------------------------------------------------------------------- poses


def test_invert_pose_round_trip_batched_and_dtype():
    for dtype in (torch.float32, torch.float64):
        T = _rand_pose(6, dtype=dtype).reshape(2, 3, 4, 4)
        Ti = C.invert_pose(T)
        assert Ti.dtype == dtype and Ti.shape == (2, 3, 4, 4)
        eye = torch.eye(4, dtype=dtype).expand(2, 3, 4, 4)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(T @ Ti, eye, atol=tol, rtol=0)
        torch.testing.assert_close(C.invert_pose(Ti), T, atol=tol, rtol=0)
        torch.testing.assert_close(Ti, torch.linalg.inv(T), atol=tol * 10, rtol=0)


def test_invert_pose_bad_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 4\)"):
        C.invert_pose(torch.eye(3))


def test_opengl_opencv_round_trip_and_axes():
    c2w_cv = _rand_pose(4, seed=1)
    c2w_gl = C.opencv_to_opengl(c2w_cv)
    torch.testing.assert_close(C.opengl_to_opencv(c2w_gl), c2w_cv)
    torch.testing.assert_close(C.opencv_to_opengl(C.opencv_to_opengl(c2w_cv)), c2w_cv)
    # the camera centre does not move, the x axis stays, y and z flip
    torch.testing.assert_close(c2w_gl[:, :3, 3], c2w_cv[:, :3, 3])
    torch.testing.assert_close(c2w_gl[:, :3, 0], c2w_cv[:, :3, 0])
    torch.testing.assert_close(c2w_gl[:, :3, 1:3], -c2w_cv[:, :3, 1:3])
    # a point 2 units in front of the camera: z = +2 in OpenCV axes, z = -2 in OpenGL axes
    X_world = C.transform_points(c2w_cv, torch.tensor([[[0.0, 0.0, 2.0]]], dtype=torch.float64).expand(4, 1, 3))
    z_cv = C.transform_points(C.invert_pose(c2w_cv), X_world)[..., 2]
    z_gl = C.transform_points(C.invert_pose(c2w_gl), X_world)[..., 2]
    torch.testing.assert_close(z_cv, torch.full_like(z_cv, 2.0))
    torch.testing.assert_close(z_gl, torch.full_like(z_gl, -2.0))
    # a camera at the origin looking down +z (OpenCV identity) looks down -z in OpenGL terms
    gl = C.opencv_to_opengl(torch.eye(4))
    assert gl[2, 2] == -1 and gl[1, 1] == -1 and gl[0, 0] == 1


def test_quaternion_hand_computed_90deg_about_z():
    h = math.sqrt(0.5)
    q = torch.tensor([h, 0.0, 0.0, h], dtype=torch.float64)  # (w, x, y, z): +90 deg about z
    R = C.quat_to_matrix(q)
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(R, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(C.matrix_to_quat(expected), q, atol=1e-12, rtol=0)
    # x axis goes to y axis
    torch.testing.assert_close(R @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_quaternion_sign_normalisation_and_round_trip():
    q = torch.randn(200, 4, generator=_gen(2), dtype=torch.float64)
    R = C.quat_to_matrix(q)
    torch.testing.assert_close(C.quat_to_matrix(-q), R)                 # q and -q: same rotation
    torch.testing.assert_close(C.quat_to_matrix(3.7 * q), R)            # normalised first
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(200, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(200, dtype=torch.float64))
    qo = C.matrix_to_quat(R)
    assert (qo[:, 0] >= 0).all()
    torch.testing.assert_close(qo.norm(dim=-1), torch.ones(200, dtype=torch.float64))
    qn = q / q.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(qo, qn * torch.sign(qn[:, :1]))
    torch.testing.assert_close(C.quat_to_matrix(qo), R)
    assert C.quat_to_matrix(q.float()).dtype == torch.float32


def test_quaternion_180_degree_rotations():
    h = math.sqrt(0.5)
    Rz = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(C.matrix_to_quat(Rz), torch.tensor([0.0, 0, 0, 1], dtype=torch.float64))
    for q in ([0.0, h, h, 0.0], [0.0, -h, 0.0, h], [0.0, 0.0, -1.0, 0.0]):
        q = torch.tensor(q, dtype=torch.float64)
        R = C.quat_to_matrix(q)
        torch.testing.assert_close(C.quat_to_matrix(-q), R)
        qo = C.matrix_to_quat(R)
        torch.testing.assert_close(C.matrix_to_quat(C.quat_to_matrix(-q)), qo)  # unique output
        torch.testing.assert_close(C.quat_to_matrix(qo), R, atol=1e-12, rtol=0)
        assert abs(float(qo[0])) < 1e-12
        assert float(qo[1:][qo[1:].abs().argmax()]) > 0


def test_quaternion_bad_input():
    with pytest.raises(ValueError, match="zero norm"):
        C.quat_to_matrix(torch.zeros(4))
    with pytest.raises(ValueError, match="zero norm"):
        C.quat_to_matrix(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="non-finite"):
        C.quat_to_matrix(torch.tensor([float("nan"), 0, 0, 1]))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        C.quat_to_matrix(torch.ones(3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        C.matrix_to_quat(torch.eye(4))


def test_relative_to_view0():
    c2w = _rand_pose(5, seed=3)
    rel = C.relative_to_view0(c2w)
    torch.testing.assert_close(rel[0], torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    # relative motion between any two views is preserved
    for i, j in ((1, 2), (0, 4), (3, 1)):
        torch.testing.assert_close(C.invert_pose(rel[i]) @ rel[j], C.invert_pose(c2w[i]) @ c2w[j])
    # and a global change of world frame does not matter
    G = _rand_pose(1, seed=4)[0]
    torch.testing.assert_close(C.relative_to_view0(G @ c2w), rel)
    with pytest.raises(ValueError, match="view axis"):
        C.relative_to_view0(torch.eye(4))


def test_normalize_translation():
    c2w = C.relative_to_view0(_rand_pose(6, seed=5, t_scale=7.0))
    out, scale = C.normalize_translation(c2w)
    torch.testing.assert_close(out[:, :3, 3].norm(dim=-1).mean(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(scale, c2w[:, :3, 3].norm(dim=-1).mean())
    torch.testing.assert_close(out[:, :3, :3], c2w[:, :3, :3])
    torch.testing.assert_close(out[:, :3, 3] * scale, c2w[:, :3, 3])
    assert out[0, :3, 3].abs().max() == 0  # view 0 keeps t = 0
    # batched over scenes
    out_b, scale_b = C.normalize_translation(torch.stack([c2w, c2w]))
    assert scale_b.shape == (2,) and out_b.shape == (2, 6, 4, 4)
    out_nvs, s_nvs = C.normalize_translation(c2w, mode="baseline")
    baseline = (out_nvs[0, :3, 3] - out_nvs[1, :3, 3]).norm()
    torch.testing.assert_close(baseline, torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(s_nvs, (c2w[0, :3, 3] - c2w[1, :3, 3]).norm())
    with pytest.raises(ValueError, match="same place"):
        C.normalize_translation(torch.eye(4).repeat(3, 1, 1))
    with pytest.raises(ValueError, match="mode"):
        C.normalize_translation(c2w, mode="median")


# ----------------------------------------------------------------------------- pixels and points


def test_pixel_grid():
    g = C.pixel_grid(3, 5)
    assert g.shape == (3, 5, 2) and g.dtype == torch.float32
    assert g[0, 0].tolist() == [0, 0]
    assert g[2, 4].tolist() == [4, 2]   # (u = column, v = row)
    assert g[1, 3].tolist() == [3, 1]
    with pytest.raises(ValueError, match="positive"):
        C.pixel_grid(0, 4)


def test_unproject_project_round_trip():
    H, W = 12, 16
    depth = torch.stack([_depth(H, W, s) for s in range(3)])         # (V, H, W)
    K = torch.stack([_K(20.0 + 5 * i, H, W) for i in range(3)])       # (V, 3, 3)
    X_cam = C.unproject_depth(depth, K)
    assert X_cam.shape == (3, H, W, 3)
    torch.testing.assert_close(X_cam[..., 2], depth)
    c2w = _rand_pose(3, seed=6)
    X_world = C.transform_points(c2w, X_cam)
    uv, z = C.project_points(X_world.reshape(3, -1, 3), K, C.invert_pose(c2w))
    grid = C.pixel_grid(H, W, dtype=torch.float64).reshape(1, -1, 2).expand(3, -1, -1)
    torch.testing.assert_close(uv, grid, atol=1e-9, rtol=0)
    torch.testing.assert_close(z, depth.reshape(3, -1))
    # depth 0 means no data: the point sits at the camera centre
    d0 = depth.clone()
    d0[0, 0, 0] = 0
    assert C.unproject_depth(d0, K)[0, 0, 0].abs().max() == 0
    # a shared K broadcasts over views
    torch.testing.assert_close(C.unproject_depth(depth, K[0])[0], X_cam[0])


def test_transform_points_shapes():
    T = _rand_pose(3, seed=7)
    X = torch.randn(3, 4, 5, 3, generator=_gen(7), dtype=torch.float64)
    Y = C.transform_points(T, X)
    for i in range(3):
        ref = X[i].reshape(-1, 3) @ T[i, :3, :3].T + T[i, :3, 3]
        torch.testing.assert_close(Y[i].reshape(-1, 3), ref)
    Y0 = C.transform_points(T[0], X)            # one T for everything
    torch.testing.assert_close(Y0[1].reshape(-1, 3), X[1].reshape(-1, 3) @ T[0, :3, :3].T + T[0, :3, 3])
    with pytest.raises(ValueError, match="point dim"):
        C.transform_points(T, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        C.transform_points(T, torch.zeros(3, 5, 4))


def test_project_points_behind_camera_is_finite():
    uv, z = C.project_points(torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, -3.0]]), _K(10.0, 8, 8, torch.float32),
                             torch.eye(4))
    assert torch.isfinite(uv).all()
    assert z.tolist() == [0.0, -3.0]


def test_gsplat_and_opencv_K():
    K = torch.stack([_K(30.0, 10, 20), _K(40.0, 10, 20)])
    Kg = C.gsplat_K(K)
    torch.testing.assert_close(Kg[:, :2, 2], K[:, :2, 2] + 0.5)
    torch.testing.assert_close(Kg[:, :2, :2], K[:, :2, :2])
    torch.testing.assert_close(C.opencv_K(Kg), K)
    assert K[0, 0, 2] == 9.5  # input untouched
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        C.gsplat_K(torch.eye(4))


# ----------------------------------------------------------------------------- alignment


def _sim3(seed):
    R = _rand_rot(1, seed)[0]
    t = torch.randn(3, generator=_gen(seed + 1), dtype=torch.float64) * 3
    return 2.5, R, t


def test_umeyama_exact_noisy_and_weighted():
    src = torch.randn(100, 3, generator=_gen(8), dtype=torch.float64)
    s0, R0, t0 = _sim3(9)
    dst = s0 * src @ R0.T + t0
    s, R, t = C.umeyama(src, dst)
    assert abs(float(s) - s0) < 1e-10
    torch.testing.assert_close(R, R0, atol=1e-10, rtol=0)
    torch.testing.assert_close(t, t0, atol=1e-10, rtol=0)
    # noise: still close
    noisy = dst + 0.01 * torch.randn(100, 3, generator=_gen(10), dtype=torch.float64)
    s, R, t = C.umeyama(src, noisy)
    assert abs(float(s) - s0) < 0.01 and float(_angle_deg(R, R0)) < 0.5 and (t - t0).norm() < 0.05
    # weights: 20 wild outliers with weight 0 are ignored exactly; without weights they hurt
    bad = dst.clone()
    bad[:20] += 5 * torch.randn(20, 3, generator=_gen(11), dtype=torch.float64)
    w = torch.ones(100, dtype=torch.float64)
    w[:20] = 0
    s, R, t = C.umeyama(src, bad, weights=w)
    assert abs(float(s) - s0) < 1e-9 and float(_angle_deg(R, R0)) < 1e-6
    s_u, R_u, _ = C.umeyama(src, bad)
    assert abs(float(s_u) - s0) > 1e-3 or float(_angle_deg(R_u, R0)) > 0.1
    # rigid only
    s, R, t = C.umeyama(src, src @ R0.T + t0, with_scale=False)
    assert float(s) == 1.0
    torch.testing.assert_close(R, R0, atol=1e-10, rtol=0)


def test_umeyama_bad_input():
    src = torch.randn(10, 3, generator=_gen(12), dtype=torch.float64)
    with pytest.raises(ValueError, match="both be"):
        C.umeyama(src, src[:9])
    with pytest.raises(ValueError, match="at least 3"):
        C.umeyama(src[:2], src[:2])
    line = torch.linspace(0, 1, 10, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 2.0, 3.0]],
                                                                            dtype=torch.float64)
    with pytest.raises(ValueError, match="collinear"):
        C.umeyama(line, line)
    with pytest.raises(ValueError, match=">= 0"):
        C.umeyama(src, src, weights=-torch.ones(10, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"weights must be \(10,\)"):
        C.umeyama(src, src, weights=torch.ones(9, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite"):
        C.umeyama(src * float("nan"), src)


def test_align_trajectories():
    gt = _rand_pose(6, seed=13, t_scale=2.0)
    s0, R0, t0 = _sim3(14)
    # pred = gt seen in another frame and scale: gt = S pred  =>  pred = S^-1 gt
    pred = gt.clone()
    pred[:, :3, :3] = R0.T @ gt[:, :3, :3]
    pred[:, :3, 3] = ((gt[:, :3, 3] - t0) @ R0) / s0
    for method in ("centres", "rotations"):
        aligned, (s, R, t) = C.align_trajectories(pred, gt, method=method)
        torch.testing.assert_close(aligned, gt, atol=1e-9, rtol=0)
        assert abs(float(s) - s0) < 1e-9
        torch.testing.assert_close(R, R0, atol=1e-9, rtol=0)
    # two views: only the rotation-based alignment is defined
    aligned2, _ = C.align_trajectories(pred[:2], gt[:2], method="rotations")
    torch.testing.assert_close(aligned2, gt[:2], atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="method='rotations'"):
        C.align_trajectories(pred[:2], gt[:2])
    with pytest.raises(ValueError, match="both be"):
        C.align_trajectories(pred, gt[:3])
    with pytest.raises(ValueError, match="method"):
        C.align_trajectories(pred, gt, method="icp")


# ----------------------------------------------------------------------------- FLARE's cameras


def test_estimate_focal_recovers_true_focal():
    H, W, f = 48, 64, 57.3
    X = C.unproject_depth(_depth(H, W), _K(f, H, W))
    assert abs(C.estimate_focal(X) - f) < 1e-6
    assert abs(C.estimate_focal(X.float()) - f) < 1e-3
    # the official demo's principal point (W/2, H/2) when the pointmap was made with it
    X2 = C.unproject_depth(_depth(H, W), _K(f, H, W, cx=W / 2, cy=H / 2))
    assert abs(C.estimate_focal(X2, principal_point=(W / 2, H / 2)) - f) < 1e-6
    # a wrong principal point gives a wrong focal: the argument is used
    assert abs(C.estimate_focal(X2) - f) > 1e-3


def test_estimate_focal_degenerate_pixels():
    H, W, f = 33, 45, 40.0                      # odd sizes: the centre row/column has x = 0 / y = 0
    X = C.unproject_depth(_depth(H, W), _K(f, H, W))
    assert (X[:, (W - 1) // 2, 0] == 0).all() and (X[(H - 1) // 2, :, 1] == 0).all()
    X[0, 0] = float("nan")
    X[1, :5] = 0.0                              # no data
    X[2, :5, 2] = -1.0                          # behind the camera
    assert abs(C.estimate_focal(X) - f) < 1e-6
    # noise and 20 % outliers: the median still holds
    Xn = X * (1 + 0.01 * torch.randn(H, W, 3, generator=_gen(15), dtype=torch.float64))
    out = torch.rand(H, W, generator=_gen(16)) < 0.2
    Xn[out] = Xn[out] * torch.tensor([3.0, 0.2, 1.0], dtype=torch.float64)
    assert abs(C.estimate_focal(Xn) - f) / f < 0.01
    with pytest.raises(ValueError, match="no valid pixel"):
        C.estimate_focal(torch.zeros(8, 8, 3))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        C.estimate_focal(X[None])
    with pytest.raises(ValueError, match="mask must be"):
        C.estimate_focal(X, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="positive"):
        C.intrinsics_from_focal(-1.0, H, W)


def _synthetic_views(V=4, H=48, W=64, f=55.0, seed=20):
    """Exact global pointmaps in view 0's frame for V cameras around a surface."""
    K = _K(f, H, W)
    c2w = torch.eye(4, dtype=torch.float64).repeat(V, 1, 1)
    for i in range(1, V):
        ang = torch.deg2rad(torch.tensor([4.0 * i, -6.0 * i + 3, 2.0 * i], dtype=torch.float64))
        c2w[i, :3, :3] = roma.rotvec_to_rotmat(ang)
        c2w[i, :3, 3] = torch.tensor([0.3 * i, -0.1 * i, 0.05 * i], dtype=torch.float64)
    depth = torch.stack([_depth(H, W, seed + i) for i in range(V)])
    pts = C.transform_points(c2w, C.unproject_depth(depth, K))
    conf = 1 + torch.rand(V, H, W, generator=_gen(seed), dtype=torch.float64)
    return pts, conf, K, c2w


def test_pnp_poses_recovers_known_poses():
    pts, conf, K, c2w = _synthetic_views()
    est, info = C.pnp_poses(pts, conf, K, return_info=True)
    assert est.shape == (4, 4, 4) and est.dtype == torch.float64
    torch.testing.assert_close(est[0], torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(_angle_deg(est[:, :3, :3], c2w[:, :3, :3]).max()) < 0.1
    assert float((est[:, :3, 3] - c2w[:, :3, 3]).norm(dim=-1).max()) < 1e-4
    # top 40 % of the pixels of each view are used
    assert all(abs(n - 0.4 * 48 * 64) <= 2 for n in info["n_points"])
    # float32 input, per-view K, and 15 % gross outliers among the confident pixels (RANSAC)
    bad = pts.clone()
    out = torch.rand(pts.shape[:3], generator=_gen(21)) < 0.15
    bad[out] += torch.randn(int(out.sum()), 3, generator=_gen(22), dtype=torch.float64)
    est32 = C.pnp_poses(bad.float(), conf.float(), K.float().expand(4, 3, 3))
    assert est32.dtype == torch.float32
    assert float(_angle_deg(est32[:, :3, :3].double(), c2w[:, :3, :3]).max()) < 0.1
    assert float((est32[:, :3, 3].double() - c2w[:, :3, 3]).norm(dim=-1).max()) < 5e-3


def test_pnp_poses_bounded_settings_recover_known_poses():
    """flare-nb's bounded PnP (camera_rule.pnp_settings: thinned points, 300 iterations, adaptive
    stop) on exact pointmaps with 15 % gross outliers: the poses come back, every view uses
    exactly max_points pixels, and almost all of the clean ones are inliers."""
    from flare_nb import camera_rule

    pts, conf, K, c2w = _synthetic_views()
    bad = pts.clone()
    out = torch.rand(pts.shape[:3], generator=_gen(23)) < 0.15
    bad[out] += torch.randn(int(out.sum()), 3, generator=_gen(24), dtype=torch.float64)
    kw = camera_rule.pnp_settings(48, 64)
    kw["max_points"] = 300
    est, info = C.pnp_poses(bad, conf, K, return_info=True, **kw)
    assert info["n_points"] == [300] * 4
    assert min(camera_rule.inlier_fractions(info)) > 0.7 and camera_rule.pnp_trusted(info)
    assert float(_angle_deg(est[:, :3, :3], c2w[:, :3, :3]).max()) < 0.1
    assert float((est[:, :3, 3] - c2w[:, :3, 3]).norm(dim=-1).max()) < 5e-3


def test_pnp_poses_bad_input():
    pts, conf, K, _ = _synthetic_views(V=2, H=16, W=16)
    with pytest.raises(ValueError, match="conf must be"):
        C.pnp_poses(pts, conf[:, :8], K)
    with pytest.raises(ValueError, match="K must be"):
        C.pnp_poses(pts, conf, K.expand(3, 3, 3))
    with pytest.raises(ValueError, match=r"\(V, H, W, 3\)"):
        C.pnp_poses(pts[0], conf[0], K)
    with pytest.raises(ValueError, match="top must be"):
        C.pnp_poses(pts, conf, K, top=0.0)
    few = pts.clone()
    few[1] = float("nan")
    with pytest.raises(ValueError, match="view 1 has 0 usable pixels"):
        C.pnp_poses(few, conf, K)
