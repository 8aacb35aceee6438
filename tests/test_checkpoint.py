"""Checkpoint loading / saving (flare_nb.model.checkpoint, notebook 01): round trips with tiny
checkpoints in every accepted layout, and refusals of broken ones. The released-size key
checks use the manifest shapes only (no 5 GB tensors)."""
import pytest
import torch

from flare_nb.model.checkpoint import (CheckpointError, check_state_dict, detect_kind, load_flare_checkpoint,
                                 read_state_dict, save_flare_checkpoint)
from flare_nb.model.config import official_geometry, tiny
from flare_nb.model.flare import FlareModel
from flare_nb.model.reference import deterministic_fill, manifest_shapes

def _x():
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 2, 3, 64, 64, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def source():
    return deterministic_fill(FlareModel(tiny())).eval()


def _fresh():
    torch.manual_seed(123)
    return FlareModel(tiny()).eval()


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name,kw", [("w.safetensors", {}), ("w.pth", {}), ("bare.pth", {"wrap": False}),
                                     ("bf16.safetensors", {"dtype": torch.bfloat16})])
def test_round_trip(tmp_path, source, name, kw):
    path = save_flare_checkpoint(source, tmp_path / name, **kw)
    if name.endswith(".pth"):
        raw = torch.load(path, weights_only=True)
        assert ("model" in raw) == kw.get("wrap", True)
    m = _fresh()
    assert not _same_weights(m, source)
    rep = load_flare_checkpoint(m, path)
    assert rep.kind == "geometry" and rep.missing == [] and rep.unexpected == []
    assert rep.n_loaded == len(source.state_dict())
    with torch.no_grad():
        a, b = source(_x()), m(_x())
    if "dtype" in kw:
        assert rep.dtypes == ["bfloat16"]
        torch.testing.assert_close(m.encoder.enc_norm.weight, source.encoder.enc_norm.weight, atol=1e-2, rtol=1e-2)
    else:
        assert _same_weights(m, source)
        assert torch.equal(a.pts3d_global, b.pts3d_global)
    assert sorted(read_state_dict(path)) == sorted(source.released_names().values())   # released names on disk
    # aliases stay one tensor
    h = m.global_projector.downstream_head2.dpt.scratch
    assert h.layer3_rn.weight is h.layer_rn[2].weight


def test_unused_modules_are_skipped_and_reported(tmp_path, source):
    sd = source.released_state_dict()
    sd["mask_token"] = torch.zeros(1, 1, 64)
    sd["downstream_head4.color.weight"] = torch.zeros(3, 20, 1, 1)
    del sd["downstream_head1.dpt.scratch.layer2_rn.weight"]  # its alias partner is still there
    path = save_flare_checkpoint(sd, tmp_path / "extra.pth")
    m = _fresh()
    rep = load_flare_checkpoint(m, path)
    assert rep.skipped_unused == ["downstream_head4.color.weight", "mask_token"]
    assert "skipped 2 keys" in str(rep)
    assert _same_weights(m, source)


def _refused(tmp_path, sd, match, name="bad.pth"):
    path = save_flare_checkpoint(sd, tmp_path / name) if isinstance(sd, dict) else sd
    m = _fresh()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointError, match=match):
        load_flare_checkpoint(m, path)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # untouched


def test_refuses_missing_keys(tmp_path, source):
    sd = source.released_state_dict()
    del sd["enc_blocks.1.attn.qkv.weight"], sd["pose_head_stage2.pose_proj.bias"]
    _refused(tmp_path, sd, r"2 missing keys: enc_blocks.1.attn.qkv.weight, pose_head_stage2.pose_proj.bias")


def test_refuses_wrong_shapes(tmp_path, source):
    sd = source.released_state_dict()
    sd["decoder_embed.weight"] = torch.zeros(64, 32)
    _refused(tmp_path, sd, r"decoder_embed.weight: checkpoint \(64, 32\) vs model \(64, 64\)")


def test_refuses_other_model_kind(tmp_path, source):
    sd = source.released_state_dict()
    sd["decoder_embed_fxfycxcy.fc1.weight"] = torch.zeros(64, 4)
    sd["patch_embed_fine.proj.weight"] = torch.zeros(64, 64, 16, 16)
    _refused(tmp_path, sd, r"wrong model kind: this is a nvs checkpoint")


def test_refuses_unexpected_keys_and_bad_dtypes(tmp_path, source):
    sd = source.released_state_dict()
    sd["my_extra_layer.weight"] = torch.zeros(3)
    _refused(tmp_path, sd, r"1 unexpected keys: my_extra_layer.weight")
    sd = {k: (v.to(torch.float64) if k == "enc_norm.bias" else v) for k, v in source.released_state_dict().items()}
    _refused(tmp_path, sd, r"neither float32 nor bfloat16: enc_norm.bias \(torch.float64\)")


def test_refuses_a_different_config(tmp_path, source):
    other = FlareModel(tiny().replace(dec_dim=32, dec_heads=2, pose_heads=2))
    _refused(tmp_path, other.released_state_dict(), r"shape mismatches")


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        read_state_dict(tmp_path / "nowhere.pth")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown checkpoint format '.ckpt'"):
        read_state_dict(tmp_path / "w.ckpt")
    torch.save({"epoch": 3, "args": "x"}, tmp_path / "notsd.pth")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        read_state_dict(tmp_path / "notsd.pth")
    with pytest.raises(ValueError, match="float32 or torch.bfloat16"):
        save_flare_checkpoint({"a": torch.zeros(2)}, tmp_path / "a.pth", dtype=torch.float16)


# ----------------------------------------------------------------------------- released sizes, shapes only
@pytest.fixture(scope="module")
def official_shapes():
    with torch.device("meta"):
        m = FlareModel(official_geometry())
    return {k: tuple(v.shape) for k, v in m.released_state_dict().items()}


def test_released_geometry_keys_fit(official_shapes):
    ref = manifest_shapes("geometry")
    problems, skipped, missing, unexpected = check_state_dict(official_shapes, ref, "geometry")
    assert problems == [] and missing == [] and unexpected == []
    assert len(skipped) == 101 and "downstream_head4.color.weight" in skipped
    assert detect_kind(ref) == "geometry"


def test_released_nvs_checkpoint_is_refused_by_the_geometry_model(official_shapes):
    ref = manifest_shapes("nvs")
    assert detect_kind(ref) == "nvs"
    problems, *_ = check_state_dict(official_shapes, ref, "geometry")
    text = "\n".join(problems)
    assert "wrong model kind: this is a nvs checkpoint" in text
    # patch_embed_fine, decoder_embed_stage2, decoder_embed_fxfycxcy (weight and bias each)
    assert "8 unexpected keys" in text and "decoder_embed_stage2.weight" in text
    # the NVS release has no stage-1 coarse conv of size 2 but shares everything the geometry model holds
    assert "missing keys" not in text


def test_released_geometry_with_a_broken_shape(official_shapes):
    ref = dict(manifest_shapes("geometry"))
    ref["pose_head.pose_proj.weight"] = (768, 756)
    del ref["dec_blocks_point.11.mlp.fc2.bias"]
    problems, *_ = check_state_dict(official_shapes, ref, "geometry")
    text = "\n".join(problems)
    assert "pose_head.pose_proj.weight: checkpoint (768, 756) vs model (768, 765)" in text
    assert "1 missing keys: dec_blocks_point.11.mlp.fc2.bias" in text
