"""The output options of ``flare-nb``: ``--model nvs``, ``scene.html`` / ``scene.glb``, ``--dtype bf16``
and ``flare-nb plan`` (flare_nb.nvs_run, flare_nb.scene_page, flare_nb.glb, flare_nb.bf16, flare_nb.plan).

One NVS demo run (3 room photos at 64x64, the bundled tiny NVS and geometry checkpoints) is made
once per module; each test checks one property of its folder against an independent computation.
The page is opened in a browser by ``ci/check_scene_page.py`` (ci/test.sh), not here.
"""
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from flare_nb import cameras, cli, data_dir
from flare_nb.model import config as mc
from cli_helpers import cli_error, one_torch_thread, run_cli

ROOM = data_dir() / "real" / "room"
NVS_CKPT = data_dir() / "checkpoints" / "tiny_nvs.pt"
V = 3


_run, _error = run_cli, cli_error


@pytest.fixture(scope="module")
def nvs_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nvs") / "out"
    with one_torch_thread():
        rc = cli.main(["demo", "--real", "--model", "nvs", "--views", str(V), "--size", "64x64",
                       "--pnp-iterations", "50", "--out", str(out)])
    assert rc == 0
    cams = json.loads((out / "cameras.json").read_text())
    images = torch.stack([torch.from_numpy(np.array(Image.open(out / "images" / v["image"]).convert("RGB")))
                          .permute(2, 0, 1).float() / 255 for v in cams["views"]])
    K = torch.tensor([v["K"] for v in cams["views"]], dtype=torch.float32)
    return {"out": out, "cams": cams, "images": images, "K": K}


# ----------------------------------------------------------------------------- --model nvs
def test_nvs_gaussians_are_the_heads_output(nvs_run, one_thread):
    """gaussians.ply = the tiny NVS model's Gaussian head run on the saved images with the
    intrinsics in cameras.json (one Gaussian per pixel, SH degree 1)."""
    from flare_nb.inference import load_model, reconstruct
    from flare_nb.render.ply import load_gaussians_ply

    g = load_gaussians_ply(nvs_run["out"] / "gaussians.ply")
    assert len(g["means"]) == V * 64 * 64 and g["sh_degree"] == 1
    model = load_model(NVS_CKPT, mc.tiny_nvs(), device="cpu")
    rec = reconstruct(model, nvs_run["images"], device="cpu", pnp=False, intrinsics=nvs_run["K"])
    ref = rec.gaussians
    scale = float(ref["means"].abs().max())
    # float32: the same computation; the PLY stores float32, so only the summation order may differ
    assert torch.allclose(g["means"], ref["means"], rtol=1e-4, atol=1e-5 * scale)
    assert torch.allclose(g["opacities"], ref["opacities"], atol=1e-4)
    assert torch.allclose(g["sh"], ref["colors"], rtol=1e-4, atol=1e-4)
    assert "Gaussian head" in (nvs_run["out"] / "report.md").read_text()
    assert "intrinsics given to the NVS model" in nvs_run["cams"]["focal_source"]


def test_nvs_intrinsics_come_from_the_geometry_models_camera_centric_pointmaps(nvs_run, one_thread):
    from flare_nb.inference import load_model, reconstruct

    geo = load_model(None, "tiny", device="cpu")          # data/checkpoints/tiny_geometry.pt
    rec = reconstruct(geo, nvs_run["images"], device="cpu", pnp=False)
    f = torch.tensor([cameras.estimate_focal(rec.pts3d_cam[i]) for i in range(V)], dtype=torch.float32)
    K = nvs_run["K"]
    assert torch.allclose(K[:, 0, 0], f, rtol=1e-4) and torch.allclose(K[:, 1, 1], f, rtol=1e-4)
    assert torch.allclose(K[:, :2, 2], torch.full((V, 2), 31.5))
    assert any("focal per view from the geometry model's camera-centric pointmap" in n
               for n in nvs_run["cams"]["notes"])


def test_nvs_renders_are_written(nvs_run):
    for k in range(V):
        a = np.asarray(Image.open(nvs_run["out"] / "renders" / f"view_{k:03d}.png"))
        assert a.shape[:2] == (64, 64) and a.std() > 1.0       # not a flat background


# ----------------------------------------------------------------------------- scene.glb / scene.html
def test_scene_glb_reads_back_with_the_points_and_cameras(nvs_run):
    import trimesh
    from plyfile import PlyData

    n_points = len(PlyData.read(str(nvs_run["out"] / "points.ply"))["vertex"])
    scene = trimesh.load(nvs_run["out"] / "scene.glb")
    pts = scene.geometry["points"]
    assert isinstance(pts, trimesh.PointCloud) and len(pts.vertices) == n_points
    assert len(pts.colors) == n_points
    cams = sorted(k for k in scene.geometry if k.startswith("camera_"))
    assert cams == [f"camera_{i:03d}" for i in range(V)]
    c2w = torch.tensor([v["c2w"] for v in nvs_run["cams"]["views"]], dtype=torch.float64)
    for i, name in enumerate(cams):
        verts = np.asarray(scene.geometry[name].vertices)
        apex_dist = np.linalg.norm(verts - c2w[i, :3, 3].numpy(), axis=1).min()
        assert apex_dist < 1e-5 * max(1.0, float(np.abs(verts).max()))   # the frustum starts at the camera


def test_scene_page_is_self_contained(nvs_run):
    html = (nvs_run["out"] / "scene.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", html)          # no script fetched from anywhere
    assert "cdn." not in html.split("</script>")[-1]
    assert len(html) > 1_000_000                             # plotly.js inlined
    m = re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\])\s*,\s*\{", html, re.S)
    traces = json.loads(m.group(1))
    assert sum(t["type"] == "mesh3d" for t in traces) == V      # one picture per camera
    names = [t.get("name", "") for t in traces]
    assert any(n.startswith("points") for n in names) and any(n.startswith("cameras") for n in names)
    assert any(n.startswith("Gaussian centres") for n in names)


def test_scene_figure_is_a_valid_plotly_figure():
    """The page is written without plotly's validation (seconds for 60,000 colours): the same
    figure must pass it."""
    import plotly.graph_objects as go

    from flare_nb.scene_page import scene_figure

    g = torch.Generator().manual_seed(0)
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 3] = 1.0
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
    fig = scene_figure(torch.rand(500, 3, generator=g), torch.rand(500, 3, generator=g), c2w, K,
                       torch.rand(2, 3, 32, 32, generator=g), ["a", "b"], torch.rand(50, 3, generator=g), "t")
    checked = go.Figure(fig)                                # raises on any invalid property
    assert [t.type for t in checked.data] == ["scatter3d", "mesh3d", "mesh3d", "scatter3d", "scatter3d"]


def test_frustum_corners_project_to_the_image_corners():
    from flare_nb.scene_page import frustum_corners

    c2w = torch.eye(4, dtype=torch.float64)
    q = torch.tensor([0.9, 0.1, -0.3, 0.2], dtype=torch.float64)
    c2w[:3, :3] = cameras.quat_to_matrix(q / q.norm())
    c2w[:3, 3] = torch.tensor([0.3, -0.2, 1.0])
    K = torch.tensor([[80.0, 0, 31.5], [0, 90.0, 23.5], [0, 0, 1]], dtype=torch.float64)
    c = frustum_corners(c2w, K, (48, 64), depth=2.0)
    w2c = torch.linalg.inv(c2w).numpy()
    cam = c[1:] @ w2c[:3, :3].T + w2c[:3, 3]
    uv = (cam @ K.numpy().T)[:, :2] / cam[:, 2:]
    assert np.allclose(cam[:, 2], 2.0) and np.allclose(c[0], c2w[:3, 3].numpy())
    assert np.allclose(uv, [[-0.5, -0.5], [63.5, -0.5], [63.5, 47.5], [-0.5, 47.5]])


# ----------------------------------------------------------------------------- --dtype bf16
@pytest.mark.parametrize("config", ["tiny", "tiny_nvs"])
def test_bf16_weights_close_to_float32(config, one_thread):
    """bf16 weights (float32 compute on the CPU): finite, parameters really stored in bf16, and the
    global pointmap within a bf16-derived tolerance of float32: each weight is rounded with
    relative error <= u = 2^-8 (8 significant bits); independent errors through L parameterised
    layers grow like sqrt(L) u, so the median relative deviation must stay below sqrt(L) u and
    the 99th percentile below 4 sqrt(L) u. It must not be zero either (the rounding happened)."""
    from flare_nb.bf16 import to_bf16_weights
    from flare_nb.inference import load_model, reconstruct

    ckpt = NVS_CKPT if config == "tiny_nvs" else None
    cfg = getattr(mc, config)()
    photos = sorted(ROOM.glob("IMG_*"))[:V]
    kw = {"intrinsics": torch.tensor([[70.0, 70.0, 31.5, 31.5]] * V)} if cfg.kind == "nvs" else {}
    outs = []
    for bf16 in (False, True):
        model = load_model(ckpt, cfg, device="cpu")
        if bf16:
            to_bf16_weights(model)
            assert all(p.dtype == torch.bfloat16 for p in model.parameters())
        outs.append(reconstruct(model, photos, size=64, device="cpu", pnp=False, **kw).pts3d_global)
    a, b = outs
    assert torch.isfinite(b).all()
    L = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.MultiheadAttention)) for m in model.modules())
    u = 2.0 ** -8
    rel = (a - b).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-12)
    assert 0 < float(rel.median()) <= math.sqrt(L) * u
    assert float(rel.quantile(0.99)) <= 4 * math.sqrt(L) * u
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())    # restored after the forward


# ----------------------------------------------------------------------------- plan
def test_flop_count_on_meta_tensors_equals_a_real_run(one_thread):
    """The meta-tensor count equals a real run's, both with attention as plain products (the
    fused CPU attention kernels are not counted by FlopCounterMode)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from flare_nb.model.flare import FlareModel
    from flare_nb.plan import count_flops

    for cfg in (mc.tiny(), mc.tiny_nvs()):
        torch.manual_seed(0)
        model = FlareModel(cfg).eval()
        x = torch.rand(1, 2, 3, 64, 64) * 2 - 1
        kw = {"intrinsics": torch.tensor([[[70.0, 70.0, 31.5, 31.5]] * 2])} if cfg.kind == "nvs" else {}
        fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
                model(x, **kw)
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)
        assert count_flops(cfg, 2, 64, 64) == fc.get_total_flops() > 0
        assert torch.backends.mha.get_fastpath_enabled() == fast


def test_plan_prints_memory_and_time_of_the_released_model(capsys):
    from flare_nb.model.flare import FlareModel
    from flare_nb.pipeline import estimate_memory_bytes
    from flare_nb.plan import ASSUMED_PHOTO_PIXELS

    rc, out, err = _run(["plan", "--views", "2", "--size", "128x64", "--dtype", "bf16"], capsys)
    assert rc == 0, err
    cfg = mc.official_geometry()
    with torch.device("meta"):
        n = sum(p.numel() for p in FlareModel(cfg).parameters())
    mem = estimate_memory_bytes(cfg, n, 2, 64, 128, "cpu", ASSUMED_PHOTO_PIXELS, 2)
    assert f"about {mem / 1e9:.1f} GB peak" in out
    assert re.search(r"download: +geometry_pose\.pth 5\.\d\d GB", out)
    assert re.search(r"operations: +\d+\.\d\d TFLOP", out) and re.search(r"time: +at least", out)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, needles", [
    (["demo", "--model", "nerf"], ["--model", "geometry", "nvs"]),
    (["demo", "--dtype", "fp16"], ["--dtype", "bf16"]),
    (["demo", "--geometry-checkpoint", "g.pth", "--out", "{tmp}/o"], ["--geometry-checkpoint", "--model nvs"]),
    (["demo", "--model", "nvs", "--config", "official_geometry", "--out", "{tmp}/o"],
     ["--geometry-checkpoint", "geometry_pose.pth"]),
    (["demo", "--model", "nvs", "--geometry-checkpoint", "{tmp}/missing.pth", "--out", "{tmp}/o"],
     ["missing.pth", "not found"]),
    (["demo", "--model", "nvs", "--geometry-checkpoint", "{tmp}/notes.txt", "--out", "{tmp}/o"],
     ["notes.txt", ".pth"]),
    (["plan", "--views", "1", "--size", "512x384"], ["--views", "2 to 8"]),
    (["plan", "--views", "9", "--size", "512x384"], ["--views", "2 to 8"]),
    (["plan", "--views", "4", "--size", "500x384"], ["--size", "64"]),
    (["plan", "--size", "512x384"], ["--views"]),
    (["plan", "--views", "4", "--size", "512x384", "--dtype", "int8"], ["--dtype"]),
    (["plan", "--views", "4", "--size", "512x384", "--model", "big"], ["--model"]),
])
def test_bad_options_one_line(argv, needles, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    _error([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys, *needles)
    assert not (tmp_path / "o").exists()
