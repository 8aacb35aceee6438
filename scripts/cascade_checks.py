"""Does the cascade do what the paper says? Two checks of a trained geometry model on held-out
synthetic scenes (notebooks 02 and 04 show one scene of each; this script scores many):

1. **Refinement**: pose error of stage 1's coarse pose against stage 2's refined pose.
2. **Stage 3 follows its pose**: view 1's conditioning pose is turned by ``--rot-deg`` degrees
   about its camera's y axis; how far view 1's global points move (mean displacement over the
   mean distance to the origin) is divided by how far the rigid transform of its camera-centric
   points moves them (``flare_nb.nb.explore.perturbation_response``). 1 = stage 3 follows the
   pose like a rigid transform; 0 = stage 3 ignores it.
3. **Does the pose depend on the view?** For each source view, the rotation angle from view 0
   (true and refined stage 2), their correlation over scenes, and the spread of the predicted
   angles. A model that gives every source view one shared pose has a correlation near 0 and
   the same predicted angle for every view.

    python scripts/cascade_checks.py --checkpoint data/checkpoints/tiny_geometry.pt --scenes 32 \\
        --mode orbit --size 128 128 --json /tmp/cascade.json

Prints one table (mean and standard deviation over scenes); ``--json`` keeps every scene's numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from flare_nb.eval.evaluate import held_out_seeds, load_flare_for_eval  # noqa: E402
from flare_nb.inference import native_size_wh  # noqa: E402
from flare_nb.eval.metrics import pose_l1, pose_metrics  # noqa: E402
from flare_nb.model.pose_encoding import decode_c2w  # noqa: E402
from flare_nb.nb.explore import perturbation_response, run_to_stage2  # noqa: E402
from flare_nb.scenes.synthetic import make_scene  # noqa: E402


def rotation_angle(c2w_a: torch.Tensor, c2w_b: torch.Tensor) -> float:
    """Degrees of the rotation between two camera-to-world poses ``(4, 4)``."""
    R = c2w_a[:3, :3].T @ c2w_b[:3, :3]
    return float(torch.rad2deg(torch.arccos(((torch.trace(R) - 1) / 2).clamp(-1, 1))))


def angle_tracking(rows: list[dict], n_views: int) -> str:
    """Markdown table of check 3 over the scenes of ``rows``."""
    out = ["| source view | true angle (mean, sd) | predicted (mean, sd) | correlation | mean abs error "
           "| truth's spread about its mean |", "|---|---|---|---|---|---|"]
    for i in range(1, n_views):
        t = torch.tensor([r[f"angle_true_v{i}"] for r in rows], dtype=torch.float64)
        p = torch.tensor([r[f"angle_pred_v{i}"] for r in rows], dtype=torch.float64)
        corr = float(torch.corrcoef(torch.stack((t, p)))[0, 1]) if len(rows) > 2 else float("nan")
        out.append(f"| {i} | {t.mean():.1f}, {t.std():.1f} | {p.mean():.1f}, {p.std():.1f} | {corr:.2f} "
                   f"| {(t - p).abs().mean():.1f} | {(t - t.mean()).abs().mean():.1f} |")
    return "\n".join(out)


def check_scene(model, scene, rot_deg: float, view: int = 1) -> dict:
    """The two checks on one scene: pose L1 / AUC@30 of stage 1 and stage 2, and the ratio of
    learned to rigid displacement of ``view``'s global points when its pose turns by ``rot_deg``."""
    images = scene.images[None] * 2 - 1          # Scene images are RGB in [0, 1]; the model takes [-1, 1]
    cache = run_to_stage2(model, images)
    row = {}
    for name, key in (("stage1", "pose1"), ("stage2", "pose2")):
        c2w = decode_c2w(cache[key].float().cpu())
        m = pose_metrics(c2w, scene.c2w.float())
        row[f"{name}_L1"] = pose_l1(c2w, scene.c2w.float())
        row[f"{name}_AUC@30"] = float(m["AUC@30"])
        row[f"{name}_RRA@15"] = float(m["RRA@15"])
    for i in range(1, scene.n_views):
        row[f"angle_true_v{i}"] = rotation_angle(scene.c2w[0].double(), scene.c2w[i].double())
        row[f"angle_pred_v{i}"] = rotation_angle(c2w[0].double(), c2w[i].double())
    resp = perturbation_response(model, cache, view=view, rot_deg=rot_deg, axis="y", stage=3)
    learned, naive = float(resp["learned"][view]), float(resp["naive"][view])
    row.update(learned=learned, rigid=naive, follow_ratio=learned / max(naive, 1e-12),
               others_moved=float(torch.cat((resp["learned"][:view], resp["learned"][view + 1:])).mean()))
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="data/checkpoints/tiny_geometry.pt", help="geometry checkpoint")
    ap.add_argument("--scenes", type=int, default=32, help="held-out scenes per mode")
    ap.add_argument("--mode", choices=("orbit", "forward"), default="orbit")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"),
                    help="scene size (default: the model's native size, from its checkpoint; else 128 128)")
    ap.add_argument("--orbit-arc", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="orbit spread in degrees (first to last view); default: the generator's")
    ap.add_argument("--rot-deg", type=float, default=10.0, help="turn of view 1's conditioning pose")
    ap.add_argument("--json", default=None, help="write every scene's numbers here")
    a = ap.parse_args(argv)
    if a.scenes < 1:
        ap.error("--scenes must be >= 1")
    torch.manual_seed(0)
    model = load_flare_for_eval(a.checkpoint, "tiny", "cpu", 0).eval()
    a.size = list(a.size) if a.size is not None else list(native_size_wh(model, (128, 128)))
    kw = {} if a.orbit_arc is None or a.mode != "orbit" else {"orbit_arc": tuple(a.orbit_arc)}
    rows = []
    for s in held_out_seeds(a.scenes):
        scene = make_scene(s, a.views, tuple(a.size), a.mode, **kw)
        with torch.no_grad():
            rows.append({"seed": s, **check_scene(model, scene, a.rot_deg)})
    keys = [k for k in rows[0] if k != "seed" and not k.startswith("angle_")]
    t = torch.tensor([[r[k] for k in keys] for r in rows], dtype=torch.float64)
    mean, std = t.mean(0), (t.std(0) if len(rows) > 1 else torch.zeros(len(keys)))
    print(f"{a.checkpoint}: {len(rows)} held-out {a.mode} scenes, {a.views} views, {a.size[0]}x{a.size[1]}"
          + (f", arc {a.orbit_arc[0]:g}-{a.orbit_arc[1]:g}" if kw else "") + f", turn {a.rot_deg:g} deg")
    print("| quantity | mean | std |\n|---|---|---|")
    for k, m, s in zip(keys, mean.tolist(), std.tolist()):
        print(f"| {k} | {m:.4f} | {s:.4f} |")
    print("\nrotation angle from view 0, degrees (refined stage-2 pose; 'truth's spread' is the mean error of "
          "the best constant per view index fitted on these same scenes):")
    print(angle_tracking(rows, a.views))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
