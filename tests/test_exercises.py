"""The notebook exercises: an untouched stub reports "not done yet", a classic mistake reports
"wrong", the worked solution reports "right", and nothing the learner writes makes the check
raise. Every notebook's exercise cells name an exercise that exists."""
import json
from pathlib import Path

import pytest
import torch

from flare_nb.nb import exercises, solutions

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _stub(*args):
    ...  # the untouched TODO body returns None


def _wrong_patchify(images, p):                      # tile flattened as (row, column, channel)
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def _wrong_harmonic(x, n):                           # cos block first
    e = solutions.harmonic(x, n)
    k = x.shape[-1] * n
    return torch.cat([e[..., k:2 * k], e[..., :k], e[..., 2 * k:]], -1)


def _wrong_to_view0(pts, c2w):                       # used the pose as world-to-camera
    return solutions.to_view0(pts, torch.linalg.inv(c2w))


def _wrong_covariance(mean, quat, scale, w2c, K):   # forgot the 0.3 px low-pass
    return solutions.covariance_2d(mean, quat, scale, w2c, K) - 0.3 * torch.eye(2, dtype=mean.dtype)


def _wrong_confidence(pred, conf, gt, valid, alpha=0.2):   # no scale normalisation
    err = (pred - gt).norm(dim=-1)[valid]
    c = conf[valid]
    return (c * err - alpha * torch.log(c)).mean()


def _wrong_rra_auc(rot, trans):                      # RRA as a fraction, not percent
    out = solutions.rra_auc(rot, trans)
    return torch.stack([out[0] / 100, out[1]])


def _focal_half_pixel(P):
    H, W = P.shape[:2]
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    x, y, z = P.double().unbind(-1)
    votes = torch.cat([((u - W / 2) * z / x).flatten(), ((v - H / 2) * z / y).flatten()])
    votes = votes[torch.isfinite(votes) & (votes > 0)]
    return float(votes.median())


WRONG = {
    "invert_pose": lambda c2w: c2w.transpose(-1, -2),
    "patchify": _wrong_patchify,
    "harmonic": _wrong_harmonic,
    "depth_exp": lambda x: x,
    "to_view0": _wrong_to_view0,
    "covariance_2d": _wrong_covariance,
    "confidence_loss": _wrong_confidence,
    "rra_auc": _wrong_rra_auc,
    "focal": _focal_half_pixel,
}


def test_every_exercise_has_a_solution_and_a_wrong_answer():
    assert set(exercises.EXERCISES) == set(WRONG)
    assert set(exercises.EXERCISES) <= set(solutions.__all__)


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_solution_is_right(name, capsys):
    r = exercises.check(name, getattr(solutions, name))
    assert r.status == "right", r.line
    assert "| right" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_stub_is_not_done(name):
    for stub in (None, _stub):
        r = exercises.check(name, stub, verbose=False)
        assert r.status == "not done yet", r.line
        assert "not done yet" in r.line


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_classic_mistake_is_wrong(name):
    r = exercises.check(name, WRONG[name], verbose=False)
    assert r.status == "wrong", r.line


def test_errors_of_the_learner_are_reported_not_raised():
    def boom(*a):
        raise RuntimeError("shape mismatch in my code\nsecond line")

    def todo(*a):
        raise NotImplementedError

    r = exercises.check("depth_exp", boom, verbose=False)
    assert r.status == "wrong" and "RuntimeError: shape mismatch in my code" in r.line and "\n" not in r.line
    assert exercises.check("depth_exp", todo, verbose=False).status == "not done yet"
    assert exercises.check("depth_exp", 3.0, verbose=False).status == "wrong"
    r = exercises.check("depth_exp", lambda x: x[:, :2], verbose=False)
    assert r.status == "wrong" and "shape" in r.line
    r = exercises.check("depth_exp", lambda x: x * float("nan"), verbose=False)
    assert r.status == "wrong" and "nan" in r.line
    assert exercises.check("rra_auc", lambda r, t: "ninety", verbose=False).status == "wrong"


def test_unknown_exercise_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown exercise"):
        exercises.check("no_such_exercise", solutions.focal)


def test_cmp_tolerance():
    e = torch.tensor([1.0, 100.0], dtype=torch.float64)
    assert exercises.cmp("x", e + 1e-12, e, atol=1e-9).right
    assert not exercises.cmp("x", e + 1e-6, e, atol=1e-9).right
    assert exercises.cmp("x", e * (1 + 1e-7), e, rtol=1e-6).right
    assert exercises.cmp("x", None, e).status == "not done yet"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_an_exercise_and_a_solutions_switch(path):
    cells = json.loads(path.read_text())["cells"]
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "SOLUTIONS: bool = False" in "".join(params[0]["source"])
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    names = [n for n in exercises.EXERCISES if f'exercises.check("{n}"' in code]
    assert names, f"{path.name} has no exercises.check(...) cell"
    for n in names:
        assert f"solutions.{n}" in code, f"{path.name}: exercise {n} has no SOLUTIONS switch"
        assert exercises.EXERCISES[n].notebook == path.name[:2]
