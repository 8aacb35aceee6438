"""The ``flare-nb`` command: FLARE on your own photos, with standard exports (notebook 08).

::

    flare-nb demo [--out flare_nb_demo] [--scene-seed 1000000]   # held-out synthetic scenes + ground truth
    flare-nb demo --real                         # the bundled room photos (data/real/room)
    flare-nb reconstruct PHOTOS_OR_FOLDER --out DIR [--checkpoint PATH] [--config tiny|official_geometry]
             [--size 512x384] [--device auto] [--ref-view auto|N|NAME] [--conf-threshold Q] [--force]

             [--poses transforms.json|COLMAP_MODEL] [--intrinsics fx fy cx cy | FILE | exif | estimate]
    flare-nb reconstruct VIDEO.mp4 --out DIR [--views 8]          # sharp, evenly spread frames of a video
             [--model geometry|nvs] [--geometry-checkpoint PATH] [--dtype fp32|bf16]
    flare-nb plan --views V --size WxH [--dtype fp32|bf16] [--model geometry|nvs] [--device cpu|cuda]

Argument parsing only: the work is :func:`flare_nb.pipeline.reconstruct_to_folder` (its module
docstring lists the steps, the files written and the staging folder + manifest of
:mod:`flare_nb.outdir`).

Exit status: 0 done; 2 bad input or a failure (one line ``flare-nb: error: ...`` naming the
file or option and what to do; ``--debug`` shows the traceback); 130 interrupted (Ctrl-C, one
line ``flare-nb: interrupted; ...``). Warnings (skipped files, duplicates, big, tiny or very
wide photos) are lines ``flare-nb: warning: ...``.
"""
from __future__ import annotations

import argparse
import sys

from flare_nb import data_dir
from flare_nb.camera_rule import CONF_THRESHOLD_HELP, PNP_DEFAULT_ITERATIONS
from flare_nb.scenes.preprocess import check_size

__all__ = ["main", "build_parser", "parse_size", "EXIT_OK", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED"]

DEMO_VIEWS = 8
MAX_VIEWS = 8                  # FLARE is trained on 2-8 views (flare_nb.pipeline.DEFAULT_MAX_VIEWS)
MOST_VIEWS = 16                # accepted with a warning (flare_nb.pipeline.MOST_VIEWS)
EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130


def parse_size(text: str) -> tuple[int, int]:
    """``"512x384"`` -> ``(512, 384)`` (W, H), both positive multiples of 64 (``"256"`` = square)."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--size must look like 512x384 (width x height), got {text!r}") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2:
        raise ValueError(f"--size must look like 512x384 (width x height), got {text!r}")
    try:
        return check_size(tuple(nums))
    except ValueError as e:
        raise ValueError(f"--size {text}: {e}") from None


# ----------------------------------------------------------------------------- argparse
EXIT_CODES_HELP = ("exit status: 0 done; 2 bad input or a failure (one line 'flare-nb: error: ...' naming the file "
                   "or option and what to do); 130 interrupted (Ctrl-C; --out is left unchanged).")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"flare-nb: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flare-nb", description="FLARE: poses, pointmaps and Gaussians from 2-8 "
                "uncalibrated photos, exported as COLMAP / nerfstudio / PLY files.", epilog=EXIT_CODES_HELP)
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="{demo,reconstruct,plan}")

    def common(q, out_default):
        q.add_argument("--out", default=out_default, help="output folder (new or empty; see --force); written "
                       "into a staging folder beside it and renamed into place when complete")
        q.add_argument("--checkpoint", default=None, help="FLARE checkpoint (.pth/.pt/.safetensors); default: "
                       "data/checkpoints/tiny_geometry.pt for the tiny model, else random weights")
        q.add_argument("--config", default="tiny", choices=["tiny", "official_geometry"],
                       help="model size: tiny (default) or official_geometry (the released model)")
        q.add_argument("--size", default=None, help="input size WxH, multiples of 64 (default: the model's "
                       "native size: the tiny checkpoint's training size, e.g. 128x128; 512x384 official)")
        q.add_argument("--device", default="auto", help="auto | cpu | cuda")
        q.add_argument("--ref-view", default="auto", help="reference view: auto, an index or a file name")
        q.add_argument("--conf-threshold", type=float, default=0.5, metavar="Q",
                       help=CONF_THRESHOLD_HELP.replace("%", "%%") + " Default 0.5.")
        q.add_argument("--max-views", type=int, default=MAX_VIEWS,
                       help=f"subsample more photos than this evenly (default {MAX_VIEWS}, at most {MOST_VIEWS}; "
                       f"FLARE was trained on 2-{MAX_VIEWS} views, more are accepted with a warning)")
        q.add_argument("--pnp-iterations", type=int, default=None,
                       help="most RANSAC iterations of the PnP cameras per view (a positive integer, default "
                       f"{PNP_DEFAULT_ITERATIONS}; RANSAC stops earlier once confident; the release runs 10000)")
        q.add_argument("--no-render", action="store_true", help="skip rendering the Gaussians")
        q.add_argument("--force", action="store_true", help="replace the files an earlier flare-nb run wrote "
                       "into --out (listed in its .flare-nb-manifest.json); other files are never touched")
        _output_group(q)

    d = sub.add_parser("demo", help="the tiny model on held-out synthetic scenes beside their ground truth "
                       "(flare_nb.demo_synthetic); --real: the bundled room photos", epilog=EXIT_CODES_HELP)
    common(d, "flare_nb_demo")
    d.add_argument("--views", type=int, default=None, help="views per synthetic scene (2-8, default 4), or with "
                   f"--real how many of the 8 room photos (default {DEMO_VIEWS})")
    d.add_argument("--real", action="store_true", help="reconstruct the bundled real room photos (data/real/room) "
                   "instead: outside the tiny model's domain (synthetic training scenes)")
    d.add_argument("--scene-seed", default=None, metavar="SEED", help="seed of the held-out synthetic scenes "
                   "(>= 1000000, which training never uses; default 1000000): one forward walk and one orbit")
    r = sub.add_parser("reconstruct", help="reconstruct your own photos", epilog=EXIT_CODES_HELP)
    r.add_argument("images", nargs="+", help="a folder of photos, 2-16 image files, or one video file")
    r.add_argument("--poses", default=None, metavar="FILE",
                   help="known camera poses: a transforms.json or a COLMAP model folder, matched to the "
                        "photos by file name (the release's known-pose mode)")
    g = r.add_argument_group("cameras and video")
    g.add_argument("--intrinsics", nargs="+", default=None, metavar="V",
                   help="known intrinsics: fx fy cx cy in pixels of the original photos (OpenCV: the top-left "
                        "pixel's centre is 0,0), a file (JSON {\"photo.jpg\": [fx, fy, cx, cy]} or lines "
                        "'photo.jpg fx fy cx cy'), 'exif' (require the photos' EXIF focal) or 'estimate' (ignore "
                        "EXIF). Default: EXIF when every photo has a focal there, else FLARE's estimate. Used by "
                        "PnP and every exported camera; report.md says which source was used")
    g.add_argument("--views", type=int, default=DEMO_VIEWS,
                   help=f"with a video as input: how many frames to take (2-{MOST_VIEWS}, default {DEMO_VIEWS})")
    common(r, None)
    pl = sub.add_parser("plan", help="memory and time estimate of the released models, before downloading them",
                        epilog=EXIT_CODES_HELP)
    pl.add_argument("--views", type=int, required=True, help="number of photos (2-8)")
    pl.add_argument("--size", required=True, help="input size WxH, multiples of 64 (e.g. 512x384)")
    pl.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights in float32 or bfloat16")
    pl.add_argument("--model", default="geometry", choices=["geometry", "nvs"], help="which released model")
    pl.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where it would run (default cpu)")
    return p


def _output_group(q) -> None:
    """The model-output options of demo / reconstruct (flare_nb.nvs_run, flare_nb.scene_page, flare_nb.plan)."""
    g = q.add_argument_group("model and precision")
    g.add_argument("--model", default="geometry", choices=["geometry", "nvs"],
                   help="geometry (default): Gaussians of the pointmap; nvs: the NVS model (data/checkpoints/"
                        "tiny_nvs.pt, or the released NVS.pth by --checkpoint with --config official_geometry) "
                        "writes its Gaussian head's Gaussians and renders")
    g.add_argument("--geometry-checkpoint", default=None, metavar="PATH",
                   help="--model nvs: the geometry model whose camera-centric pointmaps give the intrinsics "
                        "(default data/checkpoints/tiny_geometry.pt for the tiny size; required for the released size)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                   help="fp32 (default) or bf16: bfloat16 weights, half the weight memory (the released model on "
                        "a CPU with little memory); outputs differ by the bf16 rounding")


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).replace(":\n- ", ": ").replace("\n- ", "; ").split())
    return msg if len(msg) <= 600 else msg[:597] + "..."


def _interrupted(e: BaseException | None = None) -> int:
    note = str(e) or "no output was written"     # pipeline.Interrupted carries what became of --out
    try:
        print(f"flare-nb: interrupted; {note}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    return EXIT_INTERRUPTED


def main(argv=None) -> int:
    """Entry point of ``flare-nb``; returns the exit status (0 ok, 2 bad input or failure,
    130 interrupted). Ctrl-C at any moment, even while torch is being imported, ends with one
    line and status 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt as e:
        return _interrupted(e)


def _main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        if args.command == "plan":
            from flare_nb.plan import run_plan

            print(run_plan(args.views, parse_size(args.size), args.dtype, args.model, args.device))
            return EXIT_OK
        # imported here, after parsing: torch loads with it, and a Ctrl-C meanwhile is answered by main()
        from flare_nb.pipeline import reconstruct_to_folder

        kw = dict(checkpoint=args.checkpoint, config=args.config, device=args.device, ref_view=args.ref_view,
                  conf_threshold=args.conf_threshold, force=args.force, max_views=args.max_views,
                  pnp_iterations=args.pnp_iterations, render=not args.no_render,
                  model=args.model, dtype=args.dtype, geometry_checkpoint=args.geometry_checkpoint)
        kw["size"] = None if args.size is None else parse_size(args.size)
        if args.command == "demo" and not args.real:
            from flare_nb.demo_synthetic import DEMO_VIEWS as SYNTHETIC_VIEWS
            from flare_nb.demo_synthetic import SCENE_SEED, run_synthetic_demo

            run_synthetic_demo(args.out, SCENE_SEED if args.scene_seed is None else args.scene_seed,
                               SYNTHETIC_VIEWS if args.views is None else args.views, **kw)
        elif args.command == "demo":
            room = data_dir() / "real" / "room"
            if args.scene_seed is not None:
                raise ValueError("--scene-seed chooses the synthetic scenes; --real uses the bundled room photos")
            args.views = DEMO_VIEWS if args.views is None else args.views
            if args.config == "tiny":
                from flare_nb.demo_synthetic import REAL_PHOTOS_NOTE

                print(f"flare-nb: note: {REAL_PHOTOS_NOTE}", flush=True)
            if not 2 <= args.views <= 8:
                raise ValueError(f"--views must be between 2 and 8 (the room scene has 8 photos), got {args.views}")
            photos = sorted(p for p in room.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:args.views]
            reconstruct_to_folder(photos, args.out, title="flare-nb demo: data/real/room", **kw)
        else:
            if args.out is None:
                raise ValueError("reconstruct needs --out DIR (a new or empty folder)")
            reconstruct_to_folder(args.images, args.out, poses=args.poses, intrinsics=args.intrinsics,
                                  views=args.views, **kw)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - every error becomes one line unless --debug
        if args.debug:
            raise
        kind = "" if isinstance(e, (ValueError, FileNotFoundError, OSError)) else f"{type(e).__name__}: "
        msg = _one_line(e)
        note = getattr(e, "out_note", None)
        if note and note not in msg:
            msg += f" ({note})"
        print(f"flare-nb: error: {kind}{msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":  # python -m flare_nb.cli
    sys.exit(main())
