"""Draw the FLARE cascade of the released geometry configuration (8 views of 512x384) from
``flare_nb.model.config.official_geometry()`` and save it as docs/architecture.png.

    python scripts/draw_architecture.py [--out docs/architecture.png] [--views 8] [--size 512x384]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from flare_nb.model.config import official_geometry  # noqa: E402
from flare_nb.nb.diagram import draw_cascade  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/architecture.png")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--size", default="512x384", help="WxH, multiples of 64")
    args = ap.parse_args()
    try:
        W, H = (int(v) for v in args.size.lower().split("x"))
        fig = draw_cascade(official_geometry(), (H, W), args.views)
    except ValueError as e:
        print(f"draw_architecture: --size/--views: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and out.resolve() != (Path(__file__).resolve().parents[1] / "docs" / "architecture.png"):
        print(f"draw_architecture: {out} exists; choose another --out (only docs/architecture.png is redrawn in place)",
              file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
