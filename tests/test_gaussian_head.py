"""Tests of the NVS extras: flare_nb.model.shallow_cnn and flare_nb.model.gaussian_head.

Parity checks run our modules, filled with the fixture's deterministic weight recipe, on the
inputs stored in data/flare_reference/parity_nvs.npz and compare with the official outputs
(tolerance 1e-4 of each array's std, as the fixture README recommends):

* shallow CNN: ``images`` -> ``cnn_detail_s5`` (the fixture keeps every 5th row/column);
* stage-2 image encoder input: ``add_rope_ones(fusion)`` -> a minimal re-statement of
  ``patch_embed_fine`` + 4 ``enc_blocks_stage2`` + ``enc_norm_stage2`` -> ``enc_stage2_norm_out``
  (checks the RoPE-of-ones term and its x-first order; a y-first control must fail);
* Gaussian head at full resolution: the fixture stores ``desc`` only subsampled, but head 2's
  local features are an MLP + pixel shuffle of ``[enc_norm_out, stage3_tokens_last]``, both
  stored at full token resolution, so the test rebuilds the full-resolution ``desc`` (checked
  against ``desc_s5``) and compares every ``gs_*_raw`` array.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flare_nb.model.gaussian_head import GaussianHead, activate_gaussians
from flare_nb.model.reference import fill_value
from flare_nb.model.shallow_cnn import (ShallowCNN, ShallowFeatureNet, add_rope_ones, build_shallow_cnn,
                                  rope_ones_term, run_shallow_cnn)

REF = Path(__file__).resolve().parents[1] / "data" / "flare_reference"
TOL = 1e-4  # max |ours - official| / std(official)


def deterministic_fill(module: nn.Module, prefix: str = "") -> None:
    """The fixture recipe (flare_nb.model.reference.fill_value) for a part of the model: every
    parameter is seeded by its full released name ``prefix + name`` (no aliases here)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(fill_value(prefix + name, p.shape))


def rel_err(ours: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(ours.detach().numpy() - ref).max() / ref.std())


@pytest.fixture(scope="module")
def nvs():
    path = REF / "parity_nvs.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: the NVS parity fixture ships with the repository (data/README.md)")
    with np.load(path) as z:
        keys = ["images", "cnn_detail_s5", "enc_norm_out", "stage3_tokens_last", "desc_s5",
                "enc_stage2_norm_out", "gs_opacity_raw", "gs_scaling_raw", "gs_rotation_raw",
                "gs_feature_dc_raw", "gs_feature_rest_raw_s5"]
        return {k: z[k][0] for k in keys}  # drop B = 1


@pytest.fixture(scope="module")
def manifest():
    return json.loads((REF / "manifest_NVS.json").read_text())


@pytest.fixture(scope="module")
def cnn_out(nvs):
    cnn = ShallowCNN()
    deterministic_fill(cnn)
    with torch.no_grad():
        return cnn(torch.from_numpy(nvs["images"]))


# ----------------------------------------------------------------------------- state dict
def _subset(manifest, prefixes):
    return {k: v for k, v in manifest.items() if k.startswith(prefixes) and isinstance(v, list)}


def test_gaussian_head_keys_match_release(manifest):
    ours = {"downstream_head4." + k: list(v.shape) for k, v in GaussianHead().state_dict().items()}
    assert ours == _subset(manifest, ("downstream_head4.",))
    assert len(ours) == 24


def test_shallow_cnn_keys_match_release(manifest):
    ref = _subset(manifest, ("cnn_wobn.", "cnn_proj.", "cnn_fusion."))
    assert {k: list(v.shape) for k, v in ShallowCNN().state_dict().items()} == ref
    host = nn.Module()  # how the NVS model registers them: top-level attributes
    for name, module in build_shallow_cnn().items():
        setattr(host, name, module)
    assert {k: list(v.shape) for k, v in host.state_dict().items()} == ref


def test_geometry_checkpoint_head_is_degree_2():
    geo = json.loads((REF / "manifest_geometry_pose.json").read_text())
    assert list(GaussianHead(sh_degree=2).sh_high_fre.weight.shape) == geo["downstream_head4.sh_high_fre.weight"]


# ----------------------------------------------------------------------------- parity
def test_shallow_cnn_matches_official_detail(nvs, cnn_out):
    fusion, detail = cnn_out
    assert fusion.shape == (2, 64, 256, 256) and detail.shape == (2, 16, 256, 256)
    ours = detail.permute(0, 2, 3, 1)[:, ::5, ::5]
    assert rel_err(ours, nvs["cnn_detail_s5"]) <= TOL


def _rope_tokens(t: torch.Tensor, pos: torch.Tensor, base: float = 100.0) -> torch.Tensor:
    """Token RoPE (rotate-half): first half of each head by pos[:, 0] (row), second by pos[:, 1]."""
    d = t.shape[-1] // 2
    inv = 1.0 / (base ** (torch.arange(0, d, 2).float() / d))
    out = []
    for part, p in zip(t.chunk(2, dim=-1), (pos[:, 0], pos[:, 1])):
        ang = p.float()[:, None] * inv[None]
        ang = torch.cat((ang, ang), dim=-1)
        a, b = part.chunk(2, dim=-1)
        out.append(part * ang.cos() + torch.cat((-b, a), dim=-1) * ang.sin())
    return torch.cat(out, dim=-1)


class _RefBlock(nn.Module):
    """Minimal pre-LN ViT block with token RoPE (test-only re-statement of an encoder block)."""

    def __init__(self, dim: int = 1024, heads: int = 16):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = nn.Module(), nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x, pos):
        b, n, c = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(_rope_tokens(q, pos), _rope_tokens(k, pos), v)
        x = x + self.attn.proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


def test_rope_ones_term_matches_official_stage2_encoder(nvs, cnn_out):
    fusion, _ = cnn_out
    embed = nn.Conv2d(64, 1024, 16, 16)
    blocks = nn.ModuleList(_RefBlock() for _ in range(4))
    norm = nn.LayerNorm(1024, eps=1e-6)
    deterministic_fill(embed, "patch_embed_fine.proj.")
    deterministic_fill(blocks, "enc_blocks_stage2.")
    deterministic_fill(norm, "enc_norm_stage2.")
    ys, xs = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    pos = torch.stack((ys.flatten(), xs.flatten()), dim=-1)

    def encode(x):
        t = embed(x).flatten(2).transpose(1, 2)
        for blk in blocks:
            t = blk(t, pos)
        return norm(t)

    ref = nvs["enc_stage2_norm_out"]
    term = rope_ones_term(256, 256)
    y_first = fusion[:1] + torch.cat((term[32:], term[:32]))  # control: wrong axis order
    with torch.no_grad():  # view 0 right and wrong in one batch (views are encoded independently)
        out = encode(torch.cat((add_rope_ones(fusion[:1]), y_first)))
    assert rel_err(out[:1], ref[:1]) <= TOL
    assert rel_err(out[1:], ref[:1]) > 0.1


def test_gaussian_head_matches_official_full_resolution(nvs, cnn_out):
    _, detail = cnn_out
    mlp = nn.Module()  # head 2's local-feature MLP (1792 -> 7168 -> 25 * 16 * 16)
    mlp.fc1, mlp.fc2 = nn.Linear(1792, 7168), nn.Linear(7168, 6400)
    deterministic_fill(mlp, "downstream_head2.head_local_features.")
    head = GaussianHead()
    deterministic_fill(head, "downstream_head4.")
    tokens = torch.cat((torch.from_numpy(nvs["enc_norm_out"]), torch.from_numpy(nvs["stage3_tokens_last"])), -1)
    with torch.no_grad():
        local = mlp.fc2(F.gelu(mlp.fc1(tokens)))  # (V, 256, 6400)
        desc = F.pixel_shuffle(local.transpose(1, 2).reshape(2, 6400, 16, 16), 16)  # (V, 25, 256, 256)
        assert rel_err(desc.permute(0, 2, 3, 1)[:, ::5, ::5], nvs["desc_s5"]) <= TOL
        raw = head(desc, detail)
    for ours, theirs in (("opacity_raw", "gs_opacity_raw"), ("scaling_raw", "gs_scaling_raw"),
                         ("rotation_raw", "gs_rotation_raw"), ("feature_dc_raw", "gs_feature_dc_raw")):
        assert raw[ours].shape == nvs[theirs].shape
        assert rel_err(raw[ours], nvs[theirs]) <= TOL, ours
    assert rel_err(raw["feature_rest_raw"][:, ::5, ::5], nvs["gs_feature_rest_raw_s5"]) <= TOL


# ----------------------------------------------------------------------------- shapes, tiny config
def test_tiny_config_shapes_and_leading_dims():
    torch.manual_seed(0)
    cnn = ShallowCNN(widths=(4, 4, 8), fpn_dim=8, fusion_dim=16, detail_dim=16)
    head = GaussianHead(desc_dim=25, detail_dim=16, hidden=6, sh_degree=1)
    img = torch.rand(2, 3, 3, 32, 48) * 2 - 1  # (B, V, 3, H, W)
    fusion, detail = cnn(img)
    assert fusion.shape == (2, 3, 16, 32, 48) and detail.shape == (2, 3, 16, 32, 48)
    raw = head(torch.randn(6, 25, 32, 48), detail.flatten(0, 1))
    want = {"opacity_raw": 1, "scaling_raw": 3, "rotation_raw": 4, "feature_dc_raw": 3, "feature_rest_raw": 9}
    assert {k: tuple(v.shape) for k, v in raw.items()} == {k: (6, 32, 48, c) for k, c in want.items()}
    g = activate_gaussians(raw, torch.randn(6, 32, 48, 3))
    n = 6 * 32 * 48
    assert g["means"].shape == (n, 3) and g["quats"].shape == (n, 4) and g["scales"].shape == (n, 3)
    assert g["opacities"].shape == (n,) and g["colors"].shape == (n, 4, 3) and g["sh_degree"] == 1
    # the functional form equals the container's forward
    f2, d2 = run_shallow_cnn(cnn.cnn_wobn, cnn.cnn_fusion, cnn.cnn_proj, img[0])
    assert torch.equal(f2, fusion[0]) and torch.equal(d2, detail[0])


def test_feature_net_pyramid_resolutions():
    q, h, f = ShallowFeatureNet()(torch.zeros(1, 3, 64, 128))
    assert q.shape == (1, 32, 16, 32) and h.shape == (1, 32, 32, 64) and f.shape == (1, 32, 64, 128)


def test_degree_zero_head_has_rgb_colours():
    head = GaussianHead(hidden=4, sh_degree=0)
    assert head.sh_high_fre is None and not any(k.startswith("sh_high_fre") for k in head.state_dict())
    raw = head(torch.randn(1, 25, 8, 8), torch.randn(1, 16, 8, 8))
    assert raw["feature_rest_raw"].shape == (1, 8, 8, 0)
    g = activate_gaussians(raw, torch.zeros(1, 8, 8, 3))
    assert g["sh_degree"] is None
    torch.testing.assert_close(g["colors"], torch.sigmoid(raw["feature_dc_raw"].reshape(-1, 3)))


# ----------------------------------------------------------------------------- activations
def _raw(n: int, rest: int = 72, scale: float = 1.0, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda c: torch.randn(n, c, generator=g) * scale  # noqa: E731
    return {"opacity_raw": r(1), "scaling_raw": r(3), "rotation_raw": r(4),
            "feature_dc_raw": r(3), "feature_rest_raw": r(rest)}


def test_activation_ranges_and_known_values():
    raw = _raw(4000, scale=20.0)  # wide enough to hit both scale clamps
    g = activate_gaussians(raw, torch.zeros(4000, 3))
    s = g["scales"]
    assert s.min() >= 5e-4 and s.max() <= 0.3
    assert torch.isclose(s.min(), torch.tensor(5e-4)) and torch.isclose(s.max(), torch.tensor(0.3))
    torch.testing.assert_close(g["quats"].norm(dim=-1), torch.ones(4000))
    assert (g["quats"][:, 0] >= 0).all()
    assert (g["opacities"] >= 0).all() and (g["opacities"] <= 1).all()  # float32 sigmoid saturates
    mid = activate_gaussians(_raw(1000, scale=3.0), torch.zeros(1000, 3))["opacities"]
    assert (mid > 0).all() and (mid < 1).all()
    # scale = exp(x - 4) inside the clamps; opacity = sigmoid
    raw1 = {k: v[:1].clone() for k, v in raw.items()}
    raw1["scaling_raw"] = torch.tensor([[4.0 + math.log(0.01), 4.0 + math.log(0.2), 4.0]])
    raw1["opacity_raw"] = torch.tensor([[-2.0]])
    raw1["rotation_raw"] = torch.tensor([[-2.0, 0.0, 0.0, 0.0]])
    g1 = activate_gaussians(raw1, torch.zeros(1, 3))
    torch.testing.assert_close(g1["scales"], torch.tensor([[0.01, 0.2, 1.0]]).clamp(max=0.3))
    torch.testing.assert_close(g1["opacities"], torch.sigmoid(torch.tensor([-2.0])))
    torch.testing.assert_close(g1["quats"], torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_sh_layout_dc_first_then_coefficient_major():
    raw = {k: torch.zeros(2, c) for k, c in (("opacity_raw", 1), ("scaling_raw", 3), ("rotation_raw", 4),
                                             ("feature_dc_raw", 3), ("feature_rest_raw", 72))}
    raw["rotation_raw"][:, 0] = 1.0
    raw["feature_dc_raw"][1] = torch.tensor([0.1, 0.2, 0.3])
    raw["feature_rest_raw"][1, 3 * 6 + 2] = 5.0  # coefficient 7 (index 6 of the rest), blue
    g = activate_gaussians(raw, torch.zeros(2, 3))
    c = g["colors"]
    assert c.shape == (2, 25, 3) and g["sh_degree"] == 4
    torch.testing.assert_close(c[1, 0], torch.tensor([0.1, 0.2, 0.3]))  # raw DC, no +0.5, no sigmoid
    assert c[1, 7, 2] == 5.0 and c.abs().sum() == pytest.approx(0.6 + 5.0)


def test_flattening_order_is_view_row_column():
    raw = {k: torch.zeros(2, 3, 4, c) for k, c in (("opacity_raw", 1), ("scaling_raw", 3), ("rotation_raw", 4),
                                                   ("feature_dc_raw", 3), ("feature_rest_raw", 9))}
    raw["rotation_raw"][..., 0] = 1.0
    means = torch.arange(2 * 3 * 4 * 3, dtype=torch.float32).reshape(2, 3, 4, 3)
    g = activate_gaussians(raw, means)
    torch.testing.assert_close(g["means"][1 * 12 + 2 * 4 + 3], means[1, 2, 3])


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    cnn = ShallowCNN(widths=(4, 4, 8), fpn_dim=8, fusion_dim=16, detail_dim=16)
    head = GaussianHead(hidden=6, sh_degree=2)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    fusion, detail = cnn(img)
    raw = head(torch.randn(2, 25, 16, 16), detail)
    g = activate_gaussians(raw, torch.randn(2, 16, 16, 3))
    w = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=w)).sum() for k, t in g.items()
               if k not in ("means", "sh_degree")) + add_rope_ones(fusion, head_dim=16).square().mean()
    loss.backward()
    for name, p in [*cnn.named_parameters(), *head.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_reset_parameters_follows_release_init():
    gen = torch.Generator().manual_seed(0)
    head = GaussianHead()
    head.reset_parameters(gen)
    assert 0.6 < head.color.weight.std() < 1.2
    for layer in (head.sh_high_fre, head.feat_opacity[-1], head.feat_scaling[-1]):
        assert 0.01 < layer.weight.std() < 0.03


# ----------------------------------------------------------------------------- rope-of-ones
def test_rope_ones_term_known_values():
    t = rope_ones_term(5, 7)
    assert t.shape == (64, 5, 7)
    torch.testing.assert_close(t[:, 0, 0], torch.ones(64))
    f = 100.0 ** (-torch.arange(0, 32, 2).float() / 32)  # 16 inverse frequencies
    x, y = 3, 2
    torch.testing.assert_close(t[:16, y, x], torch.cos(x * f) - torch.sin(x * f))
    torch.testing.assert_close(t[16:32, y, x], torch.cos(x * f) + torch.sin(x * f))
    torch.testing.assert_close(t[32:48, y, x], torch.cos(y * f) - torch.sin(y * f))
    torch.testing.assert_close(t[48:, y, x], torch.cos(y * f) + torch.sin(y * f))
    wide = rope_ones_term(5, 7, dim=128)
    torch.testing.assert_close(wide[:64], t)
    torch.testing.assert_close(wide[64:], t)
    small = rope_ones_term(4, 4, dim=16)  # tiny configs: one group of 16
    torch.testing.assert_close(small[:, 0, 0], torch.ones(16))


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    head = GaussianHead(hidden=4)
    with pytest.raises(ValueError, match=r"desc must have shape \(B, 25, H, W\)"):
        head(torch.zeros(1, 8, 8, 25), torch.zeros(1, 16, 8, 8))  # channels last by mistake
    with pytest.raises(ValueError, match="detail must have shape"):
        head(torch.zeros(1, 25, 8, 8), torch.zeros(1, 15, 8, 8))
    with pytest.raises(ValueError, match="must share B, H and W"):
        head(torch.zeros(1, 25, 8, 8), torch.zeros(1, 16, 8, 4))
    with pytest.raises(ValueError, match="sh_degree must be in 0..4"):
        GaussianHead(sh_degree=5)
    cnn = ShallowCNN()
    with pytest.raises(ValueError, match="multiples of 4"):
        cnn(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(\*lead, 3, H, W\)"):
        cnn(torch.zeros(1, 4, 32, 32))
    raw = _raw(5)
    with pytest.raises(ValueError, match="to match means"):
        activate_gaussians(raw, torch.zeros(6, 3))
    with pytest.raises(ValueError, match="means must have shape"):
        activate_gaussians(raw, torch.zeros(5, 2))
    with pytest.raises(KeyError, match="lacks \\['opacity_raw'\\]"):
        activate_gaussians({k: v for k, v in raw.items() if k != "opacity_raw"}, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="expected 3\\(\\(d\\+1\\)\\^2 - 1\\)"):
        activate_gaussians(_raw(5, rest=12), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="head_dim must be a multiple of 4"):
        rope_ones_term(4, 4, dim=64, head_dim=48)
