"""Turn a training run into a shipped checkpoint that describes itself -- {'format', 'model': state_dict,
'model_config': the run's FlareConfig, 'image_size': [H, W] the run trained at}, plain values only, loaded
with weights_only=True by flare_nb.model.checkpoint -- plus the run's config, log and curves.

    python scripts/export_checkpoint.py runs/tiny_synthetic data/checkpoints/tiny_geometry.pt
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from flare_nb.model.checkpoint import checkpoint_info_from, save_flare_checkpoint
from flare_nb.train.state import load_checkpoint


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path, help="e.g. data/checkpoints/tiny_geometry.pt")
    args = ap.parse_args(argv)
    try:
        ck = load_checkpoint(args.run_dir / "checkpoint.pt")
        info = checkpoint_info_from(ck, str(args.run_dir / "checkpoint.pt"))
        if info is None or info.image_size is None:
            raise ValueError(f"{args.run_dir / 'checkpoint.pt'} has no model_config or no config.data.size; "
                             "export the checkpoint of a flare_nb.train run")
        save_flare_checkpoint(ck["model"], args.out, model_config=info.model_config, image_size=info.image_size)
    except (FileNotFoundError, ValueError) as e:
        print(f"export_checkpoint: error: {e}", file=sys.stderr)
        return 2
    stem = args.out.with_suffix("")
    for name, suffix in (("log.jsonl", "_log.jsonl"), ("loss_curves.png", "_loss_curves.png"),
                         ("config.yaml", "_config.yaml")):
        src = args.run_dir / name
        if src.exists():
            shutil.copyfile(src, f"{stem}{suffix}")
    meta = {"step": int(ck["step"]), "model_config": ck["model_config"], "image_size": list(info.image_size),
            "source": str(args.run_dir), "time": ck.get("time")}
    Path(f"{stem}_meta.json").write_text(json.dumps(meta, indent=1, default=str))
    H, W = info.image_size
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) from step {meta['step']}: patch "
          f"{info.model_config.patch_size}, native size {W}x{H} (WxH)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
