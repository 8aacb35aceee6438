"""ci/nbcheck.py (what an executed notebook shows) and ci/build_book.py's README table (the book's figures: tests/test_book.py)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ci"))
import build_book  # noqa: E402
import nbcheck  # noqa: E402


def _cell(*outputs):
    return {"cell_type": "code", "source": "", "outputs": list(outputs), "metadata": {}}


PNG = {"output_type": "display_data", "data": {"image/png": "iVBO", "text/plain": "<Figure size 640x480 with 1 Axes>"}}
FIG_RESULT = {"output_type": "execute_result", "data": {"image/png": "iVBO", "text/plain": "<Figure size 640x480 with 1 Axes>"}}
ERROR = {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}


def test_summarize_counts_figures_errors_and_returned_figures():
    nb = {"cells": [_cell(PNG, {"output_type": "stream", "name": "stdout", "text": "x"}), _cell(PNG, FIG_RESULT),
                    {"cell_type": "markdown", "source": "![](a.png)"}, _cell(ERROR)],
          "metadata": {"widgets": {"application/vnd.jupyter.widget-state+json": {"state": {
              "w": {"state": {"outputs": [PNG]}}}}}}}
    s = nbcheck.summarize(nb)
    assert s == {"png": 3, "widget_png": 1, "errors": [(3, "ValueError: bad")], "figure_results": [1]}
    msgs = nbcheck.problems("nb", s, {"nb": 4})
    assert any("3 figures" in m and "at least 4" in m for m in msgs)
    assert any("cell 3 has an error output (ValueError: bad)" in m for m in msgs)
    assert any("cell 1 ends with a Figure" in m for m in msgs)
    assert nbcheck.problems("nb", {"png": 4, "widget_png": 0, "errors": [], "figure_results": []}, {"nb": 4}) == []
    ok = {"png": 4, "widget_png": 1, "errors": [], "figure_results": []}
    assert nbcheck.problems("nb", ok, {"nb": 4}, {"nb": 1, "other": 5}) == []
    msgs = nbcheck.problems("nb", {**ok, "widget_png": 0}, {"nb": 4}, {"nb": 1})
    assert len(msgs) == 1 and "0 figures in widget panels, expected at least 1" in msgs[0]


def test_expected_figure_counts_name_real_notebooks():
    names = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    counts = nbcheck.load_expected()
    assert set(counts) <= names and all(v >= 1 for v in counts.values())
    widgets = nbcheck.load_expected(nbcheck.WIDGET_FIGURES_EXPECTED)
    assert widgets and set(widgets) <= names and all(v >= 1 for v in widgets.values())


def test_readme_table_links_every_notebook_page():
    table = build_book.notebook_table((ROOT / "README.md").read_text())
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"[`{p.stem}`]({p.stem}.html)" in table
    with pytest.raises(ValueError, match="no table"):
        build_book.notebook_table("# title\n\nno table here\n")
