"""Where ``flare-nb demo`` spends its time: each stage's seconds and share of the total.

    python benchmarks/bench_demo_stages.py [--repeat 1] [-- extra flare-nb demo options]

Runs :func:`flare_nb.pipeline.reconstruct_to_folder` on the bundled room photos exactly as
``flare-nb demo --real`` does (default options), into a temporary folder, and prints the table of
``result["timings"]`` (the stages the command prints itself) with each stage's share of the
total wall time. ``--repeat N`` runs it N times and prints the median of each stage. Extra
options after ``--`` are passed on (e.g. ``-- --pnp-iterations 10000 --views 4``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
from pathlib import Path


def run_once(extra: list[str]) -> dict:
    from flare_nb import cli

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        captured = {}
        import flare_nb.pipeline as pipeline

        real = pipeline.reconstruct_to_folder

        def spy(*a, **k):
            res = real(*a, **k)
            captured.update(res)
            return res

        pipeline.reconstruct_to_folder = spy
        try:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = cli.main(["demo", "--real", "--out", str(out), *extra])
        finally:
            pipeline.reconstruct_to_folder = real
        if rc != 0:
            sys.exit(f"flare-nb demo failed with exit status {rc}")
        report = (out / "report.md").read_text()
        camera_line = next((ln for ln in report.splitlines() if ln.startswith("* cameras:")), "")
        return {"timings": dict(captured["timings"]), "cameras": camera_line}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("extra", nargs="*", help="options passed on to flare-nb demo (after --)")
    a = ap.parse_args()
    runs = [run_once(a.extra) for _ in range(max(1, a.repeat))]
    keys = list(runs[0]["timings"])
    med = {k: statistics.median(r["timings"].get(k, 0.0) for r in runs) for k in keys}
    total = med.pop("total")
    # "forward" contains the four model stages; list it, but do not add it twice
    inner = {"encoder", "stage1_coarse_pose", "stage2_camera_centric", "stage3_global"}
    print(f"flare-nb demo {' '.join(a.extra)}  ({len(runs)} run(s), median seconds)")
    print(f"{'stage':28s} {'seconds':>9s} {'share':>7s}")
    for k, v in med.items():
        mark = "  (part of forward)" if k in inner else ""
        print(f"{k:28s} {v:9.3f} {v / total:7.1%}{mark}")
    print(f"{'total':28s} {total:9.3f} {1:7.1%}")
    print(runs[-1]["cameras"])


if __name__ == "__main__":
    main()
