"""Trivial pose priors: what a pose predictor must beat before it has learned anything
(notebooks 06-07, the trainer's validation log, ``python -m flare_nb.evaluate``).

A network trained on a distribution of camera trajectories can score well without looking at
the images, by predicting the trajectory that is typical of the distribution. Three such
"blind" predictors, none of which sees a pixel:

* ``straight`` -- every camera looks the same way as view 0 and the cameras move straight
  ahead along the optical axis: ``R_i = I``, ``t_i = (0, 0, i)``. Needs no data.
* ``constant`` -- one pose, fitted on training trajectories, for every source view: the
  view-agnostic answer of a network whose camera tokens do not tell the views apart.
* ``per_view`` -- one pose per view index ``i``, fitted on training trajectories: exploits
  that synthetic views come ordered along their path (view 3 is further along than view 1).

Fitting (on TRAINING seeds only, never on the scenes that are scored): poses relative to view 0
with translations divided by their mean norm (:func:`flare_nb.train.losses.gt_pose_targets`'s
frame); a rotation is the chordal L2 mean (the mean matrix projected onto SO(3) by an SVD), a
translation the arithmetic mean. "Learned" means better than the best of the three on held-out
scenes in pose L1 (:func:`flare_nb.eval.metrics.pose_l1`) and AUC@30.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from flare_nb import data_dir
from flare_nb.cameras import normalize_translation, relative_to_view0
from flare_nb.eval.metrics import pose_l1, pose_metrics
from flare_nb.scenes.synthetic import (HELD_OUT_SEED_START, ORBIT_ARC,
                                       make_cameras)

__all__ = ["PRIORS", "straight_ahead", "mean_rotation", "fit_priors", "prior_poses", "fit_synthetic_priors",
           "prior_method", "PRIOR_TABLE", "prior_key", "write_prior_table"]

PRIORS = ("straight", "constant", "per_view")


def straight_ahead(n_views: int) -> torch.Tensor:
    """``c2w (V, 4, 4)``: identity rotations, camera ``i`` at ``(0, 0, i)`` (forward along +z)."""
    c2w = torch.eye(4).repeat(n_views, 1, 1)
    c2w[:, 2, 3] = torch.arange(n_views, dtype=torch.float32)
    return c2w


def mean_rotation(R: torch.Tensor) -> torch.Tensor:
    """Chordal L2 mean of rotations ``R (N, 3, 3)``: the rotation nearest (Frobenius) to their
    arithmetic mean, ``U diag(1, 1, det(U V^T)) V^T`` from the SVD of the mean. ``(3, 3)``."""
    U, _, Vt = torch.linalg.svd(R.double().mean(0))
    d = torch.sign(torch.det(U @ Vt))
    return (U @ torch.diag(torch.stack([d.new_ones(()), d.new_ones(()), d])) @ Vt).to(R.dtype)


def _normalised(c2w: torch.Tensor) -> torch.Tensor:
    return normalize_translation(relative_to_view0(c2w.double()))[0]


def fit_priors(trajectories: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fit the ``constant`` and ``per_view`` priors on training trajectories, each ``c2w (V, 4, 4)``
    with the same V. Returns ``{"constant": (4, 4), "per_view": (V, 4, 4)}`` float32 in view 0's
    frame with mean-norm translations (view 0 of ``per_view`` is the identity)."""
    if not len(trajectories):
        raise ValueError("fit_priors: no training trajectories given")
    shapes = {tuple(t.shape) for t in trajectories}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[1:] != (4, 4):
        raise ValueError(f"fit_priors: trajectories must all be (V, 4, 4) with one V, got {sorted(shapes)}")
    rel = torch.stack([_normalised(t) for t in trajectories])            # (N, V, 4, 4)
    V = rel.shape[1]

    def pose(block: torch.Tensor) -> torch.Tensor:                          # (M, 4, 4) -> mean (4, 4)
        T = torch.eye(4, dtype=torch.float64)
        T[:3, :3] = mean_rotation(block[:, :3, :3])
        T[:3, 3] = block[:, :3, 3].mean(0)
        return T

    constant = pose(rel[:, 1:].reshape(-1, 4, 4))
    per_view = torch.stack([torch.eye(4, dtype=torch.float64)] + [pose(rel[:, i]) for i in range(1, V)])
    return {"constant": constant.float(), "per_view": per_view.float()}


def prior_poses(kind: str, n_views: int, fitted: dict | None = None) -> torch.Tensor:
    """The prior's trajectory ``c2w (V, 4, 4)`` (view 0 = identity). ``fitted`` from
    :func:`fit_priors` for ``constant`` and ``per_view``."""
    if kind not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {kind!r}")
    if kind == "straight":
        return straight_ahead(n_views)
    if fitted is None:
        raise ValueError(f"the {kind!r} prior must be fitted first (fit_priors on training trajectories)")
    if kind == "constant":
        out = fitted["constant"].repeat(n_views, 1, 1)
        out[0] = torch.eye(4)
        return out
    pv = fitted["per_view"]
    if pv.shape[0] != n_views:
        raise ValueError(f"the per_view prior was fitted on {pv.shape[0]}-view trajectories, asked for {n_views} views")
    return pv.clone()


def fit_synthetic_priors(mode: str = "orbit", n_views: int = 4, n_scenes: int = 512, first_seed: int = 0,
                         orbit_arc=None, use_table: bool = True) -> dict[str, torch.Tensor]:
    """:func:`fit_priors` on the cameras of synthetic TRAINING scenes ``first_seed ..
    first_seed + n_scenes - 1`` (nothing is rendered: :func:`flare_nb.scenes.synthetic.make_cameras`).

    Fitting 512 scenes takes seconds; the fits of the usual settings are stored in
    :data:`PRIOR_TABLE` (written by ``python scripts/fit_priors.py``) and read from there when
    ``use_table`` and the entry's check still holds: the cameras of its first scene, stored with
    it, must equal what the generator makes now (else the fit runs again). The stored fit equals
    a fresh one exactly (``tests/test_priors.py``)."""

    if first_seed + n_scenes > HELD_OUT_SEED_START:
        raise ValueError(f"priors are fitted on training seeds only (below {HELD_OUT_SEED_START}), got "
                         f"{first_seed} .. {first_seed + n_scenes - 1}")
    arc = ORBIT_ARC if orbit_arc is None else tuple(orbit_arc)
    if use_table:
        stored = _stored_fit(mode, n_views, n_scenes, first_seed, arc)
        if stored is not None:
            return stored
    return fit_priors([make_cameras(s, n_views, mode, orbit_arc=arc) for s in range(first_seed, first_seed + n_scenes)])


# ----------------------------------------------------------------------------- the stored fits
PRIOR_TABLE = "priors/synthetic_priors.json"      # under flare_nb.data_dir()


def prior_key(mode: str, n_views: int, n_scenes: int = 512, first_seed: int = 0, orbit_arc=None) -> str:
    """The table key of one fit, e.g. ``orbit/views=4/scenes=512/first_seed=0/arc=20-90`` (the
    arc only for orbits: forward walks do not depend on it)."""
    key = f"{mode}/views={int(n_views)}/scenes={int(n_scenes)}/first_seed={int(first_seed)}"
    if mode == "orbit":
        lo, hi = ORBIT_ARC if orbit_arc is None else tuple(orbit_arc)
        key += f"/arc={float(lo):g}-{float(hi):g}"
    return key


def _table_path():
    try:
        return data_dir() / PRIOR_TABLE
    except FileNotFoundError:
        return None


def _stored_fit(mode, n_views, n_scenes, first_seed, arc):
    path = _table_path()
    if path is None or not path.is_file():
        return None
    entry = json.loads(path.read_text()).get("fits", {}).get(prior_key(mode, n_views, n_scenes, first_seed, arc))
    if entry is None:
        return None
    check = torch.tensor(entry["check_first_scene_c2w"], dtype=torch.float32)
    if not torch.equal(check, make_cameras(first_seed, n_views, mode, orbit_arc=arc)):
        return None                                  # the generator changed since the table was written
    return {"constant": torch.tensor(entry["constant"], dtype=torch.float32),
            "per_view": torch.tensor(entry["per_view"], dtype=torch.float32)}


def write_prior_table(path, settings, n_scenes: int = 512, first_seed: int = 0) -> dict:
    """Fit the priors for every ``(mode, n_views, orbit_arc)`` of ``settings`` (fresh fits, no
    table) and write them as JSON to ``path`` (float32 values written exactly). Returns the table."""
    fits = {}
    for mode, n_views, arc in settings:
        arc = ORBIT_ARC if arc is None else tuple(arc)
        f = fit_synthetic_priors(mode, n_views, n_scenes, first_seed, arc, use_table=False)
        fits[prior_key(mode, n_views, n_scenes, first_seed, arc)] = {
            "constant": f["constant"].tolist(), "per_view": f["per_view"].tolist(),
            "check_first_scene_c2w": make_cameras(first_seed, n_views, mode, orbit_arc=arc).tolist()}
    table = {"about": "constant and per-view pose priors fitted on the cameras of synthetic training scenes "
                      "(flare_nb.eval.priors.fit_synthetic_priors); written by python scripts/fit_priors.py",
             "fits": fits}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(table) + "\n")
    return table


def prior_method(prior: str = "constant", mode: str | None = None, n_views: int = 4, fit_scenes: int = 512,
                 orbit_arc=None):
    """Factory of a prior's ``predict_fn`` for :mod:`flare_nb.eval.evaluate` (registered as
    ``straight``, ``constant`` and ``per_view``), fitted on ``fit_scenes`` synthetic training
    scenes with the scored scene's view count. ``mode``: the trajectories to fit on; None reads it
    from each scored scene's ``source`` (``"synthetic:<mode>:seed=..."``) and fits once per mode.
    The returned function never looks at the images."""
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    fits: dict = {}

    def predict(scene) -> torch.Tensor:
        V = scene.n_views
        if prior == "straight":
            return prior_poses(prior, V)
        m = mode
        if m is None:
            src = str(getattr(scene, "source", "") or "")
            if not src.startswith("synthetic:"):
                raise ValueError(f"the {prior!r} prior needs mode= for a scene that is not synthetic ({src or 'no source'})")
            m = src.split(":")[1]
        if (m, V) not in fits:
            fits[(m, V)] = fit_synthetic_priors(m, V, fit_scenes, 0, orbit_arc)
        return prior_poses(prior, V, fits[(m, V)])

    return predict


def score_priors(trajectories: Sequence[tuple[str, torch.Tensor]], fitted: dict[str, dict]) -> dict[str, dict]:
    """Mean pose metrics of each prior over scored trajectories ``[(mode, c2w (V, 4, 4)), ...]``,
    the ``constant`` / ``per_view`` priors fitted per mode (``fitted[mode]`` from
    :func:`fit_priors`). Returns ``{prior: {"RRA@15", "RTA@15", "AUC@30", "pose_L1", and per
    mode "RRA@15/<mode>", "RTA@15/<mode>", "AUC@30/<mode>", "pose_L1/<mode>"}}`` -- the keys the
    trainer's validation logs for the model."""

    out = {}
    for kind in PRIORS:
        acc: dict[str, list] = {}
        for mode, c2w in trajectories:
            pred = prior_poses(kind, c2w.shape[0], fitted.get(mode))
            m = pose_metrics(pred, c2w)
            vals = {k: m[k] for k in ("RRA@15", "RTA@15", "AUC@30")}
            vals["pose_L1"] = pose_l1(pred, c2w)
            vals.update({f"{k}/{mode}": v for k, v in list(vals.items())})
            for k, v in vals.items():
                acc.setdefault(k, []).append(float(v))
        out[kind] = {k: sum(v) / len(v) for k, v in acc.items()}
    return out
