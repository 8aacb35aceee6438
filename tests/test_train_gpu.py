"""Training on a bare GPU machine: no open3d / gsplat / roma / plyfile / tqdm, the torch ray
caster, the wall-time limit run.max_minutes and scripts/train_gpu.sh (its --smoke mode on CPU)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flare_nb import cameras
from flare_nb.train.config import TrainConfig, config_diff, load_config
from flare_nb.train.logs import read_log
from flare_nb.train.loop import train
from flare_nb.train.state import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MISSING = ("open3d", "gsplat", "roma", "plyfile", "tqdm")      # absent from the GPU machine


def small_cfg(out_dir, **kw) -> TrainConfig:
    base = {"steps": 4, "batch_size": 1, "data.n_views": 2, "data.size": [64, 64], "data.train_seeds": [0, 2],
            "data.val_seeds": [], "data.raycast": "torch", "model_overrides": {"patch_size": 8},
            "optim.warmup_steps": 1, "run.out_dir": str(out_dir), "run.progress": False, "run.val_every": 0,
            "run.log_every": 1, "run.ckpt_every": 100, "run.threads": 1, "run.device": "cpu"}
    base.update(kw)
    return TrainConfig().replace(**base).validate()


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return env


def test_two_training_steps_without_open3d_gsplat_roma_plyfile_tqdm(tmp_path):
    code = f"""
import sys
for name in {MISSING!r}:
    sys.modules[name] = None                      # import raises ImportError, as where not installed
from flare_nb.scenes.synthetic import resolve_raycast
assert resolve_raycast("auto") == "torch"
from flare_nb.train.launch import main
rc = main(["--config", "configs/tiny_synthetic.yaml", "--set", "steps=2", "--set", "batch_size=1",
           "--set", "data.n_views=2", "--set", "data.size=[64,64]", "--set", "model_overrides={{patch_size: 8}}",
           "--set", "data.train_seeds=[0,2]", "--set", "data.val_seeds=[]", "--set", "loss.match_weight=1.0",
           "--set", "data.raycast=auto", "--set", "run.device=cpu", "--set", "run.threads=1",
           "--set", "run.log_every=1", "--set", "run.out_dir={tmp_path / 'run'}"])
assert rc == 0, rc
assert all(sys.modules.get(n) is None for n in {MISSING!r})
print("OK")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ck["step"] == 2 and ck["config"]["data"]["raycast"] == "auto"
    recs = [x for x in read_log(tmp_path / "run" / "log.jsonl") if x.get("kind") == "train"]
    assert [x["step"] for x in recs] == [1, 2] and all(math.isfinite(x["loss"]) for x in recs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_conversions_equal_roma_bit_for_bit(dtype):
    roma = pytest.importorskip("roma")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(20000, 4, generator=g, dtype=dtype)
    # every branch of the quaternion read-out: near identity, and 180-degree turns about x, y, z
    half = torch.tensor([[1.0, 1e-3, 0, 0], [0, 1, 1e-3, 0], [0, 1e-3, 1, 0], [0, 0, 1e-3, 1]], dtype=dtype)
    q = torch.cat([q, half])
    q = q / q.norm(dim=-1, keepdim=True)
    R = roma.unitquat_to_rotmat(roma.quat_wxyz_to_xyzw(q))
    assert torch.equal(cameras._unitquat_to_matrix(q), R)
    assert torch.equal(cameras.quat_to_matrix(q * 3.0), roma.unitquat_to_rotmat(roma.quat_wxyz_to_xyzw(q * 3.0 / (q * 3.0).norm(dim=-1, keepdim=True))))
    for M in (R, R + 1e-3 * torch.randn(R.shape, generator=g, dtype=dtype)):      # also slightly off SO(3)
        ref = roma.quat_xyzw_to_wxyz(roma.rotmat_to_unitquat(M))
        assert torch.equal(cameras._matrix_to_unitquat(M), ref)
    assert not torch.allclose(cameras._matrix_to_unitquat(R.transpose(-1, -2)), ref, atol=1e-3)


def test_max_minutes_stops_with_checkpoint_and_log_and_resumes(tmp_path):
    cfg = small_cfg(tmp_path, **{"run.max_minutes": 1e-6})         # passes during the first step
    res = train(cfg)
    assert res.step == 1
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 1
    assert [r["step"] for r in read_log(tmp_path / "log.jsonl") if r.get("kind") == "train"] == [1]
    res = train(small_cfg(tmp_path, **{"run.max_minutes": 0}))   # run.* may change: resume to the end
    assert res.step == 4 and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
    assert [r["step"] for r in read_log(tmp_path / "log.jsonl") if r.get("kind") == "train"] == [1, 2, 3, 4]


def test_new_config_keys_are_checked_and_raycast_may_change_on_resume():
    with pytest.raises(ValueError, match="run.max_minutes"):
        TrainConfig().replace(**{"run.max_minutes": -1}).validate()
    with pytest.raises(ValueError, match="data.raycast"):
        TrainConfig().replace(**{"data.raycast": "embree"}).validate()
    a = TrainConfig().to_dict()
    b = TrainConfig().replace(**{"data.raycast": "torch", "run.max_minutes": 8}).to_dict()
    assert config_diff(a, b) == []
    old = TrainConfig().to_dict()
    del old["data"]["raycast"]                                     # a checkpoint written before the key
    assert config_diff(old, a) == []
    assert config_diff(a, TrainConfig().replace(**{"data.cache": True}).to_dict()) != []


def test_train_gpu_script_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    r = subprocess.run(["bash", "scripts/train_gpu.sh", "--smoke", str(out)], cwd=ROOT, env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    for name in ("checkpoint.pt", "model.pt", "log.jsonl", "loss_curves.png", "config.yaml", "final.json"):
        assert (out / name).is_file(), name
    final = json.loads((out / "final.json").read_text())
    assert final["step"] == 3 and final["val"]["n_scenes"] == 2 and len(final["priors"]) == 3
    assert "final validation: pose L1" in r.stdout and "prior  per_view" in r.stdout
    cfg = load_config(out / "config.yaml")        # the shipped recipe's data and levers
    assert cfg.loss.pose_sign_invariant is True and cfg.pose_noise.stage3_gt_prob == 0.5
    assert cfg.loss.match_weight == 1.0 and cfg.data.orbit_arc == [20, 90] and cfg.data.size == [64, 64]
    sd = torch.load(out / "model.pt", weights_only=True)["model"]
    trained = load_checkpoint(out / "checkpoint.pt")["model"]
    assert sd.keys() == trained.keys() and all(torch.equal(sd[k], trained[k]) for k in sd)


def test_train_gpu_script_refuses_bad_arguments(tmp_path):
    r = subprocess.run(["bash", "scripts/train_gpu.sh", "--bogus"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True)
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr and "Traceback" not in r.stderr
    env = {k: v for k, v in _env().items() if k != "OUT"}
    r = subprocess.run(["bash", "scripts/train_gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "no output folder" in r.stderr
    (tmp_path / "model.pt").write_bytes(b"mine")                  # someone else's file: left alone
    r = subprocess.run(["bash", "scripts/train_gpu.sh", "--smoke", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nothing was overwritten" in r.stderr
    assert (tmp_path / "model.pt").read_bytes() == b"mine"
