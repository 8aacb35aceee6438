"""Cascade stage 2 (flare_nb.train): the NVS model started from a stage-1 run, the coarse pose
predictor frozen, the Gaussians rendered into held-out target views (notebook 06).

Tiny models on 64x64 synthetic scenes, a few steps each.
"""
import math

import pytest
import torch

from flare_nb.cameras import invert_pose, transform_points, unproject_depth
from flare_nb.render.splats import gaussians_from_pointmap, render_views
from flare_nb.scenes.synthetic import make_scene
from flare_nb.render.targets import cameras_in_prediction_frame, render_targets
from flare_nb.scenes.sample import as_sample, split_context_target
from flare_nb.train.build import build_model, init_weights
from flare_nb.train.loop import train
from flare_nb.train.state import load_checkpoint
from flare_nb.train.config import TrainConfig


def cfg_of(out_dir, **kw) -> TrainConfig:
    base = {"steps": 6, "batch_size": 1, "data.n_views": 2, "data.size": [64, 64], "data.train_seeds": [0, 1],
            "data.val_seeds": [], "optim.lr": 2e-3, "optim.warmup_steps": 2, "run.out_dir": str(out_dir),
            "run.progress": False, "run.val_every": 0, "run.log_every": 1, "run.ckpt_every": 100, "run.threads": 1,
            "data.modes": ["orbit"]}
    base.update(kw)
    return TrainConfig().replace(**base).validate()


def stage2_kw(**kw):
    return {"stage": 2, "model": "tiny_nvs", "render.n_targets": 1, **kw}


pytestmark = pytest.mark.usefixtures("one_thread")    # tests/conftest.py


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    train(cfg_of(out, steps=4))
    return out / "checkpoint.pt"


def test_split_context_target():
    assert split_context_target(6, 2) == ([0, 2, 3, 5], [1, 4])
    assert split_context_target(3, 1) == ([0, 2], [1])
    assert split_context_target(4, 0) == ([0, 1, 2, 3], [])
    assert split_context_target(5, 3) == ([0, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2 context"):
        split_context_target(3, 2)


def test_sample_holds_context_and_targets():
    scene = make_scene(3, 3, 64, "orbit")
    s = as_sample(scene, "x", 2, torch.Generator().manual_seed(0), n_targets=1)
    assert torch.equal(s["images"], scene.images[[0, 2]]) and torch.equal(s["target_images"], scene.images[[1]])
    assert torch.equal(s["target_c2w"], scene.c2w[[1]]) and s["target_depth"].shape == (1, 64, 64)
    with pytest.raises(ValueError, match="render.n_targets"):
        as_sample(make_scene(3, 2, 64, "orbit"), "two-view scene", 2, torch.Generator(), n_targets=1)


def test_cameras_in_prediction_frame_is_scale_consistent():
    """A world point seen by a target camera lands on the same pixel when both the point and the
    camera are moved into view 0's frame and scaled: the frame the Gaussians live in."""
    scene = make_scene(5, 3, 64, "orbit")
    X = torch.randn(50, 3, dtype=torch.float64)
    c2w = scene.c2w.double()
    s = 2.7
    Y = s * transform_points(invert_pose(c2w[0]), X)
    cam = cameras_in_prediction_frame(c2w[[0, 2]], c2w[[1]], s)[0]
    in_cam_pred = transform_points(invert_pose(cam), Y)
    in_cam_world = transform_points(invert_pose(c2w[1]), X)
    assert torch.allclose(in_cam_pred, s * in_cam_world, atol=1e-6)
    assert torch.allclose(cameras_in_prediction_frame(c2w, c2w[:1], s)[0], torch.eye(4, dtype=torch.float64), atol=1e-6)


def test_render_targets_matches_rendering_in_the_world_frame():
    """Gaussians from the ground-truth pointmap in view 0's frame at an arbitrary scale, rendered
    through render_targets into the context and target cameras, give the same images as the
    same Gaussians built in the world frame and rendered with the world cameras: the scale is
    recovered and the cameras are moved consistently."""
    scene = make_scene(7, 3, 64, "orbit")
    s = as_sample(scene, "x", 2, torch.Generator(), n_targets=1)
    cam = unproject_depth(s["depth"], s["K"])
    rel = invert_pose(s["c2w"][0])[None] @ s["c2w"]
    pts = 3.0 * transform_points(rel[:, None], cam)                       # view 0's frame, another scale
    g = gaussians_from_pointmap(pts, s["images"], s["depth"] * 3.0, s["K"])
    world = transform_points(s["c2w"][:, None], cam)
    g_world = gaussians_from_pointmap(world, s["images"], s["depth"], s["K"])
    for which, pre in (("context", ""), ("target", "target_")):
        rend, img, depth, scale = render_targets(g, pts, s, which=which)
        assert abs(float(scale) - 3.0) < 1e-4
        ref = render_views(g_world, s[pre + "c2w"], s[pre + "K"], (64, 64))
        assert torch.equal(img, s[pre + "images"])
        # the same Gaussians in two frames: float32 rounding of the depths can swap the compositing
        # order of two Gaussians at (nearly) the same depth, which changes a few pixels; anything
        # wrong with the scale or the cameras changes most of the image
        d = (rend.rgb - ref.rgb).abs()
        assert (d > 1e-3).double().mean() <= 1e-3 and d.mean() < 1e-5, (d.max(), (d > 1e-3).sum())
        assert torch.allclose(rend.depth, 3.0 * ref.depth, rtol=1e-3, atol=1e-3)


def test_stage2_freezes_the_coarse_pose_predictor_and_learns_to_render(tmp_path, stage1_ckpt):
    s1 = load_checkpoint(stage1_ckpt)["model"]
    cfg = cfg_of(tmp_path / "s2", steps=30, init_from=str(stage1_ckpt),
                 **stage2_kw(**{"optim.lr": 3e-4, "render.render_context": True, "loss.pose_weight": 0.0,
                                "loss.geometry_weight": 0.0, "data.modes": ["forward"]}))   # one room, refit
    # lr 3e-4: at 1e-3 the render loss oscillates, so float-level changes (summation order) decide the outcome
    res = train(cfg)
    sd = res.model.released_state_dict()
    names = res.model.released_names()
    coarse = [names["pose_predictor." + k] for k in res.model.pose_predictor.state_dict()]
    assert coarse and all(torch.equal(sd[k], s1[k]) for k in coarse)        # frozen, from stage 1
    assert not torch.equal(sd["enc_blocks.0.attn.qkv.weight"], s1["enc_blocks.0.attn.qkv.weight"])   # trained on
    head = [k for k in sd if k.startswith("downstream_head4.")]
    fresh = build_model(cfg).released_state_dict()
    assert head and any(not torch.equal(sd[k], fresh[k]) for k in head)     # the Gaussian head learns
    tr = [r for r in res.history if r["kind"] == "train"]
    assert all(math.isfinite(r["render"]) and "psnr" in r for r in tr)
    first, last = sum(r["render"] for r in tr[:4]) / 4, sum(r["render"] for r in tr[-4:]) / 4
    assert last < 0.85 * first, (first, last)
    ck = load_checkpoint(tmp_path / "s2" / "checkpoint.pt")
    assert ck["model_config"]["kind"] == "nvs" and ck["step"] == 30


def test_stage2_validation_reports_novel_view_psnr(tmp_path, stage1_ckpt):
    cfg = cfg_of(tmp_path / "v", steps=2, init_from=str(stage1_ckpt),
                 **stage2_kw(**{"data.val_seeds": [1000000, 1000001]}))
    res = train(cfg)
    assert {"psnr", "render", "RRA@15"} <= set(res.val) and 0 < res.val["psnr"] < 60


def test_stage2_bad_configs_are_named(tmp_path, stage1_ckpt):
    with pytest.raises(ValueError, match="NVS model"):
        cfg_of(tmp_path, stage=2)
    with pytest.raises(ValueError, match="stage: 2"):
        cfg_of(tmp_path, model="tiny_nvs")
    wrong = cfg_of(tmp_path / "w", init_from=str(stage1_ckpt),
                   **stage2_kw(model_overrides={"enc_dim": 32, "dec_dim": 32}))
    with pytest.raises(ValueError, match="do not fit"):
        train(wrong)
    with pytest.raises(FileNotFoundError):
        train(cfg_of(tmp_path / "m", init_from=str(tmp_path / "none.pt"), **stage2_kw()))
    model = build_model(cfg_of(tmp_path, **stage2_kw()))
    note = init_weights(model, stage1_ckpt)
    assert "downstream_head4" in note and "downstream_head1" in note


def test_stage2_interrupted_run_resumes_bit_identically(tmp_path, stage1_ckpt):
    kw = dict(steps=4, init_from=str(stage1_ckpt), **stage2_kw())
    full = train(cfg_of(tmp_path / "full", **kw))
    cfg = cfg_of(tmp_path / "cut", **kw)

    def interrupt(rec):
        if rec["kind"] == "train" and rec["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, callback=interrupt)
    resumed = train(cfg)          # resumes from the checkpoint, not from init_from
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert resumed.step == 4 and all(torch.equal(a[k], b[k]) for k in a)
