"""FLARE in the evaluation registry (flare_nb.eval.evaluate.flare_method, evaluate_scene) and the
report builder (flare_nb.eval.report): the predict_fn returns the reconstruction's cameras of
the requested stage, a failed PnP counts as unregistered views, a training checkpoint brings
its own model config, and the report tables hold every method."""
import pytest
import torch

from flare_nb.eval import report as er
from flare_nb.eval import evaluate as ev
from flare_nb import inference
from flare_nb.model.config import tiny
from flare_nb.eval.metrics import pose_metrics
from flare_nb.scenes.synthetic import make_scene


@pytest.fixture(scope="module")
def model():
    return _random_tiny()


def _random_tiny():
    torch.manual_seed(0)
    from flare_nb.model.flare import FlareModel

    m = FlareModel(tiny()).eval()
    m.weights_label = "random (test)"
    return m


@pytest.fixture(scope="module")
def scene():
    return make_scene(1_000_000, 3, (64, 64), "orbit")


def test_flare_is_registered_and_checks_its_options():
    assert ev.METHODS["flare"] is ev.flare_method
    with pytest.raises(ValueError, match="poses must be one of"):
        ev.flare_method(poses="stage3", model=_random_tiny())
    with pytest.raises(ValueError, match="pnp_iterations"):
        ev.flare_method(pnp_iterations=0, model=_random_tiny())
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ev.flare_method(checkpoint="/nonexistent/weights.pt")


@pytest.mark.parametrize("source,attr", [("stage1", "c2w_coarse"), ("stage2", "c2w_refined")])
def test_pose_head_sources_return_the_reconstruction_cameras(model, scene, source, attr):
    fn = ev.flare_method(poses=source, model=model)
    out = fn(ev._images_only(scene))
    rec = inference.reconstruct(model, scene.images, device="cpu", pnp=False)
    torch.testing.assert_close(out["c2w"], getattr(rec, attr))
    assert out["registered"].all() and out["registered"].shape == (3,)
    assert out["pointmaps"].shape == (3, 64, 64, 3)
    # the row scores exactly those cameras
    row = ev.evaluate_prediction(out, scene)
    ref = pose_metrics(getattr(rec, attr).double(), scene.c2w.double())
    assert row["RRA@15"] == pytest.approx(ref["RRA@15"]) and row["AUC@30"] == pytest.approx(ref["AUC@30"])
    assert fn.weights_label == "random (test)"


def test_failed_pnp_leaves_only_the_reference_view_registered(model, scene, monkeypatch):
    real = inference.reconstruct

    def no_pnp(*a, **k):
        r = real(*a, **k)
        r.c2w_pnp = None
        return r

    monkeypatch.setattr(inference, "reconstruct", no_pnp)
    fn = ev.flare_method(poses="pnp", model=model)
    out = fn(ev._images_only(scene))
    assert out["registered"].tolist() == [True, False, False]
    row = ev.evaluate_prediction(out, scene)
    assert row["n_failed_pairs"] == row["n_pairs"] == 3 and row["RRA@30"] == 0.0


def test_training_checkpoint_brings_its_model_config(tmp_path):
    cfg = tiny().replace(pose_conditioning=False)
    torch.manual_seed(1)
    from flare_nb.model.flare import FlareModel

    m = FlareModel(cfg)
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "flare_nb.train/1", "model_config": cfg.to_dict(), "model": m.released_state_dict()}, path)
    loaded = ev.load_flare_for_eval(str(path), "tiny", "cpu")
    assert loaded.cfg.pose_conditioning is False
    for (n, a), b in zip(m.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=n)


def test_evaluate_scene_oracle_and_errors(scene):
    row = ev.evaluate_scene(lambda s: scene.c2w, scene, "oracle")
    assert row["RRA@5"] == 100.0 and row["AUC@30"] == pytest.approx(1.0)
    assert row["n_views"] == 3 and row["size"] == "64x64" and row["method"] == "oracle"

    def peek(s):
        assert s.depth is None and torch.isnan(s.c2w).all() and torch.isnan(s.K).all()
        return scene.c2w

    ev.evaluate_scene(peek, scene)
    with pytest.raises(TypeError, match="predict_fn must be callable"):
        ev.evaluate_scene(None, scene)
    with pytest.raises(TypeError, match="must be a flare_nb.scenes.scene.Scene"):
        ev.evaluate_scene(lambda s: s.c2w, "scene")
    with pytest.raises(ValueError, match=r"must be \(3, 4, 4\)"):
        ev.evaluate_scene(lambda s: torch.eye(4), scene)


def test_report_builder(model):
    with pytest.raises(ValueError, match="unknown pose source"):
        er.build_methods(sources=("stage9",), colmap=False, model=model)
    methods = er.build_methods(sources=("stage2",), colmap=False, model=model, priors=False)
    methods["oracle"] = lambda s: _ORACLE[s.source]
    with pytest.raises(FileNotFoundError, match="no real scene"):
        er.load_real_scene("no_such_scene")
    real = er.load_real_scene("fountain-P11", size=(128, 64), max_views=3)
    assert real.n_views == 3 and real.hw == (64, 128)
    _ORACLE[real.source] = real.c2w
    syn = er.synthetic_rows({"flare/stage2": methods["flare/stage2"]}, n_views=(2,), modes=("orbit",), scenes=1,
                            size=(64, 64))
    rr = er.real_rows(methods, ["fountain-P11"], size=(128, 64), max_views=3)
    assert [r["method"] for r in rr] == ["flare/stage2", "oracle"]
    assert rr[1]["RRA@5"] == 100.0 and rr[1]["scene"] == "fountain-P11"
    md = er.report_markdown(syn, rr, "T", ["a note"])
    assert md.startswith("# T") and "* a note" in md
    assert "| flare/stage2 | orbit | 2 | 64x64 | 1 |" in md
    assert "| oracle | fountain-P11 | 3 | 128x64 | 1 | 100.0 |" in md
    with_priors = er.build_methods(sources=("stage2",), colmap=False, model=model)
    assert [k for k in with_priors if k.startswith("prior/")] == ["prior/straight", "prior/constant", "prior/per_view"]
    rr = er.real_rows(with_priors, ["fountain-P11"], size=(128, 64), max_views=3)
    assert [r["method"] for r in rr] == ["flare/stage2", "prior/straight"]   # fitted priors: synthetic only


_ORACLE: dict = {}


def test_report_cli_writes_markdown_and_rows(tmp_path, capsys):
    out, js = tmp_path / "eval.md", tmp_path / "rows.json"
    md = er.main(["--scenes", "1", "--n-views", "2", "--modes", "forward", "--size", "64", "64", "--real-size",
                  "128", "64", "--real-views", "2", "--no-colmap", "--pnp-iterations", "20", "--out", str(out),
                  "--json", str(js)])
    assert out.read_text() == md and "## Held-out synthetic scenes" in md and "## Real scenes" in md
    import json

    rows = json.loads(js.read_text())
    # 3 pose sources x (1 synthetic + 2 real scenes) + 3 priors on the synthetic scene + the straight prior
    # on the 2 real scenes (the other two are fitted on synthetic trajectories)
    assert len(rows) == 3 * 3 + 3 + 2
    assert {r["method"] for r in rows} == {"flare/stage1", "flare/stage2", "flare/pnp", "prior/straight",
                                           "prior/constant", "prior/per_view"}
    assert {r["method"] for r in rows if r.get("scene") in er.REAL_SCENES} == {
        "flare/stage1", "flare/stage2", "flare/pnp", "prior/straight"}
    assert "weights: RANDOM" in md or "weights: trained" in md
