"""Exercise checks for the notebooks: write a function, then ``check`` it.

Every notebook has at least one exercise: a cell with a function to complete (its body is
``...  # TODO``, so it returns ``None``), followed by ``exercises.check(name, my_fn)``. The
check builds its own test input, runs the learner's function on it and compares the result
with the library's own implementation, printing one line in the style of a gradient check::

    invert_pose        | exact: False | approx: True  | maxdiff: 2.2e-16 | right
    patchify           | not done yet: my_fn returned None (fill in the TODO)
    depth_exp          | exact: False | approx: False | maxdiff: 3.1e+00 | wrong: ...

It never raises on the learner's code: a function that raises, returns ``None`` or returns
the wrong shape is reported, not propagated. The reference solutions are in
``flare_nb.nb.solutions`` (a notebook fills them in when its ``SOLUTIONS`` parameter is True).

Tolerances come from the dtype of the computation: the float64 exercises allow 1e-9 (a few
hundred float64 roundings on values of order 1-1000), the float32 ones a few float32 ulps of
the largest value involved. The focal exercise allows 1e-3 relative: a median of an even
number of votes may be either middle vote or their mean (1e-4 apart here), while the
classic mistake (principal point at W/2 instead of (W-1)/2) moves it by about 3 %.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from flare_nb.cameras import estimate_focal, pixel_grid
from flare_nb.cameras import invert_pose
from flare_nb.cameras import quat_to_matrix
from flare_nb.eval.metrics import pose_summary
from flare_nb.model.dpt import depth_exp
from flare_nb.model.pose_predictor import harmonic_embedding
from flare_nb.nb.explore import naive_global
from flare_nb.nb.inspection import patchify
from flare_nb.render.rasterize import project_gaussians
from flare_nb.render.splats import covariance_2d
from flare_nb.train.losses import confidence_loss

__all__ = ["Result", "EXERCISES", "check", "cmp"]

RIGHT, WRONG, NOT_DONE = "right", "wrong", "not done yet"


@dataclass
class Result:
    """What ``check`` found: ``status`` is ``"right"``, ``"wrong"`` or ``"not done yet"``."""

    name: str
    status: str
    line: str
    maxdiff: float = float("nan")

    @property
    def right(self) -> bool:
        return self.status == RIGHT

    def __str__(self) -> str:
        return self.line


@dataclass(frozen=True)
class Exercise:
    notebook: str
    cases: Callable[[], list]     # -> [(args tuple, expected tensor)], built with the library
    atol: float
    rtol: float
    hint: str                     # one line shown when the answer is wrong


def _not_done(name: str, why: str) -> Result:
    return Result(name, NOT_DONE, f"{name:<18} | not done yet: {why}")


def _wrong(name: str, why: str, maxdiff: float = float("nan")) -> Result:
    return Result(name, WRONG, f"{name:<18} | wrong: {why}", maxdiff)


def cmp(name: str, got, expected, atol: float = 0.0, rtol: float = 0.0, hint: str = "") -> Result:
    """Compare ``got`` with ``expected`` (tensors or numbers) and report one line.

    ``approx`` means ``|got - expected| <= atol + rtol * |expected|`` everywhere. ``None`` or
    ``Ellipsis`` counts as not done; a wrong shape or a non-finite value as wrong."""
    if got is None or got is Ellipsis:
        return _not_done(name, "the answer is None (fill in the TODO)")
    expected = torch.as_tensor(expected)
    try:
        got_t = torch.as_tensor(got.detach() if isinstance(got, torch.Tensor) else got)
    except Exception as e:  # noqa: BLE001 - any object the learner returns is reported, never raised
        return _wrong(name, f"cannot read the answer as numbers ({type(got).__name__}: {e})")
    if not (got_t.is_floating_point() or got_t.dtype in (torch.int32, torch.int64)):
        return _wrong(name, f"the answer has dtype {got_t.dtype}, expected numbers like {expected.dtype}")
    if tuple(got_t.shape) != tuple(expected.shape):
        return _wrong(name, f"shape {tuple(got_t.shape)}, expected {tuple(expected.shape)}")
    g, e = got_t.to(torch.float64), expected.to(torch.float64)
    if not bool(torch.isfinite(g).all()):
        return _wrong(name, "the answer contains inf or nan")
    diff = (g - e).abs()
    maxdiff = float(diff.max()) if diff.numel() else 0.0
    exact = bool(torch.equal(g, e))
    approx = bool((diff <= atol + rtol * e.abs()).all())
    head = f"{name:<18} | exact: {exact!s:5} | approx: {approx!s:5} | maxdiff: {maxdiff:.1e} | "
    if approx:
        return Result(name, RIGHT, head + RIGHT, maxdiff)
    return Result(name, WRONG, head + "wrong" + (f": {hint}" if hint else ""), maxdiff)


# ----------------------------------------------------------------------------- test cases
def _rotations(n: int, g: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return quat_to_matrix(q / q.norm(dim=-1, keepdim=True))


def _rigid(n: int, g: torch.Generator) -> torch.Tensor:
    T = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    T[:, :3, :3] = _rotations(n, g)
    T[:, :3, 3] = torch.randn(n, 3, generator=g, dtype=torch.float64) * 2
    return T


def _cases_invert_pose():
    out = []
    for seed in (0, 1):
        c2w = _rigid(5, torch.Generator().manual_seed(seed))
        out.append(((c2w.clone(),), invert_pose(c2w)))
    return out


def _cases_patchify():
    out = []
    for seed, (B, H, W, p) in ((0, (2, 32, 48, 16)), (1, (1, 16, 24, 8))):
        x = torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(seed))
        out.append(((x.clone(), p), patchify(x, p)))
    return out


def _cases_harmonic():
    out = []
    for seed, n in ((0, 6), (1, 4)):
        x = torch.rand(3, 9, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        out.append(((x.clone(), n), harmonic_embedding(x, n)))
    return out


def _cases_depth_exp():
    out = []
    for seed in (0, 1):
        x = torch.randn(500, 3, generator=torch.Generator().manual_seed(seed)) * 2
        x[0] = 0.0                                   # the origin must map to the origin
        out.append(((x.clone(),), depth_exp(x)))
    return out


def _cases_to_view0():
    out = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        c2w = _rigid(3, g)
        c2w = torch.linalg.inv(c2w[0]) @ c2w             # relative to view 0 (view 0 = identity)
        c2w[0] = torch.eye(4, dtype=torch.float64)
        pts = torch.randn(3, 4, 5, 3, generator=g, dtype=torch.float64) + torch.tensor([0, 0, 4.0], dtype=torch.float64)
        out.append(((pts.clone(), c2w.clone()), naive_global(pts, c2w)))
    return out


def _cases_covariance_2d():
    out = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        c2w = _rigid(1, g)[0]
        w2c = invert_pose(c2w)
        K = torch.tensor([[110.0, 0, 64.0], [0, 100.0, 60.0], [0, 0, 1]], dtype=torch.float64)
        p_cam = torch.tensor([0.3, -0.2, 3.0], dtype=torch.float64) + 0.1 * torch.randn(3, generator=g, dtype=torch.float64)
        mean = c2w[:3, :3] @ p_cam + c2w[:3, 3]
        q = torch.randn(4, generator=g, dtype=torch.float64)
        quat = q / q.norm()
        scale = torch.tensor([0.05, 0.2, 0.01], dtype=torch.float64) * (1 + torch.rand(3, generator=g, dtype=torch.float64))
        proj = project_gaussians(mean[None], quat[None], scale[None], None, w2c[None], K[None], 128, 128)
        out.append(((mean, quat, scale, w2c, K), covariance_2d(proj)[0, 0]))
    return out


def _cases_confidence_loss():
    out = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        gt = torch.randn(1, 3, 6, 7, 3, generator=g, dtype=torch.float64) + torch.tensor([0, 0, 3.0], dtype=torch.float64)
        pred = 2.5 * gt + 0.1 * torch.randn(gt.shape, generator=g, dtype=torch.float64)
        conf = 1 + 3 * torch.rand(gt.shape[:-1], generator=g, dtype=torch.float64)
        valid = torch.rand(gt.shape[:-1], generator=g) > 0.3
        out.append(((pred, conf, gt, valid), confidence_loss(pred, conf, gt, valid)[0]))
    return out


def _cases_rra_auc():
    out = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        rot = torch.rand(28, generator=g, dtype=torch.float64) * 40
        trans = torch.rand(28, generator=g, dtype=torch.float64) * 40
        s = pose_summary(rot, trans, thresholds=(15,), auc_threshold=30)
        out.append(((rot, trans), torch.tensor([s["RRA@15"], s["AUC@30"]], dtype=torch.float64)))
    return out


def _cases_focal():
    out = []
    for seed, (H, W, f) in ((0, (48, 64, 70.0)), (1, (64, 48, 55.0))):
        g = torch.Generator().manual_seed(seed)
        uv = pixel_grid(H, W, dtype=torch.float64)
        z = 2 + torch.rand(H, W, generator=g, dtype=torch.float64) * 3
        x = (uv[..., 0] - (W - 1) / 2) * z / f
        y = (uv[..., 1] - (H - 1) / 2) * z / f
        P = torch.stack([x, y, z], -1) * (1 + 0.01 * torch.randn(H, W, 1, generator=g, dtype=torch.float64))
        P[:5, :5] *= torch.tensor([1.0, 1.0, 40.0], dtype=torch.float64)   # a few wild points: the median ignores them
        out.append(((P,), torch.tensor(estimate_focal(P), dtype=torch.float64)))
    return out


EXERCISES: dict[str, Exercise] = {
    "invert_pose": Exercise("00", _cases_invert_pose, 1e-9, 0.0,
                            "w2c = [R^T | -R^T t] with the last row [0, 0, 0, 1]"),
    "patchify": Exercise("01", _cases_patchify, 0.0, 0.0,
                         "tokens row-major over the grid, each tile flattened as (channel, row, column)"),
    "harmonic": Exercise("02", _cases_harmonic, 1e-5, 0.0,
                         "layout [sin block, cos block, x], index d * n_freq + j inside each block"),
    "depth_exp": Exercise("03", _cases_depth_exp, 1e-6, 1e-5,
                          "X = x / |x| * (exp(|x|) - 1), and the origin maps to the origin"),
    "to_view0": Exercise("04", _cases_to_view0, 1e-9, 0.0,
                         "X_0 = R_v X_v + t_v with the camera-to-world pose of view v"),
    "covariance_2d": Exercise("05", _cases_covariance_2d, 1e-9, 1e-9,
                              "Sigma' = J W Sigma W^T J^T + 0.3 I, J at the camera-frame centre"),
    "confidence_loss": Exercise("06", _cases_confidence_loss, 1e-9, 0.0,
                                "divide each pointmap by its mean distance over the valid pixels first"),
    "rra_auc": Exercise("07", _cases_rra_auc, 1e-9, 0.0,
                        "RRA@15 in percent; AUC@30 = mean over k = 1..30 of the fraction with max(rot, trans) "
                        "< k (<= at k = 30)"),
    "focal": Exercise("08", _cases_focal, 0.0, 1e-3,
                      "median of the votes u z / x and v z / y, (u, v) relative to ((W-1)/2, (H-1)/2)"),
}


def check(name: str, fn, verbose: bool = True) -> Result:
    """Run the learner's ``fn`` on the exercise ``name``'s test cases and report one line.

    Never raises because of ``fn``: ``None`` / a function returning ``None`` or ``...`` /
    ``NotImplementedError`` -> "not done yet"; any other exception, a wrong shape or wrong
    values -> "wrong"; else "right". An unknown ``name`` raises ValueError (a notebook bug)."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; known: {', '.join(sorted(EXERCISES))}")
    ex = EXERCISES[name]
    result = None
    if fn is None or fn is Ellipsis:
        result = _not_done(name, "the answer is None (fill in the TODO)")
    elif not callable(fn):
        result = _wrong(name, f"expected a function, got {type(fn).__name__}")
    else:
        worst = None
        for args, expected in ex.cases():
            try:
                got = fn(*args)
            except NotImplementedError:
                result = _not_done(name, "the function raises NotImplementedError (fill in the TODO)")
                break
            except Exception as e:  # noqa: BLE001 - the learner's error is reported on one line
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                result = _wrong(name, f"the function raised {type(e).__name__}: {msg}"[:300])
                break
            if got is None or got is Ellipsis:
                result = _not_done(name, "the function returned None (fill in the TODO)")
                break
            r = cmp(name, got, expected, ex.atol, ex.rtol, ex.hint)
            if not r.right:
                result = r
                break
            if worst is None or r.maxdiff > worst.maxdiff:
                worst = r
        if result is None:
            result = worst
    if verbose:
        print(result.line)
    return result

