"""The workbook's plumbing: device choice, seeding, notebook records and their CI check,
and the notebooks' hygiene (no outputs in git, one parameters cell)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flare_nb.device import resolve_device, seed_everything
from flare_nb.nb.record import Recorder

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_seed_everything_is_deterministic():
    seed_everything(3)
    a = torch.randn(5)
    seed_everything(3)
    assert torch.equal(a, torch.randn(5))


def test_recorder_writes_json(tmp_path):
    rec = Recorder("nb", tmp_path)
    assert rec.log("x", torch.tensor(1.5)) is None      # a cell ending in rec.log(...) prints no Out[]
    rec.log("ok", True)
    assert json.loads((tmp_path / "nb.json").read_text()) == {"ok": True, "x": 1.5}
    with pytest.raises(ValueError, match="not finite"):
        rec.log("bad", float("nan"))
    with pytest.raises(TypeError, match="scalar"):
        rec.log("arr", [1, 2])


def _check(tmp_path, recorded, expected):
    (tmp_path / "rec").mkdir(parents=True)
    (tmp_path / "exp").mkdir(parents=True)
    (tmp_path / "rec" / "nb.json").write_text(json.dumps(recorded))
    (tmp_path / "exp" / "nb.json").write_text(json.dumps(expected))
    return subprocess.run([sys.executable, str(ROOT / "ci" / "check_records.py"), "--records", str(tmp_path / "rec"),
                           "--expected", str(tmp_path / "exp")], capture_output=True, text=True)


def test_check_records_pass_and_fail(tmp_path):
    ok = _check(tmp_path / "a", {"err": 0.01, "n": 4}, {"err": {"max": 0.05}, "n": {"equals": 4}})
    assert ok.returncode == 0, ok.stderr
    bad = _check(tmp_path / "b", {"err": 0.2}, {"err": {"value": 0.1, "atol": 0.05}, "missing": {"max": 1}})
    assert bad.returncode == 1
    assert "expected 0.1" in bad.stderr and "'missing' was not recorded" in bad.stderr


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_hygiene(nb):
    cells = json.loads(nb.read_text())["cells"]
    assert not any(c.get("outputs") for c in cells), f"{nb.name} is committed with outputs"
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb.name} needs exactly one cell tagged 'parameters'"
    assert "QUICK" in "".join(tagged[0]["source"]), f"{nb.name}: the parameters cell must define QUICK"
    params = json.loads((ROOT / "ci" / "notebook_params.json").read_text())
    assert (ROOT / "ci" / "expected" / f"{nb.stem}.json").exists(), f"ci/expected/{nb.stem}.json is missing"
    assert isinstance(params.get(nb.stem, {}), dict)
