"""The two kinds of notebook output a static HTML page cannot show as saved, turned into plain
HTML for the book (ci/build_book.py):

* a plotly figure (``application/vnd.plotly.v1+json``) becomes a ``<div>`` and a script that
  draws it with ``Plotly.newPlot`` from its JSON; plotly.js itself is the copy inside the
  installed ``plotly`` package, placed next to the pages (:func:`copy_plotly_js`);
* an ipywidgets panel (``application/vnd.jupyter.widget-view+json``) becomes its first drawing:
  the outputs of its ``Output`` areas, read from the widget state the runner saved in the
  notebook's metadata, under a one-line note naming the controls and their starting values.

Only the in-memory copy handed to nbconvert changes; the executed notebook is left as it is.
"""
from __future__ import annotations

import copy
import html
import json
import shutil
from pathlib import Path

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
PLOTLY_JS = "plotly/plotly.min.js"            # where the pages find plotly.js, relative to the book
PLOTLY_DEFAULT_HEIGHT = 450                   # plotly.js's own default when the layout names none
WIDGET_NOTE = "the controls are live in Jupyter; this page shows the panel's first drawing"


def plotly_js_source() -> Path:
    """plotly.min.js as shipped inside the installed ``plotly`` Python package."""
    try:
        import plotly
    except ImportError as e:
        raise FileNotFoundError("the book draws plotly figures with plotly.js from the plotly Python package; "
                                "pip install plotly (ci/setup.sh installs the project's requirements)") from e
    src = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not src.is_file():
        raise FileNotFoundError(f"{src} is missing from the installed plotly package; reinstall it "
                                f"(pip install --force-reinstall plotly)")
    return src


def copy_plotly_js(out: Path) -> Path:
    dst = out / PLOTLY_JS
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(plotly_js_source(), dst)
    return dst


def _code_outputs(nb: dict):
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            yield from cell.get("outputs", [])


def _widget_state(nb: dict) -> dict:
    return nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE_MIME, {}).get("state", {})


def _script_json(obj) -> str:
    """JSON that is safe inside a <script> element (no ``</`` that could end it)."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def plotly_html(fig: dict, div_id: str) -> str:
    """A ``<div>`` plus the script that draws plotly figure JSON ``fig`` into it once plotly.js
    (loaded in the page's head) is there; without it the div says so instead of staying blank."""
    layout = fig.get("layout") or {}
    height = layout.get("height") or PLOTLY_DEFAULT_HEIGHT
    payload = {"data": fig.get("data", []), "layout": layout, "config": {"responsive": True, **(fig.get("config") or {})}}
    return (f'<div class="book-plotly" id="{div_id}" style="width:100%;height:{int(height)}px"></div>\n'
            f'<script type="application/json" id="{div_id}-json">{_script_json(payload)}</script>\n'
            "<script>(function () {\n"
            f"  var el = document.getElementById('{div_id}');\n"
            "  if (!window.Plotly) { el.textContent = 'plotly.js did not load: this figure cannot be drawn'; return; }\n"
            f"  var fig = JSON.parse(document.getElementById('{div_id}-json').textContent);\n"
            "  window.Plotly.newPlot(el, fig.data, fig.layout, fig.config);\n"
            "})();</script>")


def _model_id(ref) -> str | None:
    return ref[len("IPY_MODEL_"):] if isinstance(ref, str) and ref.startswith("IPY_MODEL_") else None


def _walk(state: dict, model_id: str, seen: set):
    """Depth-first, in display order: (model_name, model_state) of a widget and its children."""
    if model_id in seen or model_id not in state:
        return
    seen.add(model_id)
    m = state[model_id]
    yield m.get("model_name", ""), m.get("state", {})
    for ref in m.get("state", {}).get("children", []) or []:
        child = _model_id(ref)
        if child:
            yield from _walk(state, child, seen)


def _control_value(name: str, st: dict) -> str | None:
    if "_options_labels" in st and isinstance(st.get("index"), int):
        labels = st["_options_labels"]
        return labels[st["index"]] if 0 <= st["index"] < len(labels) else None
    if name.endswith("Model") and "value" in st and name not in ("LabelModel", "HTMLModel", "HTMLMathModel"):
        return str(st["value"])
    return None


def _output_html(out: dict) -> tuple[str, int]:
    """One saved output of an Output area as HTML, and how many PNG figures that is."""
    kind = out.get("output_type")
    if kind == "stream":
        cls = "book-widget-stderr" if out.get("name") == "stderr" else "book-widget-stdout"
        return f'<pre class="{cls}">{html.escape("".join(out.get("text", "")))}</pre>', 0
    if kind == "error":
        tb = "\n".join(out.get("traceback", [])) or f"{out.get('ename', '')}: {out.get('evalue', '')}"
        return f'<pre class="book-widget-stderr">{html.escape(tb)}</pre>', 0
    data = out.get("data", {})
    if "image/png" in data:
        png = "".join(data["image/png"]).replace("\n", "")
        alt = html.escape("".join(data.get("text/plain", "figure")), quote=True)
        return f'<img src="data:image/png;base64,{png}" alt="{alt}">', 1
    if "text/html" in data:
        return "".join(data["text/html"]), 0
    if "text/plain" in data:
        return f"<pre>{html.escape(''.join(data['text/plain']))}</pre>", 0
    return "", 0


def widget_html(state: dict, model_id: str) -> tuple[str, int]:
    """The static form of the widget ``model_id`` (from the saved widget ``state``): a note with
    its controls' starting values, the text of its labels and what its Output areas hold.
    Returns the HTML and the number of PNG figures in it."""
    controls, parts, n_png, n_areas = [], [], 0, 0
    for name, st in _walk(state, model_id, set()):
        value = _control_value(name, st)
        if value is not None:
            controls.append(f"{st.get('description') or name[:-len('Model')]} = {value}")
        elif name == "LabelModel" and st.get("value"):
            parts.append(f'<p class="book-widget-label">{html.escape(str(st["value"]))}</p>')
        elif name == "OutputModel":
            n_areas += 1
            for out in st.get("outputs", []) or []:
                h, k = _output_html(out)
                parts.append(h)
                n_png += k
    if model_id not in state:
        note = "interactive panel: its saved state is missing from the notebook, so it shows only in Jupyter"
    elif n_areas and not any(parts):
        note = f"interactive panel ({', '.join(controls)}): it draws when a control moves, live in Jupyter"
    else:
        note = f"interactive panel ({', '.join(controls)}): {WIDGET_NOTE}" if controls else f"interactive panel: {WIDGET_NOTE}"
    body = "\n".join(p for p in parts if p)
    return (f'<div class="book-widget" data-widget-figures="{n_png}">\n'
            f'<p class="book-widget-note"><em>{html.escape(note)}</em></p>\n{body}\n</div>'), n_png


def static_notebook(nb: dict) -> tuple[dict, dict]:
    """A copy of the executed notebook ``nb`` (parsed .ipynb) whose plotly and widget outputs
    are plain ``text/html``, without the widget state (so nbconvert adds no widget loader), and
    the counts ``{"plotly": n, "widgets": m, "widget_png": k}`` of what was turned."""
    nb = copy.deepcopy(nb)
    state = _widget_state(nb)
    counts = {"plotly": 0, "widgets": 0, "widget_png": 0}
    for out in _code_outputs(nb):
        data = out.get("data")
        if not data:
            continue
        if PLOTLY_MIME in data:
            fig = data[PLOTLY_MIME]
            out["data"] = {"text/html": plotly_html(fig, f"book-plotly-{counts['plotly']}")}
            out["metadata"] = {}
            counts["plotly"] += 1
        elif WIDGET_VIEW_MIME in data:
            h, n_png = widget_html(state, data[WIDGET_VIEW_MIME].get("model_id", ""))
            out["data"] = {"text/html": h}
            out["metadata"] = {}
            counts["widgets"] += 1
            counts["widget_png"] += n_png
    nb.get("metadata", {}).pop("widgets", None)
    return nb, counts
