"""The notebooks' text: no control characters (a LaTeX command written in a plain Python string,
like ``"\tilde"`` or ``"\big"``, turns into a TAB or BACKSPACE that MathJax silently drops)."""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")   # everything below space except newline and TAB


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_control_characters(path):
    bad = []
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        src = "".join(cell["source"])
        for m in CONTROL.finditer(src):
            bad.append(f"cell {i}: {m.group()!r} in ...{src[max(0, m.start() - 30):m.end() + 10]!r}")
        if cell["cell_type"] == "markdown":          # a TAB in prose or LaTeX is a lost backslash-t
            bad += [f"cell {i}: TAB in ...{src[max(0, m.start() - 30):m.end() + 10]!r}" for m in re.finditer("\t", src)]
    assert not bad, "\n".join(bad)


def test_the_check_catches_a_lost_backslash():
    assert CONTROL.search("0.2\\,\big(1 - x\big)") and "\t" in "$\tilde g$"
