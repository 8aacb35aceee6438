"""flare_nb.inference: load_model and reconstruct (tiny model, CPU). Notebooks 01-02."""

import numpy as np
import pytest
import torch
from PIL import Image

from flare_nb import cameras
from flare_nb.scenes import synthetic
from flare_nb.model.checkpoint import CheckpointError, save_flare_checkpoint
from flare_nb.model.config import tiny
from flare_nb.inference import STAGES, Reconstruction, load_model, reconstruct, resolve_config
from flare_nb.model.pose_encoding import decode_c2w
from flare_nb.model.flare import FlareModel, FlareOutput


@pytest.fixture(scope="module")
def model():
    return load_model(None, "tiny", device="cpu", seed=0)   # trained weights if data/checkpoints has them


def _random_tiny(seed=0):
    torch.manual_seed(seed)
    return FlareModel(tiny()).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def rec(model, images):
    return reconstruct(model, images, device="cpu", pnp=False)


# ----------------------------------------------------------------------------- load_model
def test_load_model_random_is_labelled_and_seeded(tmp_path, monkeypatch):
    monkeypatch.setenv("FLARE_NB_DATA", str(tmp_path))        # no default checkpoint there
    m = load_model(config="tiny", device="cpu", seed=3)
    assert m.weights_random and "RANDOM weights" in m.weights_label
    assert not m.training
    m2 = load_model("", "tiny", device="cpu", seed=3)
    m3 = load_model(None, "tiny", device="cpu", seed=4)
    p = dict(m.named_parameters())
    assert all(torch.equal(v, p[k]) for k, v in m2.named_parameters())
    assert any(not torch.equal(v, p[k]) for k, v in m3.named_parameters())


def test_checkpoint_round_trip_through_load_model(tmp_path, images):
    src = _random_tiny(seed=7)
    with torch.no_grad():                                     # make every parameter non-trivial
        for q in src.parameters():
            q.add_(0.01 * torch.randn_like(q))
    for name in ("w.pth", "w.safetensors"):
        path = save_flare_checkpoint(src, tmp_path / name)
        m = load_model(path, "tiny", device="cpu")
        assert not m.weights_random and str(path) in m.weights_label and "RANDOM" not in m.weights_label
        assert m.load_report is not None and m.load_report.n_loaded == len(src.state_dict())
        for k, v in src.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), k
    x = images[:2, :, :32, :32]
    a = reconstruct(src, x, device="cpu", pnp=False)
    b = reconstruct(m, x, device="cpu", pnp=False)
    assert torch.equal(a.pts3d_global, b.pts3d_global) and torch.equal(a.c2w_refined, b.c2w_refined)


def test_default_checkpoint_is_used_when_present(tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    src = _random_tiny(seed=11)
    save_flare_checkpoint(src, tmp_path / "checkpoints" / "tiny_geometry.pt")
    monkeypatch.setenv("FLARE_NB_DATA", str(tmp_path))
    m = load_model(device="cpu")
    assert not m.weights_random and "tiny_geometry.pt" in m.weights_label
    assert torch.equal(m.encoder.patch_embed.proj.weight, src.encoder.patch_embed.proj.weight)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="config must be"):
        load_model(config="huge")
    with pytest.raises(ValueError, match="dtype"):
        load_model(config="tiny", dtype=torch.int8)
    small = FlareModel(tiny().replace(enc_dim=32))             # wrong shapes for tiny
    path = save_flare_checkpoint(small, tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="shape"):
        load_model(path, "tiny")
    assert resolve_config("official_geometry").enc_dim == 1024
    assert resolve_config(tiny()) == tiny()


def test_load_model_bf16(images):
    m = load_model(None, tiny(), device="cpu", dtype=torch.bfloat16)
    assert next(m.parameters()).dtype == torch.bfloat16
    r = reconstruct(m, images[:2, :, :32, :32], device="cpu", pnp=False)
    assert r.pts3d_global.dtype == torch.float32 and torch.isfinite(r.c2w_refined).all()


# ----------------------------------------------------------------------------- reconstruct
def test_shapes_and_timings(rec, model):
    V, H, W = 3, 64, 64
    it = model.cfg.pose_iters
    assert isinstance(rec, Reconstruction) and rec.n_views == V and rec.hw == (H, W)
    assert rec.c2w_coarse.shape == rec.c2w_refined.shape == (V, 4, 4)
    assert rec.pose_enc_coarse.shape == rec.pose_enc_refined.shape == (it, V, 9)
    assert rec.pts3d_cam.shape == rec.pts3d_global.shape == (V, H, W, 3)
    assert rec.conf_cam.shape == rec.conf_global.shape == (V, H, W)
    assert rec.images.shape == (V, 3, H, W) and rec.images.dtype == torch.float32
    assert rec.device == "cpu" and rec.autocast == "none"
    for _, name in STAGES:
        assert rec.timings[name] > 0
    assert rec.timings["forward"] >= sum(rec.timings[n] for _, n in STAGES) * 0.99
    assert "views of 64x64" in rec.summary()


def test_view0_identity_and_proper_rotations(rec):
    for c2w in (rec.c2w_coarse, rec.c2w_refined):
        assert torch.allclose(c2w[0], torch.eye(4), atol=1e-6)
        R = c2w[:, :3, :3].double()
        assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand_as(R), atol=1e-5)
        assert torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=R.dtype), atol=1e-5)
        assert torch.equal(c2w[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(len(c2w), 4))


def test_pose_is_decoded_as_camera_to_world(rec):
    # refined pose of view i = inverse(raw view 0) @ raw view i, with raw = [R(q) | T]
    raw = decode_c2w(rec.pose_enc_refined[-1])
    expect = torch.linalg.inv(raw[0]) @ raw
    assert torch.allclose(rec.c2w_refined.double(), expect, atol=1e-5)
    assert torch.allclose(raw[:, :3, 3], rec.pose_enc_refined[-1, :, :3].double())


def test_deterministic(model, images, rec):
    again = reconstruct(model, images, device="cpu", pnp=False)
    for name in ("c2w_coarse", "c2w_refined", "pts3d_cam", "pts3d_global", "conf_global"):
        assert torch.equal(getattr(rec, name), getattr(again, name)), name


def test_timer_leaves_model_unchanged(model, rec):
    for stage, _ in STAGES:
        module = getattr(model, stage)
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_matches_plain_forward(model, images, rec):
    with torch.no_grad():
        out = model(images[None] * 2 - 1)
    assert torch.equal(out.pts3d_global[0], rec.pts3d_global)
    assert torch.equal(out.pose_enc_stage2[:, 0], rec.pose_enc_refined)


def test_input_errors(model, images):
    with pytest.raises(ValueError, match="at least 2 views"):
        reconstruct(model, images[:1], device="cpu")
    with pytest.raises(ValueError, match="at least 2 views"):
        reconstruct(model, images[0], device="cpu")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        reconstruct(model, images * 2 - 1, device="cpu")
    with pytest.raises(ValueError, match="255"):
        reconstruct(model, images * 255, device="cpu")
    with pytest.raises(ValueError, match="same size"):
        reconstruct(model, [images[0], torch.rand(3, 128, 64)], device="cpu")
    with pytest.raises(ValueError, match="multiple of 64"):
        reconstruct(model, images, size=(100, 64), device="cpu")
    m = model.cfg.multiple                      # 32 for patch 16, 16 for the shipped patch-8 model
    with pytest.raises(ValueError, match=f"multiple of {m}"):
        reconstruct(model, torch.rand(2, 3, m + m // 2, 2 * m), device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        reconstruct(model, (images * 255).to(torch.uint8), device="cpu")
    with pytest.raises(TypeError, match="FlareModel"):
        reconstruct(torch.nn.Linear(2, 2), images, device="cpu")


def test_paths_and_size(model, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(160, 100), (160, 100)]):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    r = reconstruct(model, paths, size=(128, 64), device="cpu", pnp=False)
    assert r.hw == (64, 128) and r.info[0]["size"] == (128, 64)
    with pytest.raises(ValueError, match="at least 2 views"):
        reconstruct(model, paths[:1], size=(128, 64), device="cpu")
    odd = tmp_path / "odd.png"
    Image.fromarray(rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)).save(odd)
    with pytest.raises(ValueError, match="same size"):
        reconstruct(model, [paths[0], odd], device="cpu")
    # tensors with a size: the official 8-bit scale-to-cover + centre crop
    t = reconstruct(model, torch.rand(2, 3, 100, 160), size=(128, 64), device="cpu", pnp=False)
    assert t.hw == (64, 128)


class _OracleModel(FlareModel):
    """A tiny FlareModel whose forward returns exact geometry of a synthetic scene, to check
    reconstruct's decoding, focal and PnP against known answers."""

    def __init__(self, scene):
        super().__init__(tiny())
        self.scene = scene

    def forward(self, images, **kw):
        self.check_images(images)
        s = self.scene
        rel = cameras.relative_to_view0(s.c2w.double())
        rel, _ = cameras.normalize_translation(rel)
        enc = torch.cat([rel[:, :3, 3], cameras.matrix_to_quat(rel[:, :3, :3]) * 1.7,
                         torch.zeros(len(rel), 2, dtype=rel.dtype)], -1).float()
        enc = enc.expand(self.cfg.pose_iters, 1, *enc.shape).clone()
        valid = s.depth > 0
        pc = synthetic.pointmaps(s, "camera")
        pg = synthetic.pointmaps(s, "view0")
        conf = 1.0 + valid.float() * (1 + s.depth)
        nan = torch.full_like(pg, float("nan"))
        pg = torch.where(valid[..., None], pg, nan)
        return FlareOutput(enc, enc, pc[None], conf[None], pg[None], conf[None])


def test_focal_and_pnp_known_answer():
    scene = synthetic.make_scene(0, n_views=3, size=64, mode="orbit")
    rec = reconstruct(_OracleModel(scene).eval(), scene.images, device="cpu", pnp=True, pnp_iterations=200)
    f_true = scene.K[0, 0, 0].item()
    assert abs(rec.focal - f_true) / f_true < 1e-3
    assert torch.allclose(rec.K, cameras.intrinsics_from_focal(rec.focal, 64, 64))
    gt = cameras.relative_to_view0(scene.c2w.double())
    gt_n, _ = cameras.normalize_translation(gt)
    assert torch.allclose(rec.c2w_refined.double(), gt_n, atol=1e-5)
    assert torch.allclose(rec.c2w_coarse.double(), gt_n, atol=1e-5)
    assert rec.c2w_pnp.shape == (3, 4, 4) and len(rec.pnp_info["n_points"]) == 3
    assert torch.allclose(rec.c2w_pnp.double(), gt, atol=1e-3)   # PnP: pointmap units = view-0 frame
    assert torch.equal(rec.poses("pnp"), rec.c2w_pnp)
    assert rec.timings["pnp"] > 0 and not rec.notes


def test_missing_focal_is_reported(images):
    scene = synthetic.make_scene(0, n_views=2, size=64, mode="orbit")
    m = _OracleModel(scene).eval()
    m.scene = type(scene)(images=scene.images, K=scene.K, c2w=scene.c2w, depth=torch.zeros_like(scene.depth))
    rec = reconstruct(m, scene.images, device="cpu")
    assert rec.focal is None and rec.c2w_pnp is None
    assert any("focal" in n for n in rec.notes)
    with pytest.raises(ValueError, match="no pnp poses"):
        rec.poses("pnp")
    with pytest.raises(ValueError, match="which"):
        rec.poses("best")


def test_reconstruct_with_the_nvs_model_needs_intrinsics_and_returns_gaussians(one_thread):
    from flare_nb.model import config as mc
    from flare_nb.inference import load_model, reconstruct
    from flare_nb.scenes.synthetic import make_scene

    model = load_model("", config=mc.tiny_nvs(), device="cpu")
    scene = make_scene(1_000_002, 2, 64, "forward")
    with pytest.raises(ValueError, match="intrinsics"):
        reconstruct(model, scene.images, device="cpu", pnp=False)
    with pytest.raises(ValueError, match=r"\(V, 3, 3\) or \(V, 4\)"):
        reconstruct(model, scene.images, device="cpu", pnp=False, intrinsics=scene.K[:1])
    rec = reconstruct(model, scene.images, device="cpu", pnp=False, intrinsics=scene.K)
    assert rec.pts3d_cam is None and rec.conf_cam is None
    assert rec.gaussians["means"].shape == (2 * 64 * 64, 3)
    assert torch.equal(rec.gaussians["means"], rec.pts3d_global.reshape(-1, 3))
