"""Forward time and peak memory of the FLARE geometry network (tiny and released sizes).

    python benchmarks/bench_model.py            # tiny (4 and 8 views, 128x128) + official_geometry (2 views, 512x384)
    python benchmarks/bench_model.py --quick    # tiny only
    python benchmarks/bench_model.py --device cuda --repeats 10

Each case runs in a fresh subprocess, so its peak memory is its own:

* time: median of ``--repeats`` forward passes (``torch.no_grad``, eval mode) after one
  warm-up pass; on CUDA under bf16 autocast with ``torch.cuda.synchronize`` around each pass;
* CPU memory: the process's peak resident set size (``resource.getrusage(...).ru_maxrss``, so
  model + activations + the Python/torch runtime) and ``fwd +``: how far the forward passes
  pushed that peak above the resident size measured just before them (``/proc/self/statm``);
* CUDA memory: ``torch.cuda.max_memory_allocated`` (weights + activations).

Weights: random for tiny; for official_geometry the reference fixtures' deterministic recipe
filled into a model built on the meta device (``flare_nb.model.reference.build_reference_model``),
which skips the ~5.6 GB of random initialisation. Weights do not change the time.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CASES = {
    "tiny-4v-128": dict(config="tiny", views=4, H=128, W=128),
    "tiny-8v-128": dict(config="tiny", views=8, H=128, W=128),
    "official-2v-512x384": dict(config="official_geometry", views=2, H=384, W=512),
}
QUICK = ("tiny-4v-128", "tiny-8v-128")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(case: str, device: str, repeats: int) -> dict:
    """Run one case in this process and return its figures."""
    import contextlib

    import torch

    from flare_nb.model.config import official_geometry, tiny
    from flare_nb.device import autocast_dtype, resolve_device
    from flare_nb.model.flare import FlareModel
    from flare_nb.model.reference import build_reference_model

    c = CASES[case]
    dev = resolve_device(device)
    t0 = time.perf_counter()
    if c["config"] == "tiny":
        torch.manual_seed(0)
        model = FlareModel(tiny()).eval()
    else:
        model = build_reference_model(official_geometry())
    model = model.to(dev)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, c["views"], 3, c["H"], c["W"], generator=g) * 2 - 1).to(dev)
    amp = autocast_dtype(dev)
    ctx = (lambda: torch.autocast("cuda", dtype=amp)) if amp is not None else contextlib.nullcontext
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = _rss_mb()
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            sync()
            t = time.perf_counter()
            with ctx():
                model(x)
            sync()
            if i:                                  # pass 0 is the warm-up
                times.append(time.perf_counter() - t)
    peak = _peak_rss_mb()
    out = {"case": case, **c, "device": str(dev), "autocast": "bf16" if amp is not None else "none",
           "params_M": n_params / 1e6, "build_s": build_s, "median_s": statistics.median(times),
           "min_s": min(times), "repeats": repeats, "peak_rss_mb": peak,
           "fwd_rss_increase_mb": max(0.0, peak - rss_before), "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


def load_note() -> str:
    try:
        la = os.getloadavg()
        return f"load average {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} (1/5/15 min) on {os.cpu_count()} CPU cores"
    except OSError:
        return f"{os.cpu_count()} CPU cores"


def table(rows: list[dict]) -> str:
    head = (f"{'case':22s} {'device':7s} {'params':>9s} {'median':>9s} {'min':>9s} {'peak RSS':>10s} "
            f"{'fwd +':>9s} {'CUDA peak':>10s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:22s} FAILED: {r['error']}")
            continue
        cuda = f"{r['cuda_peak_mb']:8.0f} MB" if "cuda_peak_mb" in r else f"{'-':>10s}"
        lines.append(f"{r['case']:22s} {r['device']:7s} {r['params_M']:8.2f}M {r['median_s'] * 1e3:7.0f}ms "
                     f"{r['min_s'] * 1e3:7.0f}ms {r['peak_rss_mb']:7.0f} MB {r['fwd_rss_increase_mb']:6.0f} MB {cuda}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny cases only (skip the 1.4 G-parameter model)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes per case (default 5 tiny, 2 official)")
    ap.add_argument("--cases", nargs="*", choices=sorted(CASES), help="run only these cases")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.worker:
        reps = args.repeats or (5 if CASES[args.worker]["config"] == "tiny" else 2)
        print("RESULT " + json.dumps(worker(args.worker, args.device, reps)), flush=True)
        return 0
    cases = args.cases or (list(QUICK) if args.quick else list(CASES))
    print(f"bench_model: {', '.join(cases)} | {load_note()}", flush=True)
    rows = []
    for case in cases:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, "--device", args.device]
        if args.repeats:
            cmd += ["--repeats", str(args.repeats)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        res = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not res:
            rows.append({"case": case, "error": (p.stderr.strip().splitlines() or ["no output"])[-1]})
        else:
            rows.append(json.loads(res[-1][len("RESULT "):]))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    print(f"(median of the timed passes after one warm-up; {load_note()})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
