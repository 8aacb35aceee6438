"""What an executed notebook shows: its figures (PNG outputs), its error outputs and the cells
that display a returned matplotlib Figure a second time. Used by run_notebooks.py, build_book.py
and check_book.py; the per-notebook minimum figure counts live in ci/expected/figures/png.json
(cell outputs) and widget_png.json (inside widget panels)."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES_EXPECTED = ROOT / "ci" / "expected" / "figures" / "png.json"
WIDGET_FIGURES_EXPECTED = ROOT / "ci" / "expected" / "figures" / "widget_png.json"


def _outputs(nb: dict):
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code":
            for out in cell.get("outputs", []):
                yield i, out


def summarize(nb: dict) -> dict:
    """``{"png": n, "widget_png": m, "errors": [(cell, "Name: message")], "figure_results": [cell, ...]}``
    of one executed notebook (a parsed .ipynb). ``png`` counts the cell outputs carrying ``image/png``
    (what a static page shows); ``widget_png`` those inside widget output areas (kept in the widget
    state, shown only with a live kernel). ``figure_results`` lists cells whose ``Out[]`` is a
    matplotlib Figure: under the inline backend it appears twice."""
    png, widget_png, errors, figure_results = 0, 0, [], []
    for i, out in _outputs(nb):
        data = out.get("data", {})
        if "image/png" in data:
            png += 1
        if out.get("output_type") == "error":
            errors.append((i, f"{out.get('ename', '?')}: {out.get('evalue', '')}".strip()))
        if out.get("output_type") == "execute_result" and "image/png" in data \
                and "".join(data.get("text/plain", "")).startswith("<Figure size"):
            figure_results.append(i)
    # widget output areas (ipywidgets Output) keep their outputs in the widget state
    for state in nb.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}) \
            .get("state", {}).values():
        for out in state.get("state", {}).get("outputs", []) or []:
            if "image/png" in out.get("data", {}):
                widget_png += 1
    return {"png": png, "widget_png": widget_png, "errors": errors, "figure_results": figure_results}


def load_expected(path: Path = FIGURES_EXPECTED) -> dict[str, int]:
    return {k: int(v) for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}


def problems(name: str, summary: dict, expected: dict[str, int], expected_widgets: dict[str, int] | None = None) \
        -> list[str]:
    """One line per thing wrong with an executed notebook called ``name`` (its stem)."""
    msgs = [f"{name}: cell {i} has an error output ({e})" for i, e in summary["errors"]]
    if name in expected and summary["png"] < expected[name]:
        msgs.append(f"{name}: {summary['png']} figures (PNG outputs), expected at least {expected[name]}")
    need = (expected_widgets or {}).get(name)
    if need is not None and summary["widget_png"] < need:
        msgs.append(f"{name}: {summary['widget_png']} figures in widget panels, expected at least {need} "
                    f"(a panel that draws nothing until a control moves shows nothing in the book)")
    msgs += [f"{name}: cell {i} ends with a Figure, which the inline backend shows twice; end the line "
             f"with ';' or return nothing" for i in summary["figure_results"]]
    return msgs
