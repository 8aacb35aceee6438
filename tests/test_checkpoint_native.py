"""Self-describing shipped checkpoints (flare_nb.model.checkpoint, scripts/export_checkpoint.py): the
file carries its FlareConfig and native image size; load_model builds that model and every consumer
defaults its image size to ``model.native_size``."""
import importlib.util
from pathlib import Path

import pytest
import torch

from flare_nb.eval import evaluate, report
from flare_nb.inference import (LEGACY_TINY_SIZE, checkpoint_native_size, load_model, native_size_wh,
                                reconstruct)
from flare_nb.model.checkpoint import (SHIPPED_FORMAT, CheckpointError, read_checkpoint_info,
                                       released_state_dict, save_flare_checkpoint)
from flare_nb.model.config import tiny, tiny_nvs
from flare_nb.model.flare import FlareModel
from flare_nb.train.config import TrainConfig
from flare_nb.train.state import FORMAT, load_trained_model, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PATCH8 = tiny().replace(patch_size=8)          # the coming shipped recipe: 8x8 tokens at 64x64


def _model(cfg, seed):
    torch.manual_seed(seed)
    m = FlareModel(cfg).eval()
    with torch.no_grad():                      # every parameter non-trivial
        for q in m.parameters():
            q.add_(0.01 * torch.randn_like(q))
    return m


def _plain_only(obj, where="file"):
    """Every non-tensor value is a plain dict / list / str / int / float / bool."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str), (where, k)
            _plain_only(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _plain_only(v, f"{where}[{i}]")
    else:
        assert isinstance(obj, (torch.Tensor, str, int, float, bool)) or obj is None, (where, type(obj))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run of the patch-8 recipe (64x64, step 4000) as flare_nb.train writes it."""
    d = tmp_path_factory.mktemp("run")
    cfg = TrainConfig().replace(**{"data.size": [64, 64], "steps": 4000}).to_dict()
    src = _model(PATCH8, seed=5)
    save_checkpoint(d / "checkpoint.pt", {"format": FORMAT, "step": 4000, "config": cfg,
                                          "model_config": PATCH8.to_dict(), "model": released_state_dict(src),
                                          "time": 1.0})
    return d, src


def _export(run, out):
    spec = importlib.util.spec_from_file_location("export_checkpoint", ROOT / "scripts" / "export_checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main([str(run), str(out)])


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ship") / "tiny_geometry.pt"
    assert _export(run_dir[0], out) == 0
    return out, run_dir[1]


# ----------------------------------------------------------------------------- format
def test_round_trip_of_the_self_describing_format(tmp_path):
    src = _model(PATCH8, seed=1)
    path = save_flare_checkpoint(src, tmp_path / "w.pt", model_config=PATCH8, image_size=(64, 48))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == SHIPPED_FORMAT and raw["image_size"] == [64, 48]
    assert raw["model_config"]["patch_size"] == 8 and isinstance(raw["model_config"]["dpt_hooks"], list)
    _plain_only({k: v for k, v in raw.items() if k != "model"})
    info = read_checkpoint_info(path)
    assert info.model_config == PATCH8 and info.image_size == (64, 48) and info.format == SHIPPED_FORMAT
    m = load_model(path, device="cpu")
    assert m.cfg == PATCH8 and m.native_size == (64, 48) and native_size_wh(m) == (48, 64)
    for k, v in released_state_dict(src).items():
        assert torch.equal(released_state_dict(m)[k], v), k


def test_save_refuses_bad_descriptions_before_writing(tmp_path):
    src = _model(PATCH8, seed=1)
    for kw, words in (({"model_config": PATCH8}, "go together"),
                      ({"model_config": PATCH8, "image_size": (60, 64)}, "not a multiple of the model's 16 px"),
                      ({"model_config": {**PATCH8.to_dict(), "colour": 3}, "image_size": (64, 64)}, "unknown fields")):
        with pytest.raises(ValueError, match=words):
            save_flare_checkpoint(src, tmp_path / "w.pt", **kw)
        assert not (tmp_path / "w.pt").exists()
    with pytest.raises(ValueError, match="wrapped .pth/.pt"):
        save_flare_checkpoint(src, tmp_path / "w.safetensors", model_config=PATCH8, image_size=(64, 64))


def test_old_format_still_loads_as_tiny_128(tmp_path, monkeypatch):
    src = _model(tiny(), seed=2)
    path = save_flare_checkpoint(src, tmp_path / "old.pth")            # {'model': sd} only
    assert read_checkpoint_info(path) is None
    m = load_model(path, "tiny", device="cpu")
    assert m.cfg == tiny() and m.native_size == LEGACY_TINY_SIZE == (128, 128)
    assert checkpoint_native_size(path) == (128, 128)
    nvs = save_flare_checkpoint(_model(tiny_nvs(), seed=2), tmp_path / "nvs.pt")
    assert load_model(nvs, tiny_nvs(), device="cpu").native_size == (128, 128)
    monkeypatch.setenv("FLARE_NB_DATA", str(tmp_path))                  # no default checkpoint: random weights
    r = load_model(device="cpu")
    assert r.weights_random and r.native_size is None and native_size_wh(r, (256, 256)) == (256, 256)
    assert checkpoint_native_size() is None


# ----------------------------------------------------------------------------- export + load_model
def test_exported_patch8_checkpoint_loads_and_runs(exported):
    path, src = exported
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"format", "model", "model_config", "image_size"} and raw["image_size"] == [64, 64]
    _plain_only({k: v for k, v in raw.items() if k != "model"})
    assert (path.parent / "tiny_geometry_meta.json").is_file()
    m = load_model(path, device="cpu")                                  # config left at its default "tiny"
    assert m.cfg.patch_size == 8 and m.cfg == PATCH8 and m.native_size == (64, 64)
    assert checkpoint_native_size(path) == (64, 64)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a = reconstruct(src, x, device="cpu", pnp=False)
    b = reconstruct(m, x, device="cpu", pnp=False)
    assert b.pts3d_global.shape == (2, 64, 64, 3)
    assert torch.equal(a.pts3d_global, b.pts3d_global) and torch.equal(a.c2w_refined, b.c2w_refined)


def test_default_checkpoint_brings_its_own_config(exported, tmp_path, monkeypatch):
    path, _ = exported
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "tiny_geometry.pt").write_bytes(path.read_bytes())
    monkeypatch.setenv("FLARE_NB_DATA", str(tmp_path))
    for m in (load_model(device="cpu"), load_model(None, tiny(), device="cpu")):
        assert not m.weights_random and m.cfg.patch_size == 8 and m.native_size == (64, 64)
    from flare_nb import pipeline
    assert pipeline.default_size("tiny") == (64, 64) and pipeline.default_size("official_geometry") == (512, 384)


def test_training_checkpoint_gives_its_run_size(run_dir):
    d, _ = run_dir
    assert read_checkpoint_info(d / "checkpoint.pt").image_size == (64, 64)
    assert load_trained_model(d / "checkpoint.pt").native_size == (64, 64)
    assert load_model(d / "checkpoint.pt", device="cpu").native_size == (64, 64)
    bare = d.parent / "bare_checkpoint.pt"                              # a run without data settings
    torch.save({"format": FORMAT, "model_config": PATCH8.to_dict(),
                "model": torch.load(d / "checkpoint.pt", weights_only=True)["model"]}, bare)
    m = load_model(bare, device="cpu")
    assert m.cfg == PATCH8 and m.native_size is None


def test_export_refuses_a_run_without_checkpoint(tmp_path, capsys):
    assert _export(tmp_path, tmp_path / "out.pt") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "checkpoint.pt" in err and not (tmp_path / "out.pt").exists()


def _tampered(src_path, tmp_path, name, **changes):
    raw = torch.load(src_path, map_location="cpu", weights_only=True)
    for k, v in changes.items():
        if k.startswith("mc_"):
            raw["model_config"][k[3:]] = v
        else:
            raw[k] = v
    torch.save(raw, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("name,changes,words", [
    ("dim.pt", {"mc_enc_dim": 32}, "model_config does not fit its weights"),
    ("patch.pt", {"mc_patch_size": 16}, "model_config does not fit its weights"),
    ("field.pt", {"mc_colour": "red"}, "unknown fields colour"),
    ("kind.pt", {"mc_kind": "panorama"}, "model_config is not valid"),
    ("notdict.pt", {"model_config": [1, 2]}, "model_config must be a dict"),
    ("size.pt", {"image_size": [64, 72]}, "not a multiple of the model's 16 px"),
    ("size2.pt", {"image_size": "64x64"}, "image_size must be [H, W]"),
    ("format.pt", {"format": "flare_nb.shipped/9"}, "unknown checkpoint format"),
])
def test_tampered_description_gives_one_line(exported, tmp_path, name, changes, words):
    bad = _tampered(exported[0], tmp_path, name, **changes)
    with pytest.raises(CheckpointError) as e:
        load_model(bad, device="cpu")
    msg = str(e.value)
    assert words in msg and str(bad) in msg and "\n" not in msg, msg


def test_an_explicit_other_config_must_match_the_file(exported):
    with pytest.raises(CheckpointError) as e:
        load_model(exported[0], tiny().replace(enc_dim=32), device="cpu")
    msg = str(e.value)
    assert "another model config" in msg and "patch_size 8 (asked 16)" in msg and "\n" not in msg
    assert load_model(exported[0], PATCH8, device="cpu").native_size == (64, 64)


# ----------------------------------------------------------------------------- consumers
def test_evaluate_picks_the_native_size(exported, capsys):
    args = ["--method", "flare", "--opt", f"checkpoint={exported[0]}", "--scenes", "1", "--n-views", "2"]
    rows = evaluate.main(args)
    assert rows and {r["size"] for r in rows} == {"64x64"}
    rows = evaluate.main(args + ["--size", "128", "64"])                # a given size wins
    assert {r["size"] for r in rows} == {"128x64"}
    rows = evaluate.main(["--method", "straight", "--scenes", "1", "--n-views", "2"])   # no model: as before
    assert {r["size"] for r in rows} == {"256x256"}


def test_report_sizes_follow_the_native_size():
    assert report.default_sizes((128, 128)) == ((128, 128), (256, 192))
    assert report.default_sizes(None) == ((128, 128), (256, 192))
    assert report.default_sizes((64, 64)) == ((64, 64), (128, 128))
