"""Where ``flare-nb demo`` spends its time: each step's seconds and share of the whole command.

    python benchmarks/bench_demo_stages.py [--repeat 3] [--real] [-- extra flare-nb demo options]

Each run is a fresh Python process that does what ``flare-nb demo`` does, into a temporary
folder, and times it from the first line of the process: the start-up (importing the workbook
and torch), then the demo's own steps (``run_synthetic_demo``'s ``timings``: rendering the two
held-out scenes, the two reconstructions, the ground truth, the priors, the comparison figure).
The reconstruction's own stages (network forward, PnP, exports, pages) are listed indented, as
parts of "reconstruct". ``--real`` times ``flare-nb demo --real`` (the bundled room photos, one
reconstruction) instead. ``--repeat N`` prints the median of N runs. The last lines give the
ratios the demo is held to: PnP over the network's forward pass, and the whole command in
seconds. Options after ``--`` go to ``flare-nb demo`` (e.g. ``-- --views 6``).
"""
from __future__ import annotations

import time

T_START = time.perf_counter()       # before any heavy import: the start-up is part of the demo

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def child(extra: list[str], real: bool) -> dict:
    """One timed demo in this process (called in a fresh interpreter by :func:`main`)."""
    import contextlib
    import io

    from flare_nb import cli, demo_synthetic, pipeline
    from flare_nb.inference import STAGES

    t_imported = time.perf_counter()
    captured: dict = {}
    target, name = (pipeline, "reconstruct_to_folder") if real else (demo_synthetic, "run_synthetic_demo")
    real_fn = getattr(target, name)

    def spy(*a, **k):
        res = real_fn(*a, **k)
        captured.update(res)
        return res

    setattr(target, name, spy)
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main(["demo", *(["--real"] if real else []), "--out", str(Path(tmp) / "demo"), *extra])
    t_end = time.perf_counter()
    if rc != 0:
        sys.exit(f"flare-nb demo failed with exit status {rc}")
    steps = dict(captured.get("timings", {}))
    if real:                                       # the pipeline's stages: its own total is the command's work
        steps.pop("total", None)
        inner = {name for _, name in STAGES}       # the model's stages: parts of "forward"
        steps = {("  " + k if k in inner else k): v for k, v in steps.items()}
    return {"start-up (imports)": t_imported - T_START, **steps, "total": t_end - T_START}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--real", action="store_true", help="time flare-nb demo --real (the bundled room photos)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help="options passed on to flare-nb demo (after --)")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.extra, a.real)))
        return
    runs = []
    for _ in range(max(1, a.repeat)):
        cmd = [sys.executable, __file__, "--child", *(["--real"] if a.real else []), "--", *a.extra]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit status {r.returncode}")
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    keys = list(runs[0])
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
    total = med.pop("total")
    top = sum(v for k, v in med.items() if not k.startswith("  "))
    print(f"flare-nb demo{' --real' if a.real else ''} {' '.join(a.extra)}  ({len(runs)} fresh process(es), "
          "median seconds; indented: parts of the line above them)")
    print(f"{'step':40s} {'seconds':>9s} {'share':>7s}")
    for k, v in med.items():
        print(f"{k:40s} {v:9.3f} {v / total:7.1%}")
    print(f"{'other (option checks, output folder)':40s} {total - top:9.3f} {(total - top) / total:7.1%}")
    print(f"{'total (the whole command)':40s} {total:9.3f} {1:7.1%}")
    fwd = med.get("  forward", med.get("forward"))
    pnp = med.get("  pnp", med.get("pnp"))
    if fwd and pnp is not None:
        print(f"PnP / network forward: {pnp / fwd:.2f}  (target <= 1)")
    print(f"whole demo: {total:.1f} s  (target < 10 s on 2 cores)")


if __name__ == "__main__":
    main()
