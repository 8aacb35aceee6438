"""Evaluation toolkit (flare_nb.eval.evaluate): perfect predictions score RRA = 100 / AUC = 1 in any
frame and scale; unregistered views turn their pairs into failures; the markdown table shows
per-group mean and std; methods see the images only; the CLI runs the COLMAP baseline."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flare_nb.eval import evaluate as ev
from flare_nb.cameras import quat_to_matrix
from flare_nb.eval.metrics import pose_metrics
from flare_nb.scenes.synthetic import make_scene, pointmaps

ROOT = Path(__file__).resolve().parents[1]


def _random_c2w(V, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = torch.eye(4, dtype=torch.float64).repeat(V, 1, 1)
    T[:, :3, :3] = quat_to_matrix(torch.randn(V, 4, generator=g, dtype=torch.float64))
    T[:, :3, 3] = 3 * torch.randn(V, 3, generator=g, dtype=torch.float64)
    return T


def _sim3(c2w, s=2.5, seed=1):
    """Apply a similarity transform to a whole trajectory (a different world frame and scale)."""
    S = torch.eye(4, dtype=torch.float64)
    S[:3, :3] = quat_to_matrix(torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    S[:3, 3] = torch.tensor([1.0, -2.0, 0.5])
    out = S @ c2w
    out[:, :3, 3] = s * (S[:3, :3] @ c2w[:, :3, 3, None])[..., 0] + S[:3, 3]
    return out


# ------------------------------------------------------------------------------- evaluate_poses


def test_perfect_prediction_in_another_frame_scores_full_marks():
    gt = _random_c2w(5)
    m = ev.evaluate_poses(_sim3(gt), gt)
    for t in (5, 15, 30):
        assert m[f"RRA@{t}"] == 100.0 and m[f"RTA@{t}"] == 100.0
    assert m["AUC@30"] == 1.0
    assert m["n_pairs"] == 10 and m["n_failed_pairs"] == 0 and m["registered_%"] == 100.0
    assert m["rot_err"].max() < 1e-5 and m["trans_err"].max() < 1e-5


def test_matches_pose_metrics_when_all_views_registered():
    gt = _random_c2w(6, seed=2)
    pred = gt.clone()
    g = torch.Generator().manual_seed(3)
    pred[:, :3, :3] = quat_to_matrix(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
                                     + 0.08 * torch.randn(6, 4, generator=g, dtype=torch.float64)) @ gt[:, :3, :3]
    pred[:, :3, 3] += 0.4 * torch.randn(6, 3, generator=g, dtype=torch.float64)
    m, ref = ev.evaluate_poses(pred, gt), pose_metrics(pred, gt)
    for k in ("RRA@5", "RRA@15", "RRA@30", "RTA@5", "RTA@15", "RTA@30", "AUC@30"):
        assert m[k] == pytest.approx(ref[k]), k
    assert 0 < m["AUC@30"] < 1   # the noise is large enough to matter
    assert torch.equal(m["rot_err"], ref["rot_err"])


def test_unregistered_view_counts_its_pairs_as_failures():
    gt = _random_c2w(4)
    pred = _sim3(gt)
    pred[2] = float("nan")                     # view 2 failed to register
    m = ev.evaluate_poses(pred, gt)
    failed = (m["pairs"] == 2).any(1)
    assert failed.sum() == 3 and m["n_failed_pairs"] == 3 and m["n_registered"] == 3
    assert (m["rot_err"][failed] == ev.FAILED_DEG).all() and (m["trans_err"][failed] == ev.FAILED_DEG).all()
    assert m["rot_err"][~failed].max() < 1e-5
    assert m["RRA@5"] == 50.0 and m["RTA@30"] == 50.0 and m["AUC@30"] == 0.5
    assert m["registered_%"] == 75.0
    # an explicit mask marks a finite pose as failed the same way
    m2 = ev.evaluate_poses(_sim3(gt), gt, registered=torch.tensor([True, True, False, True]))
    assert m2["RRA@5"] == 50.0 and torch.equal(m2["rot_err"], m["rot_err"])


def test_nothing_registered_scores_zero():
    gt = _random_c2w(3)
    m = ev.evaluate_poses(torch.full((3, 4, 4), float("nan")), gt)
    assert m["RRA@30"] == 0.0 and m["AUC@30"] == 0.0 and m["n_failed_pairs"] == 3


def test_evaluate_poses_errors():
    gt = _random_c2w(3)
    with pytest.raises(ValueError, match=r"pred_c2w must be \(V, 4, 4\)"):
        ev.evaluate_poses(gt[:, :3], gt)
    with pytest.raises(ValueError, match="gt_c2w must be"):
        ev.evaluate_poses(gt, gt[:2])
    bad = gt.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="gt_c2w contains non-finite"):
        ev.evaluate_poses(gt, bad)
    with pytest.raises(ValueError, match=r"registered must be a \(3,\) bool"):
        ev.evaluate_poses(gt, gt, registered=torch.ones(2, dtype=torch.bool))
    pred = gt.clone()
    pred[1] = float("nan")
    with pytest.raises(ValueError, match=r"views \[1\] are marked registered"):
        ev.evaluate_poses(pred, gt, registered=torch.ones(3, dtype=torch.bool))


# ------------------------------------------------------------------------------- format_table


def test_format_table_mean_std_and_missing_values():
    rows = [dict(method="a", mode="orbit", seed=1, **{"RRA@5": 100.0, "AUC@30": 0.5, "time_s": 1.0}),
            dict(method="a", mode="orbit", seed=2, **{"RRA@5": 50.0, "AUC@30": float("nan"), "time_s": 3.0}),
            dict(method="b", mode="orbit", seed=1, **{"RRA@5": 20.0})]
    lines = ev.format_table(rows).splitlines()
    assert lines[0] == "| method | mode | scenes | RRA@5 | AUC@30 | time_s |"
    assert re.fullmatch(r"\|(---\|){6}", lines[1])
    a = [c.strip() for c in lines[2].strip("|").split("|")]
    assert a == ["a", "orbit", "2", "75.0 ± 25.0", "0.500 ± 0.000 (n=1)", "2.00 ± 1.00"]
    b = [c.strip() for c in lines[3].strip("|").split("|")]
    assert b == ["b", "orbit", "1", "20.0", "-", "-"]
    assert len(lines) == 4
    # chosen columns, grouping by seed too
    t = ev.format_table(rows, columns=["time_s"], group_by=("method", "seed"))
    assert t.splitlines()[0] == "| method | seed | scenes | time_s |" and len(t.splitlines()) == 5


def test_format_table_errors():
    with pytest.raises(ValueError, match="no rows"):
        ev.format_table([])
    with pytest.raises(ValueError, match=r"no row has column\(s\) \['RRA@1'\]"):
        ev.format_table([{"method": "a", "RRA@5": 1.0}], columns=["RRA@1"])
    with pytest.raises(TypeError, match="dicts"):
        ev.format_table([[1, 2]])


# ------------------------------------------------------------------------- evaluate_on_synthetic


def _oracle(scene):
    """A perfect method: it re-renders the scene from the seed in its name (it cannot read the
    ground truth from the scene it is given)."""
    assert torch.isnan(scene.c2w).all() and torch.isnan(scene.K).all() and scene.depth is None
    mode, seed = re.fullmatch(r"synthetic:(\w+):seed=(\d+)", scene.source).groups()
    truth = make_scene(int(seed), scene.n_views, scene.hw[::-1], mode)
    return {"c2w": _sim3(truth.c2w.double()), "K": truth.K,
            "pointmaps": 2.5 * pointmaps(truth, "world")}


def test_evaluate_on_synthetic_oracle_and_failing_method():
    rows = ev.evaluate_on_synthetic(_oracle, seeds=2, n_views=3, size=(64, 64), mode=["orbit", "forward"],
                                    method="oracle")
    assert [(r["mode"], r["seed"]) for r in rows] == [("orbit", 1_000_000), ("orbit", 1_000_001),
                                                      ("forward", 1_000_000), ("forward", 1_000_001)]
    for r in rows:
        assert r["method"] == "oracle" and r["n_views"] == 3 and r["size"] == "64x64"
        assert r["RRA@5"] == 100.0 and r["RTA@5"] == 100.0 and r["AUC@30"] == 1.0
        assert r["focal_err_%"] < 1e-4 and r["chamfer"] < 1e-4 and r["n_points"] > 100
        assert r["time_s"] >= 0

    def drops_view_1(scene):
        out = _oracle(scene)
        out["c2w"][1] = float("nan")
        return out

    r = ev.evaluate_on_synthetic(drops_view_1, seeds=[1_000_003], n_views=4, size=(64, 64))[0]
    assert r["registered_%"] == 75.0 and r["RRA@5"] == 50.0 and r["n_failed_pairs"] == 3
    assert r["chamfer"] < 1e-4      # the three remaining pointmaps are still exact


def test_evaluate_on_synthetic_errors():
    with pytest.raises(ValueError, match="training range"):
        ev.evaluate_on_synthetic(_oracle, seeds=[5], size=(64, 64))
    with pytest.raises(ValueError, match="mode must be one of"):
        ev.evaluate_on_synthetic(_oracle, seeds=1, size=(64, 64), mode="sideways")
    with pytest.raises(ValueError, match=r"predicted c2w must be \(3, 4, 4\)"):
        ev.evaluate_on_synthetic(lambda s: torch.eye(4), seeds=1, n_views=3, size=(64, 64))
    with pytest.raises(ValueError, match="must return a"):
        ev.evaluate_on_synthetic(lambda s: [1, 2], seeds=1, n_views=3, size=(64, 64))
    with pytest.raises(ValueError, match="held-out range"):
        ev.held_out_seeds(3, start=10)
    with pytest.raises(TypeError, match="callable"):
        ev.evaluate_on_synthetic("colmap", seeds=1)


# ------------------------------------------------------------------------------------ registry / CLI


def test_register_method_and_main(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "METHODS", dict(ev.METHODS))
    ev.register_method("oracle", lambda scale=1.0: _oracle)
    with pytest.raises(ValueError, match="already registered"):
        ev.register_method("oracle", lambda: _oracle)
    out = tmp_path / "rows.json"
    rows = ev.main(["--method", "oracle", "--scenes", "2", "--n-views", "3", "--size", "64", "64",
                    "--opt", "scale=2", "--json", str(out)])
    table = capsys.readouterr().out
    assert "| oracle | orbit | 3 | 64x64 | 2 | 100.0 ± 0.0 |" in table
    assert json.loads(out.read_text())[0]["RRA@5"] == 100.0 and len(rows) == 2
    with pytest.raises(SystemExit):
        ev.main(["--method", "nope"])
    assert "unknown method 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ev.main(["--method", "oracle", "--opt", "colour=red"])
    assert "cannot build method 'oracle'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ev.main(["--method", "oracle", "--opt", "scale"])
    assert "key=value" in capsys.readouterr().err


def test_cli_colmap_on_one_synthetic_scene():
    res = subprocess.run([sys.executable, "-m", "flare_nb.evaluate", "--method", "colmap", "--scenes", "1",
                          "--n-views", "4"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("| method | mode | n_views | size | scenes | RRA@5 |")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:5] == ["colmap", "orbit", "4", "256x256", "1"]
    assert 0.0 <= float(cells[5]) <= 100.0
    assert math.isfinite(float(cells[-1]))   # time_s


def test_given_poses_mode(capsys, one_thread):
    """``--given-poses``: the same scenes with predicted and with the true poses; the given run
    receives the scene's poses (and only then), and the comparison line is printed."""
    rows = ev.main(["--method", "flare", "--given-poses", "--scenes", "2", "--n-views", "2", "--size", "64", "64"])
    out = capsys.readouterr().out
    assert [r["method"] for r in rows] == ["flare"] * 2 + ["flare (true poses given)"] * 2
    assert "chamfer orbit, 2 views, 64x64, 2 scenes: predicted poses" in out and "true poses given" in out
    seen = []
    fn = ev.flare_method(given_poses=True)
    orig = fn.model.forward

    def spy(*a, **k):
        seen.append(k.get("camera_poses"))
        return orig(*a, **k)

    fn.model.forward = spy
    ev.evaluate_on_synthetic(fn, seeds=1, n_views=2, size=(64, 64), give_poses=True)
    assert seen[0] is not None and torch.isfinite(seen[0]).all()
    with pytest.raises(ValueError, match="needs the scene's poses"):
        ev.evaluate_on_synthetic(fn, seeds=1, n_views=2, size=(64, 64))
    given = [{"mode": "orbit", "n_views": 2, "size": "64x64", "seed": 1, "chamfer": 0.1}]
    pred = [dict(given[0], chamfer=0.2)]
    assert "median ratio given/predicted 0.500; lower with given poses in 1 of 1" in ev.given_pose_comparison(pred, given)
    with pytest.raises(SystemExit):
        ev.main(["--method", "colmap", "--given-poses"])
