"""Turn a training run into a shipped checkpoint: model weights only ({'model': state_dict},
loaded with weights_only=True by flare_nb.model.checkpoint), plus the run's config, log and curves.

    python scripts/export_checkpoint.py runs/tiny_synthetic data/checkpoints/tiny_geometry.pt
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from flare_nb.model.checkpoint import save_flare_checkpoint
from flare_nb.train.state import load_checkpoint


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path, help="e.g. data/checkpoints/tiny_geometry.pt")
    args = ap.parse_args(argv)
    ck = load_checkpoint(args.run_dir / "checkpoint.pt")
    save_flare_checkpoint(ck["model"], args.out)
    stem = args.out.with_suffix("")
    for name, suffix in (("log.jsonl", "_log.jsonl"), ("loss_curves.png", "_loss_curves.png"),
                         ("config.yaml", "_config.yaml")):
        src = args.run_dir / name
        if src.exists():
            shutil.copyfile(src, f"{stem}{suffix}")
    meta = {"step": int(ck["step"]), "model_config": ck["model_config"], "source": str(args.run_dir),
            "time": ck.get("time")}
    Path(f"{stem}_meta.json").write_text(json.dumps(meta, indent=1, default=str))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) from step {meta['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
