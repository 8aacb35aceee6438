"""Training losses: known answers, invariances, gradients and errors."""
import math

import pytest
import torch

from flare_nb.cameras import quat_to_matrix, relative_to_view0, unproject_depth
from flare_nb.cameras import mean_distance
from flare_nb.train.losses import (confidence_loss, geometry_loss, gt_pose_targets,
                             pose_loss)


def random_c2w(B, V, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, V, 4, generator=g, dtype=dtype)
    T = torch.eye(4, dtype=dtype).repeat(B, V, 1, 1)
    T[..., :3, :3] = quat_to_matrix(q)
    T[..., :3, 3] = torch.randn(B, V, 3, generator=g, dtype=dtype)
    return T


def encodings_from(c2w):
    T, q = gt_pose_targets(c2w)
    return torch.cat([T, q, torch.zeros_like(T[..., :2])], -1)


def test_gt_targets_view0_identity_and_unit_mean_norm():
    T, q = gt_pose_targets(random_c2w(2, 4))
    assert torch.allclose(T[:, 0], torch.zeros(2, 3, dtype=T.dtype), atol=1e-12)
    assert torch.allclose(q[:, 0], torch.tensor([1.0, 0, 0, 0], dtype=q.dtype).expand(2, 4), atol=1e-12)
    assert torch.allclose(T.norm(dim=-1).mean(-1), torch.ones(2, dtype=T.dtype))
    assert (q[..., 0] >= 0).all()


def test_pose_loss_zero_at_truth_and_decay_weights():
    c2w = random_c2w(2, 3)
    enc = encodings_from(c2w)
    loss, _ = pose_loss([enc] * 8, c2w)
    assert loss.item() < 1e-10
    # an error only in the first of n iterations is weighted gamma^(n-1)
    bad = enc.clone()
    bad[..., 0] += 1.0
    l_first, _ = pose_loss([bad] + [enc] * 7, c2w)
    l_last, _ = pose_loss([enc] * 7 + [bad], c2w)
    assert l_last.item() == pytest.approx(5.0 * (1.0 / 3.0), rel=1e-9)        # mean over 3 components of T
    assert l_first.item() == pytest.approx(0.8 ** 7 * l_last.item(), rel=1e-9)


def test_pose_loss_invariant_to_world_frame_and_scale():
    c2w = random_c2w(1, 4, seed=1)
    enc = encodings_from(c2w) + 0.1
    G = random_c2w(1, 1, seed=5)[0, 0]
    moved = G @ c2w
    moved[..., :3, 3] *= 3.0
    assert pose_loss([enc], c2w)[0].item() == pytest.approx(pose_loss([enc], moved)[0].item(), rel=1e-9)


def test_pose_loss_huber_gradients_and_errors():
    c2w = random_c2w(1, 3, dtype=torch.float32)
    enc = (encodings_from(c2w) + 0.3).requires_grad_()
    loss, parts = pose_loss([enc, enc * 1.1], c2w, kind="huber")
    loss.backward()
    assert enc.grad is not None and enc.grad[..., :7].abs().sum() > 0
    assert set(parts) == {"pose_rot", "pose_trans"}
    with pytest.raises(ValueError, match="kind"):
        pose_loss([enc], c2w, kind="l2")
    with pytest.raises(ValueError, match="shape"):
        pose_loss([enc[:, :2]], c2w)
    with pytest.raises(ValueError, match="at least one"):
        pose_loss([], c2w)


def test_confidence_loss_scale_invariant_and_known_value():
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(1, 2, 4, 5, 3, generator=g)
    valid = torch.ones(1, 2, 4, 5, dtype=torch.bool)
    conf = torch.ones(1, 2, 4, 5)
    l0, e0 = confidence_loss(gt * 7.0, conf, gt, valid)
    assert l0.item() == pytest.approx(0.0, abs=1e-5) and e0.item() < 1e-5
    c = torch.full_like(conf, 2.0)
    l1, _ = confidence_loss(gt, c, gt, valid)
    assert l1.item() == pytest.approx(-0.2 * math.log(2.0), rel=1e-5)
    with pytest.raises(ValueError, match="no valid pixel"):
        confidence_loss(gt, conf, gt, torch.zeros_like(valid))
    with pytest.raises(ValueError, match="shapes"):
        confidence_loss(gt, conf[..., :3], gt, valid)


def test_mean_distance_masks():
    p = torch.zeros(1, 1, 2, 2, 3)
    p[0, 0, 0, 0] = torch.tensor([3.0, 4.0, 0.0])
    valid = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    valid[0, 0, 0, 0] = True
    assert mean_distance(p, valid).item() == pytest.approx(5.0)
    assert mean_distance(p).item() == pytest.approx(5.0 / 4)


def test_geometry_loss_zero_for_perfect_prediction_at_any_scale():
    B, V, H, W = 1, 3, 6, 8
    c2w = random_c2w(B, V, seed=3)
    depth = 2.0 + torch.rand(B, V, H, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    K = torch.tensor([[10.0, 0, 3.5], [0, 10.0, 2.5], [0, 0, 1]], dtype=torch.float64)
    gt_cam = unproject_depth(depth, K.expand(B, V, 3, 3))
    rel = torch.stack([relative_to_view0(p) for p in c2w])
    gt_v0 = torch.einsum("bvij,bvhwj->bvhwi", rel[..., :3, :3], gt_cam) + rel[..., None, None, :3, 3]
    valid = torch.ones(B, V, H, W, dtype=torch.bool)
    conf = torch.ones(B, V, H, W, dtype=torch.float64)
    loss, parts = geometry_loss(gt_cam * 0.3, conf, gt_v0 * 5.0, conf, gt_cam, c2w, valid)
    assert parts["err_cam"].item() < 1e-6 and parts["err_global"].item() < 1e-6
    # a wrong camera-centric map gives a positive error
    _, parts2 = geometry_loss(gt_cam.flip(1), conf, gt_v0, conf, gt_cam, c2w, valid)
    assert parts2["err_cam"].item() > 1e-2



@pytest.mark.parametrize("kind", ["l1", "huber"])
def test_pose_loss_sign_invariant_forgives_the_opposite_quaternion_only(kind):
    c2w = random_c2w(2, 4, seed=3)
    enc = encodings_from(c2w)
    flipped = enc.clone()
    flipped[..., 3:7] = -flipped[..., 3:7]                      # the same rotations, the other sign
    plain, _ = pose_loss([flipped], c2w, kind=kind)
    inv, _ = pose_loss([flipped], c2w, kind=kind, sign_invariant=True)
    assert plain.item() > 0.1 and inv.item() < 1e-10
    # away from the sign ambiguity both losses agree (the nearer sign is q_gt itself)
    near = enc.clone()
    near[..., 3:7] += 0.01
    a = pose_loss([near], c2w, kind=kind)[0].item()
    b = pose_loss([near], c2w, kind=kind, sign_invariant=True)[0].item()
    assert a == pytest.approx(b, rel=1e-12)
    # the plain loss is the element mean of |q - q_gt| + |T - T_gt| (the released reduction)
    T_gt, q_gt = gt_pose_targets(c2w)
    if kind == "l1":
        ref = 5.0 * ((near[..., 3:7] - q_gt).abs().mean() + (near[..., :3] - T_gt).abs().mean())
        assert a == pytest.approx(ref.item(), rel=1e-12)
