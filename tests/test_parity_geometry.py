"""Numerical parity of FlareModel(official_geometry()) with the official FLARE code.

``data/flare_reference/parity_geometry_pose.npz`` holds every intermediate of the official
geometry model run on 3 views (256x192) with weights from the deterministic recipe
(``flare_nb.model.reference``). We build the same 1.34 G-parameter network on the CPU, fill it with
the same recipe (checked with the README's sha256), run the fixture images with the README's
teacher forcing and compare *every* array with the README's tolerances. The largest
deviation of each array is printed (run with ``-s``).

About 2-3 minutes and 6 GB of memory on a 2-core machine; the model is freed afterwards.
A fast check of the first layer runs without the ``slow`` marker.
"""

import pytest
import torch

from flare_nb.model import reference as R
from flare_nb.model.encoder import PatchEmbed

FIXTURE = "parity_geometry_pose.npz"
INPUTS = ("images", "true_shape", "intrinsics_crop")


@pytest.fixture(scope="module")
def ref():
    return R.load_fixture(FIXTURE)


def test_patch_embedding_matches_reference(ref):
    """Fast: the first layer alone, with the recipe's weights for ``patch_embed.proj``."""
    pe = PatchEmbed(3, 1024, 16)
    with torch.no_grad():
        pe.proj.weight.copy_(R.fill_value("patch_embed.proj.weight", pe.proj.weight.shape))
        pe.proj.bias.copy_(R.fill_value("patch_embed.proj.bias", pe.proj.bias.shape))
        img = torch.from_numpy(ref["images"])
        out = pe(img.reshape(-1, *img.shape[2:])).reshape(ref["patch_embed_out"].shape)
    res = R.compare_array("patch_embed_out", out, ref["patch_embed_out"])
    assert res["ok"], res


@pytest.fixture(scope="module")
def parity(ref):
    return R.run_fixture(ref, INPUTS, "geometry")    # official_geometry(), recipe weights, eval mode


@pytest.mark.slow
def test_fill_recipe_hash(parity):
    assert parity["hash"] == R.FILL_SHA256["geometry"]


@pytest.mark.slow
def test_every_fixture_array_is_compared(parity, ref):
    assert set(parity["results"]) == set(ref) - set(INPUTS)
    assert len(parity["results"]) == 18


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "patch_embed_out", "enc_norm_out", "stage1_cam_tokens", "stage1_pose_enc", "stage1_focal", "stage1_R",
    "stage2_camera_embed_in", "stage2_tokens_last", "stage2_cam_tokens", "stage2_pose_enc", "stage2_focal",
    "stage2_R", "stage3_camera_embed_in", "stage3_tokens_last", "pts3d_cam", "conf_cam", "pts3d_global",
    "conf_global"])
def test_array_within_tolerance(parity, name):
    r = parity["results"][name]
    assert r["ok"], f"{name}: worst deviation {r['worst']:.3e} > tolerance {r['tol']:.0e} ({r})"


@pytest.mark.slow
def test_free_running_first_iteration_also_matches(parity, ref):
    """Iteration 0 of the stage-1 pose head never sees a teacher value, so it is a free-run check."""
    r = R.compare_array("stage1_pose_enc", parity["mine"]["stage1_pose_enc"][0], ref["stage1_pose_enc"][0])
    assert r["ok"], r
