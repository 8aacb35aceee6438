"""bfloat16 weights (``flare-nb --dtype bf16``, :mod:`flare_nb.bf16`) against float32 on the parity fixtures.

For the fixture ``data/flare_reference/parity_geometry_pose.npz`` (the released-size geometry
network, 3 views of 256x192, the fixtures' deterministic weights and teacher forcing; or
``--fixture nvs``: ``parity_nvs.npz``) each precision runs in its own child process:

* build the released network with the recipe weights (float32), then for ``bf16`` round every
  parameter to bfloat16 (storage; the CPU computes each layer in float32);
* reset the peak-memory mark (``/proc/self/clear_refs``), run the forward, and report the peak
  resident memory of the forward (``VmHWM``), the weights' bytes and the time;
* every fixture array compared with the official output (``flare_nb.model.reference.compare_array``:
  the parity tests' deviation figures), and bf16 compared with float32 directly.

Usage: ``python benchmarks/bench_bf16.py [--fixture geometry|nvs] [--threads N]``. About 6 GB of
memory and a few minutes per precision on 2 cores. It prints a table; nothing is asserted (a
benchmark, not a test).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = {"geometry": "parity_geometry_pose.npz", "nvs": "parity_nvs.npz"}
INPUTS = ("images", "true_shape", "intrinsics_crop")


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1


def child(fixture: str, dtype: str, out: Path) -> None:
    import numpy as np
    import torch

    from flare_nb.bf16 import to_bf16_weights
    from flare_nb.model import config as mc
    from flare_nb.model import reference as R

    ref = dict(np.load(R.DATA_DIR / FIXTURES[fixture]))
    cfg = mc.official_geometry() if fixture == "geometry" else mc.official_nvs()
    model = R.build_reference_model(cfg)
    if dtype == "bf16":
        to_bf16_weights(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")       # peak RSS from here on
    except OSError:
        pass
    rss0 = _vm("VmRSS")
    kw = {"intrinsics": torch.from_numpy(ref["fxfycxcy_unorm"])} if fixture == "nvs" else {}
    t0 = time.perf_counter()
    with torch.no_grad():
        o = model(torch.from_numpy(ref["images"]), pose_teacher=R.teacher_from_fixture(ref), **kw)
    dt = time.perf_counter() - t0
    mine = dict(o.intermediates, pts3d_cam=o.pts3d_cam, conf_cam=o.conf_cam, pts3d_global=o.pts3d_global,
                conf_global=o.conf_global)
    if getattr(o, "gaussians_raw", None) is not None:
        mine.update({f"gs_{k}": v for k, v in o.gaussians_raw.items()})
    arrays = {k: v.detach().float().numpy() for k, v in mine.items() if v is not None and k in ref}
    np.savez(out, **arrays)
    (out.with_suffix(".json")).write_text(json.dumps({"seconds": dt, "weight_bytes": weight_bytes,
                                                      "rss_before": rss0, "peak": _vm("VmHWM")}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", default="geometry", choices=sorted(FIXTURES))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", nargs=2, metavar=("DTYPE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        child(args.fixture, args.child[0], Path(args.child[1]))
        return 0
    import numpy as np
    import torch

    from flare_nb.model import reference as R

    ref = dict(np.load(R.DATA_DIR / FIXTURES[args.fixture]))
    res, meta = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("fp32", "bf16"):
            out = Path(tmp) / f"{dtype}.npz"
            cmd = [sys.executable, __file__, "--fixture", args.fixture, "--child", dtype, str(out)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            subprocess.run(cmd, check=True, env=env)
            res[dtype] = dict(np.load(out))
            meta[dtype] = json.loads(out.with_suffix(".json").read_text())
    print(f"bench_bf16: fixture {FIXTURES[args.fixture]}, {torch.get_num_threads()} threads, CPU")
    print(f"{'':6s} {'weights GB':>10s} {'RSS before fwd GB':>18s} {'peak during fwd GB':>19s} {'forward s':>10s}")
    for d, m in meta.items():
        print(f"{d:6s} {m['weight_bytes'] / 1e9:10.2f} {m['rss_before'] / 1e9:18.2f} {m['peak'] / 1e9:19.2f} "
              f"{m['seconds']:10.1f}")
    print("\ndeviation from the official output (parity figures; tol = the parity tests' tolerance):")
    for d in ("fp32", "bf16"):
        print(f"[{d}]")
        print(R.format_comparison({k: R.compare_array(k, v, ref[k]) for k, v in res[d].items()}))
    print("\nbf16 against fp32 directly:")
    print(R.format_comparison({k: R.compare_array(k, res["bf16"][k], res["fp32"][k]) for k in res["fp32"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
