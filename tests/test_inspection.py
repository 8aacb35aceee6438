"""flare_nb.nb.inspection: patch tokens, RoPE, camera-token attention, harmonic embedding and
pose-head iteration errors (notebooks 01-02)."""
import math

import matplotlib

matplotlib.use("Agg")
import pytest
import torch

from flare_nb.model.config import official_geometry, tiny
from flare_nb.model.pose_encoding import encode_c2w
from flare_nb.nb.inspection import (camera_attention, harmonic_sensitivity, patch_embed_by_matmul, patchify,
                                 plot_attention, plot_patch_grid, plot_rope_angles, pose_iteration_errors,
                                 rope_angles, rope_relative_scores, token_grids)
from flare_nb.model.rope import rope_tables
from flare_nb.model.pose_encoding import move_camera


@pytest.fixture(scope="module")
def model(randomised_tiny_model):       # tests/conftest.py
    return randomised_tiny_model


def test_token_grids():
    g = token_grids(384, 512, official_geometry())
    assert g["tokens"] == (24, 32) and g["coarse"] == (6, 8) and g["n_tokens"] == 768 and g["n_coarse"] == 48
    assert g["coarse_px"] == 64
    t = token_grids(128, 128, tiny())
    assert t["tokens"] == (8, 8) and t["coarse"] == (4, 4)
    with pytest.raises(ValueError, match="multiples of 64"):
        token_grids(100, 128, official_geometry())


def test_patchify_layout_and_matmul_equals_conv(model):
    x = torch.arange(2 * 3 * 32 * 48, dtype=torch.float32).reshape(2, 3, 32, 48)
    p = patchify(x, 16)
    assert p.shape == (2, 6, 3 * 256)
    assert torch.equal(p[1, 4].reshape(3, 16, 16), x[1, :, 16:32, 16:32])    # token 4 = row 1, col 1
    imgs = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(patch_embed_by_matmul(model, imgs), model.encoder.patch_embed(imgs), atol=1e-5)
    with pytest.raises(ValueError, match="multiple"):
        patchify(x[..., :40], 16)


def test_rope_angles_match_the_model_tables():
    ang = rope_angles(5, 7, head_dim=32, base=100.0)
    assert ang.shape == (5, 7, 16)
    cos, sin = rope_tables(16, 8, 100.0, "cpu", torch.float32)               # half-dim 16: 8 frequencies
    assert torch.allclose(torch.cos(ang[3, 0, :8]), cos[3, :8], atol=1e-6)   # y-pairs at row 3
    assert torch.allclose(torch.sin(ang[0, 6, 8:]), sin[6, :8], atol=1e-6)   # x-pairs at column 6
    assert torch.allclose(ang[2, 5, 0], torch.tensor(2.0)) and torch.allclose(ang[2, 5, 8], torch.tensor(5.0))
    with pytest.raises(ValueError, match="multiple of 4"):
        rope_angles(2, 2, 30)


def test_rope_scores_depend_on_offset_only():
    offsets = [(0, 0), (0, 1), (2, -1), (3, 3)]
    anchors = [(1, 1), (4, 2), (7, 9)]
    s = rope_relative_scores(32, 100.0, offsets, anchors)
    assert s.shape == (3, 4)
    assert (s - s[:1]).abs().max() < 1e-5 * s.abs().max()      # constant down each column (float32 angle tables)
    assert (s[0, 1:] - s[0, 0]).abs().min() > 1e-6                            # but it does depend on the offset
    with pytest.raises(ValueError, match="negative"):
        rope_relative_scores(32, 100.0, [(0, -2)], [(0, 1)])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_camera_attention_is_a_distribution(model, stage):
    imgs = torch.rand(3, 3, 128, 64)                                          # portrait
    a = camera_attention(model, imgs, stage=stage, layer=-1)
    h, w = (128 // 16, 64 // 16) if stage > 1 else (128 // 32, 64 // 32)
    assert a["weights"].shape == (3, model.cfg.dec_heads, h, w) and a["grid"] == (h, w)
    total = a["weights"].sum((-1, -2)) + a["self"]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    assert (a["weights"] >= 0).all()


def test_camera_attention_matches_manual_softmax(model):
    imgs = torch.rand(2, 3, 64, 64)
    seen = {}
    blk = model.camera_centric.cam_cond_encoder_fine[0]
    h = blk.attn.register_forward_pre_hook(lambda m, args: seen.update(y=args[0]))
    a = camera_attention(model, imgs, stage=2, layer=0)
    h.remove()
    y = seen["y"]                                                             # (V, 1 + N, C)
    C, nh = y.shape[-1], blk.attn.num_heads
    Wq, Wk, _ = blk.attn.in_proj_weight.chunk(3)
    bq, bk, _ = blk.attn.in_proj_bias.chunk(3)
    q = (y[:, :1] @ Wq.T + bq).reshape(2, 1, nh, C // nh).transpose(1, 2)
    k = (y @ Wk.T + bk).reshape(2, -1, nh, C // nh).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // nh), -1)[:, :, 0]
    assert torch.allclose(a["weights"].flatten(2), w[..., 1:], atol=1e-5)
    assert torch.allclose(a["self"], w[..., 0], atol=1e-5)
    with pytest.raises(ValueError, match="stage"):
        camera_attention(model, imgs, stage=4)
    with pytest.raises(ValueError, match="layer"):
        camera_attention(model, imgs, stage=1, layer=99)


def test_harmonic_sensitivity():
    s = harmonic_sensitivity(0.3, 1e-7, 42)
    assert s["freqs"][0] == 1 and s["freqs"][-1] == 2.0 ** 41 and s["dsin"].shape == (42,)
    assert 0 < s["dx"] < 1e-6                                                 # what float32 keeps of 1e-7
    assert s["dsin"][:10].max() < 1e-3                                        # low frequencies barely move
    assert s["dsin"][30:].mean() > 0.2                                        # the top ones are scrambled
    z = harmonic_sensitivity(0.3, 0.0, 8)
    assert z["dx"] == 0 and z["dsin"].max() == 0 and z["dcos"].max() == 0


def test_pose_iteration_errors():
    c2w = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    c2w[1:, :3, 3] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0.5]])
    gt = encode_c2w(c2w)
    bad = encode_c2w(move_camera(c2w, 1, rot_deg=(0, 10, 0)))
    enc = torch.stack([0.5 * gt, bad, gt])
    e = pose_iteration_errors(enc, c2w)
    assert e["rot_deg"][2] < 1e-6 and e["trans_l1"][2] < 1e-12 and e["quat_l1"][2] < 1e-12
    assert e["rot_deg"][1] == pytest.approx(10 / 2, abs=1e-6)                 # 10 deg on view 1, 0 on view 2
    assert torch.allclose(e["step"][0], gt.abs().mean() * 0.5)
    with pytest.raises(ValueError, match="iters"):
        pose_iteration_errors(gt, c2w)


def test_plots(model):
    imgs = torch.rand(2, 3, 64, 64)
    ax = plot_patch_grid(imgs[0], 16, 64)
    assert "4x4 tokens" in ax.get_title()
    fig = plot_rope_angles(rope_angles(4, 4, 8))
    assert len(fig.axes) == 4                                                 # pairs 0, 1 of each half (D/2 = 2)
    a = camera_attention(model, imgs, stage=2)
    fig = plot_attention(imgs, a["weights"].mean(1))
    assert len(fig.axes) == 3                                                 # 2 views + colour bar
    with pytest.raises(ValueError, match="weights"):
        plot_attention(imgs, a["weights"])
