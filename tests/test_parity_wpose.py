"""Numerical parity of FlareModel(official_geometry()) with GIVEN camera poses and the official code's
known-pose mode (``wpose=True``).

``data/flare_reference/parity_geometry_wpose.npz``: the official geometry model with
``camera_pose`` = camera-to-world matrices built by the official loader, on the landscape
fixture's 3 views. We pass the same matrices as ``FlareModel(..., camera_poses=...)``. With given
poses no pose-head output reaches anything else, so the tokens, camera tokens, camera-embedding
inputs, pointmaps and confidences are compared as they come (the teacher forcing only touches
the pose heads, checked on the tiny model in ``tests/test_given_poses.py``); the pose-head arrays
use the README's teacher forcing. Tolerances of the fixture README. Largest deviations printed
with ``-s``. About 2-3 minutes and 6 GB; fast checks of the pose derivation run without ``slow``.
"""

import pytest
import torch

from flare_nb.model import reference as R
from flare_nb.model.camera_centric import camera_embed_input
from flare_nb.model.pose_encoding import check_camera_poses, given_pose_encoding

FIXTURE = "parity_geometry_wpose.npz"
INPUTS = ("images", "true_shape", "intrinsics_crop", "camera_pose_c2w", "camera_pose_w2c_file", "gt_rel_c2w",
          "gt_quaternion", "gt_translation", "gt_translation_scale")


@pytest.fixture(scope="module")
def ref():
    return R.load_fixture(FIXTURE)


def test_given_pose_derivation_matches_reference(ref):
    """Fast: q, T relative to view 0 and the [q, T / s] embedding input, from the model input."""
    P = check_camera_poses(torch.from_numpy(ref["camera_pose_c2w"]), 1, 3)
    enc = given_pose_encoding(P)
    assert R.compare_array("gt_translation", enc[..., :3], ref["gt_translation"])["ok"]
    assert R.compare_array("gt_quaternion", enc[..., 3:7], ref["gt_quaternion"])["ok"]
    assert enc[0, 0, :7].tolist() == [0, 0, 0, 1, 0, 0, 0]
    cam_in = camera_embed_input(enc)
    for name in ("stage2_camera_embed_in", "stage3_camera_embed_in"):
        r = R.compare_array(name, cam_in, ref[name])
        assert r["ok"], r
    s = enc[..., :3].norm(dim=-1).mean() + 1e-8
    assert abs(float(s) - float(ref["gt_translation_scale"].item())) <= 1e-6 * float(s)


def test_fixture_poses_are_the_inverse_of_the_file(ref):
    c2w = torch.from_numpy(ref["camera_pose_c2w"]).double()
    w2c = torch.from_numpy(ref["camera_pose_w2c_file"]).double()
    assert torch.allclose(c2w @ w2c, torch.eye(4, dtype=torch.float64).expand_as(c2w), atol=1e-5)


@pytest.fixture(scope="module")
def parity(ref):
    return R.run_fixture(ref, INPUTS, "geometry, given poses", camera_poses=torch.from_numpy(ref["camera_pose_c2w"]))


@pytest.mark.slow
def test_every_fixture_array_is_compared(parity, ref):
    assert set(parity["results"]) == set(ref) - set(INPUTS)
    assert len(parity["results"]) == 19


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "patch_embed_out", "enc_norm_out", "stage1_coarse_tokens", "stage1_cam_tokens", "stage1_pose_enc",
    "stage1_focal", "stage1_R", "stage2_camera_embed_in", "stage2_tokens_last", "stage2_cam_tokens",
    "stage2_pose_enc", "stage2_focal", "stage2_R", "stage3_camera_embed_in", "stage3_tokens_last", "pts3d_cam",
    "conf_cam", "pts3d_global", "conf_global"])
def test_array_within_tolerance(parity, name):
    r = parity["results"][name]
    assert r["ok"], f"{name}: worst deviation {r['worst']:.3e} > tolerance {r['tol']:.0e} ({r})"
