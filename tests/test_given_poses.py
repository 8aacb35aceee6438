"""Known camera poses (the release's ``wpose=True``): ``FlareModel(..., camera_poses=...)`` and
``reconstruct(..., camera_poses=...)`` on the tiny model; full-size parity in test_parity_wpose.py."""
import math

import pytest
import torch

from flare_nb.inference import reconstruct
from flare_nb.model.pose_encoding import check_camera_poses, given_pose_encoding


def _rot(axis, deg):
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    i, j = [k for k in range(3) if k != axis]
    R = torch.eye(3, dtype=torch.float64)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def _poses(V=3):
    out = []
    for v in range(V):
        P = torch.eye(4, dtype=torch.float64)
        P[:3, :3] = _rot(1, 12.0 * v) @ _rot(0, 3.0 * v)
        P[:3, 3] = torch.tensor([0.7 * v, 0.1 * v, 0.2 - 0.05 * v])
        out.append(P)
    return torch.stack(out)


def _rigid(P):
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = _rot(2, 40.0) @ _rot(0, -25.0)
    M[:3, 3] = torch.tensor([3.0, -1.0, 5.0])
    return M @ P


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 3, 128, 128, generator=g) * 2 - 1


def _run(model, images, **kw):
    with torch.no_grad():
        return model(images, **kw)


def test_outputs_follow_given_poses(randomised_tiny_model, images, one_thread):
    m = randomised_tiny_model
    P = _poses()
    free = _run(m, images)
    given = _run(m, images, camera_poses=P)
    # stage 1 does not see the poses; stages 2 and 3 do
    assert torch.equal(free.pose_enc_stage1, given.pose_enc_stage1)
    assert torch.equal(free.intermediates["stage1_cam_tokens"], given.intermediates["stage1_cam_tokens"])
    assert (free.pts3d_global - given.pts3d_global).abs().max() > 1e-4
    from flare_nb.model.camera_centric import camera_embed_input
    want = camera_embed_input(given_pose_encoding(P[None]))
    assert torch.equal(given.intermediates["stage2_camera_embed_in"], want)
    assert torch.equal(given.intermediates["stage3_camera_embed_in"], want)
    # one rigid motion of the world and one scale of the translations: the same outputs (float rounding)
    S = _rigid(P)
    S[:, :3, 3] *= 3.0
    other = _run(m, images, camera_poses=S)
    rel = (other.pts3d_global - given.pts3d_global).norm(dim=-1) / given.pts3d_global.norm(dim=-1).clamp(min=1e-6)
    assert rel.max() < 1e-3
    # a different reference view changes them
    swapped = _run(m, images, camera_poses=P[[1, 0, 2]])
    assert (swapped.pts3d_global - given.pts3d_global).abs().max() > 1e-4


def test_pose_heads_reach_nothing_with_given_poses(randomised_tiny_model, images, one_thread):
    """Teacher forcing the pose heads changes only the pose-head outputs when the poses are given."""
    m = randomised_tiny_model
    P = _poses()
    a = _run(m, images, camera_poses=P)
    teach = {s: [None] + [torch.full((1, 3, 9), 0.3)] * (m.cfg.pose_iters - 1) for s in ("stage1", "stage2")}
    b = _run(m, images, camera_poses=P, pose_teacher=teach)
    assert not torch.equal(a.pose_enc_stage2, b.pose_enc_stage2)
    for k in ("stage2_cam_tokens", "stage2_tokens_last", "stage3_tokens_last", "stage3_camera_embed_in"):
        assert torch.equal(a.intermediates[k], b.intermediates[k]), k
    assert torch.equal(a.pts3d_global, b.pts3d_global) and torch.equal(a.pts3d_cam, b.pts3d_cam)


def test_bad_given_poses_are_refused(randomised_tiny_model, images):
    m = randomised_tiny_model
    P = _poses()
    with pytest.raises(ValueError, match="2 poses .* 3 views"):
        check_camera_poses(P[:2], 1, 3)
    scaled = P.clone()
    scaled[1, :3, :3] *= 1.05
    with pytest.raises(ValueError, match=r"camera_poses\[1\] .* not a rigid"):
        m(images, camera_poses=scaled)
    mirrored = P.clone()
    mirrored[2, :, 0] *= -1
    with pytest.raises(ValueError, match=r"camera_poses\[2\] .* not a rigid"):
        check_camera_poses(mirrored, 1, 3)
    bottom = P.clone()
    bottom[0, 3, 0] = 0.5
    with pytest.raises(ValueError, match="last row"):
        check_camera_poses(bottom, 1, 3)
    nan = P.clone()
    nan[0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        check_camera_poses(nan, 1, 3)
    with pytest.raises(ValueError, match="must be camera-to-world matrices"):
        check_camera_poses(P[:, :3], 1, 3)


def test_reconstruct_with_given_poses(randomised_tiny_model, one_thread):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 128, 128, generator=g)
    P = _rigid(_poses())
    rec = reconstruct(randomised_tiny_model, x, device="cpu", pnp=False, camera_poses=P)
    assert torch.allclose(rec.poses("given"), torch.linalg.inv(P[0]).float() @ P.float(), atol=1e-5)
    assert torch.allclose(rec.c2w_given[0], torch.eye(4), atol=1e-6)
    with torch.no_grad():
        direct = randomised_tiny_model(x[None] * 2 - 1, camera_poses=P)
    assert torch.allclose(rec.pts3d_global, direct.pts3d_global[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="4 poses .* 3 views"):
        reconstruct(randomised_tiny_model, x, device="cpu", pnp=False, camera_poses=torch.eye(4).expand(4, 4, 4))
    assert reconstruct(randomised_tiny_model, x, device="cpu", pnp=False).c2w_given is None
