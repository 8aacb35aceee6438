"""Blind pose priors (flare_nb.eval.priors) and the pose-L1 metric: what a model must beat."""
import json
import math

import pytest
import roma
import torch

from flare_nb.eval.metrics import pose_l1, pose_metrics
from flare_nb.eval.priors import (PRIORS, fit_priors, fit_synthetic_priors, mean_rotation, prior_method, prior_poses,
                             score_priors, straight_ahead)


def _traj(angles_deg, step=1.0):
    """c2w (V, 4, 4): yaw about the camera y axis by the given angles, moving along x."""
    out = []
    for k, a in enumerate(angles_deg):
        T = torch.eye(4)
        T[:3, :3] = roma.rotvec_to_rotmat(torch.tensor([0.0, math.radians(a), 0.0]))
        T[0, 3] = step * k
        out.append(T)
    return torch.stack(out)


def test_straight_ahead_is_identity_rotations_moving_forward():
    c = straight_ahead(4)
    assert torch.equal(c[:, :3, :3], torch.eye(3).expand(4, 3, 3))
    assert torch.equal(c[:, :3, 3], torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3]], dtype=torch.float32))


def test_mean_rotation_is_exact_for_equal_rotations_and_symmetric_spread():
    R = roma.rotvec_to_rotmat(torch.tensor([0.1, -0.2, 0.3]))
    assert torch.allclose(mean_rotation(R.expand(5, 3, 3)), R, atol=1e-6)
    axis = torch.tensor([0.0, 0.0, 1.0])
    pair = roma.rotvec_to_rotmat(torch.stack([axis * 0.3, axis * -0.3]))
    assert torch.allclose(mean_rotation(pair), torch.eye(3), atol=1e-6)      # +-0.3 rad average to none


def test_fitted_priors_recover_a_fixed_trajectory_and_scale_out():
    t = _traj([0, 10, 20, 30])
    fitted = fit_priors([t, t.clone(), _traj([0, 10, 20, 30], step=3.0)])    # scale must not matter
    pv = prior_poses("per_view", 4, fitted)
    assert pose_l1(pv, t) < 1e-5 and pose_metrics(pv, t)["AUC@30"] == 1.0
    const = prior_poses("constant", 4, fitted)
    assert torch.equal(const[0], torch.eye(4)) and torch.equal(const[1], const[3])
    assert pose_l1(const, t) > 0.05                                          # one pose cannot fit three


def test_prior_errors_are_named():
    with pytest.raises(ValueError, match="one of"):
        prior_poses("median", 4)
    with pytest.raises(ValueError, match="fitted first"):
        prior_poses("constant", 4)
    fitted = fit_priors([_traj([0, 5, 10])])
    with pytest.raises(ValueError, match="3-view"):
        prior_poses("per_view", 4, fitted)
    with pytest.raises(ValueError, match="one V"):
        fit_priors([_traj([0, 5]), _traj([0, 5, 10])])
    with pytest.raises(ValueError, match="training seeds only"):
        fit_synthetic_priors("orbit", 4, n_scenes=10, first_seed=999_995)


def test_pose_l1_zero_for_a_similarity_transformed_copy():
    t = _traj([0, 15, 40, 70])
    S = torch.eye(4)
    S[:3, :3] = roma.rotvec_to_rotmat(torch.tensor([0.3, 0.2, -0.5]))
    S[:3, 3] = torch.tensor([1.0, -2.0, 0.5])
    moved = S @ t
    moved[:, :3, 3] *= 2.5
    assert pose_l1(moved, t) < 1e-5
    assert pose_l1(straight_ahead(4), t) > 0.1


def test_synthetic_priors_never_look_at_images_and_fit_per_mode():
    from flare_nb.scenes.synthetic import make_scene

    s = make_scene(1_000_000, 4, 64, "orbit")
    blank = type(s)(images=torch.zeros_like(s.images), K=s.K, c2w=s.c2w, depth=None, names=s.names, source=s.source)
    fn = prior_method("per_view", fit_scenes=16)
    assert torch.equal(fn(s), fn(blank))
    fwd = make_scene(1_000_000, 4, 64, "forward")
    assert not torch.equal(fn(s), fn(fwd))                                   # fitted on another mode
    scored = score_priors([("orbit", s.c2w), ("forward", fwd.c2w)],
                          {m: fit_synthetic_priors(m, 4, 16) for m in ("orbit", "forward")})
    assert set(scored) == set(PRIORS)
    assert {"pose_L1", "AUC@30", "AUC@30/orbit", "pose_L1/forward"} <= set(scored["constant"])


def test_evaluate_command_scores_the_priors_beside_a_method(capsys):
    from flare_nb.eval.evaluate import main

    rows = main(["--method", "straight", "--priors", "--scenes", "2", "--size", "64", "64",
                 "--mode", "orbit", "--orbit-arc", "20", "90", "--opt", "fit_scenes=8"])
    out = capsys.readouterr().out
    assert {r["method"] for r in rows} == {"straight", "constant", "per_view"}
    assert "orbit 20-90" in out and "pose_L1" in out


@pytest.mark.parametrize("mode, arc", [("forward", None), ("orbit", (20.0, 90.0))])
def test_stored_prior_fits_equal_a_fresh_fit(mode, arc):
    """data/priors/synthetic_priors.json (scripts/fit_priors.py) holds exactly what fitting gives."""
    from flare_nb import data_dir
    from flare_nb.eval.priors import PRIOR_TABLE, prior_key

    table = json.loads((data_dir() / PRIOR_TABLE).read_text())["fits"]
    assert prior_key(mode, 4, 512, 0, arc) in table, "run python scripts/fit_priors.py"
    stored = fit_synthetic_priors(mode, 4, 512, 0, arc)
    fresh = fit_synthetic_priors(mode, 4, 512, 0, arc, use_table=False)
    for k in ("constant", "per_view"):
        assert torch.equal(stored[k], fresh[k]), f"{k}: the table is stale; run python scripts/fit_priors.py"


def test_a_stale_stored_fit_is_not_used(tmp_path, monkeypatch):
    """An entry whose first scene's cameras no longer match the generator is fitted again."""
    from flare_nb.eval import priors

    table = {"fits": {priors.prior_key("orbit", 3, 4, 0, (20, 90)): {
        "constant": torch.eye(4).tolist(), "per_view": torch.eye(4).repeat(3, 1, 1).tolist(),
        "check_first_scene_c2w": torch.eye(4).repeat(3, 1, 1).tolist()}}}     # not the generator's cameras
    (tmp_path / "priors").mkdir()
    (tmp_path / priors.PRIOR_TABLE).write_text(json.dumps(table))
    monkeypatch.setenv("FLARE_NB_DATA", str(tmp_path))
    got = fit_synthetic_priors("orbit", 3, 4, 0, (20, 90))
    assert torch.equal(got["per_view"], fit_synthetic_priors("orbit", 3, 4, 0, (20, 90), use_table=False)["per_view"])
    assert not torch.equal(got["per_view"], torch.eye(4).repeat(3, 1, 1))
    good = priors.write_prior_table(tmp_path / priors.PRIOR_TABLE, [("orbit", 3, (20, 90))], n_scenes=4)
    entry = good["fits"][priors.prior_key("orbit", 3, 4, 0, (20, 90))]
    entry["per_view"] = torch.eye(4).repeat(3, 1, 1).tolist()                    # a valid check: the table is read
    (tmp_path / priors.PRIOR_TABLE).write_text(json.dumps(good))
    assert torch.equal(fit_synthetic_priors("orbit", 3, 4, 0, (20, 90))["per_view"], torch.eye(4).repeat(3, 1, 1))
