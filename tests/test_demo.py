"""``flare-nb demo``: the tiny model on held-out synthetic scenes beside their ground truth
(flare_nb.demo_synthetic), and ``--real`` (the bundled room photos).

One demo run (both scenes, 4 views at the model's working size, no renders, the priors fitted on
fewer training scenes than the command's 512 to save time) is made once per module; the tests
recompute what it wrote from its files and from the scene generator.
"""
import json

import numpy as np
import pytest

from flare_nb import cli, demo_synthetic
from flare_nb.inference import load_model, native_size_wh
from flare_nb.outdir import read_manifest
from flare_nb.scenes.synthetic import HELD_OUT_SEED_START, make_cameras
from cli_helpers import cli_error, one_torch_thread, run_cli

SEED = HELD_OUT_SEED_START + 7
V = 4
FAST = ["--no-render", "--pnp-iterations", "20"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    with one_torch_thread(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo_synthetic, "PRIOR_FIT_SCENES", 32)
        rc = cli.main(["demo", "--out", str(out), "--scene-seed", str(SEED)] + FAST)
    assert rc == 0
    return {"out": out, "doc": json.loads((out / "comparison.json").read_text())}


def _c2w(path):
    return np.array([v["c2w"] for v in json.loads(path.read_text())["views"]], dtype=np.float64)


def _angle(a, b):
    cos = np.clip(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def _errors(pred, gt):
    """Per view i >= 1 against view 0: rotation angle of (R_i^T R_0)_gt^T (R_i^T R_0)_pred and the
    angle between the directions R_i^T (c_0 - c_i), written out independently of the package."""
    rot, trans = [], []
    for i in range(1, len(gt)):
        Rp = pred[i, :3, :3].T @ pred[0, :3, :3]
        Rg = gt[i, :3, :3].T @ gt[0, :3, :3]
        c = np.clip((np.trace(Rg.T @ Rp) - 1) / 2, -1.0, 1.0)
        rot.append(float(np.degrees(np.arccos(c))))
        tp = pred[i, :3, :3].T @ (pred[0, :3, 3] - pred[i, :3, 3])
        tg = gt[i, :3, :3].T @ (gt[0, :3, 3] - gt[i, :3, 3])
        trans.append(_angle(tp, tg))
    return rot, trans


# arccos near 0 loses about sqrt(float64 eps) ~ 1e-8 rad; the package uses atan2: 1e-4 degrees is far
# above both and far below any difference between methods
TOL_DEG = 1e-4


def test_demo_writes_the_reconstructions_ground_truth_and_comparison(demo):
    out = demo["out"]
    for name in ("comparison.md", "comparison.json", "comparison.png"):
        assert (out / name).stat().st_size > 0
    W, H = native_size_wh(load_model(None, "tiny", device="cpu"))
    listed = set(read_manifest(out)["files"])
    for mode in demo_synthetic.DEMO_MODES:
        for name in ("cameras.json", "points.ply", "gaussians.ply", "scene.html", "report.md",
                     "ground_truth/cameras.json", "ground_truth/points.ply"):
            assert (out / mode / name).is_file() and f"{mode}/{name}" in listed, (mode, name)
        cams = json.loads((out / mode / "cameras.json").read_text())
        assert len(cams["views"]) == V and (cams["width"], cams["height"]) == (W, H)
        assert not (out / mode / ".flare-nb-manifest.json").exists()     # one manifest, for the whole folder
    assert {"comparison.md", "comparison.json", "comparison.png"} <= listed


def test_ground_truth_is_the_generators_cameras(demo):
    """ground_truth/cameras.json = the scene generator's cameras of that seed, relative to view 0."""
    for mode in demo_synthetic.DEMO_MODES:
        gt = _c2w(demo["out"] / mode / "ground_truth" / "cameras.json")
        assert json.loads((demo["out"] / mode / "cameras.json").read_text())["order"] == list(range(V))
        arc = {"orbit_arc": demo_synthetic.DEMO_ORBIT_ARC} if mode == "orbit" else {}
        c2w = make_cameras(SEED, V, mode, **arc).double().numpy()
        rel = np.linalg.inv(c2w[0]) @ c2w
        # float32 cameras of a scene a few metres across: 1e-5 m is a few float32 ulps of the coordinates
        np.testing.assert_allclose(gt, rel, atol=1e-5)


def test_table_holds_the_model_and_every_prior(demo, capsys):
    md = (demo["out"] / "comparison.md").read_text()
    for sc in demo["doc"]["scenes"]:
        names = [r["method"] for r in sc["rows"]]
        assert names[0] == "model"
        assert set(demo_synthetic.PRIOR_LABELS.values()) <= set(names)
        assert f"### {sc['mode']} scene, seed {SEED}" in md
    for label in ["| model |"] + [f"| {t} |" for t in demo_synthetic.PRIOR_LABELS.values()]:
        assert md.count(label) == len(demo_synthetic.DEMO_MODES), label


def test_errors_are_those_of_the_written_cameras(demo):
    """The model's errors in comparison.json, recomputed from cameras.json and ground_truth/, and
    the straight-ahead prior's from its definition (R = I, camera i at (0, 0, i))."""
    for sc in demo["doc"]["scenes"]:
        folder = demo["out"] / sc["folder"]
        gt = _c2w(folder / "ground_truth" / "cameras.json")
        rows = {r["method"]: r for r in sc["rows"]}
        rot, trans = _errors(_c2w(folder / "cameras.json"), gt)
        np.testing.assert_allclose(rows["model"]["rot_err_deg"], rot, atol=TOL_DEG)
        np.testing.assert_allclose(rows["model"]["trans_err_deg"], trans, atol=TOL_DEG)
        straight = np.tile(np.eye(4), (V, 1, 1))
        straight[:, 2, 3] = np.arange(V)
        rot, trans = _errors(straight, gt)
        np.testing.assert_allclose(rows[demo_synthetic.PRIOR_LABELS["straight"]]["rot_err_deg"], rot, atol=TOL_DEG)
        np.testing.assert_allclose(rows[demo_synthetic.PRIOR_LABELS["straight"]]["trans_err_deg"], trans,
                                   atol=TOL_DEG)
        assert rows["model"]["mean_rot_err_deg"] == pytest.approx(np.mean(rows["model"]["rot_err_deg"]))


def test_real_photos_are_one_option_away(tmp_path, capsys):
    rc, out, err = run_cli(["demo", "--real", "--views", "2", "--size", "64x64", "--out", tmp_path / "r"] + FAST,
                           capsys)
    assert rc == 0, err
    notes = [ln for ln in out.splitlines() if "outside the tiny model's domain" in ln]
    assert len(notes) == 1 and "released weights" in notes[0]
    doc = json.loads((tmp_path / "r" / "cameras.json").read_text())
    assert len(doc["views"]) == 2 and "room" in doc["views"][0]["source_file"]


@pytest.mark.parametrize("argv, needles", [
    (["--scene-seed", "5"], ["--scene-seed", str(HELD_OUT_SEED_START), "training"]),
    (["--scene-seed", "abc"], ["--scene-seed", "integer"]),
    (["--scene-seed", str(HELD_OUT_SEED_START), "--real"], ["--scene-seed", "--real"]),
    (["--views", "1"], ["--views", "between 2 and 8"]),
])
def test_bad_demo_options_get_one_line(tmp_path, capsys, argv, needles):
    cli_error(["demo", "--out", tmp_path / "o"] + argv, capsys, *needles)
    assert not (tmp_path / "o").exists()


def test_an_existing_output_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.txt").write_text("keep")
    cli_error(["demo", "--out", tmp_path / "o"], capsys, "already exists", "--force")
    assert (tmp_path / "o" / "mine.txt").read_text() == "keep"
