"""Numerical parity of FlareModel(official_geometry()) with the official FLARE code on PORTRAIT views.

``data/flare_reference/parity_geometry_portrait.npz``: the official geometry model on 3 portrait
views of gt_cam (W=192, H=256) with the deterministic recipe weights. The release builds stage 1's
64-pixel token grid of a portrait view in its own way (``flare_nb.model.pose_predictor.release_coarse_grid``);
with that construction every array matches. Same teacher forcing and tolerances as the landscape
fixture (``tests/test_parity_geometry.py``). Our outputs are (H, W) = portrait: they are compared with
the fixture's ``*_portrait`` arrays directly and with the official (landscape-stored) layout after
swapping the two image axes. The largest deviation of each array is printed (run with ``-s``).

About 2-3 minutes and 6 GB of memory; fast checks of the coarse grid run without ``slow``.
"""

import numpy as np
import pytest
import torch

from flare_nb.model import reference as R
from flare_nb.model.pose_predictor import natural_coarse_grid, release_coarse_grid

FIXTURE = "parity_geometry_portrait.npz"
INPUTS = ("images", "images_landscape_stored", "true_shape", "intrinsics_crop")
OFFICIAL_LAYOUT = ("pts3d_cam", "conf_cam", "pts3d_global", "conf_global")   # (1, V, W, H[, 3]) in the fixture


@pytest.fixture(scope="module")
def ref():
    return R.load_fixture(FIXTURE)


def test_fixture_layout(ref):
    """Fast: the portrait input is the official stored tensor with its image axes swapped back."""
    assert ref["images"].shape == (1, 3, 3, 256, 192)
    np.testing.assert_array_equal(ref["images"].swapaxes(-1, -2), ref["images_landscape_stored"])
    assert (ref["true_shape"] == [256, 192]).all()
    for k in OFFICIAL_LAYOUT:
        np.testing.assert_array_equal(ref[k].swapaxes(2, 3), ref[k + "_portrait"])


def _coarse(grid_fn, ref, shape=(16, 12)):
    """Stage 1's coarse tokens from the fixture's encoder output, recipe weights, grid ``grid_fn``."""
    conv = torch.nn.Conv2d(1024, 1024, 4, stride=4)
    norm = torch.nn.LayerNorm(1024, eps=1e-6)
    with torch.no_grad():
        for mod, prefix in ((conv, "patch_embed_coarse2.proj"), (norm, "enc_norm_coarse")):
            for n, p in mod.named_parameters():
                p.copy_(R.fill_value(f"{prefix}.{n}", p.shape))
        tok = torch.from_numpy(ref["enc_norm_out"][0])
        x = conv(grid_fn(tok, shape))
        return norm(x.flatten(2).transpose(1, 2))[None], tuple(x.shape[-2:])


def test_release_coarse_grid_matches_reference(ref):
    """Fast: the release's grid (cell [i, j] = token[16 j + i]) gives the fixture's coarse tokens on
    a 4 x 3 grid; the geometric 16 x 12 grid does not (it differs by more than one std)."""
    mine, hw = _coarse(release_coarse_grid, ref)
    assert hw == (4, 3)
    res = R.compare_array("stage1_coarse_tokens", mine, ref["stage1_coarse_tokens"])
    assert res["ok"], res
    natural, hw_nat = _coarse(natural_coarse_grid, ref)
    assert hw_nat == (4, 3)
    assert R.compare_array("stage1_coarse_tokens", natural, ref["stage1_coarse_tokens"])["std_units"] > 1.0


def test_release_coarse_grid_indexing():
    """Fast: the construction, stated on token indices (portrait 4 x 2 grid) and for landscape."""
    tok = torch.arange(8.0).reshape(1, 8, 1)                      # portrait row-major: token[2 r + c]
    g = release_coarse_grid(tok, (4, 2))[0, 0]
    assert g.shape == (4, 2)
    assert g.tolist() == [[4 * j + i for j in range(2)] for i in range(4)]          # token[h j + i], h = 4
    assert natural_coarse_grid(tok, (4, 2))[0, 0].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert torch.equal(release_coarse_grid(tok, (2, 4)), natural_coarse_grid(tok, (2, 4)))  # landscape
    with pytest.raises(ValueError, match="do not fill"):
        release_coarse_grid(tok, (3, 2))


def _portrait_outputs(out):
    mine = dict(out.intermediates, pts3d_cam_portrait=out.pts3d_cam, conf_cam_portrait=out.conf_cam,
                pts3d_global_portrait=out.pts3d_global, conf_global_portrait=out.conf_global)
    for k in OFFICIAL_LAYOUT:                       # official layout: element [i, j] is portrait pixel (j, i)
        mine[k] = mine[k + "_portrait"].transpose(2, 3)
    return mine


@pytest.fixture(scope="module")
def parity(ref):
    return R.run_fixture(ref, INPUTS, "geometry, portrait", collect=_portrait_outputs)


@pytest.mark.slow
def test_every_fixture_array_is_compared(parity, ref):
    assert set(parity["results"]) == set(ref) - set(INPUTS)
    assert len(parity["results"]) == 22


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "enc_norm_out", "stage1_coarse_tokens", "stage1_cam_tokens", "stage1_pose_enc", "stage1_focal", "stage1_R",
    "stage2_camera_embed_in", "stage2_tokens_last", "stage2_cam_tokens", "stage2_pose_enc", "stage2_focal",
    "stage2_R", "stage3_camera_embed_in", "stage3_tokens_last", "pts3d_cam", "conf_cam", "pts3d_global",
    "conf_global", "pts3d_cam_portrait", "conf_cam_portrait", "pts3d_global_portrait", "conf_global_portrait"])
def test_array_within_tolerance(parity, name):
    r = parity["results"][name]
    assert r["ok"], f"{name}: worst deviation {r['worst']:.3e} > tolerance {r['tol']:.0e} ({r})"


@pytest.mark.slow
def test_free_running_first_iteration_also_matches(parity, ref):
    r = R.compare_array("stage1_pose_enc", parity["mine"]["stage1_pose_enc"][0], ref["stage1_pose_enc"][0])
    assert r["ok"], r
