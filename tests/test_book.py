"""The offline book's handling of plotly figures and ipywidgets panels (ci/book_figures.py), its
pages (ci/build_book.py) and the checks of ci/check_book.py that need no browser."""
import base64
import copy
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ci"))
import book_figures  # noqa: E402
import build_book  # noqa: E402
import check_book  # noqa: E402

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n not a real image").decode("ascii")
PLOTLY = {"data": [{"type": "scatter3d", "x": [0, 1], "y": [0, 1], "z": [0, 1], "name": "</script><b>x</b>"}],
          "layout": {"height": 380, "title": {"text": "cameras"}}}


def _ref(i):
    return f"IPY_MODEL_{i}"


def _state():
    """A saved widget state as nbclient writes it: a VBox of a slider, a dropdown, a label and
    an Output area holding printed text and one figure; a second Output area left empty."""
    def m(name, **st):
        return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": st}
    return {
        "box": m("VBoxModel", children=[_ref("s"), _ref("d"), _ref("lab"), _ref("out")]),
        "s": m("FloatSliderModel", description="rotation deg", value=10.0),
        "d": m("DropdownModel", description="camera axis", _options_labels=["x", "y", "z"], index=1),
        "lab": m("LabelModel", value="move a slider <now>"),
        "out": {"model_name": "OutputModel", "model_module": "@jupyter-widgets/output", "state": {"outputs": [
            {"output_type": "stream", "name": "stdout", "text": "displacement 0.1 < 0.2\n"},
            {"output_type": "display_data", "metadata": {},
             "data": {"image/png": PNG_B64, "text/plain": "<Figure size 600x320 with 1 Axes>"}}]}},
        "empty_box": m("VBoxModel", children=[_ref("s2"), _ref("out2")]),
        "s2": m("IntSliderModel", description="view", value=1),
        "out2": {"model_name": "OutputModel", "state": {"outputs": []}},
    }


def _view(model_id):
    return {"output_type": "execute_result", "execution_count": 3, "metadata": {},
            "data": {book_figures.WIDGET_VIEW_MIME: {"model_id": model_id, "version_major": 2, "version_minor": 0},
                     "text/plain": "VBox(children=(...))"}}


def _notebook():
    cells = [
        {"cell_type": "markdown", "id": "c0", "metadata": {}, "source": "# Title $x^2$"},
        {"cell_type": "code", "id": "c1", "execution_count": 1, "metadata": {}, "source": "fig",
         "outputs": [{"output_type": "display_data", "metadata": {}, "data": {book_figures.PLOTLY_MIME: PLOTLY}}]},
        {"cell_type": "code", "id": "c2", "execution_count": 2, "metadata": {}, "source": "panel",
         "outputs": [_view("box")]},
        {"cell_type": "code", "id": "c3", "execution_count": 3, "metadata": {}, "source": "panel2",
         "outputs": [_view("empty_box"), _view("gone")]},
    ]
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "widgets": {book_figures.WIDGET_STATE_MIME: {"version_major": 2, "version_minor": 0,
                                                                       "state": _state()}}}}


def test_static_notebook_turns_plotly_and_widget_outputs_into_html():
    nb = _notebook()
    before = copy.deepcopy(nb)
    static, counts = book_figures.static_notebook(nb)
    assert nb == before                                            # the executed notebook is left as it is
    assert counts == {"plotly": 1, "widgets": 3, "widget_png": 1}
    assert "widgets" not in static["metadata"]                     # no widget loader in the page
    outs = [o for c in static["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert all(list(o["data"]) == ["text/html"] for o in outs)

    plot = outs[0]["data"]["text/html"]
    assert plot.count('class="book-plotly"') == 1 and "height:380px" in plot
    payload = re.search(r'<script type="application/json" id="book-plotly-0-json">(.*?)</script>', plot, re.S)[1]
    assert "</script" not in payload                               # a string in the figure cannot end the script
    fig = json.loads(payload)
    assert fig["data"] == PLOTLY["data"] and fig["layout"] == PLOTLY["layout"] and fig["config"]["responsive"]
    assert "Plotly.newPlot" in plot

    panel = outs[1]["data"]["text/html"]
    assert "rotation deg = 10.0" in panel and "camera axis = y" in panel and "live in Jupyter" in panel
    assert panel.count("<img ") == 1 and f"data:image/png;base64,{PNG_B64}" in panel
    assert "displacement 0.1 &lt; 0.2" in panel and "move a slider &lt;now&gt;" in panel
    assert panel.index("rotation deg") < panel.index("<img ")      # the note comes first, one line
    assert 'data-widget-figures="1"' in panel

    empty, gone = outs[2]["data"]["text/html"], outs[3]["data"]["text/html"]
    assert "view = 1" in empty and "draws when a control moves" in empty and "<img" not in empty
    assert "saved state is missing" in gone and "<img" not in gone


def test_plotly_height_defaults_and_config_is_kept():
    h = book_figures.plotly_html({"data": [], "layout": {}, "config": {"displaylogo": False}}, "p")
    fig = json.loads(re.search(r'id="p-json">(.*?)</script>', h, re.S)[1])
    assert f"height:{book_figures.PLOTLY_DEFAULT_HEIGHT}px" in h
    assert fig["config"] == {"responsive": True, "displaylogo": False}


def test_notebook_without_widgets_or_plotly_is_unchanged_but_for_the_copy():
    nb = {"cells": [{"cell_type": "code", "source": "", "metadata": {}, "outputs": [
        {"output_type": "display_data", "metadata": {}, "data": {"image/png": PNG_B64}}]}], "metadata": {}}
    static, counts = book_figures.static_notebook(nb)
    assert static == nb and static is not nb and counts == {"plotly": 0, "widgets": 0, "widget_png": 0}


def test_page_loads_local_plotly_js_only_where_needed_and_nothing_from_a_cdn():
    exporter = build_book.make_exporter()
    body, counts = build_book.page_html(exporter, _notebook(), "demo")
    assert counts["plotly"] == 1
    scripts = re.findall(r'<script[^>]*\bsrc="([^"]*)"', body)
    assert book_figures.PLOTLY_JS in scripts
    assert all(not s.startswith(("http:", "https:", "//")) for s in scripts), scripts
    assert book_figures.WIDGET_STATE_MIME not in body and "require" not in " ".join(scripts)
    head, page = body.split("</head>", 1)
    assert book_figures.PLOTLY_JS in head and 'id="book-plotly-0"' in page
    assert page.count('class="book-widget"') == 3

    plain = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "c0", "execution_count": 1, "metadata": {}, "source": ["x = 1\n", "x"],
         "outputs": [{"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n"]}]}]}
    body2, counts2 = build_book.page_html(exporter, plain, "plain")
    assert counts2["plotly"] == 0 and book_figures.PLOTLY_JS not in body2


def test_plotly_js_comes_from_the_installed_package(tmp_path):
    pytest.importorskip("plotly")
    dst = book_figures.copy_plotly_js(tmp_path)
    assert dst == tmp_path / book_figures.PLOTLY_JS
    assert b"plotly.js" in dst.read_bytes()[:2000] and dst.stat().st_size > 1_000_000


PAGE = {"page": "nb.html", "png": 2, "plotly": 1, "widgets": 2, "widget_png": 3}
SEEN = {"mathjax": True, "math": 1, "math_errors": [], "broken": [], "errors": [], "js_errors": [],
        "figures": 2, "plotly": 1, "plotly_drawn": 1, "widgets": 2, "widget_figures": 3}


def test_check_page_compares_the_page_with_its_notebook():
    assert check_book.check_page("nb.html", SEEN, PAGE) == []
    msgs = check_book.check_page("nb.html", {**SEEN, "plotly_drawn": 0}, PAGE)
    assert msgs == ["nb.html: 0 of the notebook's 1 plotly figures are drawn (1 plotly areas on the page)"]
    msgs = check_book.check_page("nb.html", {**SEEN, "widget_figures": 1, "figures": 1}, PAGE)
    assert any("widget panels show 1 figures" in m and "holds 3" in m for m in msgs)
    assert any("shows 1 figures, its notebook holds 2" in m for m in msgs)
    assert check_book.check_page("nb.html", {**SEEN, "plotly": 2, "plotly_drawn": 2}, PAGE)  # more than saved: wrong too
    assert check_book.check_page("nb.html", {**SEEN, "js_errors": ["Plotly is not defined"]}, PAGE)
    assert check_book.check_page("nb.html", {}, PAGE) == ["nb.html: the page did not finish loading (no report from the page)"]
    assert check_book.check_page("index.html", SEEN, None) == []


def test_index_links_must_lead_to_pages_of_the_book():
    pages = {"00_a.html", "01_b.html"}
    ok = '<table><tr><td><a href="00_a.html">00</a></td><td><a href="01_b.html#top">01</a></td></tr></table>'
    assert check_book.index_link_problems(ok, pages) == []
    bad = '<a href="00_a.html">00</a> <a href="02_c.html">02</a> <a href="https://example.org">x</a>'
    msgs = check_book.index_link_problems(bad, pages)
    assert "index.html: the link '02_c.html' leads to no page of the book" in msgs
    assert "index.html: the link 'https://example.org' leads to no page of the book" in msgs
    assert "index.html: no link to the page 01_b.html" in msgs
    assert check_book.index_link_problems("<p>nothing</p>", set()) == ["index.html: no links to the pages"]


def test_the_readme_index_links_every_notebook_page_and_nothing_else():
    from nbconvert.filters import markdown2html

    index = markdown2html(build_book.notebook_table((ROOT / "README.md").read_text()))
    pages = {f"{p.stem}.html" for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert check_book.index_link_problems(index, pages) == []


def test_an_unreadable_notebook_is_one_line_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    executed, out = tmp_path / "executed", tmp_path / "book"
    executed.mkdir()
    (executed / "00_a.ipynb").write_text(json.dumps(_notebook()))
    (executed / "01_b.ipynb").write_text('{"cells": [')
    monkeypatch.setattr(sys, "argv", ["build_book.py", "--executed", str(executed), "--out", str(out),
                                      "--mathjax", str(tmp_path / "no_mathjax")])
    assert build_book.main() == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "01_b.ipynb is not a readable notebook" in err and "run_notebooks.py" in err
    assert not out.exists()
