"""flare_nb.nb.explore: model loading, the cascade split at stage 3, pose perturbation, naive global
pointmaps (notebooks 03 and 04)."""
import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from flare_nb import cameras  # noqa: E402
from flare_nb.nb import explore
from flare_nb.scenes import synthetic
from flare_nb.model.camera_centric import make_dpt_head  # noqa: E402
from flare_nb.model.config import official_geometry, tiny  # noqa: E402
from flare_nb.model.pose_encoding import decode_c2w, encode_c2w  # noqa: E402
from flare_nb.model.flare import FlareModel  # noqa: E402


def _c2w(pose_enc):
    return decode_c2w(pose_enc).float()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FlareModel(tiny()).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 3, 64, 64, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def cache(model, images):
    return explore.run_to_stage2(model, images)


@pytest.fixture(scope="module")
def scene():
    return synthetic.make_scene(3, n_views=3, size=64, mode="orbit", n_threads=1)


# ----------------------------------------------------------------------------- banner
def test_weights_banner(model):
    class Fake(torch.nn.Module):
        def __init__(self, random):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2_000_000))
            self.weights_random, self.weights_label = random, "label X"

    assert "MEANINGLESS" in explore.weights_banner(Fake(True)) and "label X" in explore.weights_banner(Fake(True))
    b = explore.weights_banner(Fake(False))
    assert "MEANINGLESS" not in b and "label X" in b and "2.00 M parameters" in b
    assert "unknown origin" in explore.weights_banner(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- DPT trace
def test_trace_dpt_official_on_meta():
    with torch.device("meta"):
        cfg = official_geometry()
        head = make_dpt_head(cfg)
        H, W = 384, 512
        N = (H // 16) * (W // 16)
        toks = [torch.empty(2, N, cfg.enc_dim)] + [torch.empty(2, N, cfg.dec_dim) for _ in range(3)]
        tr = dict(explore.trace_dpt(head, toks, (H, W)))
    assert tr["tap0"] == (2, 1024, 24, 32) and tr["tap3"] == (2, 768, 24, 32)
    assert tr["reassemble0"] == (2, 96, 96, 128)     # 4x
    assert tr["reassemble1"] == (2, 192, 48, 64)     # 2x
    assert tr["reassemble2"] == (2, 384, 24, 32)     # 1x
    assert tr["reassemble3"] == (2, 768, 12, 16)     # 0.5x
    assert all(tr[f"layer{k}_rn"][1] == 256 for k in range(1, 5))
    assert tr["refinenet1"] == (2, 256, 192, 256) and tr["head.conv1x1"] == (2, 4, 384, 512)
    assert tr["pts3d"] == (2, 384, 512, 3) and tr["conf"] == (2, 384, 512)
    assert not head.dpt.act_postprocess[0]._forward_hooks        # hooks removed


# ----------------------------------------------------------------------------- the split cascade
def test_split_cascade_equals_forward(model, images, cache):
    with torch.no_grad():
        out = model(images)
    s3 = explore.run_stage3(model, cache)
    assert torch.allclose(cache["pts3d_cam"], out.pts3d_cam[0], atol=1e-6)
    assert torch.allclose(cache["pose2"], out.pose_enc_stage2[-1, 0], atol=1e-6)
    assert torch.allclose(cache["stage2"]["camera_embed_in"], out.intermediates["stage2_camera_embed_in"], atol=1e-6)
    assert torch.allclose(s3["pts3d"], out.pts3d_global[0], atol=1e-6)
    assert torch.allclose(s3["conf"], out.conf_global[0], atol=1e-6)
    # re-running stage 2 with its own input pose changes nothing either
    s3b = explore.run_stage3(model, cache, stage2_pose=cache["pose1"])
    assert torch.allclose(s3b["pts3d"], s3["pts3d"], atol=1e-6)


def test_split_cascade_errors(model, images, cache):
    with pytest.raises(ValueError, match="one scene"):
        explore.run_to_stage2(model, images.expand(2, -1, -1, -1, -1))
    with pytest.raises(ValueError, match=r"\(3, 9\) pose encoding"):
        explore.run_stage3(model, cache, pose_enc=torch.zeros(2, 9))


# ----------------------------------------------------------------------------- poses
def test_perturb_view_pose(scene):
    pe = encode_c2w(scene.c2w).float()
    pe[:, 3:7] *= 2.5                              # an unnormalised quaternion, as the pose head gives
    assert torch.equal(explore.perturb_view_pose(pe, 1, 0.0, 0.0), pe)
    out = explore.perturb_view_pose(pe, 1, 90.0, 0.2, axis="y")
    assert torch.equal(out[[0, 2]], pe[[0, 2]]) and torch.equal(out[1, 7:], pe[1, 7:])
    assert math.isclose(out[1, 3:7].norm().item(), pe[1, 3:7].norm().item(), rel_tol=1e-6)
    R, R2 = _c2w(pe[1])[:3, :3], _c2w(out[1])[:3, :3]
    Ry = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])   # +90 deg about the camera's y axis
    assert torch.allclose(R2, R @ Ry, atol=1e-5)
    m = pe[:, :3].norm(dim=-1).mean()
    assert torch.allclose(out[1, :3] - pe[1, :3], 0.2 * m * R[:, 1], atol=1e-5)
    with pytest.raises(ValueError, match="view must be"):
        explore.perturb_view_pose(pe, 3, 5.0)
    with pytest.raises(ValueError, match="axis must be"):
        explore.perturb_view_pose(pe, 1, 5.0, axis="w")


# ----------------------------------------------------------------------------- naive global pointmap
def test_naive_global_is_exact_on_ground_truth(scene):
    cam = synthetic.pointmaps(scene, "camera")
    v0 = synthetic.pointmaps(scene, "view0")
    valid = scene.depth > 0
    pe = encode_c2w(scene.c2w).float()
    res = explore.naive_vs_learned(cam, _c2w(pe), v0, valid)
    _, s = cameras.normalize_translation(cameras.relative_to_view0(scene.c2w.double()))
    assert res["rel_err_all"] < 1e-5 and res["rel_err"].max() < 1e-5
    assert math.isclose(res["lam"], 1.0, rel_tol=1e-5) and math.isclose(res["tau"], s.item(), rel_tol=1e-5)
    # scale invariance: other units for either pointmap change (tau, lam), not the error
    res2 = explore.naive_vs_learned(3.0 * cam, _c2w(pe), 0.5 * v0, valid)
    assert math.isclose(res2["lam"], 6.0, rel_tol=1e-4) and res2["rel_err_all"] < 1e-5
    # a wrong pose is detected
    bad = explore.perturb_view_pose(pe, 2, 20.0)
    assert explore.naive_vs_learned(cam, _c2w(bad), v0, valid)["rel_err"][2] > 0.05


def test_fit_naive_scales_edge_cases(scene):
    cam = synthetic.pointmaps(scene, "camera")
    c2w = torch.eye(4).expand(3, 4, 4).clone()
    c2w[:, :3, :3] = _c2w(encode_c2w(scene.c2w).float())[:, :3, :3]
    tau, lam = explore.fit_naive_scales(cam, c2w, 2.0 * explore.naive_global(cam, c2w))
    assert tau == 0.0 and math.isclose(lam, 0.5, rel_tol=1e-6)
    with pytest.raises(ValueError, match="all zero"):
        explore.fit_naive_scales(cam, c2w, torch.zeros_like(cam))
    with pytest.raises(ValueError, match="same shape"):
        explore.fit_naive_scales(cam, c2w, cam[:2])
    with pytest.raises(ValueError, match=r"pointmap \(V, H, W, 3\)"):
        explore.naive_global(cam[0], c2w)
    with pytest.raises(ValueError, match=r"c2w must be \(3, 4, 4\)"):
        explore.naive_global(cam, c2w[:2])


# ----------------------------------------------------------------------------- perturbation experiment
def test_perturbation_response(model, cache):
    zero = explore.perturbation_response(model, cache, 1, 0.0, 0.0)
    assert zero["learned"].abs().max() == 0 and zero["naive"].abs().max() == 0
    r = explore.perturbation_response(model, cache, 1, 15.0, 0.1, "x", stage=3)
    assert r["learned"].shape == (3,) and r["pts3d"].shape == (3, 64, 64, 3)
    assert r["naive"][1] > 0 and r["naive"][0] == 0 and r["naive"][2] == 0   # naive: only view 1 moves
    assert r["learned"][1] > 0
    r2 = explore.perturbation_response(model, cache, 2, 10.0, 0.0, stage=2)
    assert torch.equal(r2["pose_new"][[0, 1]], cache["pose1"][[0, 1]])
    with pytest.raises(ValueError, match="stage must be 2"):
        explore.perturbation_response(model, cache, 1, 5.0, stage=1)


def test_widget_callback_and_widget(model, cache):
    import matplotlib.pyplot as plt

    resp = explore.pose_widget_callback(model, cache, view=2, rot_deg=-5.0, trans=0.0, axis="z", show=False)
    assert resp["view"] == 2 and resp["naive"][2] > 0
    ax = explore.plot_response(resp)
    assert len(ax.patches) == 2 * 3 and "view 2 *" in [t.get_text() for t in ax.get_xticklabels()]
    plt.close("all")
    w = explore.make_pose_widget(model, cache)
    assert {c.description for c in w.children[:-1]} == {"view", "camera axis", "rotation deg", "translation",
                                                        "pose fed to"}
    plt.close("all")


def test_unconditioned_model_ignores_the_pose_here_too(images):
    """A model trained without pose conditioning (the ablation) gets the identity pose in its own
    forward pass; the notebook helpers must do the same, so a turned pose moves nothing."""
    torch.manual_seed(0)
    m = FlareModel(tiny().replace(pose_conditioning=False)).eval()
    c = explore.run_to_stage2(m, images)
    with torch.no_grad():
        out = m(images)
    torch.testing.assert_close(c["pts3d_cam"], out.pts3d_cam[0])
    torch.testing.assert_close(explore.run_stage3(m, c)["pts3d"], out.pts3d_global[0])
    r = explore.perturbation_response(m, c, 1, 10.0, 0.1, stage=3)
    assert r["learned"].abs().max() == 0 and r["naive"][1] > 0
