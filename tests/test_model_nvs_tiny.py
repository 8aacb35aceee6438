"""FlareModel with the tiny NVS config (flare_nb.model.nvs, notebook 05): shapes, the intrinsics
input, the baseline normalisation, gradients into the Gaussian head, rendering the predicted
Gaussians with flare_nb.render.rasterize, and NVS checkpoints (kind detection, released key names).
The released-size numbers are checked in tests/test_parity_nvs.py."""
import pytest
import torch

from flare_nb.model.checkpoint import CheckpointError, check_state_dict, detect_kind, load_flare_checkpoint, \
    save_flare_checkpoint
from flare_nb.model.config import official_geometry, official_nvs, tiny, tiny_nvs
from flare_nb.model.flare import FlareModel
from flare_nb.model.nvs import camera_embed_input_baseline, intrinsics_vector
from flare_nb.model.reference import load_manifest, manifest_shapes


def _images(B, V, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, V, 3, H, W, generator=g) * 2 - 1


def _intrinsics(B, V, H, W):
    base = torch.tensor([1.1 * W, 1.2 * H, W / 2 - 0.5, H / 2 - 0.5])
    return (base * torch.linspace(0.9, 1.1, V)[:, None]).expand(B, V, 4).clone()


def _randomised(cfg, seed=0):
    torch.manual_seed(seed)
    m = FlareModel(cfg)
    with torch.no_grad():  # the zero-initialised released parameters would hide bugs
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def model():
    return _randomised(tiny_nvs()).eval()


# ----------------------------------------------------------------------------- forward
def test_forward_shapes_and_gaussians(model):
    cfg = model.cfg
    B, V, H, W = 2, 3, 64, 96
    x, K = _images(B, V, H, W), _intrinsics(B, V, H, W)
    with torch.no_grad():
        out = model(x, intrinsics=K)
    assert out.pts3d_cam is None and out.conf_cam is None  # no head 1 in the NVS model
    assert out.pts3d_global.shape == (B, V, H, W, 3) and out.conf_global.shape == (B, V, H, W)
    n_rest = 3 * ((cfg.sh_degree + 1) ** 2 - 1)
    want = {"opacity_raw": 1, "scaling_raw": 3, "rotation_raw": 4, "feature_dc_raw": 3, "feature_rest_raw": n_rest}
    assert {k: tuple(v.shape) for k, v in out.gaussians_raw.items()} == {k: (B, V, H, W, c) for k, c in want.items()}
    inter = out.intermediates
    assert inter["fxfycxcy_embed_in"].shape == (B, V, 4)
    torch.testing.assert_close(inter["fxfycxcy_embed_in"], K / 2000)
    assert inter["enc_stage2_norm_out"].shape == (B, V, (H // 16) * (W // 16), cfg.enc_dim)
    assert inter["desc"].shape == (B, V, H, W, cfg.desc_dim + 1)
    assert inter["cnn_detail"].shape == (B, V, H, W, cfg.cnn_detail_dim)
    assert len(out.gaussians) == B
    n = V * H * W
    for b, g in enumerate(out.gaussians):
        assert g["means"].shape == (n, 3) and g["quats"].shape == (n, 4) and g["scales"].shape == (n, 3)
        assert g["opacities"].shape == (n,) and g["colors"].shape == (n, (cfg.sh_degree + 1) ** 2, 3)
        assert g["sh_degree"] == cfg.sh_degree
        torch.testing.assert_close(g["means"], out.pts3d_global[b].reshape(-1, 3), rtol=0, atol=0)
        torch.testing.assert_close(g["opacities"], torch.sigmoid(out.gaussians_raw["opacity_raw"][b]).reshape(-1))
        torch.testing.assert_close(g["quats"].norm(dim=-1), torch.ones(n))
        assert (g["scales"] >= 5e-4).all() and (g["scales"] <= 0.3).all()
        for v in g.values():
            assert not torch.is_tensor(v) or torch.isfinite(v).all()
    # scenes of a batch are independent (the baseline normalisation is per scene)
    with torch.no_grad():
        one = model(x[1:], intrinsics=K[1:])
    torch.testing.assert_close(one.gaussians_raw["scaling_raw"][0], out.gaussians_raw["scaling_raw"][1],
                               rtol=1e-4, atol=1e-5)


def test_intrinsics_as_matrices_and_their_effect(model):
    B, V, H, W = 1, 2, 64, 64
    x, k4 = _images(B, V, H, W, seed=1), _intrinsics(B, V, H, W)
    K = torch.zeros(B, V, 3, 3)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = k4.unbind(-1) + (torch.ones(B, V),)
    with torch.no_grad():
        a = model(x, intrinsics=k4)
        b = model(x, intrinsics=K)
        c = model(x, intrinsics=k4 * torch.tensor([1.5, 1.5, 1.0, 1.0]))
    torch.testing.assert_close(a.pts3d_global, b.pts3d_global, rtol=0, atol=0)
    # the intrinsics enter stage 3 only: stage 2 is unchanged, the Gaussians move
    torch.testing.assert_close(c.intermediates["stage2_tokens_last"], a.intermediates["stage2_tokens_last"],
                               rtol=0, atol=0)
    assert not torch.allclose(c.pts3d_global, a.pts3d_global)
    assert (c.gaussians_raw["opacity_raw"] - a.gaussians_raw["opacity_raw"]).abs().max() > 1e-6


def test_geometry_model_ignores_intrinsics():
    m = _randomised(tiny(), seed=3).eval()
    x = _images(1, 2, 64, 64, seed=2)
    with torch.no_grad():
        a, b = m(x), m(x, intrinsics=_intrinsics(1, 2, 64, 64))
    assert a.gaussians is None and a.gaussians_raw is None
    torch.testing.assert_close(a.pts3d_global, b.pts3d_global, rtol=0, atol=0)


def test_intrinsics_errors(model):
    x = _images(1, 2, 64, 64)
    with pytest.raises(ValueError, match=r"needs intrinsics: a \(B, V, 4\) = \(1, 2, 4\)"):
        model(x)
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 4\)"):
        model(x, intrinsics=_intrinsics(1, 3, 64, 64))
    bad = _intrinsics(1, 2, 64, 64)
    bad[0, 1, 0] = -5.0
    with pytest.raises(ValueError, match="must be positive"):
        model(x, intrinsics=bad)
    bad[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        model(x, intrinsics=bad)
    with pytest.raises(ValueError, match=r"\(B, V, 4\)"):
        intrinsics_vector(torch.ones(2, 4), 1, 2)


def test_baseline_normalisation_known_values():
    enc = torch.zeros(1, 3, 9)
    enc[0, :, 3] = 2.0
    enc[0, 0, :3] = torch.tensor([1.0, 0, 0])
    enc[0, 1, :3] = torch.tensor([4.0, 0, 4])   # |T0 - T1| = 5 (the mean-norm scale would differ)
    enc[0, 2, :3] = torch.tensor([0.0, 10, 0])
    e = camera_embed_input_baseline(enc)
    torch.testing.assert_close(e[0, :, :4], enc[0, :, 3:7])
    torch.testing.assert_close(e[0, :, 4:], enc[0, :, :3] / 5.0)
    with pytest.raises(ValueError, match="V >= 2"):
        camera_embed_input_baseline(torch.zeros(1, 1, 9))


# ----------------------------------------------------------------------------- gradients
def test_gradients_reach_every_used_parameter():
    m = _randomised(tiny_nvs(), seed=1)
    x, K = _images(1, 2, 64, 64, seed=4), _intrinsics(1, 2, 64, 64)
    out = m(x, intrinsics=K)
    g = out.gaussians[0]
    w = torch.Generator().manual_seed(0)
    loss = (out.pose_enc_stage1.square().mean() + out.pose_enc_stage2.square().mean()
            + out.pts3d_global.tanh().mean() + out.conf_global.log().mean()
            + sum((g[k] * torch.randn(g[k].shape, generator=w)).mean() for k in ("quats", "scales", "opacities",
                                                                                  "colors")))
    loss.backward()
    inert = set(m.inert_parameter_names())
    dead = [n for n, p in m.named_parameters() if n not in inert and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert dead == []
    nvs_parts = ("detail_encoder.cnn_wobn.", "detail_encoder.cnn_fusion.", "detail_encoder.cnn_proj.",
                 "detail_encoder.patch_embed_fine.", "detail_encoder.enc_blocks_stage2.",
                 "global_projector.decoder_embed_stage2.", "global_projector.decoder_embed_fxfycxcy.",
                 "gaussian_head.")
    assert all(any(n.startswith(p) for n, _ in m.named_parameters()) for p in nvs_parts)


# ----------------------------------------------------------------------------- rendering
def test_predicted_gaussians_render_and_backpropagate():
    rasterize = pytest.importorskip("flare_nb.render.rasterize", reason="flare_nb.render.rasterize not importable").rasterize
    m = _randomised(tiny_nvs(), seed=2)
    H = W = 64
    x, K4 = _images(1, 2, H, W, seed=5), _intrinsics(1, 2, H, W)
    g = m(x, intrinsics=K4).gaussians[0]
    # random weights give pointmaps of arbitrary scale: bring the (detached) centres to a unit
    # cloud 3 units in front of view 0's camera; everything else is the model's output
    mu = g["means"].detach()
    mu = (mu - mu.median(dim=0).values) / mu.std(dim=0).clamp(min=1e-6) * 0.5 + torch.tensor([0.0, 0.0, 3.0])
    K = torch.tensor([[[K4[0, 0, 0], 0, K4[0, 0, 2]], [0, K4[0, 0, 1], K4[0, 0, 3]], [0, 0, 1]]])
    r = rasterize(mu, g["quats"], g["scales"], g["opacities"], g["colors"], torch.eye(4)[None], K, W, H,
                  sh_degree=g["sh_degree"], backend="torch")
    assert r.rgb.shape == (1, H, W, 3) and r.alpha.shape == (1, H, W, 1)
    assert torch.isfinite(r.rgb).all() and r.alpha.max() > 0.1
    r.rgb.mean().backward()
    head = dict(m.named_parameters())
    for name in ("gaussian_head.color.weight", "gaussian_head.feat_opacity.2.weight",
                 "gaussian_head.feat_scaling.2.weight", "gaussian_head.feat_rotation.2.weight",
                 "detail_encoder.cnn_proj.weight"):
        assert head[name].grad is not None and head[name].grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- checkpoints
def test_nvs_checkpoint_round_trip_and_kind_checks(tmp_path, model):
    path = save_flare_checkpoint(model, tmp_path / "nvs.safetensors")
    fresh = FlareModel(tiny_nvs()).eval()
    rep = load_flare_checkpoint(fresh, path)
    assert rep.kind == "nvs" and rep.missing == [] and rep.skipped_unused == []
    x, K = _images(1, 2, 64, 64, seed=6), _intrinsics(1, 2, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, intrinsics=K).gaussians_raw["feature_dc_raw"],
                                   model(x, intrinsics=K).gaussians_raw["feature_dc_raw"], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="this is a nvs checkpoint .* the model is a geometry model"):
        load_flare_checkpoint(FlareModel(tiny()), path)
    geo = save_flare_checkpoint(FlareModel(tiny()), tmp_path / "geo.pth")
    with pytest.raises(CheckpointError, match="this is a geometry checkpoint .* the model is a nvs model"):
        load_flare_checkpoint(fresh, geo)


def test_released_nvs_keys_fit_the_official_nvs_model():
    with torch.device("meta"):
        m = FlareModel(official_nvs())
    ours = {k: tuple(v.shape) for k, v in m.released_state_dict().items()}
    ref = manifest_shapes("nvs")
    assert detect_kind(ref) == "nvs"
    problems, skipped, missing, unexpected = check_state_dict(ours, ref, "nvs")
    assert problems == [] and missing == [] and unexpected == []
    # head 1 (72 keys incl. 4 aliases), mask_token, dec_norm (2), patch_embed_test_ (2)
    assert len(skipped) == 77 and set(skipped) <= set(load_manifest("nvs")["unused_at_inference"])
    assert ours == {k: v for k, v in ref.items() if k not in skipped}
    assert FlareModel.omitted_keys(ref, kind="nvs") == skipped
    assert ours["downstream_head4.sh_high_fre.weight"] == (72, 20, 1, 1)  # SH degree 4
    # the geometry release does not fit the NVS model
    problems, *_ = check_state_dict(ours, manifest_shapes("geometry"), "nvs")
    text = "\n".join(problems)
    assert "wrong model kind: this is a geometry checkpoint" in text and "sh_high_fre.weight" in text
    with pytest.raises(ValueError, match="kind must be"):
        FlareModel.omitted_keys(ref, kind="video")
    del m
    assert official_geometry().kind == "geometry"
