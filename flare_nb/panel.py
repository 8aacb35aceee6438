"""A control panel whose output area is filled by assigning its outputs, never by capturing them.

``ipywidgets.interactive`` runs its function inside ``with output:``, which routes the printed
text and figures into the Output widget through the kernel's output capture. A headless runner
(papermill / nbclient) mirrors that capture by sending the new outputs back to the kernel on the
shell socket while it is still waiting on that socket for the cell's reply; the reply can then
be missed and the cell sits until the runner's timeout. :func:`figure_panel` draws first, then
sets ``Output.outputs`` to the finished text and PNGs: nothing is captured, no message goes back,
and the panel looks the same in JupyterLab (where moving a control redraws it).
"""
from __future__ import annotations

import base64
import contextlib
import io
import traceback
from collections.abc import Callable


def _items(drawn) -> list:
    if drawn is None:
        return []
    if isinstance(drawn, (list, tuple)):
        return list(drawn)
    return [drawn]


def render_outputs(draw: Callable, kwargs: dict, dpi: int = 80) -> tuple[dict, ...]:
    """Call ``draw(**kwargs)`` and turn what it printed and returned into notebook outputs:
    ``draw`` returns a str, a matplotlib Figure, or a list of them (in display order). Each
    Figure becomes one ``image/png`` display and is closed, so the inline backend never shows
    it a second time. Exceptions propagate (figures already made are closed)."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    before = set(plt.get_fignums())
    printed = io.StringIO()
    drawn: list = []
    try:
        with contextlib.redirect_stdout(printed):
            drawn = _items(draw(**kwargs))
    finally:  # figures made on the way and not returned are closed too
        keep = {d.number for d in drawn if isinstance(d, Figure)}
        for n in set(plt.get_fignums()) - before - keep:
            plt.close(n)
    outs: list[dict] = []
    if printed.getvalue():
        outs.append({"output_type": "stream", "name": "stdout", "text": printed.getvalue()})
    for d in drawn:
        if isinstance(d, Figure):
            buf = io.BytesIO()
            d.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
            plt.close(d)
            w, h = d.get_size_inches()
            outs.append({"output_type": "display_data", "metadata": {},
                         "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
                                  "text/plain": f"<Figure size {w * d.dpi:g}x{h * d.dpi:g} with {len(d.axes)} Axes>"}})
        elif isinstance(d, str):
            outs.append({"output_type": "stream", "name": "stdout", "text": d if d.endswith("\n") else d + "\n"})
        else:
            raise TypeError(f"a panel's draw function returns text or matplotlib Figures, got {type(d).__name__}")
    return tuple(outs)


def figure_panel(draw: Callable, controls: dict, dpi: int = 80):
    """``ipywidgets.VBox`` of the ``controls`` (``{keyword: widget}``, in order) and an Output
    area showing ``draw(**{keyword: widget.value})`` (see :func:`render_outputs`). It is drawn
    once now (an error propagates) and again whenever a control's value changes (an error is
    then shown in the output area). The box has ``.out`` (the Output) and ``.refresh()``."""
    import ipywidgets as W

    out = W.Output()
    box = W.VBox(list(controls.values()) + [out])

    def values():
        return {k: w.value for k, w in controls.items()}

    def refresh(*_):
        try:
            out.outputs = render_outputs(draw, values(), dpi)
        except Exception:  # live update: show the error where the figure was
            out.outputs = ({"output_type": "stream", "name": "stderr", "text": traceback.format_exc()},)

    out.outputs = render_outputs(draw, values(), dpi)
    for w in controls.values():
        w.observe(refresh, names="value")
    box.out, box.refresh = out, refresh
    return box
