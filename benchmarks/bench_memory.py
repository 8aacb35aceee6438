"""The flare-nb memory guard against the measured peak memory.

For each run below, the real command (``python -m flare_nb.cli``) runs as a child process; its
peak resident memory (``ru_maxrss`` of that child, ``os.wait4``) is printed next to the estimate
the command itself printed (``memory estimate X GB``, :func:`flare_nb.pipeline.estimate_memory_bytes`,
which counts decoding the largest photo). Runs:

* ``demo``: the bundled room scene, the 8 room photos (512x384 to 1280x960) -> 128x128 (tiny model);
* ``12MP x 8``: 8 generated 4000x3000 JPEG photos (the room photos enlarged, each shifted) in a
  temporary folder -> 128x128;
* ``12MP x 8 @ 512x384``: the same photos at the released model's input size.

Usage: ``python benchmarks/bench_memory.py [--threads 1] [--quick]``. It prints a table; nothing is
asserted (a benchmark, not a test).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_photos(folder: Path, n: int = 8, size=(4000, 3000)) -> list[Path]:
    """``n`` different ``size`` JPEGs from the room photos (enlarged, each a little shifted)."""
    from PIL import Image, ImageChops

    sys.path.insert(0, str(REPO))
    from flare_nb import data_dir
    from flare_nb.scenes.preprocess import load_image

    src = sorted((data_dir() / "real" / "room").glob("IMG_*"))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        im = load_image(src[i % len(src)]).resize(size, Image.BICUBIC)
        im = ImageChops.offset(im, 37 * i, 11 * i)
        p = folder / f"photo_{i:02d}.jpg"
        im.save(p, quality=92)
        out.append(p)
    return out


def _run_reaped(argv, threads: int) -> dict:
    """One run whose peak RSS is read from its own rusage (not the maximum over earlier children)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads))
    env.pop("FLARE_NB_MEMORY_GB", None)
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "flare_nb.cli"] + [str(a) for a in argv], env=env,
                             stdout=fo, stderr=fe, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        secs = time.perf_counter() - t0
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    m = re.search(r"memory estimate ([0-9.]+) GB", out)
    return {"rc": p.returncode, "estimate_gb": float(m.group(1)) if m else float("nan"),
            "peak_gb": ru.ru_maxrss * 1024 / 1e9, "seconds": secs, "last_err": (err.strip().splitlines() or [""])[-1]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs (default 1)")
    ap.add_argument("--quick", action="store_true", help="skip the demo and the 512x384 run; --pnp-iterations 100 "
                    "--no-render (the peak is set by decoding the photos and the network, not by these)")
    args = ap.parse_args(argv)
    extra = ["--pnp-iterations", "100", "--no-render"] if args.quick else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows.append(("demo (8 room photos -> 128x128)", _run_reaped(["demo", "--real", "--out", tmp / "demo"] + extra,
                                                                     args.threads)))
        print(f"demo: {rows[-1][1]}", flush=True)
        t0 = time.perf_counter()
        make_photos(tmp / "photos12mp")
        print(f"generated 8 photos of 4000x3000 in {time.perf_counter() - t0:.1f} s", flush=True)
        rows.append(("12MP x 8 -> 128x128", _run_reaped(["reconstruct", tmp / "photos12mp", "--out", tmp / "o12"]
                                                        + extra, args.threads)))
        print(f"12MP: {rows[-1][1]}", flush=True)
        if not args.quick:
            rows.append(("12MP x 8 -> 512x384", _run_reaped(["reconstruct", tmp / "photos12mp", "--out", tmp / "o12b",
                                                             "--size", "512x384"], args.threads)))
    print(f"\nflare-nb memory guard: estimate vs measured peak RSS (OMP_NUM_THREADS={args.threads})")
    print(f"{'run':34s} {'exit':>4s} {'estimate GB':>12s} {'peak RSS GB':>12s} {'est/peak':>9s} {'seconds':>8s}")
    for name, r in rows:
        ratio = r["estimate_gb"] / r["peak_gb"] if r["peak_gb"] else float("nan")
        print(f"{name:34s} {r['rc']:>4d} {r['estimate_gb']:>12.2f} {r['peak_gb']:>12.2f} {ratio:>9.2f} "
              f"{r['seconds']:>8.1f}" + (f"   {r['last_err']}" if r["rc"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
