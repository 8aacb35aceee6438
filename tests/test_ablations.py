"""Ablations in miniature (flare_nb.train.ablations, FlareConfig.pose_conditioning): each variant
changes exactly its config switch, the no-pose-conditioning model ignores the poses fed to
stages 2-3, a run trains and scores, and the table shows mean ± std over seeds."""
import json
from pathlib import Path

import pytest
import torch

from flare_nb.train import ablations as ab
from flare_nb.model.config import tiny
from flare_nb.model.flare import FlareModel
from flare_nb.train.build import build_model
from flare_nb.train.config import config_diff, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base():
    return load_config(ROOT / "configs" / "tiny_synthetic.yaml")


def test_each_variant_changes_only_its_switch(base, tmp_path):
    ref = ab.ablation_config(base, "full", 3, 50, tmp_path)
    assert ref.seed == 3 and ref.steps == 50 and ref.optim.warmup_steps == 5 and ref.run.resume is False
    expected = {"no_pose_conditioning": ["model_overrides.pose_conditioning: '<missing>' -> False"],
                "direct_global": ["loss.w_cam: 0.5 -> 0.0"], "no_pose_noise": ["pose_noise.prob: 0.6 -> 0.0"]}
    for v, diff in expected.items():
        cfg = ab.ablation_config(base, v, 3, 50, tmp_path)
        assert config_diff(ref.to_dict(), cfg.to_dict()) == diff, v
    assert build_model(ab.ablation_config(base, "no_pose_conditioning", 0, 5, tmp_path)).cfg.pose_conditioning is False
    on = base.replace(**{"loss.match_weight": 1.0, "loss.pose_sign_invariant": True, "pose_noise.stage3_gt_prob": 0.5})
    ref_on = ab.ablation_config(on, "full", 3, 50, tmp_path)
    levers = {"no_match_loss": ["loss.match_weight: 1.0 -> 0.0"],
              "no_sign_invariant": ["loss.pose_sign_invariant: True -> False"],
              "stage3_never_true_pose": ["pose_noise.stage3_gt_prob: 0.5 -> 0.0"],
              "stage3_follow_target": ["pose_noise.stage3_follow_target: False -> True"]}
    assert set(levers) == set(ab.LEVERS) and set(ab.SWITCHES) == set(ab.VARIANTS) | set(ab.LEVERS)
    for v, diff in levers.items():
        assert config_diff(ref_on.to_dict(), ab.ablation_config(on, v, 3, 50, tmp_path).to_dict()) == diff, v
        assert v in ab.DESCRIPTIONS
    small = ab.ablation_config(base, "full", 0, 5, tmp_path, size=(64, 64), n_views=2, batch_size=1)
    assert small.data.size == [64, 64] and small.data.n_views == 2 and small.batch_size == 1
    with pytest.raises(ValueError, match="unknown ablation variant 'nope'"):
        ab.ablation_config(base, "nope", 0, 5, tmp_path)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        ab.ablation_config(base, "full", 0, 0, tmp_path)


def _noise(enc, stage):
    return enc + torch.randn(enc.shape, generator=torch.Generator().manual_seed(stage))


@pytest.mark.parametrize("conditioned", [True, False])
def test_pose_conditioning_flag(conditioned):
    torch.manual_seed(0)
    m = FlareModel(tiny().replace(pose_conditioning=conditioned)).eval()
    x = torch.rand(1, 2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a, b = m(x), m(x, pose_noise=_noise)
    same = torch.allclose(a.pts3d_global, b.pts3d_global) and torch.allclose(a.pose_enc_stage2, b.pose_enc_stage2)
    assert same is (not conditioned)        # unconditioned: the poses fed to stages 2-3 have no effect
    torch.testing.assert_close(a.pose_enc_stage1, b.pose_enc_stage1)   # stage 1 never sees them
    if not conditioned:
        cam = a.intermediates["stage2_camera_embed_in"]
        torch.testing.assert_close(cam, torch.tensor([1.0, 0, 0, 0, 0, 0, 0]).expand_as(cam))
    assert tiny().pose_conditioning is True and tiny() == tiny().replace(pose_conditioning=True)


def test_run_ablation_smoke(base, tmp_path):
    row = ab.run_ablation(base, "no_pose_conditioning", 0, 2, tmp_path, eval_scenes=1, modes=("forward",),
                          size=(64, 64), n_views=2, batch_size=1)
    assert (tmp_path / "no_pose_conditioning_seed0" / "checkpoint.pt").exists()
    assert row["variant"] == "no_pose_conditioning" and row["steps"] == 2 and row["eval_scenes"] == 1
    for k in ("RRA@15", "RTA@15", "AUC@30", "chamfer", "val_loss"):
        assert isinstance(row[k], float)
    assert 0 <= row["RRA@15"] <= 100 and 0 <= row["AUC@30"] <= 1
    again = ab.run_ablation(base, "no_pose_conditioning", 0, 2, tmp_path, eval_scenes=1, modes=("forward",),
                            size=(64, 64), n_views=2, batch_size=1, rescore=True)     # the checkpoint, scored again
    assert again == row
    with pytest.raises(ValueError, match="did not reach step 3"):
        ab.run_ablation(base, "no_pose_conditioning", 0, 3, tmp_path, eval_scenes=1, modes=("forward",),
                        size=(64, 64), n_views=2, batch_size=1, rescore=True)


def test_summary_and_table_known_answer(tmp_path):
    rows = [{"variant": "no_pose_noise", "seed": 0, "RRA@15": 10.0, "chamfer": 0.5},
            {"variant": "full", "seed": 0, "RRA@15": 40.0, "chamfer": 0.2},
            {"variant": "full", "seed": 1, "RRA@15": 60.0, "chamfer": float("nan")}]
    s = ab.summarize(rows, ("RRA@15", "chamfer"))
    assert list(s) == ["full", "no_pose_noise"]                  # VARIANTS order
    assert s["full"]["RRA@15"] == {"mean": 50.0, "std": 10.0, "n": 2}
    assert s["full"]["chamfer"]["n"] == 1 and s["full"]["chamfer"]["mean"] == 0.2
    t = ab.format_ablation_table(rows, ("RRA@15", "chamfer"))
    assert "| full | 2 | 50.0 ± 10.0 | 0.200 ± 0.000 |" in t
    assert "| no_pose_noise | 1 | 10.0 ± 0.0 | 0.500 ± 0.000 |" in t
    with pytest.raises(ValueError, match="no ablation rows"):
        ab.summarize([])
    d = ab.difference_table(rows + [{"variant": "no_pose_noise", "seed": 1, "RRA@15": 20.0, "chamfer": 0.5}],
                            ("RRA@15", "chamfer"))
    # RRA: means 15 vs 50, stds 5 and 10 -> -35 / hypot(5, 10) = -3.13; chamfer: both spreads 0, +0.3 -> +inf
    assert "| no_pose_noise | -35.0 (-3.1) | +0.3000 (+inf) |" in d and "| full |" not in d
    dd = ab.differences(rows + [{"variant": "no_pose_noise", "seed": 1, "RRA@15": 20.0, "chamfer": 0.5}],
                        ("RRA@15", "chamfer"))
    assert dd["no_pose_noise"]["RRA@15"] == pytest.approx({"diff": -35.0, "z": -35.0 / 125 ** 0.5})
    with pytest.raises(ValueError, match="no rows of the reference variant .full."):
        ab.difference_table(rows[:1], ("RRA@15",))
    with pytest.raises(FileNotFoundError, match="run_ablations.py"):
        ab.load_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        ab.load_results(tmp_path / "bad.json")
    (tmp_path / "norows.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="'rows' list"):
        ab.load_results(tmp_path / "norows.json")
    (tmp_path / "ok.json").write_text(json.dumps({"rows": rows}))
    assert ab.load_results(tmp_path / "ok.json")["rows"][0]["variant"] == "no_pose_noise"


def _results(variants, settings, seeds=(0, 1)):
    rows = [{"variant": v, "seed": s, "RRA@15": 50.0 + s + (5 if v == "full" else 0), "AUC@30": 0.5,
             "chamfer": 0.1} for v in variants for s in seeds]
    return {"command": "python scripts/run_ablations.py (test)", "settings": settings,
            "variants": {v: {} for v in variants}, "rows": rows}


def test_script_rewrites_the_table_and_refuses_another_reference(tmp_path):
    import subprocess
    import sys

    st = {"config": "c.yaml", "steps": 10, "size": [64, 64], "n_views": 4, "batch_size": 4, "seeds": [0, 1],
          "eval_scenes_per_mode": 2, "orbit_arc": [20, 90], "init_from": "w.pt", "lr": 1e-4, "follow_scenes": 0}
    (tmp_path / "lev").mkdir()
    (tmp_path / "lev" / "results.json").write_text(json.dumps(_results(["no_match_loss"], st)))
    (tmp_path / "ref.json").write_text(json.dumps(_results(["full", "direct_global"], st, seeds=(0, 1, 2))))
    cmd = [sys.executable, str(ROOT / "scripts" / "run_ablations.py"), "--table-only", "--out", str(tmp_path / "lev")]
    r = subprocess.run(cmd + ["--reference", str(tmp_path / "ref.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "lev" / "results.md").read_text()
    assert "| full | 2 |" in md and "| no_match_loss | 2 |" in md and "direct_global |" not in md   # seeds 0, 1 only
    assert "| no_match_loss | -5.0 (-7.1) |" in md          # means 50.5 vs 55.5, stds 0.5 each
    assert "fine-tuning ablation" in md and "20-90 degree spread" in md
    (tmp_path / "ref.json").write_text(json.dumps(_results(["full"], dict(st, steps=20))))
    r = subprocess.run(cmd + ["--reference", str(tmp_path / "ref.json")], capture_output=True, text=True)
    assert r.returncode == 2 and "other settings (steps)" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "ref.json").write_text(json.dumps(_results(["full"], st, seeds=(5,))))
    r = subprocess.run(cmd + ["--reference", str(tmp_path / "ref.json")], capture_output=True, text=True)
    assert r.returncode == 2 and "no 'full' row with the seeds [0, 1]" in r.stderr and "Traceback" not in r.stderr
