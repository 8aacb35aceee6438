"""Tests of flare_nb.model.dpt: the FLARE DPT + local-feature head (notebook 03)."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flare_nb.model.dpt import DPTHead, conf_exp, depth_exp, unused_keys

MANIFEST = Path(__file__).resolve().parents[1] / "data" / "flare_reference" / "manifest_geometry_pose.json"
TINY = dict(enc_dim=192, dec_dim=128, patch_size=8, layer_dims=(24, 48, 96, 192), feature_dim=64, last_dim=32)


def _tokens(bv, hw, patch, enc, dec, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = (hw[0] // patch) * (hw[1] // patch)
    return [torch.randn(bv, n, enc, generator=g)] + [torch.randn(bv, n, dec, generator=g) for _ in range(3)]


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return DPTHead(**{**TINY, **kw})


def _manifest_head(prefix):
    m = json.loads(MANIFEST.read_text())
    ref = {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix) and isinstance(v, list)}
    return m, ref


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("prefix", ["downstream_head1.", "downstream_head2."])
def test_state_dict_names_and_shapes_match_released_checkpoint(prefix):
    _, ref = _manifest_head(prefix)
    assert len(ref) == 72  # 68 tensors + 4 alias names
    with torch.device("meta"):
        head = DPTHead(enc_dim=1024, dec_dim=768, patch_size=16)
    sd = head.state_dict()
    assert list(sd) == list(ref)  # same names, same order
    assert {k: list(v.shape) for k, v in sd.items()} == ref


def test_alias_pairs_are_one_tensor_under_two_names():
    m, _ = _manifest_head("downstream_head1.")
    pairs = [(a[len("downstream_head1."):], b[len("downstream_head1."):])
             for a, b in m["aliases"] if a.startswith("downstream_head1.")]
    assert len(pairs) == 4
    head = _tiny()
    sd = head.state_dict()
    for a, b in pairs:
        assert a in sd and b in sd
        assert sd[a].data_ptr() == sd[b].data_ptr()
    # named_parameters counts each tensor once; the state dict has both names
    assert len(dict(head.named_parameters())) == len(sd) - 4
    # loading a checkpoint writes the shared tensor
    new = {k: torch.full_like(v, 0.5) if k == pairs[0][0] else v for k, v in sd.items()}
    new[pairs[0][1]] = new[pairs[0][0]]
    head.load_state_dict(new, strict=True)
    assert torch.all(head.dpt.scratch.layer_rn[0].weight == 0.5)


def test_unused_keys_match_manifest():
    m, _ = _manifest_head("downstream_head1.")
    want = sorted(k[len("downstream_head1."):] for k in m["unused_at_inference"] if k.startswith("downstream_head1."))
    assert sorted(unused_keys()) == want
    assert set(unused_keys()) <= set(_tiny().state_dict())


# ----------------------------------------------------------------------------- shapes
def test_official_dims_output_shapes_192x256():
    torch.manual_seed(0)
    head = DPTHead().eval()
    toks = _tokens(2, (192, 256), 16, 1024, 768)
    with torch.no_grad():
        out = head(toks, (192, 256))
    assert out["pts3d"].shape == (2, 192, 256, 3)
    assert out["conf"].shape == (2, 192, 256)
    assert out["desc"].shape == (2, 192, 256, 24)
    assert out["desc_conf"].shape == (2, 192, 256)
    assert out["local_features"].shape == (2, 192, 256, 25)
    for k, v in out.items():
        assert torch.isfinite(v).all(), k


@pytest.mark.parametrize("hw", [(32, 48), (40, 56)])  # (40, 56): odd 5x7 token grid -> refinenet4 crop
def test_tiny_dims_output_shapes(hw):
    head = _tiny().eval()
    with torch.no_grad():
        out = head(_tokens(3, hw, 8, 192, 128), hw)
        geo = head(_tokens(3, hw, 8, 192, 128), hw, local_features=False)
    assert out["pts3d"].shape == (3, *hw, 3) and out["conf"].shape == (3, *hw)
    assert out["desc"].shape == (3, *hw, 24) and out["desc_conf"].shape == (3, *hw)
    assert set(geo) == {"pts3d", "conf"}
    assert torch.equal(geo["pts3d"], out["pts3d"])
    assert all(torch.isfinite(v).all() for v in out.values())


# ----------------------------------------------------------------------------- activations
def test_depth_exp_zero_direction_and_norm():
    assert torch.equal(depth_exp(torch.zeros(2, 3)), torch.zeros(2, 3))
    x = torch.tensor([[0.3, -0.4, 1.2], [-2.0, 0.5, 0.1]])
    y = depth_exp(x)
    d = x.norm(dim=-1)
    torch.testing.assert_close(y.norm(dim=-1), torch.expm1(d))
    torch.testing.assert_close(F.normalize(y, dim=-1), F.normalize(x, dim=-1))
    with pytest.raises(ValueError, match="last dimension of 3"):
        depth_exp(torch.zeros(4, 2))


def test_conf_exp_bounds():
    x = torch.linspace(-30, 5, 50)
    assert torch.all(conf_exp(x) >= 1.0)
    torch.testing.assert_close(conf_exp(torch.tensor([0.0])), torch.tensor([2.0]))
    torch.testing.assert_close(conf_exp(x, 0.0), x.exp())


def test_constant_raw_output_goes_through_activations():
    """With the last DPT conv reduced to its bias b, every pixel is depth_exp(b[:3]), 1 + exp(b[3])."""
    head = _tiny().eval()
    b = torch.tensor([0.2, -0.1, 0.7, -0.5])
    with torch.no_grad():
        head.dpt.head[4].weight.zero_()
        head.dpt.head[4].bias.copy_(b)
        out = head(_tokens(1, (16, 24), 8, 192, 128), (16, 24))
    torch.testing.assert_close(out["pts3d"], depth_exp(b[:3]).expand(1, 16, 24, 3))
    torch.testing.assert_close(out["conf"], torch.full((1, 16, 24), 1 + math.exp(-0.5)))


# ----------------------------------------------------------------------------- known layouts
def test_pixel_shuffle_channel_and_subpixel_order():
    """fc2 reduced to a bias equal to the output index k: channel c at sub-pixel (i, j) of a
    patch reads k = c p^2 + i p + j."""
    p = 8
    head = _tiny().eval()
    with torch.no_grad():
        head.head_local_features.fc2.weight.zero_()
        head.head_local_features.fc2.bias.copy_(torch.arange(25 * p * p, dtype=torch.float32))
        lf = head(_tokens(1, (16, 24), p, 192, 128), (16, 24))["local_features"][0]  # (H, W, 25)
    y, x, c = torch.meshgrid(torch.arange(16), torch.arange(24), torch.arange(25), indexing="ij")
    assert torch.equal(lf, (c * p * p + (y % p) * p + (x % p)).float())


def test_tokens_are_row_major_in_local_features():
    """Local feature of pixel (y, x) comes from token (y // p) * w + x // p."""
    p, H, W = 8, 16, 40  # 2 x 5 tokens
    head = _tiny().eval()
    n = (H // p) * (W // p)
    toks = [torch.zeros(1, n, 192)] + [torch.zeros(1, n, 128) for _ in range(3)]
    toks[0][0, :, 0] = 10.0 + torch.arange(n)  # large, so gelu(v) == v in float32
    with torch.no_grad():
        mlp = head.head_local_features
        mlp.fc1.weight.zero_(); mlp.fc1.bias.zero_(); mlp.fc1.weight[0, 0] = 1.0
        mlp.fc2.weight.zero_(); mlp.fc2.bias.zero_(); mlp.fc2.weight[:, 0] = 1.0
        lf = head(toks, (H, W))["local_features"][0, ..., 0]
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    assert torch.equal(lf, 10.0 + (yy // p) * (W // p) + xx // p)


def test_mlp_input_is_encoder_then_last_decoder_layer():
    head = _tiny().eval()
    toks = _tokens(1, (16, 16), 8, 192, 128)
    with torch.no_grad():
        ref = head(toks, (16, 16))["local_features"]
        changed_mid = head([toks[0], toks[1] * 2, toks[2] * 2, toks[3]], (16, 16))["local_features"]
        changed_last = head([toks[0], toks[1], toks[2], toks[3] * 2], (16, 16))["local_features"]
        by_hand = head.head_local_features(torch.cat([toks[0], toks[3]], -1))
    assert torch.equal(ref, changed_mid)
    assert not torch.allclose(ref, changed_last)
    # token 0, sub-pixel (0, 0), channel c is output index c * p^2
    torch.testing.assert_close(ref[0, 0, 0], by_hand[0, 0, ::64])


def test_dpt_token_locality():
    """Changing one layer-9 token moves the pointmap around that token's pixel block: the
    centroid of the change lies within half a token of the block centre (row-major tokens)."""
    p, H, W = 8, 48, 64  # 6 x 8 tokens
    head = _tiny().eval()
    toks = _tokens(1, (H, W), p, 192, 128, seed=3)
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    with torch.no_grad():
        base = head.pointmap_channels(toks, (H, W))
        for r, c in [(1, 6), (4, 2), (2, 3)]:
            t2 = toks[2].clone()
            t2[0, r * (W // p) + c] += 5.0
            diff = (head.pointmap_channels([toks[0], toks[1], t2, toks[3]], (H, W)) - base).abs().sum(1)[0]
            w = diff / diff.sum()
            cy, cx = float((w * yy).sum()) / p, float((w * xx).sum()) / p
            assert abs(cy - (r + 0.5)) < 0.5 and abs(cx - (c + 0.5)) < 0.5, (r, c, cy, cx)


def test_fusion_wiring_skips_are_the_reassembled_taps():
    """refinenet k (k = 1..3) passes reassembled tap k through resConfUnit1 and the coarser
    path through resConfUnit2 only; refinenet4 takes tap 4 alone."""
    head = _tiny().eval()
    hw, p = (32, 48), 8
    toks = _tokens(1, hw, p, 192, 128)
    seen = {}
    hooks = [getattr(head.dpt.scratch, f"refinenet{k}").resConfUnit1.register_forward_hook(
        lambda m, i, o, k=k: seen.setdefault(k, i[0])) for k in range(1, 5)]
    hooks.append(head.dpt.scratch.refinenet4.resConfUnit2.register_forward_hook(
        lambda m, i, o: seen.setdefault("4b", i[0])))
    with torch.no_grad():
        head(toks, hw)
        h, w = hw[0] // p, hw[1] // p
        maps = [t.transpose(1, 2).reshape(1, -1, h, w) for t in toks]
        taps = [head.dpt.scratch.layer_rn[i](head.dpt.act_postprocess[i](m)) for i, m in enumerate(maps)]
    for hk in hooks:
        hk.remove()
    assert 4 not in seen  # unused
    for k in (1, 2, 3):
        torch.testing.assert_close(seen[k], taps[k - 1])
    torch.testing.assert_close(seen["4b"], taps[3])
    # grids 4x, 2x, 1x, 0.5x of the token grid
    assert [t.shape[-2:] for t in taps] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_fusion_upsampling_is_bilinear_align_corners():
    """With identity convs, a fusion block upsamples a 2-pixel ramp [0, 3] to [0, 1, 2, 3]."""
    from flare_nb.model.dpt import FusionBlock
    blk = FusionBlock(2)
    with torch.no_grad():
        blk.resConfUnit2.conv2.weight.zero_()
        blk.resConfUnit2.conv2.bias.zero_()
        blk.out_conv.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
        blk.out_conv.bias.zero_()
        x = torch.tensor([0.0, 3.0]).expand(1, 2, 2, 2).contiguous()
        y = blk(x)
    assert y.shape == (1, 2, 4, 4)
    torch.testing.assert_close(y[0, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]).expand(4, 4))


def test_local_feature_mlp_uses_exact_gelu():
    head = _tiny()
    mlp = head.head_local_features
    x = torch.randn(5, 320)
    hdn = mlp.fc1(x)
    want = mlp.fc2(0.5 * hdn * (1 + torch.erf(hdn / math.sqrt(2))))
    torch.testing.assert_close(mlp(x), want)


def test_patch16_resize_is_the_released_x2_upsampling():
    """For patch 16 the final resize to (H, W) equals a bilinear x2 (align_corners) step."""
    x = torch.randn(2, 5, 12, 16)
    a = F.interpolate(x, size=(24, 32), mode="bilinear", align_corners=True)
    b = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    assert torch.equal(a, b)


def test_desc_modes():
    toks = _tokens(1, (16, 16), 8, 192, 128)
    raw = _tiny(desc_mode="raw").eval()
    nrm = _tiny(desc_mode="norm").eval()
    with torch.no_grad():
        o_raw, o_nrm = raw(toks, (16, 16)), nrm(toks, (16, 16))
    assert torch.equal(o_raw["desc"], o_raw["local_features"][..., :24])
    torch.testing.assert_close(o_raw["desc_conf"], o_raw["local_features"][..., 24].exp())
    torch.testing.assert_close(o_nrm["desc"].norm(dim=-1), torch.ones(1, 16, 16))


# ----------------------------------------------------------------------------- gradients
def test_gradients_reach_every_used_parameter():
    head = _tiny()
    out = head(_tokens(2, (24, 32), 8, 192, 128), (24, 32))
    loss = sum(v.float().mean() for v in out.values())
    loss.backward()
    unused = set(unused_keys())
    for name, prm in head.named_parameters():
        if name in unused:
            assert prm.grad is None, name
        else:
            assert prm.grad is not None and prm.grad.abs().sum() > 0, name
    # the aliased conv appears once in named_parameters, under the layer{k}_rn name
    assert "dpt.scratch.layer1_rn.weight" in dict(head.named_parameters())


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    head = _tiny()
    toks = _tokens(1, (16, 24), 8, 192, 128)
    with pytest.raises(ValueError, match="list of 4"):
        head(toks[:3], (16, 24))
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        head(toks, (20, 24))
    with pytest.raises(ValueError, match=r"tokens\[0\].*expected \(1, 6, 192\)"):
        head([toks[1]] + toks[1:], (16, 24))
    with pytest.raises(ValueError, match=r"tokens\[2\].*expected \(1, 6, 128\)"):
        head([toks[0], toks[1], toks[2][..., :64], toks[3]], (16, 24))
    with pytest.raises(ValueError, match=r"tokens\[0\].*expected \(1, 4, 192\).*2x2 tokens"):
        head(toks, (16, 16))
    with pytest.raises(ValueError, match=r"image_hw must be \(H, W\)"):
        head(toks, 16)
    with pytest.raises(ValueError, match="desc_mode"):
        DPTHead(**TINY, desc_mode="l2")
    with pytest.raises(ValueError, match="layer_dims"):
        DPTHead(**{**TINY, "layer_dims": (24, 48, 96)})
    with pytest.raises(ValueError, match="out_channels"):
        DPTHead(**TINY, out_channels=3)
    with pytest.raises(ValueError, match="patch_size"):
        DPTHead(**{**TINY, "patch_size": 0})
