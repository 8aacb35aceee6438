"""The trainer (flare_nb.train): learning, exact resume, DDP equivalence, bad input, checkpoints.

Everything runs the tiny model on 64x64 synthetic scenes with 2 views for a few steps.
"""
import math
from pathlib import Path

import pytest
import torch

from flare_nb.train.build import build_model, frozen_stages, select_trainable
from flare_nb.train.launch import launch_ddp, main
from flare_nb.train.logs import read_log
from flare_nb.train.loop import NonFiniteLossError, train
from flare_nb.train.optim import lr_factor, make_optimizer, remap_optimizer_state
from flare_nb.train.state import CHECKPOINT_NAME, load_checkpoint, load_trained_model, save_checkpoint
from flare_nb.model.pose_encoding import perturb_pose_encoding
from flare_nb.train.config import TrainConfig, config_diff, load_config

ROOT = Path(__file__).resolve().parents[1]

def small_cfg(out_dir, **kw) -> TrainConfig:
    base = {"steps": 6, "batch_size": 2, "data.n_views": 2, "data.size": [64, 64], "data.train_seeds": [0, 2],
            "data.val_seeds": [], "optim.lr": 1e-3, "optim.warmup_steps": 2, "run.out_dir": str(out_dir),
            "run.progress": False, "run.val_every": 0, "run.log_every": 1, "run.ckpt_every": 100,
            "run.threads": 1}
    base.update(kw)
    return TrainConfig().replace(**base).validate()


def weights(model):
    """A copy of the weights under the released names (what training checkpoints hold)."""
    return {k: v.detach().clone() for k, v in model.released_state_dict().items()}


pytestmark = pytest.mark.usefixtures("one_thread")    # tests/conftest.py


@pytest.fixture(scope="module")
def scenes():
    from flare_nb.scenes.synthetic import make_scene

    return [make_scene(s, 2, 64, "orbit") for s in (0, 1)]


# ---------------------------------------------------------------------------- config and pieces
def test_shipped_config_loads_and_bad_configs_are_named(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny_synthetic.yaml")
    assert cfg.model == "tiny" and cfg.data.n_views >= 2 and tuple(cfg.optim.betas) == (0.9, 0.95)
    assert cfg.pose_noise.prob == 0.6 and cfg.pose_noise.stage2_deg == 7.5 and cfg.pose_noise.stage3_deg == 5.0
    over = load_config(ROOT / "configs" / "tiny_synthetic.yaml", ["optim.lr=2e-3", "run.out_dir=x"])
    assert over.optim.lr == 2e-3 and over.run.out_dir == "x"
    assert config_diff(cfg.to_dict(), over.to_dict()) == ["optim.lr: 0.0005 -> 0.002"]   # run.* ignored
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ValueError, match="lrr"):
        load_config(bad)
    bad.write_text("data:\n  n_views: 1\n")
    with pytest.raises(ValueError, match="data.n_views.*at least 2"):
        load_config(bad)
    bad.write_text("data:\n  size: [100, 64]\n")
    with pytest.raises(ValueError, match="data.size.*multiples of 64"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_lr_warmup_then_cosine():
    f = [lr_factor(s, 100, 10, 0.01) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))                 # non-increasing after warm-up
    assert f[55] == pytest.approx(0.01 + 0.99 * 0.5, rel=1e-6)          # half-way down the cosine
    assert f[100] == pytest.approx(0.01)


def test_freezing_encoder_and_stage2(tmp_path):
    cfg = small_cfg(tmp_path, freeze_encoder=True)
    model = build_model(cfg)
    trained, skipped = select_trainable(model, cfg, torch.device("cpu"))
    assert not any(n.startswith("encoder.") for n in trained)
    assert any(n.startswith("encoder.enc_blocks.") for n in skipped)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert any(n.startswith("pose_predictor.pose_head.") for n in trained)
    # parameters no loss reaches (the DPT local-feature MLPs) are not trained
    assert any("head_local_features" in n for n in skipped)
    assert "pose_predictor" in frozen_stages(small_cfg(tmp_path, stage=2, model="tiny_nvs"))


def test_optimizer_state_follows_parameter_names_when_the_module_order_changes(tmp_path):
    """A checkpoint written by a model that listed its parameters in another order (an earlier
    module tree) resumes with each parameter's Adam moments, found by released name."""
    cfg = small_cfg(tmp_path)
    model = build_model(cfg)
    trained, _ = select_trainable(model, cfg, torch.device("cpu"))
    opt, _ = make_optimizer(model, cfg)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    opt.step()
    state = opt.state_dict()
    released = model.released_names()
    now = [released[n] for n in trained]
    params = dict(model.named_parameters())

    def grouped(names):                 # make_optimizer's order: decayed weights first, then the rest
        nd = [r for r, n in zip(names, trained_of(names)) if params[n].ndim <= 1 or n.endswith(".bias")]
        return [r for r in names if r not in set(nd)] + nd

    back = {released[n]: n for n in trained}

    def trained_of(names):
        return [back[r] for r in names]

    new_pos = {r: i for i, r in enumerate(grouped(now))}
    saved_names = now[::-1]              # the earlier model listed its parameters in reverse
    old = grouped(saved_names)
    old_state = {"state": {i: state["state"][new_pos[r]] for i, r in enumerate(old)},
                 "param_groups": state["param_groups"]}
    back_state = remap_optimizer_state(old_state, saved_names, model, trained)
    assert back_state["param_groups"] == state["param_groups"]
    assert set(back_state["state"]) == set(state["state"])
    for i, st in state["state"].items():
        assert torch.equal(back_state["state"][i]["exp_avg"], st["exp_avg"])
    opt.load_state_dict(back_state)
    # without the remap, the moments of one parameter would land on another of another shape
    assert any(old_state["state"][i]["exp_avg"].shape != st["exp_avg"].shape for i, st in state["state"].items())
    with pytest.raises(ValueError, match="other parameters"):
        remap_optimizer_state(old_state, saved_names[1:] + ["not_a_parameter"], model, trained)


# ---------------------------------------------------------------------------- training runs
def test_loss_goes_down_on_fixed_scenes(tmp_path):
    cfg = small_cfg(tmp_path / "run", steps=24, batch_size=1, **{"optim.warmup_steps": 3, "optim.lr": 2e-3})
    res = train(cfg)
    losses = [r["loss"] for r in res.history if r["kind"] == "train"]
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    for name in (CHECKPOINT_NAME, "log.jsonl", "loss_curves.png", "config.yaml"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == 24
    back = load_trained_model(tmp_path / "run" / CHECKPOINT_NAME)
    assert not back.training and all(torch.equal(v, res.model.state_dict()[k]) for k, v in back.state_dict().items())


def test_interrupted_run_resumes_bit_identically(tmp_path):
    full = train(small_cfg(tmp_path / "full", batch_size=1))
    cfg = small_cfg(tmp_path / "cut", batch_size=1)

    def interrupt(rec):
        if rec["kind"] == "train" and rec["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, callback=interrupt)
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)["step"] == 3
    resumed = train(cfg)
    assert resumed.step == full.step == 6
    a, b = weights(full.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = [(r["step"], r["loss"]) for r in read_log(tmp_path / "full" / "log.jsonl") if r["kind"] == "train"]
    log_b = [(r["step"], r["loss"]) for r in read_log(tmp_path / "cut" / "log.jsonl") if r["kind"] == "train"]
    assert log_a == log_b and len(log_a) == 6
    # a finished run is not trained again
    assert train(cfg).step == 6
    # resuming under another configuration is refused, naming the field; run.* may change
    with pytest.raises(ValueError, match=r"optim\.lr: 0\.001 -> 0\.002"):
        train(small_cfg(tmp_path / "cut", batch_size=1, **{"optim.lr": 2e-3}))
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        train(small_cfg(tmp_path / "cut", batch_size=1, **{"run.resume": False}))
    assert train(small_cfg(tmp_path / "cut", batch_size=1, **{"run.log_every": 5})).step == 6


def _sgd_gradient(out_dir, w0, lr, **kw):
    """Run one plain-SGD step (no momentum, no decay, no clipping) and read back the gradient it
    applied: ``w1 = w0 - lr * g`` exactly up to one float32 rounding of the update."""
    ck = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME)
    assert ck["step"] == 1
    return {k: (w0[k] - ck["model"][k]) / lr for k in w0 if w0[k].is_floating_point()}, ck


def test_ddp_two_gloo_processes_average_gradients_like_one_process(tmp_path):
    """DDP must give every process the gradient of the whole global batch. One SGD step with
    lr = 1 turns the applied gradient into a weight difference, so the 1-process run (batch of 2
    scenes) and the 2-process run (1 scene each, gradients all-reduced) are compared at the
    gradient itself. The only legitimate difference is float32 summation order: the batch mean
    is taken over the 2 scenes in one process, or over 1 scene then averaged across 2 processes.
    Bound: a few float32 ulps of the largest gradient magnitude times sqrt(terms per reduction)
    (64x64 pixels x 2 views x 2 scenes) plus the rounding of ``w0 - g``. A DDP that does not
    average (each process keeps its own scene's gradient) or sums instead of averaging misses
    this by orders of magnitude, which the last assertion checks on the same numbers."""
    kw = {"steps": 1, "optim.name": "sgd", "optim.lr": 1.0, "optim.warmup_steps": 0, "optim.weight_decay": 0.0,
          "optim.grad_clip": None}
    cfg1 = small_cfg(tmp_path / "one", **kw)
    torch.manual_seed(cfg1.seed)
    w0 = weights(build_model(cfg1))
    train(cfg1)
    launch_ddp(small_cfg(tmp_path / "two", **kw), 2, threads=1)
    train(small_cfg(tmp_path / "half", **{**kw, "batch_size": 1}))     # what rank 0 alone would apply
    g1, _ = _sgd_gradient(tmp_path / "one", w0, 1.0)
    g2, ck = _sgd_gradient(tmp_path / "two", w0, 1.0)
    gh, _ = _sgd_gradient(tmp_path / "half", w0, 1.0)
    assert ck["world_size"] == 2

    eps = torch.finfo(torch.float32).eps
    g_max = max(g.abs().max().item() for g in g1.values())
    w_max = max(w0[k].abs().max().item() for k in g1)
    tol = 8 * eps * math.sqrt(64 * 64 * 2 * 2) * g_max + 2 * eps * (w_max + g_max)
    diff = max((g1[k] - g2[k]).abs().max().item() for k in g1)
    print(f"gradient 1 vs 2 processes {diff:.2e}, tolerance {tol:.2e}, not averaged {max((g1[k] - gh[k]).abs().max().item() for k in g1):.2e}")
    assert diff <= tol, (diff, tol)
    not_averaged = max((g1[k] - gh[k]).abs().max().item() for k in g1)   # rank 0's gradient alone
    assert not_averaged > 100 * tol, (not_averaged, tol)

    l1 = [r["loss"] for r in read_log(tmp_path / "one" / "log.jsonl") if r["kind"] == "train"]
    l2 = [r["loss"] for r in read_log(tmp_path / "two" / "log.jsonl") if r["kind"] == "train"]
    assert len(l1) == len(l2) == 1
    assert l1 == pytest.approx(l2, rel=64 * eps)          # same weights, same scenes: one mean, two orders


def test_ddp_adam_runs_resume_state_and_log_like_one_process(tmp_path):
    """Two AdamW steps under 2 processes: the run completes, logs both steps and stores a
    checkpoint with world_size 2. Adam divides by the root of the squared gradient, so a
    near-zero gradient's float-level difference can move a weight by up to lr: the weights
    are compared at the gradient level above, not here."""
    cfg = small_cfg(tmp_path / "two", steps=2, **{"optim.warmup_steps": 1})
    launch_ddp(cfg, 2, threads=1)
    log = [r for r in read_log(tmp_path / "two" / "log.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in log] == [1, 2] and all(math.isfinite(r["loss"]) for r in log)
    ck = load_checkpoint(tmp_path / "two" / CHECKPOINT_NAME)
    assert ck["world_size"] == 2 and ck["step"] == 2 and ck["optimizer"]["state"]


# ---------------------------------------------------------------------------- bad input
def test_nan_loss_names_step_and_scene(tmp_path, scenes):
    from dataclasses import replace

    depth = torch.where(scenes[1].depth > 0, float("inf"), 0.0)   # a corrupted depth map
    bad = replace(scenes[1], depth=depth, source="bad-scene")
    with pytest.raises(NonFiniteLossError, match=r"step 0.*bad-scene"):
        train(small_cfg(tmp_path), dataset=[scenes[0], bad])
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_empty_and_one_view_datasets(tmp_path, scenes):
    with pytest.raises(ValueError, match="training dataset is empty"):
        train(small_cfg(tmp_path), dataset=[])
    one = {"images": scenes[0].images[:1], "K": scenes[0].K[:1], "c2w": scenes[0].c2w[:1],
           "depth": scenes[0].depth[:1], "source": "single"}
    with pytest.raises(ValueError, match="1 view.*at least 2"):
        train(small_cfg(tmp_path), dataset=[one, one])
    no_depth = {**one, "images": scenes[0].images, "K": scenes[0].K, "c2w": scenes[0].c2w, "depth": None}
    with pytest.raises(ValueError, match="no depth.*geometry_weight"):
        train(small_cfg(tmp_path, steps=1), dataset=[no_depth, no_depth])


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    import flare_nb.train.state as tr

    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"format": tr.FORMAT, "step": 7, "w": torch.arange(3.0)})

    def dies_mid_write(obj, f):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(tr.torch, "save", dies_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": tr.FORMAT, "step": 8})
    monkeypatch.undo()
    ck = load_checkpoint(path)                    # the finished checkpoint is intact
    assert ck["step"] == 7 and torch.equal(ck["w"], torch.arange(3.0))
    assert not list(tmp_path.glob("ck.pt.tmp*"))
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_cli_reports_errors(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err


def test_model_pose_noise_hook_feeds_stages_2_and_3_only():
    from flare_nb.model.config import tiny
    from flare_nb.model.flare import FlareModel

    torch.manual_seed(0)
    model = FlareModel(tiny()).eval()
    x = torch.rand(1, 3, 3, 64, 64) * 2 - 1
    calls = []

    def identity(enc, stage):
        calls.append((stage, tuple(enc.shape), enc.requires_grad))
        return enc

    with torch.no_grad():
        ref = model(x)
        same = model(x, pose_noise=identity)
        noisy = model(x, pose_noise=lambda enc, stage: perturb_pose_encoding(
            enc, 1.0, 20.0, 0.2, torch.Generator().manual_seed(stage)))
    assert calls == [(2, (1, 3, 9), False), (3, (1, 3, 9), False)]
    assert torch.equal(same.pts3d_global, ref.pts3d_global)
    assert torch.equal(noisy.pose_enc_stage1, ref.pose_enc_stage1)          # stage 1 is upstream of the noise
    assert not torch.allclose(noisy.pts3d_cam, ref.pts3d_cam)               # stage 2 sees the noisy pose
    assert not torch.allclose(noisy.pts3d_global, ref.pts3d_global)


def test_orbit_curriculum_widens_the_arc_with_the_step(tmp_path):
    from flare_nb.scenes.synthetic import make_scene
    from flare_nb.train.data import StepBatches, make_datasets, orbit_arc_at

    cfg = small_cfg(tmp_path, **{"data.orbit_arc_start": [10, 30], "data.curriculum_steps": 100,
                                 "data.modes": ["orbit"], "batch_size": 1})
    assert orbit_arc_at(cfg, 0) == (10.0, 30.0) and orbit_arc_at(cfg, 50) == (25.0, 115.0)
    assert orbit_arc_at(cfg, 100) == orbit_arc_at(cfg, 10_000) == (40.0, 200.0)
    assert orbit_arc_at(small_cfg(tmp_path), 0) is None
    train_ds, _ = make_datasets(cfg)
    batches = StepBatches(train_ds, cfg, [0])
    seed = train_ds.seeds[batches.index(0)]
    want = make_scene(seed, 2, 64, "orbit", orbit_arc=(10, 30))
    assert torch.equal(batches[0]["c2w"][0], want.c2w)
    with pytest.raises(ValueError, match="orbit_arc_start"):
        small_cfg(tmp_path, **{"data.curriculum_steps": 10})


def test_ddp_workers_die_with_their_launcher(tmp_path):
    """Killing the process that ran launch_ddp (`kill` of a background `--nproc 2` run) must not
    leave its worker processes training on as orphans."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    cfg = small_cfg(tmp_path / "run", steps=100000, **{"run.log_every": 1})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    # started from a shell in the background, as a user would (nohup ... &)
    cmd = (f"nohup {sys.executable} -m flare_nb.train --config {tmp_path / 'cfg.yaml'} --nproc 2 "
           f"> {tmp_path / 'out.log'} 2>&1 & echo $!")
    pid = int(subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True).stdout.split()[0])
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.stat().st_size > 0):
        time.sleep(0.5)
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                text=True).stdout.split()]
    os.kill(pid, signal.SIGTERM)
    alive = children
    try:
        assert log.exists(), "the DDP run did not start"
        deadline = time.time() + 30
        while alive and time.time() < deadline:
            time.sleep(0.5)
            alive = [c for c in alive if os.path.exists(f"/proc/{c}") and
                     "Z" not in open(f"/proc/{c}/stat").read().split()[2]]
        assert children and not alive, (children, alive)
    finally:
        for c in alive:
            os.kill(c, signal.SIGKILL)


def test_matching_loss_trains_the_descriptors_and_priors_sit_beside_validation(tmp_path):
    cfg = small_cfg(tmp_path, steps=2, **{"loss.match_weight": 1.0, "data.cache": True,
                                          "data.val_seeds": [1_000_000, 1_000_002]})
    train(cfg)
    log = read_log(tmp_path / "log.jsonl")
    assert all("match" in r and math.isfinite(r["match"]) for r in log if r["kind"] == "train")
    priors = {r["prior"]: r for r in log if r["kind"] == "prior"}
    assert set(priors) == {"straight", "constant", "per_view"}
    val = [r for r in log if r["kind"] == "val"][-1]
    assert {"pose_L1", "AUC@30", "pose_L1/stage1", "match"} <= set(val)
    assert all("pose_L1" in p and "AUC@30" in p for p in priors.values())
    ck = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert any(n.startswith("downstream_head1.head_local_features") for n in ck["trained"])
    with pytest.raises(ValueError, match="loss.match_weight"):
        small_cfg(tmp_path, **{"loss.match_weight": -1.0})


def test_config_diff_counts_a_key_missing_from_an_older_checkpoint_as_its_default():
    from flare_nb.train.config import TrainConfig, config_diff

    current = TrainConfig().to_dict()
    saved = TrainConfig().to_dict()
    del saved["pose_noise"]["stage3_gt_prob"]            # written before the key existed
    assert config_diff(saved, current) == []
    changed = TrainConfig().replace(**{"pose_noise.stage3_gt_prob": 0.5}).to_dict()
    assert config_diff(saved, changed) == ["pose_noise.stage3_gt_prob: 0.0 -> 0.5"]
