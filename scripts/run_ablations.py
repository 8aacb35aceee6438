"""The paper's ablations in miniature (notebook 06): train every variant of
``flare_nb.train.ablations.VARIANTS`` with several seeds, score each on held-out synthetic scenes,
and write ``results.json`` (all rows + settings), ``results.md`` (mean ± std table) and
``log.txt`` (this command and its progress) into ``--out``.

    python scripts/run_ablations.py                          # the recorded data/ablations/ run
    python scripts/run_ablations.py --steps 40 --seeds 0 --eval-scenes 2 --out /tmp/abl   # a smoke test

Runs ``--jobs`` trainings at a time on the CPU, ``--threads`` each (2 x 1 on 2 cores: more
threads than cores slows torch down several-fold); the runs' checkpoints go to
``--runs`` (not committed). Re-running replaces the results.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flare_nb.train.ablations import DESCRIPTIONS, VARIANTS, format_ablation_table, run_ablation, summarize  # noqa: E402
from flare_nb.train.config import load_config  # noqa: E402


def _one(base: dict, variant: str, seed: int, steps: int, runs: str, kw: dict) -> dict:
    import torch

    from flare_nb.train.config import TrainConfig

    if kw.get("threads"):
        torch.set_num_threads(kw["threads"])     # for the evaluation too, not only the training
    return run_ablation(TrainConfig.from_dict(base), variant, seed, steps, runs, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny_synthetic.yaml"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("W", "H"))
    p.add_argument("--n-views", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-scenes", type=int, default=8, help="held-out scenes per mode (orbit, forward)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    p.add_argument("--out", default=str(ROOT / "data" / "ablations"))
    p.add_argument("--runs", default=str(ROOT / "runs" / "ablations"))
    p.add_argument("--rescore", action="store_true",
                   help="train nothing: score the checkpoints already in --runs again (same settings)")
    a = p.parse_args(argv)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    trained_by = None
    if a.rescore and (out / "log.txt").is_file():
        trained_by = (out / "log.txt").read_text().splitlines()[0].lstrip("$ ")
    log = open(out / ("log_rescore.txt" if a.rescore else "log.txt"), "w")

    def say(msg):
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    cmd = "python scripts/run_ablations.py " + " ".join(argv if argv is not None else sys.argv[1:])
    say(f"$ {cmd.strip()}")
    say(f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {platform.machine()} / Python {platform.python_version()}")
    base = load_config(a.config)
    jobs = [(v, s) for v in a.variants for s in a.seeds]
    kw = dict(eval_scenes=a.eval_scenes, size=a.size, n_views=a.n_views, batch_size=a.batch_size, threads=a.threads,
              rescore=a.rescore)
    t0 = time.perf_counter()
    done = {}
    with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futs = {pool.submit(_one, base.to_dict(), v, s, a.steps, a.runs, kw): (v, s) for v, s in jobs}
        for f in as_completed(futs):
            (variant, seed), r = futs[f], f.result()
            done[(variant, seed)] = r
            say(f"{variant:>22s} seed {seed}: " + "  ".join(
                f"{k} {r[k]:.3f}" for k in ("RRA@15", "RTA@15", "AUC@30", "chamfer", "val_loss", "train_s")))
    rows = [done[j] for j in jobs]          # a fixed order, whatever finished first
    table = format_ablation_table(rows)
    settings = {"config": str(Path(a.config).relative_to(ROOT)) if Path(a.config).is_relative_to(ROOT) else a.config,
                "steps": a.steps, "size": a.size, "n_views": a.n_views, "batch_size": a.batch_size,
                "seeds": a.seeds, "eval_scenes_per_mode": a.eval_scenes, "eval_modes": ["orbit", "forward"],
                "eval_seeds": "held-out synthetic seeds 1000000 ... (flare_nb.eval.evaluate.held_out_seeds)",
                "poses": "stage2 (refined pose head)", "pointmaps": "global head, Sim(3)-aligned chamfer",
                "threads": a.threads, "jobs": a.jobs}
    if a.rescore:
        settings["rescored_checkpoints_of"] = trained_by or a.runs
    result = {"command": cmd.strip(), "settings": settings, "variants": {v: {"overrides": VARIANTS[v],
                                                                              "description": DESCRIPTIONS[v]}
                                                                          for v in a.variants},
              "rows": rows, "summary": summarize(rows), "total_s": round(time.perf_counter() - t0, 1)}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    md = [f"# Ablations in miniature ({a.steps} steps, {a.size[0]}x{a.size[1]}, {a.n_views} views, "
          f"seeds {a.seeds})", "", f"Command: `{cmd.strip()}`", "",
          *([f"Checkpoints trained by: `{trained_by}` (log.txt); rescoring recomputes every score from "
             "them (identical except val_loss, now charged with the full loss weights).", ""] if a.rescore else []),
          f"Mean ± std over {len(a.seeds)} seeds of the scores on {2 * a.eval_scenes} held-out scenes "
          "(half orbit, half forward). RRA/RTA in %, AUC@30 in [0, 1], chamfer (Sim(3)-aligned global "
          "pointmaps) in scene units, val_loss = the training loss without pose noise and with the full "
          "loss weights for every variant. train_s (in results.json) is wall time on a CPU shared with "
          "other jobs.", "", table, "",
          *[f"* `{v}`: {DESCRIPTIONS[v]}" for v in a.variants], ""]
    (out / "results.md").write_text("\n".join(md))
    say(table)
    say(f"done in {result['total_s']:.0f} s; wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
