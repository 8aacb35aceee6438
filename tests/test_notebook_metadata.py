"""Every notebook opens as users open it: JupyterLab and a plain ``papermill`` call need the
kernelspec and the language in the notebook's own metadata."""
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_names_its_kernel_and_language(path):
    meta = json.loads(path.read_text())["metadata"]
    assert meta["kernelspec"]["name"] == "python3" and meta["kernelspec"]["language"] == "python"
    assert meta["language_info"]["name"] == "python"


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 9
