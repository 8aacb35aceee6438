"""The paper's ablations in miniature (notebook 06): train every variant of
``flare_nb.train.ablations.VARIANTS`` (or, with ``--variants``, the recipe's levers
``LEVERS``) with several seeds, score each on held-out synthetic scenes,
and write ``results.json`` (all rows + settings), ``results.md`` (mean ± std table) and
``log.txt`` (this command and its progress) into ``--out``.

    python scripts/run_ablations.py --config configs/tiny64_ablation.yaml --steps 600 \
        --eval-scenes 32 --orbit-arc 20 90 --follow-scenes 16     # the recorded data/ablations/ run
    python scripts/run_ablations.py --steps 40 --seeds 0 --eval-scenes 2 --out /tmp/abl   # a smoke test

Runs ``--jobs`` trainings at a time on the CPU, ``--threads`` each (2 x 1 on 2 cores: more
threads than cores slows torch down several-fold); the runs' checkpoints go to
``--runs`` (not committed). Re-running replaces the results. With a config whose ``init_from``
names a checkpoint, every run starts from those weights (a fine-tuning ablation). ``--follow-scenes``
adds, per run, how far stage 3's global points follow a 10-degree turn of view 1's conditioning
pose relative to the rigid transform (``scripts/cascade_checks.py``, check 2) on held-out orbits.
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

from flare_nb.train.ablations import (DESCRIPTIONS, SWITCHES, VARIANTS, difference_table,  # noqa: E402
                                      format_ablation_table, load_results, run_ablation, summarize)
from flare_nb.train.ablations import METRICS as BASE_METRICS  # noqa: E402
from flare_nb.train.config import load_config  # noqa: E402


def follow_ratio(checkpoint: Path, scenes: int, size, n_views: int, orbit_arc) -> float:
    """Mean over ``scenes`` held-out orbits of stage 3's response to a 10-degree turn of view 1's
    conditioning pose, as a fraction of the rigid transform's (1 = follows, 0 = ignores)."""
    import torch

    from cascade_checks import check_scene
    from flare_nb.eval.evaluate import held_out_seeds
    from flare_nb.scenes.synthetic import make_scene
    from flare_nb.train.state import load_trained_model

    model = load_trained_model(checkpoint).to("cpu").eval()
    arc = {} if orbit_arc is None else {"orbit_arc": tuple(orbit_arc)}
    vals = []
    for s in held_out_seeds(scenes):
        with torch.no_grad():
            vals.append(check_scene(model, make_scene(s, n_views, tuple(size), "orbit", **arc), 10.0)["follow_ratio"])
    return float(sum(vals) / len(vals))


def markdown(result: dict, trained_by: str | None = None, reference: dict | None = None) -> str:
    """``results.md`` of one ``results.json`` dict: the command, the settings in words, the mean ±
    std table and the differences from ``full`` (``flare_nb.train.ablations.difference_table``).
    ``reference``: another results dict whose ``full`` rows (same settings; only the seeds of
    ``result``) join the table, for a run of other variants only."""
    st, rows = result["settings"], list(result["rows"])
    variants = list(result["variants"])
    if reference is not None:
        rows = [r for r in reference["rows"] if r["variant"] == "full" and r["seed"] in st["seeds"]] + rows
    metrics = [m for m in (*BASE_METRICS, "follow") if any(m in r for r in rows)]
    arc = st.get("orbit_arc")
    W, H = st["size"]
    md = [f"# Ablations in miniature ({st['steps']} steps, {W}x{H}, {st['n_views']} views, seeds {st['seeds']})", "",
          f"Command: `{result['command']}`", ""]
    if trained_by:
        md += [f"Checkpoints trained by: `{trained_by}` (log.txt); rescoring recomputes every score from "
               "them (identical except val_loss, now charged with the full loss weights).", ""]
    if reference is not None:
        md += [f"The `full` rows are those of `{reference['command']}` (the same config, steps, seeds and "
               "held-out scenes).", ""]
    if st.get("init_from"):
        md += [f"Every run starts from the weights of `{st['init_from']}` and is trained {st['steps']} more steps "
               f"with the variant's setting (peak learning rate {st['lr']:g}, cosine): a fine-tuning ablation of "
               "the trained model, not a training from scratch. The seeds change the order of the training "
               "scenes and the pose noise, not the start or the held-out scenes, so the spread over seeds is "
               "the scatter of the fine-tuning alone.", ""]
    md += [f"Mean ± std (population, over seeds) of the scores on {2 * st['eval_scenes_per_mode']} held-out scenes "
           "(half orbit" + (f" with a {arc[0]:g}-{arc[1]:g} degree spread" if arc else "")
           + ", half forward). RRA/RTA in %, AUC@30 in [0, 1], pose_L1 (refined pose encoding, L1), chamfer "
           "(Sim(3)-aligned global pointmaps) in scene units, val_loss = the training loss without pose noise "
           "and with the full loss weights for every variant"
           + (f"; follow = stage 3's displacement of view 1's global points under a 10-degree turn of its "
              f"pose over the rigid transform's, mean over {st['follow_scenes']} held-out orbits"
              if st.get("follow_scenes") else "") + ". train_s (in results.json) is wall time on a CPU shared "
           "with other jobs.", "", format_ablation_table(rows, metrics), ""]
    if any(r["variant"] == "full" for r in rows) and len({r["variant"] for r in rows}) > 1:
        md += ["Difference of each variant's mean from `full`'s and, in brackets, that difference over the "
               "two variants' combined spread over seeds (beyond ±2: larger than the seeds' scatter):", "",
               difference_table(rows, metrics), ""]
    md += [f"* `{v}`: {DESCRIPTIONS[v]}" for v in (["full"] if reference is not None else []) + variants]
    return "\n".join(md) + "\n"


def _one(base: dict, variant: str, seed: int, steps: int, runs: str, kw: dict, follow_scenes: int = 0) -> dict:
    import torch

    from flare_nb.train.config import TrainConfig

    if kw.get("threads"):
        torch.set_num_threads(kw["threads"])     # for the evaluation too, not only the training
    row = run_ablation(TrainConfig.from_dict(base), variant, seed, steps, runs, **kw)
    if follow_scenes:
        row["follow"] = follow_ratio(Path(runs) / f"{variant}_seed{seed}" / "checkpoint.pt", follow_scenes,
                                     kw["size"], kw["n_views"], kw.get("orbit_arc"))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny_synthetic.yaml"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(SWITCHES),
                   help="the paper's ablations (default) and/or the recipe's levers (flare_nb.train.ablations.LEVERS)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("W", "H"))
    p.add_argument("--n-views", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-scenes", type=int, default=8, help="held-out scenes per mode (orbit, forward)")
    p.add_argument("--orbit-arc", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="spread of the held-out orbits in degrees (default: the generator's)")
    p.add_argument("--follow-scenes", type=int, default=0,
                   help="held-out orbits on which to measure stage 3's response to a turn of its pose (0: skip)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    p.add_argument("--out", default=str(ROOT / "data" / "ablations"))
    p.add_argument("--runs", default=str(ROOT / "runs" / "ablations"))
    p.add_argument("--rescore", action="store_true",
                   help="train nothing: score the checkpoints already in --runs again (same settings)")
    p.add_argument("--table-only", action="store_true",
                   help="train and score nothing: write results.md again from --out's results.json")
    p.add_argument("--reference", default=None, metavar="RESULTS_JSON",
                   help="with --table-only: join the 'full' rows of this results.json (same settings, the same seeds) to the table")
    a = p.parse_args(argv)

    out = Path(a.out)
    if a.table_only:
        result = load_results(out / "results.json")
        ref = load_results(a.reference) if a.reference else None
        if ref is not None:
            keys = ("config", "steps", "size", "n_views", "batch_size", "eval_scenes_per_mode", "orbit_arc",
                    "init_from", "lr", "follow_scenes")
            diff = [k for k in keys if ref["settings"].get(k) != result["settings"].get(k)]
            if diff:
                p.error(f"--reference {a.reference} was run with other settings ({', '.join(diff)}); "
                        "its 'full' rows are not comparable")
            if not any(r["variant"] == "full" and r["seed"] in result["settings"]["seeds"] for r in ref["rows"]):
                p.error(f"--reference {a.reference} has no 'full' row with the seeds {result['settings']['seeds']}")
        (out / "results.md").write_text(markdown(result, reference=ref))
        print(f"wrote {out / 'results.md'}")
        return 0
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
    METRICS = (*BASE_METRICS, "follow") if a.follow_scenes else BASE_METRICS
    jobs = [(v, s) for v in a.variants for s in a.seeds]
    kw = dict(eval_scenes=a.eval_scenes, size=a.size, n_views=a.n_views, batch_size=a.batch_size, threads=a.threads,
              rescore=a.rescore, orbit_arc=a.orbit_arc)
    t0 = time.perf_counter()
    done = {}
    with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futs = {pool.submit(_one, base.to_dict(), v, s, a.steps, a.runs, kw, a.follow_scenes): (v, s) for v, s in jobs}
        for f in as_completed(futs):
            (variant, seed), r = futs[f], f.result()
            done[(variant, seed)] = r
            say(f"{variant:>22s} seed {seed}: " + "  ".join(
                f"{k} {r[k]:.3f}" for k in (*METRICS, "train_s") if k in r))
    rows = [done[j] for j in jobs]          # a fixed order, whatever finished first
    table = format_ablation_table(rows, METRICS)
    settings = {"config": str(Path(a.config).relative_to(ROOT)) if Path(a.config).is_relative_to(ROOT) else a.config,
                "steps": a.steps, "size": a.size, "n_views": a.n_views, "batch_size": a.batch_size,
                "seeds": a.seeds, "eval_scenes_per_mode": a.eval_scenes, "eval_modes": ["orbit", "forward"],
                "orbit_arc": a.orbit_arc, "init_from": base.init_from, "lr": base.optim.lr,
                "follow_scenes": a.follow_scenes,
                "eval_seeds": "held-out synthetic seeds 1000000 ... (flare_nb.eval.evaluate.held_out_seeds)",
                "poses": "stage2 (refined pose head)", "pointmaps": "global head, Sim(3)-aligned chamfer",
                "threads": a.threads, "jobs": a.jobs}
    if a.rescore:
        settings["rescored_checkpoints_of"] = trained_by or a.runs
    result = {"command": cmd.strip(), "settings": settings, "variants": {v: {"overrides": SWITCHES[v],
                                                                              "description": DESCRIPTIONS[v]}
                                                                          for v in a.variants},
              "rows": rows, "summary": summarize(rows, METRICS), "total_s": round(time.perf_counter() - t0, 1)}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(markdown(result, trained_by=trained_by))
    say(table)
    shown = out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out
    say(f"done in {result['total_s']:.0f} s; wrote {shown / 'results.json'} and {shown / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
