"""FlareModel with the tiny config: shapes, gradients, input checks, architecture properties,
and the building blocks (RoPE, harmonic embedding, quaternions). Notebooks 01-04."""
import math
import time

import pytest
import torch

from flare_nb.model.blocks import CameraBlock
from flare_nb.model.camera_centric import camera_embed_input
from flare_nb.model.config import FlareConfig, official_geometry, official_nvs, tiny
from flare_nb.model.flare import FlareModel, FlareOutput
from flare_nb.model.pose_predictor import harmonic_embedding
from flare_nb.model.reference import manifest_shapes
from flare_nb.model.rope import apply_rope2d, grid_positions


def _images(B, V, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, V, 3, H, W, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def model(randomised_tiny_model):       # tests/conftest.py
    return randomised_tiny_model


# ----------------------------------------------------------------------------- forward
def test_forward_shapes_and_timing(model):
    cfg = model.cfg
    x = _images(1, 4, 128, 128)
    with torch.no_grad():
        model(x)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = model(x)
            times.append(time.perf_counter() - t0)
    dt = min(times)
    print(f"\ntiny FlareModel, 4 views 128x128, CPU forward: best of 3 {dt * 1000:.0f} ms "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)")
    assert isinstance(out, FlareOutput)
    it = cfg.pose_iters
    assert out.pose_enc_stage1.shape == out.pose_enc_stage2.shape == (it, 1, 4, 9)
    assert out.pts3d_cam.shape == out.pts3d_global.shape == (1, 4, 128, 128, 3)
    assert out.conf_cam.shape == out.conf_global.shape == (1, 4, 128, 128)
    assert (out.conf_cam > 1).all() and (out.conf_global > 1).all()
    n = (128 // 16) ** 2
    inter = out.intermediates
    assert inter["enc_norm_out"].shape == (1, 4, n, cfg.enc_dim)
    assert inter["stage2_tokens_last"].shape == inter["stage3_tokens_last"].shape == (1, 4, n, cfg.dec_dim)
    assert inter["stage1_R"].shape == (it, 1, 4, 3, 3)
    assert inter["stage2_camera_embed_in"].shape == (1, 4, 7)
    for v in list(vars(out).values()) + list(inter.values()):
        if torch.is_tensor(v):
            assert torch.isfinite(v).all()
    assert dt < 5.0  # well under 1 s on an idle 2-core machine; generous for shared CI runners


@pytest.mark.parametrize("B,V,H,W", [(1, 2, 128, 192), (2, 5, 128, 192), (1, 3, 192, 128)])
def test_other_view_counts_and_sizes(model, B, V, H, W):
    with torch.no_grad():
        out = model(_images(B, V, H, W, seed=V), local_features=True)
    assert out.pose_enc_stage2.shape == (model.cfg.pose_iters, B, V, 9)
    assert out.pts3d_global.shape == (B, V, H, W, 3)
    assert out.local_features["global"].shape == (B, V, H, W, model.cfg.desc_dim + 1)
    assert torch.isfinite(out.pts3d_cam).all()


def test_batch_items_are_independent(model):
    x = _images(2, 3, 128, 128, seed=5)
    with torch.no_grad():
        both = model(x)
        one = model(x[1:])
    torch.testing.assert_close(both.pose_enc_stage2[:, 1:], one.pose_enc_stage2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both.conf_global[1:], one.conf_global, atol=1e-4, rtol=1e-4)


def test_source_views_are_permutation_equivariant(model):
    """All views but view 0 share tokens and positions, so swapping two of them swaps the outputs."""
    x = _images(1, 4, 128, 128, seed=7)
    perm = [0, 2, 3, 1]
    with torch.no_grad():
        a = model(x)
        b = model(x[:, perm])
    torch.testing.assert_close(b.pose_enc_stage2, a.pose_enc_stage2[:, :, perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.conf_global, a.conf_global[:, perm], atol=1e-4, rtol=1e-4)
    # ...but view 0 is special (its own decoder branch and camera tokens)
    c = model(x[:, [1, 0, 2, 3]])
    assert not torch.allclose(c.pose_enc_stage1[:, :, [1, 0, 2, 3]], a.pose_enc_stage1, atol=1e-3)


def test_gradients_reach_every_used_parameter():
    torch.manual_seed(1)
    m = FlareModel(tiny())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = m(_images(1, 3, 64, 96, seed=2), local_features=True)
    loss = (out.pose_enc_stage1.square().mean() + out.pose_enc_stage2.square().mean()
            + out.pts3d_cam.tanh().mean() + out.pts3d_global.tanh().mean()
            + out.conf_cam.log().mean() + out.conf_global.log().mean()
            + out.local_features["cam"].mean() + out.local_features["global"].mean())
    loss.backward()
    inert = set(m.inert_parameter_names())
    assert inert and all("resConfUnit1" in n or n.startswith("pose_predictor.cam_cond_embed.") for n in inert)
    dead = [n for n, p in m.named_parameters() if n not in inert and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert dead == []
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in m.named_parameters() if n in inert)


# ----------------------------------------------------------------------------- teacher forcing
def test_teacher_forcing_with_own_encodings_changes_nothing(model):
    x = _images(1, 3, 128, 128, seed=3)
    with torch.no_grad():
        free = model(x)
        teacher = {s: [None] + [e for e in enc[:-1]] for s, enc in
                   (("stage1", free.pose_enc_stage1), ("stage2", free.pose_enc_stage2))}
        forced = model(x, pose_teacher=teacher)
        other = model(x, pose_teacher={"stage1": [None, free.pose_enc_stage1[0] + 0.5]})
    torch.testing.assert_close(forced.pose_enc_stage2, free.pose_enc_stage2, rtol=0, atol=0)
    torch.testing.assert_close(forced.pts3d_global, free.pts3d_global, rtol=0, atol=0)
    assert not torch.allclose(other.pose_enc_stage1[1], free.pose_enc_stage1[1])
    assert not torch.allclose(other.pts3d_cam, free.pts3d_cam)  # stage 2 is conditioned on it


def test_teacher_forcing_errors(model):
    x = _images(1, 3, 128, 128)
    with pytest.raises(ValueError, match="expected \\(1, 3, 9\\)"):
        model(x, pose_teacher={"stage1": [None, torch.zeros(1, 2, 9)]})
    with pytest.raises(ValueError, match="runs 2 iterations"):
        model(x, pose_teacher={"stage2": [None, None, None]})
    with pytest.raises(ValueError, match="'stage1' / 'stage2'"):
        model(x, pose_teacher={"stage3": []})


# ----------------------------------------------------------------------------- input checks
def test_input_errors(model):
    x = _images(1, 3, 128, 128)
    with pytest.raises(ValueError, match="at least 2 views"):
        model(x[:, :1])
    with pytest.raises(ValueError, match="multiple of 32"):
        model(_images(1, 2, 128, 120))
    with pytest.raises(ValueError, match="same size"):
        model([x[0, 0], _images(1, 1, 128, 192)[0, 0]])
    with pytest.raises(ValueError, match=r"look like \[0, 1\]"):
        model((x + 1) / 2)
    with pytest.raises(ValueError, match=r"normalised to \[-1, 1\]"):
        model(x * 255)
    with pytest.raises(ValueError, match=r"\(B, V, 3, H, W\)"):
        model(x[0])
    with torch.no_grad():  # a list of views is accepted
        out = model([x[0, 0], x[0, 1]])
    assert out.pts3d_cam.shape == (1, 2, 128, 128, 3)


def test_official_config_needs_multiples_of_64():
    assert official_geometry().multiple == 64 and tiny().multiple == 32
    with torch.device("meta"):
        m = FlareModel(official_geometry())
    with pytest.raises(ValueError, match="multiple of 64"):
        m.check_images(torch.zeros(1, 2, 3, 384, 480) - 0.5)


def test_config_validation():
    with pytest.raises(ValueError, match="kind"):
        FlareConfig(kind="video")
    with pytest.raises(ValueError, match="heads"):
        FlareConfig(dec_dim=100, dec_heads=12)
    with pytest.raises(ValueError, match="inject_layers"):
        tiny().replace(inject_layers=(0, 1, 9))
    with pytest.raises(ValueError, match="dpt_hooks"):
        tiny().replace(dpt_hooks=(0, 1, 2, 3))
    with pytest.raises(ValueError, match="sh_degree"):
        official_nvs().replace(sh_degree=5)
    with pytest.raises(ValueError, match="cnn_widths"):
        official_nvs().replace(cnn_widths=(8, 16))
    assert official_nvs().kind == "nvs" and official_nvs().inject_enc_states == (0, 1, 2)
    assert official_geometry().pose_embed_width == 765
    assert FlareConfig().to_dict()["enc_depth"] == 24


# ----------------------------------------------------------------------------- names
def test_state_dict_is_the_released_one_minus_unused_modules():
    ref = manifest_shapes("geometry")
    with torch.device("meta"):
        m = FlareModel(official_geometry())
    ours = {k: tuple(v.shape) for k, v in m.released_state_dict().items()}
    omitted = FlareModel.omitted_keys(ref)
    assert len(omitted) == 101
    assert ours == {k: v for k, v in ref.items() if k not in omitted}
    # every omitted key belongs to a module the release never uses at inference
    from flare_nb.model.reference import load_manifest
    assert set(omitted) <= set(load_manifest("geometry")["unused_at_inference"])


def test_released_names_drop_the_stage():
    """Our names nest by stage; the released name is the name without the stage (the Gaussian
    head: ``downstream_head4``), one to one, and every stage's modules are under their stage."""
    m = FlareModel(tiny())
    names = m.released_names()
    assert names["encoder.enc_blocks.0.attn.qkv.weight"] == "enc_blocks.0.attn.qkv.weight"
    assert names["pose_predictor.pose_head.pose_proj.weight"] == "pose_head.pose_proj.weight"
    assert names["camera_centric.downstream_head1.dpt.scratch.layer1_rn.weight"] == \
        "downstream_head1.dpt.scratch.layer1_rn.weight"
    assert names["embed_pose.fc1.weight"] == "embed_pose.fc1.weight"
    assert len(set(names.values())) == len(names) == len(m.state_dict())
    stages = {n.split(".")[0] for n in names}
    assert stages == {"encoder", "pose_predictor", "embed_pose", "camera_centric", "global_projector"}
    # a released state dict loads back through the same map
    fresh = FlareModel(tiny())
    assert fresh.load_released_state_dict(m.released_state_dict()) == ([], [])
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), fresh.state_dict().values()))
    with pytest.raises(RuntimeError, match="missing"):
        fresh.load_released_state_dict({k: v for k, v in m.released_state_dict().items() if k != "enc_norm.bias"})


# ----------------------------------------------------------------------------- building blocks
def test_harmonic_embedding_layout():
    x = torch.tensor([[0.3, -1.25]])
    e = harmonic_embedding(x, 3)
    assert e.shape == (1, 2 * 7) and e.dtype == torch.float32
    f = [1.0, 2.0, 4.0]
    for d in range(2):
        for j in range(3):
            assert e[0, d * 3 + j] == torch.sin(x[0, d] * f[j])
            torch.testing.assert_close(e[0, 6 + d * 3 + j], torch.cos(x[0, d] * f[j]))
    assert torch.equal(e[0, 12:], x[0])
    # the cos block is sin(x f + float32(pi/2)), as in the released code
    assert e[0, 6] == torch.sin(x[0, 0] + torch.tensor(math.pi / 2, dtype=torch.float32))


def test_rope_rotates_by_position():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 6, 16, generator=g)
    k = torch.randn(1, 2, 6, 16, generator=g)
    pos = grid_positions(2, 3)
    assert pos.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    rq = apply_rope2d(q, pos)
    torch.testing.assert_close(rq[..., 0, :], q[..., 0, :])  # position (0, 0): identity
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    # attention scores depend on the position difference only
    shifted = pos + torch.tensor([3, 5])
    s1 = apply_rope2d(q, pos) @ apply_rope2d(k, pos).transpose(-1, -2)
    s2 = apply_rope2d(q, shifted) @ apply_rope2d(k, shifted).transpose(-1, -2)
    torch.testing.assert_close(s1, s2, atol=1e-4, rtol=1e-4)
    # rotate-half in each half: channel 0 pairs with channel 4 (head_dim 16 -> halves of 8); the
    # first half turns with y, the second with x. Token (0, 1): only the x half moves, angle 1.
    c, s = math.cos(1.0), math.sin(1.0)
    torch.testing.assert_close(rq[..., 1, :8], q[..., 1, :8])
    torch.testing.assert_close(rq[..., 1, 8], q[..., 1, 8] * c - q[..., 1, 12] * s)
    with pytest.raises(ValueError, match="multiple of 4"):
        apply_rope2d(torch.zeros(1, 1, 6, 6), pos)


def test_camera_block_residual_starts_from_normalised_input():
    torch.manual_seed(0)
    blk = CameraBlock(8, 2, 2.0)
    with torch.no_grad():
        for p in blk.parameters():
            p.zero_()
    x = torch.randn(2, 5, 8) * 3 + 1
    torch.testing.assert_close(blk(x), torch.nn.functional.layer_norm(x, (8,), eps=1e-6))


def test_camera_embed_input_normalises_translation():
    enc = torch.zeros(1, 3, 9)
    enc[0, :, 3] = 1.0
    enc[0, 1, :3] = torch.tensor([3.0, 0, 4])  # |T| = 5, 0, 1 -> mean 2
    enc[0, 2, :3] = torch.tensor([0.0, 1, 0])
    e = camera_embed_input(enc)
    torch.testing.assert_close(e[0, :, :4], enc[0, :, 3:7])
    torch.testing.assert_close(e[0, 1, 4:], torch.tensor([1.5, 0, 2.0]))
