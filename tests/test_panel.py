"""flare_nb.panel: a control panel drawn by assigning its outputs (no output capture), used by
the confidence widget and the pose explorer of notebook 08."""
import base64

import matplotlib

matplotlib.use("Agg")
import ipywidgets as W  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from flare_nb import own_images  # noqa: E402
from flare_nb.panel import figure_panel, render_outputs  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _draw(a):
    print("printed", a)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, a])
    plt.figure()  # made on the way, not returned: must be closed too
    return [f"value {a}", fig]


@pytest.fixture(autouse=True)
def _no_capture(monkeypatch):
    """The panel must never route output through ``with output:`` (the capture a headless runner
    answers on the kernel's shell socket while it waits there for the cell's reply)."""
    def refuse(self):
        raise AssertionError("Output capture used")
    monkeypatch.setattr(W.Output, "__enter__", refuse)
    plt.close("all")
    yield
    plt.close("all")


def test_render_outputs_text_then_png_and_closes_figures():
    outs = render_outputs(_draw, {"a": 2})
    assert [o["output_type"] for o in outs] == ["stream", "stream", "display_data"]
    assert outs[0]["text"] == "printed 2\n" and outs[1]["text"] == "value 2\n"
    assert base64.b64decode(outs[2]["data"]["image/png"]).startswith(PNG_MAGIC)
    assert plt.get_fignums() == []                      # nothing left for the inline backend to show again
    with pytest.raises(TypeError, match="text or matplotlib Figures"):
        render_outputs(lambda: [3], {})


def test_panel_draws_now_and_on_change():
    s = W.FloatSlider(value=1.0, min=0, max=5)
    box = figure_panel(_draw, {"a": s})
    assert box.children[0] is s and box.children[-1] is box.out
    assert box.out.outputs[1]["text"] == "value 1.0\n"
    s.value = 3.0
    assert box.out.outputs[1]["text"] == "value 3.0\n" and len(box.out.outputs) == 3
    assert plt.get_fignums() == []


def test_panel_errors():
    def bad(a):
        if a > 1:
            raise ValueError("too big")
        return "fine"
    with pytest.raises(ValueError, match="too big"):   # at construction: the cell fails
        figure_panel(bad, {"a": W.FloatSlider(value=2.0, min=0, max=5)})
    s = W.FloatSlider(value=0.0, min=0, max=5)
    box = figure_panel(bad, {"a": s})
    s.value = 4.0                                      # live: the error is shown in the panel
    assert box.out.outputs[0]["name"] == "stderr" and "too big" in box.out.outputs[0]["text"]


def test_confidence_widget_shows_line_and_figure():
    g = torch.Generator().manual_seed(0)
    V, H, Wd = 2, 8, 10
    pts = torch.rand(V, H, Wd, 3, generator=g) + torch.tensor([0, 0, 2.0])
    conf = 1 + torch.rand(V, H, Wd, generator=g)
    img = torch.rand(V, 3, H, Wd, generator=g)
    w = own_images.make_confidence_widget(pts, conf, img, value=0.5)
    text = [o["text"] for o in w.out.outputs if o["output_type"] == "stream"]
    pngs = [o for o in w.out.outputs if "image/png" in o.get("data", {})]
    assert text == [f"drop the least confident 50% per view: {V * H * Wd // 2} of {V * H * Wd} points kept (50.0%)\n"]
    assert len(pngs) == 1
    w.children[0].value = 0.0
    assert w.out.outputs[0]["text"].startswith(f"drop the least confident 0% per view: {V * H * Wd} of")
