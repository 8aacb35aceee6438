"""The flare-nb command (flare_nb.cli) and the reference-view choice (flare_nb.scenes.reference_view).

Every bad-input case RUNS the command (``main(argv)`` in-process, and once as a subprocess)
and checks the exit status and the one-line message. Tiny model, 64x64 inputs."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from flare_nb import cli, data_dir, pipeline
from flare_nb.scenes import preprocess
from flare_nb.model.config import tiny
from flare_nb.scenes.reference_view import choose_reference_view, reference_order, similarity_matrix
from cli_helpers import cli_error, run_cli

ROOM = data_dir() / "real" / "room"
FAST = ["--size", "64x64", "--pnp-iterations", "20", "--no-render"]


_run, _error = run_cli, cli_error


def _photos(folder, n=3, size=(96, 72)):
    """``n`` small copies of the room photos (EXIF orientation applied) as JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    src = sorted(ROOM.glob("IMG_*"))[:n]
    out = []
    for i, p in enumerate(src):
        q = folder / f"photo{i}.jpg"
        preprocess.load_image(p).resize(size).save(q, quality=90)
        out.append(q)
    return out


# ----------------------------------------------------------------------------- reference view
def test_reference_view_is_the_most_central_image():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g)
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    perm = [3, 0, 4, 2, 1]                         # the middle image (t = 0.5) is input 3
    imgs = torch.stack([(1 - ts[k]) * a + ts[k] * b for k in perm])
    S = similarity_matrix(imgs)
    assert torch.allclose(S, S.T) and torch.allclose(S.diagonal(), torch.ones(5))
    ref, scores = choose_reference_view(imgs)
    assert ref == 3 and scores.shape == (5,)
    assert reference_order(5, 3) == [3, 0, 1, 2, 4]
    with pytest.raises(ValueError, match="index in"):
        reference_order(5, 5)
    with pytest.raises(ValueError, match="at least 2"):
        choose_reference_view(imgs[:1])


# ----------------------------------------------------------------------------- small pieces
def test_parse_size_and_memory_estimate():
    assert cli.parse_size("512x384") == (512, 384) and cli.parse_size("256") == (256, 256)
    with pytest.raises(ValueError, match="multiple of 64"):
        cli.parse_size("500x384")
    with pytest.raises(ValueError, match="512x384"):
        cli.parse_size("big")
    cfg = tiny()
    est = [pipeline.estimate_memory_bytes(cfg, 2_830_000, v, 128, 128) for v in (2, 4, 8)]
    assert est[0] < est[1] < est[2]
    assert pipeline.estimate_memory_bytes(cfg, 2_830_000, 4, 256, 256) > est[1]


def test_collect_images_skips_non_images_and_subsamples(tmp_path):
    for i in range(20):
        (tmp_path / f"{i:02d}.png").write_bytes(f"x{i}".encode())
    (tmp_path / "notes.txt").write_text("hi")
    paths, warns = pipeline.collect_images([tmp_path], max_views=5)
    assert [p.name for p in paths] == ["00.png", "05.png", "10.png", "14.png", "19.png"]
    assert any("notes.txt" in w for w in warns) and any("found 20 images" in w for w in warns)


# ----------------------------------------------------------------------------- a full run
@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """3 JPEGs + a 16-bit PNG + a grayscale PNG + an RGBA PNG + a text file + a truncated JPEG."""
    d = tmp_path_factory.mktemp("mixed")
    photos = _photos(d / "in", 3)
    base = np.asarray(Image.open(photos[0]).convert("L"), dtype=np.uint16)
    Image.fromarray(base * 257).save(d / "in" / "p16.png")                   # 16-bit grayscale
    Image.open(photos[1]).convert("L").save(d / "in" / "gray.png")
    rgba = Image.open(photos[2]).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "in" / "rgba.png")
    (d / "in" / "readme.txt").write_text("not an image")
    (d / "in" / "broken.jpg").write_bytes(photos[0].read_bytes()[:300])     # truncated
    import io
    from contextlib import redirect_stderr, redirect_stdout
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(["reconstruct", str(d / "in"), "--out", str(d / "out"), "--size", "64x64",
                       "--pnp-iterations", "20"])
    return d, rc, out.getvalue(), err.getvalue()


def test_reconstruct_writes_every_file(mixed_run):
    d, rc, out, err = mixed_run
    assert rc == 0, err
    o = d / "out"
    for name in ("cameras.json", "transforms.json", "points.ply", "gaussians.ply", "summary.png", "renders.png",
                 "report.md", "sparse/0/cameras.txt", "sparse/0/images.txt", "sparse/0/points3D.txt"):
        assert (o / name).is_file() and (o / name).stat().st_size > 0, name
    assert "readme.txt" in err and "broken.jpg" in err                      # skipped, with a warning
    doc = json.loads((o / "cameras.json").read_text())
    assert len(doc["views"]) == 6 and (doc["width"], doc["height"]) == (64, 64)
    srcs = {v["source_file"].split("/")[-1] for v in doc["views"]}
    assert srcs == {"photo0.jpg", "photo1.jpg", "photo2.jpg", "p16.png", "gray.png", "rgba.png"}
    assert len(list((o / "images").glob("*.png"))) == 6 and len(list((o / "renders").glob("*.png"))) == 6
    # view 0 is the reference, and the mapping is reported
    ref = doc["reference_view"]["input_index"]
    assert doc["order"][0] == ref and sorted(doc["order"]) == list(range(6))
    assert doc["views"][0]["input_index"] == ref
    report = (o / "report.md").read_text()
    assert "Reference view" in report and "| encoder |" in report and "points.ply" in report
    if doc["weights_random"]:
        assert "RANDOM WEIGHTS" in out and "RANDOM WEIGHTS" in report
    for stage in ("encoder", "stage1_coarse_pose", "stage2_camera_centric", "stage3_global", "render", "total"):
        assert stage in out


def test_reconstruct_outputs_read_back(mixed_run):
    import open3d as o3d
    import pycolmap

    from flare_nb.scenes.scene import load_colmap, load_nerf

    d, rc, _, _ = mixed_run
    o = d / "out"
    doc = json.loads((o / "cameras.json").read_text())
    c2w = torch.tensor([v["c2w"] for v in doc["views"]], dtype=torch.float64)
    K = torch.tensor([v["K"] for v in doc["views"]], dtype=torch.float64)
    rec = pycolmap.Reconstruction(str(o / "sparse" / "0"))
    assert len(rec.images) == 6 and len(rec.points3D) > 0
    scene = load_colmap(o / "sparse" / "0", o / "images")
    torch.testing.assert_close(scene.c2w.double(), c2w, atol=1e-4, rtol=1e-4)
    nerf = load_nerf(o)
    torch.testing.assert_close(nerf.c2w.double(), c2w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nerf.K.double(), K, atol=1e-3, rtol=0)
    pc = o3d.io.read_point_cloud(str(o / "points.ply"))
    assert len(pc.points) > 0 and pc.has_colors()


def test_ref_view_given_by_index_and_force(tmp_path, capsys):
    _photos(tmp_path / "in", 3)
    rc, _, err = _run(["reconstruct", tmp_path / "in", "--out", tmp_path / "o", "--ref-view", "2"] + FAST, capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "o" / "cameras.json").read_text())
    assert doc["order"] == [2, 0, 1] and doc["views"][0]["source_file"].endswith("photo2.jpg")
    # existing folder: refused without --force, overwritten with it
    _error(["reconstruct", tmp_path / "in", "--out", tmp_path / "o"] + FAST, capsys, "already exists", "--force")
    rc, _, err = _run(["reconstruct", tmp_path / "in", "--out", tmp_path / "o", "--force", "--ref-view",
                       "photo1.jpg"] + FAST, capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "o" / "cameras.json").read_text())
    assert doc["order"] == [1, 0, 2] and len(list((tmp_path / "o" / "images").glob("*.png"))) == 3
    _error(["reconstruct", tmp_path / "in", "--out", tmp_path / "o2", "--ref-view", "7"] + FAST, capsys, "index in")


def test_demo_runs(tmp_path, capsys):
    rc, out, err = _run(["demo", "--real", "--out", tmp_path / "demo", "--views", "3", "--pnp-iterations", "20"], capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "demo" / "cameras.json").read_text())
    assert len(doc["views"]) == 3 and (doc["width"], doc["height"]) == pipeline.default_size("tiny")
    assert "report.md" in out and (tmp_path / "demo" / "gaussians.ply").is_file()


def test_hundreds_of_images_are_subsampled(tmp_path, capsys):
    d = tmp_path / "many"
    d.mkdir()
    g = np.random.default_rng(0)
    for i in range(200):
        Image.fromarray(g.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    rc, out, err = _run(["reconstruct", d, "--out", tmp_path / "o"] + FAST, capsys)
    assert rc == 0, err
    assert "found 200 images" in err and "using 8" in err
    assert len(json.loads((tmp_path / "o" / "cameras.json").read_text())["views"]) == 8


# ----------------------------------------------------------------------------- bad input
def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _error(["reconstruct", tmp_path / "empty", "--out", tmp_path / "o"] + FAST, capsys, "no images found")
    assert not (tmp_path / "o").exists()


def test_one_image(tmp_path, capsys):
    _photos(tmp_path / "one", 1)
    _error(["reconstruct", tmp_path / "one", "--out", tmp_path / "o"] + FAST, capsys, "at least 2", "photo0.jpg")


def test_only_non_image_files(tmp_path, capsys):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_text("a")
    (d / "b.pdf").write_bytes(b"%PDF")
    _error(["reconstruct", d, "--out", tmp_path / "o"] + FAST, capsys, "no images found", "non-image")


def test_corrupt_images(tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = _photos(tmp_path / "g", 1)[0]
    (d / "b.jpg").write_bytes(good.read_bytes()[:200])                      # truncated
    _error(["reconstruct", d, "--out", tmp_path / "o"] + FAST, capsys, "readable", "a.jpg")


def test_heic_without_plugin(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preprocess, "HEIF_SUPPORT", False)
    d = tmp_path / "heic"
    d.mkdir()
    for n in ("a.HEIC", "b.heic"):
        (d / n).write_bytes(b"\x00\x00\x00\x18ftypheic" + n.encode())
    _error(["reconstruct", d, "--out", tmp_path / "o"] + FAST, capsys, "pillow-heif")


def test_checkpoint_missing_or_not_flare(tmp_path, capsys):
    _photos(tmp_path / "in", 2)
    args = ["reconstruct", tmp_path / "in", "--out", tmp_path / "o"] + FAST
    _error(args + ["--checkpoint", tmp_path / "nope.pth"], capsys, "checkpoint not found", "nope.pth")
    (tmp_path / "junk.pth").write_text("hello")
    _error(args + ["--checkpoint", tmp_path / "junk.pth"], capsys, "junk.pth", "not a PyTorch checkpoint")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pt")
    _error(args + ["--checkpoint", tmp_path / "other.pt"], capsys, "other.pt")
    assert not (tmp_path / "o").exists()


def test_bad_options(tmp_path, capsys):
    _photos(tmp_path / "in", 2)
    base = ["reconstruct", tmp_path / "in", "--out", tmp_path / "o", "--no-render"]
    _error(base + ["--size", "100x100"], capsys, "multiple of 64")
    _error(base + ["--conf-threshold", "1.5"], capsys, "conf-threshold")
    _error(["reconstruct", tmp_path / "missing", "--out", tmp_path / "o"], capsys, "no such file", "missing")
    (tmp_path / "file").write_text("x")
    _error(base[:3] + [tmp_path / "file"] + FAST, capsys, "is a file")


def test_memory_guard_refuses_with_a_hint(tmp_path, capsys, monkeypatch):
    _photos(tmp_path / "in", 3)
    need = pipeline.estimate_memory_bytes(tiny(), 2_830_000, 3, 256, 256)
    monkeypatch.setenv("FLARE_NB_MEMORY_GB", str(0.99 * need / 1e9))
    line = _error(["reconstruct", tmp_path / "in", "--out", tmp_path / "o", "--size", "256x256"], capsys,
                  "not enough memory", "would fit")
    assert "--max-views 2" in line or "--size" in line


def test_subprocess_exit_status_and_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    p = subprocess.run([sys.executable, "-m", "flare_nb.cli", "reconstruct", str(tmp_path / "empty"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("flare-nb: error:") and len(p.stderr.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr


# ----------------------------------------------------------------------------- --poses
def _c2w(n):
    """``n`` camera-to-world poses (OpenCV) on an arc looking roughly the same way."""
    out = []
    for i in range(n):
        a = 0.2 * i
        P = torch.eye(4, dtype=torch.float64)
        P[:3, :3] = torch.tensor([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        P[:3, 3] = torch.tensor([2.0 * np.sin(a), 0.1 * i, 2.0 - 2.0 * np.cos(a)])
        out.append(P)
    return torch.stack(out)


def _transforms(path, names, c2w):
    from flare_nb.cameras import opencv_to_opengl

    gl = opencv_to_opengl(c2w)
    frames = [{"file_path": f"images/{n}", "transform_matrix": gl[i].tolist()} for i, n in enumerate(names)]
    path.write_text(json.dumps({"fl_x": 60.0, "w": 96, "h": 72, "frames": frames}))
    return path


def test_read_poses_transforms_and_colmap_agree(tmp_path):
    from flare_nb import export

    P = _c2w(3)
    names = ["a.jpg", "b.jpg", "c.jpg"]
    from_json = pipeline.read_poses(_transforms(tmp_path / "transforms.json", names, P))
    assert sorted(from_json) == names
    for i, n in enumerate(names):
        assert torch.allclose(from_json[n], P[i], atol=1e-9)
    K = torch.tensor([[60.0, 0, 47.5], [0, 60.0, 35.5], [0, 0, 1]]).expand(3, 3, 3)
    export.write_colmap_text(tmp_path / "colmap" / "sparse" / "0", P.float(), K, names, (72, 96),
                             torch.zeros(0, 3), torch.zeros(0, 3))
    from_colmap = pipeline.read_poses(tmp_path / "colmap")
    for i, n in enumerate(names):
        assert torch.allclose(from_colmap[n], P[i], atol=1e-5)
    got = pipeline.match_poses(from_json, [tmp_path / "x" / "b.png", tmp_path / "c.jpg"], "t.json")   # by stem, then name
    assert torch.allclose(got, P[[1, 2]], atol=1e-9)
    with pytest.raises(ValueError, match="no pose for the photo d.jpg"):
        pipeline.match_poses(from_json, [tmp_path / "d.jpg"], "t.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="transforms.json or a COLMAP model"):
        pipeline.read_poses(tmp_path / "empty")


def test_reconstruct_with_poses(tmp_path, capsys):
    photos = _photos(tmp_path / "in", 3)
    poses = _transforms(tmp_path / "transforms.json", [p.name for p in photos], _c2w(3))
    rc, out, err = _run(["reconstruct", tmp_path / "in", "--out", tmp_path / "out", "--poses", poses,
                         "--ref-view", "1", *FAST], capsys)
    assert rc == 0, err
    assert "camera poses given" in out
    doc = json.loads((tmp_path / "out" / "cameras.json").read_text())
    given = torch.tensor(doc["given_poses"]["c2w_relative_to_view0"], dtype=torch.float64)
    P = _c2w(3)[doc["order"]]
    assert doc["order"][0] == 1
    assert torch.allclose(given, torch.linalg.inv(P[0]) @ P, atol=1e-5)
    # a photo without a pose, a non-rigid matrix: one line, status 2
    (tmp_path / "in" / "extra.jpg").write_bytes(photos[0].read_bytes())
    _error(["reconstruct", tmp_path / "in", "--out", tmp_path / "o2", "--poses", poses, *FAST], capsys,
           "no pose for the photo extra.jpg")
    (tmp_path / "in" / "extra.jpg").unlink()
    bad = _c2w(3)
    bad[2, :3, :3] *= 2.0
    _error(["reconstruct", tmp_path / "in", "--out", tmp_path / "o3", "--poses",
            _transforms(tmp_path / "bad.json", [p.name for p in photos], bad), *FAST], capsys,
           "--poses", "camera_poses[2]", "not a rigid")
    _error(["reconstruct", tmp_path / "in", "--out", tmp_path / "o4", "--poses", tmp_path / "nothing.json", *FAST],
           capsys, "no such file")


def test_reconstruct_refuses_mixed_orientation(tmp_path, capsys):
    land = _photos(tmp_path / "in", 2)
    preprocess.load_image(land[1]).resize((72, 96)).save(tmp_path / "in" / "photo1.jpg")
    _error(["reconstruct", tmp_path / "in", "--out", tmp_path / "out", "--size", "128x64", "--no-render"], capsys,
           "mix portrait (photo1.jpg) and landscape (photo0.jpg)")
    assert not (tmp_path / "out").exists()


def test_reconstruct_portrait_photos(tmp_path, capsys):
    photos = _photos(tmp_path / "in", 2, size=(72, 96))                     # portrait
    rc, out, err = _run(["reconstruct", tmp_path / "in", "--out", tmp_path / "out", "--size", "128x64",
                         "--pnp-iterations", "20", "--no-render"], capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "out" / "cameras.json").read_text())
    assert (doc["width"], doc["height"]) == (64, 128)                          # the transposed target, portrait
    assert len(photos) == len(doc["views"])


def test_the_parser_default_is_the_pipeline_default():
    assert cli.MAX_VIEWS == pipeline.DEFAULT_MAX_VIEWS
