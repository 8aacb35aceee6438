"""Hostile input through the real ``flare-nb`` command, one table row per case.

Every case runs ``python -m flare_nb.cli`` as its own process (the command a user types),
in its own folder, and checks: the exit status (0 done, 2 bad input, 130 interrupted), that
an error is ONE line ``flare-nb: error: ...`` holding the expected words (the file or option
and what to do), that no traceback is printed, and that nothing outside the run's own output
folder changed (no input deleted or rewritten, no staging folder left behind). A run that
succeeds must write exactly the files its manifest lists.

The cases are cheap: options and output folders are checked before the model is loaded,
photos are small, ``--size 64x64`` and the tiny checkpoint; cases that must stop after the
photo checks and their warnings end with an unknown ``--ref-view``. All cases
run up front, two processes at a time (module fixture), and each row asserts its result.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flare_nb import data_dir
from flare_nb.outdir import INCOMPLETE_TAG, MANIFEST, read_manifest
from cli_helpers import finished_case

REPO = Path(__file__).resolve().parents[1]
ROOM = data_dir() / "real" / "room"
CKPT = data_dir() / "checkpoints" / "tiny_geometry.pt"
FAST = ["--size", "64x64", "--pnp-iterations", "20", "--no-render"]
STOP = ["--ref-view", "no_such_view.png"]              # refused after the photo checks and their warnings


# ----------------------------------------------------------------------------- inputs
def photos(d: Path, n: int = 3, size=(96, 72), name="photo") -> Path:
    """``n`` different small JPEGs (the room photos) in ``d``; returns ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(sorted(ROOM.glob("IMG_*"))[:n]):
        with Image.open(p) as im:
            im.convert("RGB").resize(size).save(d / f"{name}{i}.jpg", quality=90)
    return d


def png_with_header_size(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims ``w x h`` pixels (a decompression bomb for PIL)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]                                  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


class _Payload:
    """Unpickling it would call a function: a checkpoint that carries code."""

    def __reduce__(self):
        return (os.getcwd, ())


def _mixed_formats(d: Path) -> list:
    """16-bit, CMYK, RGBA, grayscale and an EXIF-rotated photo: all usable."""
    src = photos(d / "src", 5)
    i = d / "in"
    i.mkdir()
    ims = [Image.open(p).convert("RGB") for p in sorted(src.iterdir())]
    Image.fromarray(np.asarray(ims[0].convert("L"), dtype=np.uint16) * 257).save(i / "a16.png")
    ims[1].convert("CMYK").save(i / "b_cmyk.jpg")
    rgba = ims[2].convert("RGBA")
    rgba.putalpha(100)
    rgba.save(i / "c_rgba.png")
    ims[3].convert("L").save(i / "d_gray.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    ims[4].transpose(Image.Transpose.ROTATE_90).save(i / "e_rot.jpg", exif=exif)
    return ["reconstruct", i, "--out", d / "out"] + FAST


def _force_over_earlier_run(d: Path) -> list:
    """An earlier run's folder holding the user's own files with flare-nb-like names."""
    inp = photos(d / "in", 3)
    out = d / "out"
    (out / "images").mkdir(parents=True)
    (out / "renders").mkdir()
    (out / "sparse" / "0").mkdir(parents=True)
    (out / "images" / "001_holiday.jpg").write_bytes(b"my holiday photo")
    (out / "renders" / "view_final.png").write_bytes(b"my render")
    (out / "sparse" / "0" / "my_notes.txt").write_text("my notes")
    (out / "cameras.json").write_text("{}")
    (out / "old_extra.txt").write_text("written by the earlier run")
    (out / MANIFEST).write_text('{"written_by": "flare-nb", "complete": true, "files": ["cameras.json", '
                                '"old_extra.txt"]}')
    return ["reconstruct", inp, "--out", out, "--force"] + FAST


def _input_folder_with_earlier_outputs(d: Path) -> list:
    inp = photos(d / "in", 3)
    Image.new("RGB", (200, 100), "white").save(inp / "summary.png")
    Image.new("RGB", (200, 100), "gray").save(inp / "renders.png")
    (inp / MANIFEST).write_text('{"written_by": "flare-nb", "complete": true, "files": ["summary.png", '
                                '"renders.png"]}')
    return ["reconstruct", inp, "--out", d / "out"] + FAST


def _copies(d: Path, n: int) -> Path:
    one = photos(d / "src", 1) / "photo0.jpg"
    inp = d / "in"
    inp.mkdir()
    for k in range(n):
        (inp / f"copy{k}.jpg").write_bytes(one.read_bytes())
    return inp


def _odd_shapes(d: Path, which: str) -> list:
    inp = photos(d / "in", 2)
    if which == "wide":
        Image.new("RGB", (4000, 50), (90, 120, 30)).save(inp / "wide.png")
    elif which == "small":
        Image.new("RGB", (40, 40), (200, 10, 10)).save(inp / "small.png")
    elif which == "tiny":
        Image.new("RGB", (8, 8), (10, 200, 10)).save(inp / "tiny8.png")
    elif which == "big":
        Image.new("L", (7200, 7100), 128).save(inp / "big51mp.png")
    return ["reconstruct", inp, "--out", d / "out"] + FAST


def _ckpt(d: Path, kind: str) -> list:
    import torch

    inp = photos(d / "in", 2)
    c = d / "ckpt"
    c.mkdir()
    if kind == "random":
        p = c / "random.pth"
        p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "raw_pickle_code":
        p = c / "raw.pth"
        p.write_bytes(pickle.dumps({"model": _Payload()}, protocol=2))
    elif kind == "zip_code":
        p = c / "zipcode.pt"
        torch.save({"model": {"w": torch.zeros(2)}, "hook": _Payload()}, p)
    elif kind == "truncated":
        p = c / "truncated.pt"
        p.write_bytes(CKPT.read_bytes()[: CKPT.stat().st_size // 2])
    elif kind == "mismatched":
        p = c / "other.pt"
        torch.save({"foo.weight": torch.zeros(3)}, p)
    elif kind == "bad_safetensors":
        p = c / "bad.safetensors"
        p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    elif kind == "txt":
        p = c / "weights.txt"
        p.write_text("weights")
    elif kind == "folder":
        p = c
    else:
        p = c / "missing.pth"
    return ["reconstruct", inp, "--out", d / "out", "--checkpoint", p] + FAST


def _out(d: Path, kind: str) -> list:
    inp = photos(d / "in", 2)
    if kind == "file":
        (d / "taken").write_text("mine")
        out = d / "taken"
    elif kind == "under_file":
        (d / "afile").write_text("mine")
        out = d / "afile" / "out"
    elif kind == "proc":
        out = Path("/proc/flare_nb_out_test")
    elif kind == "not_empty":
        out = d / "out"
        out.mkdir()
        (out / "thesis.tex").write_text("mine")
    elif kind == "input_folder":
        out = inp
        return ["reconstruct", inp, "--out", out, "--force"] + FAST
    elif kind == "holds_inputs":
        out = d / "out"
        (out / "images").mkdir(parents=True)
        for i, p in enumerate(sorted(inp.iterdir())):
            (out / "images" / f"{i:03d}_{p.stem}.png").write_bytes(p.read_bytes())
        (out / MANIFEST).write_text('{"written_by": "flare-nb", "complete": true, "files": ["images/000_photo0.png",'
                                    ' "images/001_photo1.png"]}')
        return ["reconstruct", out / "images", "--out", out, "--force"] + FAST
    elif kind == "clash":
        out = d / "out"
        out.mkdir()
        (out / "cameras.json").write_text('{"mine": true}')
        return ["reconstruct", inp, "--out", out, "--force"] + FAST
    elif kind == "incomplete":
        out = d / "out"
        out.mkdir()
        (out / "cameras.json").write_text("{}")
        (out / MANIFEST).write_text('{"written_by": "flare-nb", "complete": false, "files": ["cameras.json"]}')
    return ["reconstruct", inp, "--out", out] + FAST


def _simple(d: Path, *extra, n=2) -> list:
    return ["reconstruct", photos(d / "in", n), "--out", d / "out"] + list(extra)


# ----------------------------------------------------------------------------- the table
# id, setup(d) -> argv, exit status, words in the error line (or in stderr for warnings), options
CASES = [
    # options (checked before anything is read)
    ("size_not_multiple", lambda d: _simple(d, "--size", "100x100"), 2, ["--size", "multiple of 64"], {}),
    ("size_words", lambda d: _simple(d, "--size", "big"), 2, ["--size", "512x384"], {}),
    ("size_zero", lambda d: _simple(d, "--size", "0x64"), 2, ["width 0", "multiple of 64"], {}),
    ("size_huge", lambda d: _simple(d, "--size", "65536x65536", "--no-render"), 2,
     ["not enough memory", "65536x65536", "would fit", "--size"], {"not": ["even 2 views"]}),
    ("conf_threshold_above_1", lambda d: _simple(d, "--conf-threshold", "1.5"), 2, ["--conf-threshold", "[0, 1)"], {}),
    ("conf_threshold_nan", lambda d: _simple(d, "--conf-threshold", "nan"), 2, ["--conf-threshold"], {}),
    ("pnp_iterations_zero", lambda d: _simple(d, "--pnp-iterations", "0"), 2, ["--pnp-iterations", "positive"], {}),
    ("pnp_iterations_negative", lambda d: _simple(d, "--pnp-iterations", "-5"), 2, ["--pnp-iterations"], {}),
    ("pnp_iterations_word", lambda d: _simple(d, "--pnp-iterations", "many"), 2, ["--pnp-iterations", "many"], {}),
    ("max_views_one", lambda d: _simple(d, "--max-views", "1"), 2, ["--max-views", ">= 2"], {}),
    ("unknown_option", lambda d: _simple(d, "--frobnicate"), 2, ["unrecognized arguments", "--frobnicate"], {}),
    ("config_unknown", lambda d: _simple(d, "--config", "huge"), 2, ["--config", "huge"], {}),
    ("device_unknown", lambda d: _simple(d, "--device", "tpu"), 2, ["--device", "tpu"], {}),
    ("demo_views_9", lambda d: ["demo", "--out", d / "out", "--views", "9"], 2, ["--views", "between 2 and 8"], {}),
    ("reconstruct_without_out", lambda d: ["reconstruct", photos(d / "in", 2)], 2, ["--out"], {}),
    ("ref_view_index_out_of_range", lambda d: _simple(d, "--ref-view", "7", *FAST), 2, ["--ref-view", "0..1"], {}),
    ("ref_view_unknown_name", lambda d: _simple(d, "--ref-view", "nope.jpg", *FAST), 2, ["--ref-view", "nope.jpg"], {}),
    # photos
    ("input_missing", lambda d: ["reconstruct", d / "nothere", "--out", d / "out"], 2, ["no such file", "nothere"], {}),
    ("input_empty_folder", lambda d: ["reconstruct", _mk(d / "empty"), "--out", d / "out"], 2, ["no images found"], {}),
    ("input_one_photo", lambda d: ["reconstruct", photos(d / "in", 1), "--out", d / "out"], 2,
     ["at least 2", "photo0.jpg"], {}),
    ("input_only_documents", lambda d: ["reconstruct", _docs(d), "--out", d / "out"], 2,
     ["no images found", "non-image"], {}),
    ("input_corrupt_and_truncated", lambda d: ["reconstruct", _corrupt(d), "--out", d / "out"] + FAST, 2,
     ["readable", "garbage.jpg"], {}),
    ("input_same_file_twice", lambda d: ["reconstruct", photos(d / "in", 1) / "photo0.jpg",
                                         d / "in" / "photo0.jpg", "--out", d / "out"], 2,
     ["at least 2 different", "given twice"], {}),
    ("input_eight_copies", lambda d: ["reconstruct", _copies(d, 8), "--out", d / "out"], 2,
     ["at least 2 different", "identical to copy0.jpg"], {}),
    ("input_200_megapixel_png", lambda d: ["reconstruct", _bomb(d), "--out", d / "out"] + FAST, 2,
     ["bomb.png", "200 megapixels", "downscale"], {"not": ["DecompressionBomb"]}),
    ("input_earlier_outputs_skipped", lambda d: _input_folder_with_earlier_outputs(d) + STOP, 2,
     ["--ref-view", "['photo0.jpg', 'photo1.jpg', 'photo2.jpg']"],
     {"stderr": ["skipping 2 file(s) an earlier flare-nb run wrote", "summary.png"]}),
    ("input_duplicate_warned", lambda d: ["reconstruct", _dup(d), "--out", d / "out"] + FAST + STOP, 2, ["--ref-view"],
     {"stderr": ["warning: using 1 duplicate", "zcopy.jpg is identical to photo0.jpg"]}),
    ("input_4000x50", lambda d: _odd_shapes(d, "wide") + STOP, 2, ["--ref-view"],
     {"stderr": ["wide.png is 4000x50", "keeps only 1.25% of its width"]}),
    ("input_40x40_upscaled", lambda d: _odd_shapes(d, "small") + ["--size", "128x128"] + STOP, 2, ["--ref-view"],
     {"stderr": ["small.png is 40x40", "enlarged 3.2x"]}),
    ("input_8x8_refused", lambda d: _odd_shapes(d, "tiny") + STOP, 2, ["--ref-view"],
     {"stderr": ["tiny8.png is 8x8", "minimum 32 px"]}),
    ("input_51_megapixels", lambda d: _odd_shapes(d, "big") + STOP, 2, ["--ref-view"],
     {"stderr": ["big51mp.png is 7200x7100", "51 megapixels", "memory check"]}),
    ("memory_guard", lambda d: _simple(d, *FAST), 2, ["not enough memory", "smallest run"],
     {"env": {"FLARE_NB_MEMORY_GB": "0.001"}}),
    # checkpoints
    ("checkpoint_missing", lambda d: _ckpt(d, "missing"), 2, ["checkpoint not found", "missing.pth"], {}),
    ("checkpoint_folder", lambda d: _ckpt(d, "folder"), 2, ["checkpoint not found", "is a folder"], {}),
    ("checkpoint_random_bytes", lambda d: _ckpt(d, "random"), 2, ["random.pth", "not a PyTorch checkpoint"], {}),
    ("checkpoint_raw_pickle_with_code", lambda d: _ckpt(d, "raw_pickle_code"), 2, ["raw.pth", "refused", "never runs"],
     {"not": ["UserWarning"]}),
    ("checkpoint_zip_with_code", lambda d: _ckpt(d, "zip_code"), 2, ["zipcode.pt", "refused"], {}),
    ("checkpoint_truncated", lambda d: _ckpt(d, "truncated"), 2, ["truncated.pt", "damaged or truncated"], {}),
    ("checkpoint_mismatched", lambda d: _ckpt(d, "mismatched"), 2, ["other.pt", "missing keys"], {}),
    ("checkpoint_bad_safetensors", lambda d: _ckpt(d, "bad_safetensors"), 2, ["bad.safetensors", "not a valid"], {}),
    ("checkpoint_unknown_format", lambda d: _ckpt(d, "txt"), 2, ["weights.txt", "unknown checkpoint format"], {}),
    # output folders
    ("out_is_a_file", lambda d: _out(d, "file"), 2, ["--out", "taken", "is a file"], {}),
    ("out_under_a_file", lambda d: _out(d, "under_file"), 2, ["--out", "afile", "not a folder"], {}),
    ("out_in_proc", lambda d: _out(d, "proc"), 2, ["--out /proc/flare_nb_out_test", "cannot be created"], {}),
    ("out_not_empty", lambda d: _out(d, "not_empty"), 2, ["already exists", "--force"], {}),
    ("out_is_the_input_folder", lambda d: _out(d, "input_folder"), 2, ["holds the input photo", "--out"], {}),
    ("out_holds_the_inputs_force", lambda d: _out(d, "holds_inputs"), 2, ["holds the input photo", "000_photo0.png"], {}),
    ("out_force_would_replace_user_file", lambda d: _out(d, "clash"), 2, ["did not write", "cameras.json"], {}),
    ("out_incomplete_earlier_run", lambda d: _out(d, "incomplete"), 2, ["INCOMPLETE", "--force"], {}),
    # runs that write (exit 0) and runs that fail while writing
    ("mixed_formats_run", _mixed_formats, 0, [], {"out": "out", "stdout": ["[1/6] 5 photos"]}),
    ("force_keeps_user_files", _force_over_earlier_run, 0, [], {"out": "out", "keep": [
        "images/001_holiday.jpg", "renders/view_final.png", "sparse/0/my_notes.txt"], "gone": ["old_extra.txt"]}),
    ("disk_full_while_writing", lambda d: _simple(d, *FAST), 2, ["could not write", "File too large",
                                                                  "no files were written"],
     {"fsize": 150_000}),
    ("ctrl_c_while_importing_torch", lambda d: _simple(d, *FAST), 130, ["interrupted", "no output was written"],
     {"sigint": "import torch"}),
    ("ctrl_c_after_the_photos", lambda d: _simple(d, *FAST), 130, ["interrupted", "no files were written"],
     {"sigint": "[1/6]"}),
    ("ctrl_c_while_writing", lambda d: _simple(d, *FAST), 130, ["interrupted", "no files were written"],
     {"sigint": "[5/6]"}),
    ("ctrl_c_while_replacing", _force_over_earlier_run, 130, ["interrupted", "no files were written"],
     {"sigint": "[5/6]", "out": "out"}),
]


def _mk(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


def _docs(d: Path) -> Path:
    p = _mk(d / "docs")
    (p / "a.txt").write_text("a")
    (p / "b.pdf").write_bytes(b"%PDF-1.4")
    return p


def _corrupt(d: Path) -> Path:
    p = photos(d / "in", 1)
    (p / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (p / "cut.jpg").write_bytes((p / "photo0.jpg").read_bytes()[:300])
    return p


def _bomb(d: Path) -> Path:
    p = photos(d / "in", 1)
    png_with_header_size(p / "bomb.png", 20000, 10000)
    return p


def _dup(d: Path) -> Path:
    p = photos(d / "in", 3)
    (p / "zcopy.jpg").write_bytes((p / "photo0.jpg").read_bytes())
    return p


# ----------------------------------------------------------------------------- running
def snapshot(root: Path, skip: Path | None = None) -> dict:
    """``{relative path: sha256 or 'dir'}`` of everything under ``root`` (``skip`` excluded)."""
    snap = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        snap[p.relative_to(root).as_posix()] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def _env(extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLARE_NB_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(extra or {}))
    return env


def _preexec(fsize):
    def f():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return f


#: Runs ``flare-nb`` with a real SIGINT sent to itself at a chosen point, so the interruption lands
#: there on any machine and under any load (a signal sent from outside races with the run): when
#: ``import torch`` starts, or right after a progress line starting with the given text is printed.
#: Python's own SIGINT handler is installed first: a process started in the background of a
#: non-interactive shell inherits SIGINT ignored and would never see the signal.
SIGINT_AT = """
import builtins, os, signal, sys
at = sys.argv[1]
sys.argv = ["flare-nb"] + sys.argv[2:]
signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal, even if started with SIGINT ignored
def interrupt():
    os.kill(os.getpid(), signal.SIGINT)
if at == "import torch":
    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                interrupt()
            return None
    sys.meta_path.insert(0, Finder())
else:
    plain_print = builtins.print
    def print_then_interrupt(*a, **k):
        plain_print(*a, **k)
        if a and str(a[0]).startswith(at):
            interrupt()
    builtins.print = print_then_interrupt
from flare_nb.cli import main
sys.exit(main())
"""


def run_case(case, root: Path) -> dict:
    cid, setup, _, _, opt = case
    d = root / cid
    d.mkdir()
    argv = [str(a) for a in setup(d)]
    out_dir = d / opt["out"] if "out" in opt else None
    before = snapshot(d, skip=out_dir)
    before_out = snapshot(out_dir) if out_dir is not None and out_dir.exists() else None
    cmd = [sys.executable, "-m", "flare_nb.cli"] + argv
    t0 = time.perf_counter()
    kw = dict(cwd=str(d), env=_env(opt.get("env")), text=True)
    if "fsize" in opt:
        kw["preexec_fn"] = _preexec(opt["fsize"])
    if "sigint" in opt:                         # the command sends itself a real SIGINT at that point
        cmd = [sys.executable, "-c", SIGINT_AT, opt["sigint"]] + argv
    r = subprocess.run(cmd, capture_output=True, timeout=300, **kw)
    rc, stdout, stderr = r.returncode, r.stdout, r.stderr
    return {"d": d, "rc": rc, "stdout": stdout, "stderr": stderr, "before": before, "before_out": before_out,
            "after": snapshot(d, skip=out_dir), "out": out_dir, "seconds": time.perf_counter() - t0}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    slow_first = sorted(CASES, key=lambda c: not (c[4].get("out") or c[4].get("sigint") or c[4].get("fsize")))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futs = {c[0]: pool.submit(run_case, c, root) for c in slow_first}
    res = {k: f.result() for k, f in futs.items()}
    slow = sorted(res, key=lambda k: -res[k]["seconds"])[:8]
    print("slowest cases: " + ", ".join(f"{k} {res[k]['seconds']:.1f} s" for k in slow))
    return res


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_case(case, results):
    cid, _, status, words, opt = case
    r = results[cid]
    errors, err, out = finished_case(r, status)
    assert "Warning:" not in err, err                                    # no raw Python warnings
    stops = [line for line in err.splitlines() if line.startswith("flare-nb: interrupted")]
    others = [line for line in err.splitlines() if not line.startswith(("flare-nb: error:", "flare-nb: interrupted",
                                                                         "flare-nb: warning:"))]
    assert not others, err                                               # every line is ours
    if status == 2:
        assert len(errors) == 1 and not stops, err
        line = errors[0]
    elif status == 130:
        assert len(stops) == 1 and not errors, err
        line = stops[0]
    else:
        assert not errors and not stops, err
        line = ""
    for w in words:
        assert w in line, (w, line)
    for w in opt.get("not", []):
        assert w not in err, (w, err)
    for w in opt.get("stderr", []):
        assert w in err, (w, err)
    for w in opt.get("stdout", []):
        assert w in out, (w, out)
    # nothing outside the run's own output folder changed, no staging folder left behind
    assert r["after"] == r["before"], sorted(set(r["after"].items()) ^ set(r["before"].items()))
    assert not [p for p in r["d"].rglob("*") if INCOMPLETE_TAG in p.name]
    o = r["out"]
    if status == 0:
        doc = read_manifest(o)
        assert doc is not None and doc["complete"], "no complete manifest"
        ours = {f for f, v in snapshot(o).items() if v != "dir"} - {MANIFEST}
        prev = set(r["before_out"] or {})
        assert set(doc["files"]) == ours - (prev - {"cameras.json"}), sorted(ours ^ set(doc["files"]))
        for f in ("cameras.json", "points.ply", "gaussians.ply", "report.md", "sparse/0/points3D.txt"):
            assert f in doc["files"], f
        for f in opt.get("keep", []):
            assert snapshot(o)[f] == r["before_out"][f], f                # the user's files, untouched
        for f in opt.get("gone", []):
            assert not (o / f).exists(), f                                # the earlier run's own file, replaced
    elif o is not None and r["before_out"] is not None:
        assert snapshot(o) == r["before_out"]                             # an interrupted --force changes nothing
