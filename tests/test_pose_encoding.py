"""The pose codec (flare_nb.model.pose_encoding): read (quaternion -> rotation, decode), write
(encode, known poses), move one camera on purpose and random pose noise. Everything here runs
without a model."""
import math

import pytest
import torch

from flare_nb import cameras
from flare_nb.cameras import euler_to_matrix, quat_to_matrix
from flare_nb.model.camera_centric import camera_embed_input
from flare_nb.model.pose_encoding import (decode_c2w, decode_pose_encoding, encode_c2w, given_pose_encoding,
                                         move_camera, move_camera_in_encoding, perturb_pose_encoding,
                                         perturb_poses, quaternion_to_rotation)


def _trajectory(V=3):
    """Camera-to-world poses of a short sideways trajectory (float64)."""
    c2w = torch.eye(4, dtype=torch.float64).repeat(V, 1, 1)
    for v in range(V):
        c2w[v, :3, :3] = euler_to_matrix(3.0 * v, 12.0 * v, 0.0)
        c2w[v, :3, 3] = torch.tensor([0.7 * v, 0.1 * v, 0.2 - 0.05 * v])
    return c2w


def _rigid(P):
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = euler_to_matrix(-25.0, 0.0, 40.0)
    M[:3, 3] = torch.tensor([3.0, -1.0, 5.0])
    return M @ P


def _random_c2w(B, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = torch.eye(4, dtype=torch.float64).repeat(B, V, 1, 1)
    T[..., :3, :3] = quat_to_matrix(torch.randn(B, V, 4, generator=g, dtype=torch.float64))
    T[..., :3, 3] = torch.randn(B, V, 3, generator=g, dtype=torch.float64)
    return T


def _angle_deg(Ra, Rb):
    dR = Ra @ Rb.transpose(-1, -2)
    return torch.rad2deg(torch.arccos(((dR.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)))


# ----------------------------------------------------------------------------- read
def test_quaternion_to_rotation():
    q = torch.tensor([[0.9, 0.1, -0.3, 0.2], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    R = quaternion_to_rotation(q)
    torch.testing.assert_close(R, quat_to_matrix(q))
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand(3, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(R[1], torch.eye(3))
    torch.testing.assert_close(R[2], torch.diag(torch.tensor([-1.0, -1.0, 1.0])))  # 180 deg about z
    cams = decode_pose_encoding(torch.tensor([1.0, 2, 3, 1, 0, 0, 0, -50.0, 50.0]))
    assert torch.equal(cams["T"], torch.tensor([1.0, 2, 3]))
    torch.testing.assert_close(cams["focal"], torch.tensor([0.1, 30.0]))


def test_decode_c2w_known_answer():
    ang = math.radians(90)
    enc = torch.tensor([1.0, 2.0, 3.0, 2 * math.cos(ang / 2), 0.0, 0.0, 2 * math.sin(ang / 2), 0.0, 0.0])
    c2w = decode_c2w(enc)                                     # 90 degrees about z, unnormalised q
    assert torch.allclose(c2w[:3, :3], torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64),
                          atol=1e-12)
    assert c2w[:3, 3].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="9"):
        decode_c2w(torch.zeros(3))


# ----------------------------------------------------------------------------- write
def test_encode_c2w_round_trip():
    c2w = _rigid(_trajectory())
    pe = encode_c2w(c2w).float()
    assert pe.shape == (3, 9) and torch.allclose(pe[0, :7], torch.tensor([0, 0, 0, 1.0, 0, 0, 0]), atol=1e-6)
    rel, _ = cameras.normalize_translation(cameras.relative_to_view0(c2w))
    assert torch.allclose(decode_c2w(pe), rel, atol=1e-5)
    assert math.isclose(pe[:, :3].norm(dim=-1).mean().item(), 1.0, rel_tol=1e-5)
    with pytest.raises(ValueError, match=r"\(\.\.\., V, 4, 4\)"):
        encode_c2w(torch.eye(4)).float()


def test_given_pose_encoding_is_relative_to_view0_and_invariant():
    P = _trajectory()
    enc = given_pose_encoding(P[None])
    assert enc.shape == (1, 3, 9) and enc[0, 0, :7].tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert (enc[..., 3] >= 0).all()
    moved = given_pose_encoding(_rigid(P)[None])
    assert (moved - enc).abs().max() < 1e-5                                  # one rigid motion: same relative poses
    scaled = P.clone()
    scaled[:, :3, 3] *= 7.5
    a, b = camera_embed_input(enc), camera_embed_input(given_pose_encoding(scaled[None]))
    assert (a - b).abs().max() < 1e-5                                        # scale-free embedding input


# ----------------------------------------------------------------------------- move one camera
def test_move_camera_zero_motion_is_identity():
    c2w = _trajectory()
    assert torch.equal(move_camera(c2w, 1), c2w)
    assert torch.equal(move_camera_in_encoding(encode_c2w(c2w).float(), 2), encode_c2w(c2w).float())


def test_move_camera_translation_is_in_the_camera_frame():
    c2w = _trajectory()
    new = move_camera(c2w, 2, trans=(0, 0, 0.5))
    assert torch.allclose(new[2, :3, 3] - c2w[2, :3, 3], 0.5 * c2w[2, :3, 2])   # z axis = forward
    assert torch.equal(new[[0, 1]], c2w[[0, 1]]) and torch.equal(new[2, :3, :3], c2w[2, :3, :3])


def test_move_camera_rotation_keeps_the_centre_world_frame_moves_it():
    c2w = _trajectory()
    cam = move_camera(c2w, 1, rot_deg=(0, 30, 0))
    assert torch.allclose(cam[1, :3, 3], c2w[1, :3, 3])
    dR = c2w[1, :3, :3].T @ cam[1, :3, :3]
    assert torch.allclose(dR, euler_to_matrix(0, 30, 0), atol=1e-12)
    world = move_camera(c2w, 1, rot_deg=(0, 0, 90), frame="world")
    assert torch.allclose(world[1, :3, 3], euler_to_matrix(0, 0, 90) @ c2w[1, :3, 3])


def test_move_camera_errors():
    c2w = _trajectory()
    with pytest.raises(ValueError, match="view"):
        move_camera(c2w, 3)
    with pytest.raises(ValueError, match="view"):
        move_camera(c2w, 1.0)
    with pytest.raises(ValueError, match="finite"):
        move_camera(c2w, 1, rot_deg=(0, math.nan, 0))
    with pytest.raises(ValueError, match="frame"):
        move_camera(c2w, 1, frame="body")
    with pytest.raises(ValueError, match=r"\(V, 4, 4\)"):
        move_camera(c2w[0], 0)


def test_move_camera_in_encoding_is_camera_frame_motion():
    """decode(new)[v] == decode(old)[v] @ [R(rx,ry,rz) | m t], other views untouched."""
    g = torch.Generator().manual_seed(1)
    pose = torch.randn(4, 9, generator=g, dtype=torch.float64)
    new = move_camera_in_encoding(pose, 2, (10.0, -20.0, 30.0), (0.1, 0.2, -0.3))
    m = pose[:, :3].norm(dim=-1).mean()
    D = torch.eye(4, dtype=torch.float64)
    D[:3, :3] = euler_to_matrix(10.0, -20.0, 30.0)
    D[:3, 3] = m * torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    assert torch.allclose(decode_c2w(new[2]), decode_c2w(pose[2]) @ D, atol=1e-10)
    assert torch.allclose(new[2, 3:7].norm(), pose[2, 3:7].norm())          # unnormalised norm kept
    assert torch.equal(new[[0, 1, 3]], pose[[0, 1, 3]])


def test_move_camera_in_encoding_errors():
    pose = torch.zeros(3, 9)
    with pytest.raises(ValueError, match=r"view must be an int in \[0, 3\)"):
        move_camera_in_encoding(pose, 3, (1.0, 0, 0))
    with pytest.raises(ValueError, match="finite"):
        move_camera_in_encoding(pose, 0, (float("nan"), 0, 0))
    with pytest.raises(ValueError, match=r"\(3, 9\) pose encoding"):
        move_camera_in_encoding(torch.zeros(3, 7), 0)


# ----------------------------------------------------------------------------- pose noise
def test_perturb_poses_bounds_and_view0_untouched():
    c2w = _random_c2w(4, 6, seed=2)
    g = torch.Generator().manual_seed(0)
    out = perturb_poses(c2w, prob=1.0, max_rot_deg=7.5, generator=g)
    assert torch.equal(out[:, 0], c2w[:, 0])
    ang = _angle_deg(out[..., :3, :3], c2w[..., :3, :3])
    assert ang[:, 1:].max() <= 7.5 + 1e-6 and ang[:, 1:].max() > 1.0
    none = perturb_poses(c2w, prob=0.0, generator=g)
    assert torch.equal(none, c2w)
    again = perturb_poses(c2w, prob=0.6, generator=torch.Generator().manual_seed(9))
    assert torch.equal(again, perturb_poses(c2w, prob=0.6, generator=torch.Generator().manual_seed(9)))


def test_perturb_pose_encoding_bounds_norm_and_determinism():
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(3, 5, 9, generator=g)
    enc[:, 0, :3] = 0
    out = perturb_pose_encoding(enc, prob=1.0, max_rot_deg=7.5, trans_std=0.05, generator=torch.Generator().manual_seed(1))
    assert out.shape == enc.shape and torch.equal(out[:, 0], enc[:, 0]) and torch.equal(out[..., 7:], enc[..., 7:])
    assert torch.allclose(out[..., 3:7].norm(dim=-1), enc[..., 3:7].norm(dim=-1), rtol=1e-5)
    ang = _angle_deg(quat_to_matrix(out[..., 3:7]), quat_to_matrix(enc[..., 3:7]))
    assert ang[:, 1:].max() <= 7.5 + 1e-3 and ang[:, 1:].max() > 0.5
    assert (out[:, 1:, :3] - enc[:, 1:, :3]).abs().max() > 0
    again = perturb_pose_encoding(enc, 1.0, 7.5, 0.05, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert torch.equal(perturb_pose_encoding(enc, 0.0, 7.5, 0.05), enc)
    zero = torch.zeros(1, 3, 9)                 # untrained head: zero quaternion stays finite
    assert torch.isfinite(perturb_pose_encoding(zero, 1.0, 5.0, 0.05)).all()
