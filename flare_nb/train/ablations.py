"""The paper's ablations in miniature: train the tiny model with one design choice removed,
several seeds each, and compare on held-out synthetic scenes (notebook 06,
``scripts/run_ablations.py``).

Variants (:data:`VARIANTS`, each a set of dotted :class:`~flare_nb.train.config.TrainConfig`
overrides on top of the base config):

* ``full`` -- the cascade as trained for the shipped tiny model.
* ``no_pose_conditioning`` -- ``model_overrides.pose_conditioning: false``: stages 2 and 3 are
  fed the identity pose for every view instead of the previous stage's estimate
  (``FlareConfig.pose_conditioning``), so their camera embedding is a learned constant that
  carries no pose information. Everything else (pose heads, losses) is unchanged.
* ``direct_global`` -- ``loss.w_cam: 0``: the camera-centric pointmaps of stage 2 get no
  supervision; only the global pointmaps (stage 3, view 0's frame) are trained, plus the pose
  losses. Stage 2's decoder still exists and is still trained by its refined-pose loss and by
  the global loss through stage 3's cross-attention -- it only stops being *taught*
  camera-centric geometry. This is the closest switch of our trainer to the paper's
  "direct global pointmaps without the camera-centric stage"; the paper removes the stage's
  geometry prediction altogether, which would be a different network.
* ``no_pose_noise`` -- ``pose_noise.prob: 0``: stages 2 and 3 see the exact (detached)
  predicted poses during training, no perturbation.

:data:`LEVERS` switch off, in the same way, the training levers of the shipped recipe (the
correspondence loss, the sign-invariant rotation loss, stage 3 trained on the true pose half of
the time), and switch on one that is not in it (stage 3's global target placed with the true pose
it was given, ``pose_noise.stage3_follow_target``); :data:`SWITCHES` holds both.

Each run is scored with the refined (stage-2) poses and the global pointmaps on held-out
scenes (seeds >= 1 000 000, :func:`flare_nb.eval.evaluate.evaluate_on_synthetic`), and by its loss on
those scenes under the *full* loss weights (:func:`score_model`).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flare_nb.eval.evaluate import (evaluate_on_synthetic, flare_method,
                                    held_out_seeds)
from flare_nb.scenes.synthetic import SyntheticDataset
from flare_nb.train.logs import read_log
from flare_nb.train.loop import train
from flare_nb.train.state import load_trained_model
from flare_nb.train.validate import evaluate as train_evaluate

__all__ = ["VARIANTS", "LEVERS", "SWITCHES", "DESCRIPTIONS", "METRICS", "ablation_config", "run_ablation", "score_model", "summarize",
           "format_ablation_table", "differences", "difference_table", "load_results"]

VARIANTS: dict[str, dict] = {
    "full": {},
    "no_pose_conditioning": {"model_overrides.pose_conditioning": False},
    "direct_global": {"loss.w_cam": 0.0},
    "no_pose_noise": {"pose_noise.prob": 0.0},
}
DESCRIPTIONS = {
    "full": "full cascade (pose-conditioned stages 2-3, camera-centric + global losses, pose noise)",
    "no_pose_conditioning": "stages 2-3 get the identity pose (constant camera embedding)",
    "direct_global": "loss.w_cam = 0: no camera-centric supervision, global pointmaps only",
    "no_pose_noise": "pose_noise.prob = 0: no perturbation of the poses fed to stages 2-3",
}
#: the training levers of the shipped recipe, each switched off in turn, and one not in it switched on
#: (``scripts/run_ablations.py --variants ...``; not part of the notebook's live loop over :data:`VARIANTS`)
LEVERS: dict[str, dict] = {
    "no_match_loss": {"loss.match_weight": 0.0},
    "no_sign_invariant": {"loss.pose_sign_invariant": False},
    "stage3_never_true_pose": {"pose_noise.stage3_gt_prob": 0.0},
    "stage3_follow_target": {"pose_noise.stage3_follow_target": True},
}
DESCRIPTIONS.update({
    "no_match_loss": "loss.match_weight = 0: no correspondence (InfoNCE) loss on the descriptors",
    "no_sign_invariant": "loss.pose_sign_invariant = false: the rotation loss compares q, not min(|q - q*|, |q + q*|)",
    "stage3_never_true_pose": "pose_noise.stage3_gt_prob = 0: stage 3 always trains on the predicted (noised) pose, "
                              "never on the true one",
    "stage3_follow_target": "pose_noise.stage3_follow_target = true: when stage 3 is fed the (perturbed) true pose, "
                            "its global target places the true points with that pose",
})
#: every switch :func:`ablation_config` knows: the paper's ablations, then the levers
SWITCHES: dict[str, dict] = {**VARIANTS, **LEVERS}
#: the columns of the ablation table (higher is better for all but ``pose_L1``, ``chamfer`` and ``val_loss``)
METRICS = ("RRA@15", "RTA@15", "AUC@30", "pose_L1", "chamfer", "val_loss")


def ablation_config(base, variant: str, seed: int, steps: int, out_dir, size: Sequence[int] | None = None,
                    n_views: int | None = None, batch_size: int | None = None, warmup_steps: int | None = None):
    """The :class:`~flare_nb.train.config.TrainConfig` of one ablation run: ``base`` (a
    ``TrainConfig``) with the overrides of ``SWITCHES[variant]``, ``seed``, ``steps``,
    ``run.out_dir = out_dir``, fresh (``run.resume: false``), quiet, no periodic validation
    or checkpoints; optionally a smaller ``size (W, H)``, ``n_views``, ``batch_size`` and
    ``warmup_steps`` (default: a tenth of ``steps``)."""
    if variant not in SWITCHES:
        raise ValueError(f"unknown ablation variant {variant!r}; expected one of {list(SWITCHES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"ablation steps must be a positive int, got {steps!r}")
    over = {"seed": int(seed), "steps": steps, "run.out_dir": str(out_dir), "run.resume": False,
            "run.progress": False, "run.val_every": 0, "run.ckpt_every": steps, "run.log_every": max(1, steps // 50),
            "optim.warmup_steps": max(1, steps // 10) if warmup_steps is None else int(warmup_steps),
            "data.val_seeds": []}
    if size is not None:
        over["data.size"] = [int(size[0]), int(size[1])]
    if n_views is not None:
        over["data.n_views"] = int(n_views)
    if batch_size is not None:
        over["batch_size"] = int(batch_size)
    over.update(SWITCHES[variant])
    return base.replace(**over).validate()


def run_ablation(base, variant: str, seed: int, steps: int, out_root, eval_scenes: int = 8,
                 modes: Sequence[str] = ("orbit", "forward"), size=None, n_views=None, batch_size=None,
                 threads: int = 0, rescore: bool = False, orbit_arc=None) -> dict:
    """Train one variant with one seed and score it; returns one result row.

    ``out_root/<variant>_seed<seed>/`` receives the run (``checkpoint.pt``, ``log.jsonl``); with
    ``rescore=True`` nothing is trained: that run's checkpoint is loaded and scored again. The
    model is scored by :func:`score_model` (``orbit_arc``: the held-out orbits' spread, default
    the generator's). Row: ``variant, seed, steps, size, n_views,
    train_s`` (the run's logged training time), ``final_train_loss`` and the scores."""

    out_dir = Path(out_root) / f"{variant}_seed{seed}"
    cfg = ablation_config(base, variant, seed, steps, out_dir, size, n_views, batch_size)
    if threads:
        cfg = cfg.replace(**{"run.threads": int(threads)})
    if rescore:
        model = load_trained_model(out_dir / "checkpoint.pt")
    else:
        if (out_dir / "checkpoint.pt").exists():
            (out_dir / "checkpoint.pt").unlink()
            (out_dir / "log.jsonl").unlink(missing_ok=True)
        model = train(cfg).model.to("cpu").eval()
    train_recs = [r for r in read_log(out_dir / "log.jsonl") if r.get("kind") == "train"]
    if not train_recs or train_recs[-1]["step"] != steps:
        raise ValueError(f"{out_dir}: the run did not reach step {steps} (log {out_dir / 'log.jsonl'})")
    W, H = cfg.data.size
    out = {"variant": variant, "seed": int(seed), "steps": steps, "size": f"{W}x{H}", "n_views": cfg.data.n_views,
           "train_s": round(float(train_recs[-1]["time"]), 1), "final_train_loss": train_recs[-1]["loss"]}
    out.update(score_model(model, base, eval_scenes, modes, (W, H), cfg.data.n_views, name=variant,
                           orbit_arc=orbit_arc))
    return out


def score_model(model, base, eval_scenes: int = 8, modes: Sequence[str] = ("orbit", "forward"), size=(64, 64),
                n_views: int = 4, name: str = "model", orbit_arc=None) -> dict:
    """Scores of a trained model on ``eval_scenes`` held-out scenes per mode (orbits spread over
    ``orbit_arc = (lo, hi)`` degrees, default the generator's): the mean over the scenes of
    ``RRA@5, RRA@15, RTA@15, AUC@30, pose_L1`` (refined stage-2 poses) and ``chamfer`` (global
    pointmaps), via :func:`flare_nb.eval.evaluate.flare_method`, plus ``val_loss``: the trainer's loss
    without pose noise (:func:`flare_nb.train.validate.evaluate`) under ``base``'s loss weights -- the
    same weights for every variant, so ``direct_global`` (``w_cam = 0`` in training) is still
    charged for its camera-centric pointmaps and the column stays comparable."""

    seeds = held_out_seeds(eval_scenes)
    rows = evaluate_on_synthetic(flare_method(model=model, poses="stage2"), seeds, n_views, tuple(size), list(modes),
                                 method=name, orbit_arc=orbit_arc)
    vcfg = base.replace(**{"data.n_views": n_views, "data.size": list(size)})
    arc = {} if orbit_arc is None else {"orbit_arc": tuple(orbit_arc)}
    val = train_evaluate(model, SyntheticDataset(seeds, n_views, tuple(size), list(modes), **arc), vcfg, "cpu")
    out = {"eval_scenes": len(rows), "val_loss": val["loss"]}
    for k in ("RRA@5", "RRA@15", "RTA@15", "AUC@30", "pose_L1", "chamfer"):
        vals = [r[k] for r in rows if k in r and r[k] is not None and math.isfinite(r[k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def summarize(rows: Sequence[dict], metrics: Sequence[str] = METRICS) -> dict:
    """``{variant: {metric: {"mean", "std", "n"}}}`` over the seeds (population std,
    ``ddof=0``), variants in the order of :data:`SWITCHES` then any others; NaNs skipped."""
    if not rows:
        raise ValueError("summarize: no ablation rows")
    order = [v for v in SWITCHES if any(r.get("variant") == v for r in rows)]
    order += sorted({r["variant"] for r in rows} - set(order))
    out = {}
    for v in order:
        vr = [r for r in rows if r["variant"] == v]
        out[v] = {}
        for m in metrics:
            vals = [float(r[m]) for r in vr if m in r and r[m] is not None and math.isfinite(float(r[m]))]
            out[v][m] = {"mean": float(np.mean(vals)) if vals else float("nan"),
                         "std": float(np.std(vals)) if vals else float("nan"), "n": len(vals)}
    return out


def _cell(m: str, s: dict) -> str:
    if s["n"] == 0:
        return "-"
    f = "{:.1f}" if m.startswith(("RRA", "RTA")) else "{:.3f}"
    return f"{f.format(s['mean'])} ± {f.format(s['std'])}"


def format_ablation_table(rows: Sequence[dict], metrics: Sequence[str] = METRICS) -> str:
    """Markdown table, one line per variant: ``mean ± std`` over seeds of each metric, and the
    number of seeds. RRA/RTA in percent, AUC in [0, 1], chamfer and loss in normalised units."""
    summ = summarize(rows, metrics)
    head = ["variant", "seeds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for v, ms in summ.items():
        n = len({r["seed"] for r in rows if r["variant"] == v})
        lines.append("| " + " | ".join([v, str(n), *[_cell(m, ms[m]) for m in metrics]]) + " |")
    return "\n".join(lines)


def differences(rows: Sequence[dict], metrics: Sequence[str] = METRICS, reference: str = "full") -> dict:
    """``{variant: {metric: {"diff", "z"}}}`` for every variant but ``reference``: the difference
    of the means from ``reference``'s, and that difference over the combined spread
    ``sqrt(std_v^2 + std_ref^2)`` of the two (population stds over seeds; ``inf`` when both are 0
    and the means differ). ``|z| > 2``: a difference larger than the seeds' scatter. A metric
    missing on either side is left out."""
    summ = summarize(rows, metrics)
    if reference not in summ:
        raise ValueError(f"differences: no rows of the reference variant {reference!r}")
    ref = summ[reference]
    out = {}
    for v, ms in summ.items():
        if v == reference:
            continue
        out[v] = {}
        for m in metrics:
            a, b = ms[m], ref[m]
            if a["n"] == 0 or b["n"] == 0:
                continue
            d, spread = a["mean"] - b["mean"], math.hypot(a["std"], b["std"])
            out[v][m] = {"diff": d, "z": d / spread if spread > 0 else (0.0 if d == 0 else math.copysign(math.inf, d))}
    return out


def difference_table(rows: Sequence[dict], metrics: Sequence[str] = METRICS, reference: str = "full") -> str:
    """Markdown table of :func:`differences`, one line per variant: ``-0.0100 (-3.6)`` reads
    "0.0100 lower than ``reference``, 3.6 combined stds"."""
    diffs = differences(rows, metrics, reference)
    head = ["variant", *[f"{m} diff (z)" for m in metrics]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for v, ms in diffs.items():
        cells = []
        for m in metrics:
            if m not in ms:
                cells.append("-")
                continue
            f = "{:+.1f}" if m.startswith(("RRA", "RTA")) else "{:+.4f}"
            cells.append(f"{f.format(ms[m]['diff'])} ({ms[m]['z']:+.1f})")
        lines.append("| " + " | ".join([v, *cells]) + " |")
    return "\n".join(lines)


def load_results(path) -> dict:
    """Read ``data/ablations/results.json`` (written by ``scripts/run_ablations.py``):
    ``{"rows": [...], "settings": {...}, ...}``; FileNotFoundError / ValueError with the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ablation results at {path}; run `python scripts/run_ablations.py` first")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("rows"), list):
        raise ValueError(f"{path}: expected a JSON object with a 'rows' list (scripts/run_ablations.py output)")
    return d
