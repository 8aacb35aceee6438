"""flare_nb.eval.metrics: PSNR/SSIM/LPIPS, pose metrics on known answers, pointcloud metrics."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flare_nb.eval import metrics
from flare_nb.render import losses as render_losses
from flare_nb.eval.metrics import LPIPS, pointcloud_metrics, pose_auc, pose_metrics, psnr, relative_pose_errors
from flare_nb.render.losses import VGG16_CONVS


# ------------------------------------------------------------------------------- helpers
def rot(axis, deg):
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    K = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    th = math.radians(deg)
    return torch.eye(3, dtype=torch.float64) + math.sin(th) * K + (1 - math.cos(th)) * K @ K


def c2w_of(R, c):
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3], T[:3, 3] = R, torch.as_tensor(c, dtype=torch.float64)
    return T


def random_rig(V, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(V):
        R = rot(torch.randn(3, generator=g).tolist(), float(torch.rand(1, generator=g)) * 120)
        out.append(c2w_of(R, torch.randn(3, generator=g) * 2))
    return torch.stack(out)


def sim3_of_trajectory(c2w, s, R, t):
    """The same cameras in another world frame: X' = s R X + t."""
    out = c2w.clone()
    out[:, :3, :3] = R @ c2w[:, :3, :3]
    out[:, :3, 3] = s * (R @ c2w[:, :3, 3:])[..., 0] + torch.as_tensor(t, dtype=torch.float64)
    return out


def line_rig(V):
    """Camera k: rotation about y by 20k degrees except camera 2 (identity), centres on the
    y axis, so camera 2 sees every other centre along its own y axis (perpendicular to x)."""
    cams = [c2w_of(torch.eye(3, dtype=torch.float64) if k == 2 else rot([0, 1, 0], 20 * k), [0, k, 0]) for k in range(V)]
    return torch.stack(cams)


# ------------------------------------------------------------------------------- images
def test_psnr_known_and_ssim_is_one_implementation():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1   # MSE 0.01 -> 20 dB
    b[1] += 0.01  # MSE 1e-4 -> 40 dB
    torch.testing.assert_close(psnr(a, b, reduction="none"), torch.tensor([20.0, 40.0]))
    assert psnr(a, b).item() == pytest.approx(30.0, rel=1e-6)
    assert psnr(a, b * 255, data_range=255.0).item() == pytest.approx(30.0, rel=1e-6)
    assert math.isinf(psnr(a, a).item())
    with pytest.raises(ValueError, match="psnr"):
        psnr(a, b[:1])
    assert metrics.ssim is render_losses.ssim


def _write_vgg(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (cin, cout) in VGG16_CONVS.items():
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.01
    torch.save(sd, path)


def test_lpips_from_local_weights(tmp_path):
    _write_vgg(tmp_path / "vgg.pth")
    g = torch.Generator().manual_seed(1)
    chans = (64, 128, 256, 512, 512)
    lin = {f"lin{l}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for l, c in enumerate(chans)}
    torch.save(lin, tmp_path / "lin.pth")
    m = LPIPS(tmp_path / "vgg.pth", tmp_path / "lin.pth")
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = (x + 0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    assert torch.equal(m(x, x), torch.zeros(2))
    d = m(x, y)
    assert d.shape == (2,) and (d > 0).all()
    # by hand from the trunk's activations
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    fx, fy = m.vgg((2 * x - 1 - shift) / scale), m.vgg((2 * y - 1 - shift) / scale)
    ref = 0
    for l, name in enumerate(["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"]):
        nx = F.normalize(fx[name], dim=1, eps=1e-20)
        ny = F.normalize(fy[name], dim=1, eps=1e-20)
        ref = ref + (lin[f"lin{l}.model.1.weight"] * (nx - ny) ** 2).sum(1).mean((1, 2))
    torch.testing.assert_close(d, ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="lpips.*Nothing is downloaded"):
        LPIPS(tmp_path / "vgg.pth", tmp_path / "missing.pth")
    lin["lin3.model.1.weight"] = torch.rand(1, 256, 1, 1)
    torch.save(lin, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"lin3.model.1.weight: expected \(1, 512, 1, 1\)"):
        LPIPS(tmp_path / "vgg.pth", tmp_path / "bad.pth")


# ------------------------------------------------------------------------------- poses
def test_identical_poses_are_perfect_in_any_frame():
    gt = random_rig(6)
    pred = sim3_of_trajectory(gt, 3.7, rot([1, 2, 3], 71), [5.0, -2.0, 1.0])
    m = pose_metrics(pred, gt)
    for t in (5, 15, 30):
        assert m[f"RRA@{t}"] == 100.0 and m[f"RTA@{t}"] == 100.0
    assert m["AUC@30"] == 1.0
    assert m["rot_err"].shape == m["trans_err"].shape == (15,) and m["pairs"].shape == (15, 2)
    assert m["rot_err"].max() < 1e-6 and m["trans_err"].max() < 1e-6
    assert m["pairs"][:3].tolist() == [[0, 1], [0, 2], [0, 3]]


def test_ten_degrees_in_one_view():
    gt = line_rig(4)
    pred = gt.clone()
    pred[2] = gt[2] @ c2w_of(rot([1, 0, 0], 10), [0, 0, 0])  # rotate camera 2 about its own x axis
    pred = sim3_of_trajectory(pred, 0.5, rot([0, 0, 1], 33), [1.0, 2.0, 3.0])
    m = pose_metrics(pred, gt)
    # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3): every pair with view 2 is off by 10 degrees in
    # rotation; the direction of the other camera as seen from camera 2 (pairs (i, 2)) also turns
    # by 10 degrees, camera 2's centre seen from camera 3 (pair (2, 3)) does not move
    torch.testing.assert_close(m["rot_err"], torch.tensor([0, 10, 0, 10, 0, 10.0], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(m["trans_err"], torch.tensor([0, 10, 0, 10, 0, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)
    assert m["RRA@5"] == pytest.approx(50.0) and m["RRA@15"] == 100.0
    assert m["RTA@5"] == pytest.approx(100 * 4 / 6) and m["RTA@15"] == 100.0
    # max error 10 on 3 of 6 pairs: fraction 1/2 below k = 1..10, 1 above -> (10/2 + 20) / 30
    assert m["AUC@30"] == pytest.approx((10 * 0.5 + 20) / 30)


def test_auc_hand_computed():
    gt = line_rig(3)
    pred = gt.clone()
    pred[2] = gt[2] @ c2w_of(rot([1, 0, 0], 10.5), [0, 0, 0])
    m = pose_metrics(pred, gt)
    # pairs (0,1): 0; (0,2), (1,2): max error 10.5 -> 1/3 of the pairs below k = 1..10, all above
    assert m["AUC@30"] == pytest.approx((10 * (1 / 3) + 20 * 1) / 30)
    # direct: errors 0, 29.5, 30, 31 -> 1/4 below k = 1..29; at k = 30 the closed last bin counts 30
    e = torch.tensor([0.0, 29.5, 30.0, 31.0])
    assert pose_auc(e, torch.zeros(4)) == pytest.approx((29 * 0.25 + 0.75) / 30)
    assert pose_auc(torch.zeros(4), e) == pose_auc(e, torch.zeros(4))  # max of the two errors
    hist = np.histogram(e.numpy(), bins=np.arange(31))[0] / 4  # VGGSfM's formula
    assert pose_auc(e, torch.zeros(4)) == pytest.approx(np.mean(np.cumsum(hist)))
    with pytest.raises(ValueError, match="no pairs"):
        pose_auc(torch.zeros(0), torch.zeros(0))


def test_translation_sign_flip():
    I = torch.eye(3, dtype=torch.float64)
    gt = torch.stack([c2w_of(I, [0, 0, 0]), c2w_of(I, [1, 0, 0])])
    flipped = torch.stack([c2w_of(I, [0, 0, 0]), c2w_of(I, [-1, 0, 0])])
    rot_e, tr_e, _ = relative_pose_errors(flipped, gt)
    assert tr_e.item() == pytest.approx(0.0, abs=1e-9) and rot_e.item() == pytest.approx(0.0, abs=1e-9)
    _, tr_full, _ = relative_pose_errors(flipped, gt, sign_invariant=False)
    assert tr_full.item() == pytest.approx(180.0)
    # 170 degrees apart counts as 10 (direction up to sign)
    off = torch.stack([c2w_of(I, [0, 0, 0]), c2w_of(I, rot([0, 0, 1], 170) @ torch.tensor([1.0, 0, 0], dtype=torch.float64))])
    assert relative_pose_errors(off, gt)[1].item() == pytest.approx(10.0)
    assert relative_pose_errors(off, gt, sign_invariant=False)[1].item() == pytest.approx(170.0)
    # coincident centres: direction undefined -> 90 degrees
    same = torch.stack([c2w_of(I, [0, 0, 0]), c2w_of(rot([0, 1, 0], 5), [0, 0, 0])])
    assert relative_pose_errors(same, gt)[1].item() == 90.0


def test_matches_vggsfm_row_vector_formulation():
    """VGGSfM works on PyTorch3D row-vector world-to-view matrices M = w2c^T, takes
    inv(M_i) M_j per pair, the quaternion angle arccos(2 <q_gt, q_pred>^2 - 1) and the
    translation angle arccos(|cos|) of the bottom rows; re-derived here, it must agree."""
    from flare_nb.cameras import matrix_to_quat
    gt, pred = random_rig(5, seed=4), random_rig(5, seed=9)

    def rows(c2w):
        M = torch.linalg.inv(c2w).transpose(1, 2)
        i, j = torch.combinations(torch.arange(5), 2).unbind(-1)
        return torch.linalg.inv(M[i]) @ M[j]

    rg, rp = rows(gt), rows(pred)
    qg, qp = matrix_to_quat(rg[:, :3, :3]), matrix_to_quat(rp[:, :3, :3])
    rot_ref = torch.rad2deg(torch.arccos((2 * (qg * qp).sum(1) ** 2 - 1).clamp(-1, 1)))
    tg, tp = F.normalize(rg[:, 3, :3], dim=1), F.normalize(rp[:, 3, :3], dim=1)
    trans_ref = torch.rad2deg(torch.arccos((tg * tp).sum(1).abs().clamp(max=1)))
    rot_e, trans_e, _ = relative_pose_errors(pred, gt)
    torch.testing.assert_close(rot_e, rot_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(trans_e, trans_ref, atol=1e-6, rtol=0)
    assert rot_e.max() > 90 and trans_e.max() > 45  # a non-trivial case


def test_rotation_error_accurate_near_zero_and_180():
    gt = torch.stack([c2w_of(torch.eye(3, dtype=torch.float64), [0, 0, 0]), c2w_of(torch.eye(3, dtype=torch.float64), [1, 0, 0])])
    for deg in (1e-4, 0.5, 179.9):
        pred = gt.clone()
        pred[1, :3, :3] = rot([0.3, -1, 0.2], deg)
        assert relative_pose_errors(pred, gt)[0].item() == pytest.approx(deg, rel=1e-7)


def test_pose_metric_errors():
    gt = random_rig(3)
    with pytest.raises(ValueError, match="same number of views"):
        pose_metrics(gt[:2], gt)
    with pytest.raises(ValueError, match=r"\(V, 4, 4\)"):
        pose_metrics(gt[:, :3], gt)
    with pytest.raises(ValueError, match="at least 2 views"):
        pose_metrics(gt[:1], gt[:1])
    bad = gt.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        pose_metrics(bad, gt)


# ------------------------------------------------------------------------------- pointclouds
def _cloud(N=400, seed=0):
    g = np.random.default_rng(seed)
    return g.normal(size=(N, 3)) * np.array([2.0, 1.0, 0.5])


def test_known_offset_and_hand_cases():
    xs, ys = np.meshgrid(np.arange(10) * 0.1, np.arange(10) * 0.1)
    gt = np.stack([xs.ravel(), ys.ravel(), np.zeros(100)], 1)
    pred = gt + np.array([0, 0, 0.02])
    m = pointcloud_metrics(pred, gt, align="none")
    for k in ("accuracy_mean", "accuracy_median", "completion_mean", "completion_median", "chamfer"):
        assert m[k] == pytest.approx(0.02)
    m = pointcloud_metrics(pred, gt, align="sim3", pred_corr=gt)
    assert m["accuracy_mean"] < 1e-9 and m["t"][2] == pytest.approx(-0.02)
    # half of a line: accuracy 0, completion distances 0,0,0,0,0,1,2,3,4,5
    line = np.stack([np.arange(10.0), np.zeros(10), np.zeros(10)], 1)
    m = pointcloud_metrics(line[:5], line, align="none")
    assert m["accuracy_mean"] == 0 and m["completion_mean"] == pytest.approx(1.5)
    assert m["completion_median"] == pytest.approx(0.5)


def test_sim3_invariance_with_correspondences():
    gt = _cloud()
    g = np.random.default_rng(1)
    pred = gt + 0.01 * g.normal(size=gt.shape)
    ref = pointcloud_metrics(pred, gt, align="sim3", pred_corr=gt)
    R = rot([1, -2, 0.5], 60).numpy()
    moved = 2.5 * pred @ R.T + np.array([3.0, -1.0, 7.0])
    m = pointcloud_metrics(torch.from_numpy(moved).float(), torch.from_numpy(gt).float(), align="sim3",
                           pred_corr=torch.from_numpy(gt).float())
    for k in ("accuracy_mean", "accuracy_median", "completion_mean", "completion_median"):
        assert m[k] == pytest.approx(ref[k], rel=1e-3)
    assert m["s"] == pytest.approx(1 / 2.5, rel=1e-3)
    assert ref["accuracy_mean"] < 0.02
    unaligned = pointcloud_metrics(moved, gt, align="none")
    assert unaligned["accuracy_mean"] > 1.0


def test_sim3_icp_without_correspondences():
    gt = _cloud(N=600, seed=2)
    R = rot([0.2, 1, -0.3], 6).numpy()
    moved = 0.3 * gt @ R.T + np.array([0.5, 0.2, -0.1])
    perm = np.random.default_rng(3).permutation(len(gt))  # no order shared with gt
    m = pointcloud_metrics(moved[perm], gt, align="sim3")
    assert m["accuracy_mean"] < 1e-6 and m["completion_mean"] < 1e-6
    assert m["s"] == pytest.approx(1 / 0.3, rel=1e-6)


def test_pointcloud_errors():
    gt = _cloud(50)
    with pytest.raises(ValueError, match=r"pred must be a non-empty \(N, 3\)"):
        pointcloud_metrics(gt[:, :2], gt)
    with pytest.raises(ValueError, match="align must be"):
        pointcloud_metrics(gt, gt, align="icp")
    with pytest.raises(ValueError, match="pred_corr must match pred"):
        pointcloud_metrics(gt, gt, pred_corr=gt[:10])
    bad = gt.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="gt contains non-finite"):
        pointcloud_metrics(gt, bad)
