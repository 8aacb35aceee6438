"""Render executed notebooks into a small static book: one HTML page per notebook (nbconvert's
lab template, figures embedded) and index.html with the README's notebook table, its links
pointing at the pages. MathJax 2 and plotly.js (from the installed plotly package) are copied
next to the pages, so the book needs no network. Plotly figures are drawn from their saved JSON,
ipywidgets panels show their first drawing from the saved widget state (ci/book_figures.py).

    python ci/build_book.py --executed artifacts/notebooks --out artifacts/book
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import book_figures  # noqa: E402
import nbcheck  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MATHJAX_DEFAULT = ROOT / "ci" / "vendor" / "node_modules" / "mathjax"
TEMPLATE = ROOT / "ci" / "book_template" / "book.html.j2"
MATHJAX_CONFIG = "TeX-AMS_CHTML-full,Safe"
MATHJAX_PARTS = ["MathJax.js", "config", "extensions", "jax/input/TeX", "jax/output/CommonHTML", "jax/element",
                 "localization/en", "fonts/HTML-CSS/TeX/woff"]


NB_CELL = re.compile(r"^\|\s*`(\d\d_\w+)`\s*\|")


def notebook_table(readme: str) -> str:
    """The README's markdown table whose first column names the notebooks (`` `NN_name` ``),
    with each name turned into a link to its page ``NN_name.html``."""
    lines = readme.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|") and i + 2 < len(lines) and NB_CELL.match(lines[i + 2].strip()):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            rows = [NB_CELL.sub(lambda m: f"| [`{m[1]}`]({m[1]}.html) |", ln.strip()) for ln in lines[i:j]]
            return "\n".join(rows)
    raise ValueError("README.md has no table whose first column names the notebooks (`NN_name`)")


def copy_mathjax(src: Path, dst: Path) -> None:
    if not (src / "MathJax.js").is_file():
        raise FileNotFoundError(f"MathJax 2 not found in {src}; run bash ci/setup.sh (it runs npm install "
                                f"--prefix ci/vendor mathjax@2.7.9) or pass --mathjax DIR")
    for part in MATHJAX_PARTS:
        s, d = src / part, dst / part
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True)
        else:
            shutil.copy2(s, d)


def make_exporter():
    """nbconvert's lab HTML exporter with the book's template (ci/book_template) and local MathJax."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", template_file=str(TEMPLATE))
    exporter.mathjax_url = f"mathjax/MathJax.js?config={MATHJAX_CONFIG}"
    return exporter


def page_html(exporter, nb: dict, name: str) -> tuple[str, dict]:
    """The page of one executed notebook (parsed .ipynb) and the counts of its plotly figures and
    widget panels (see book_figures.static_notebook); plotly.js is loaded only where it is used."""
    import nbformat
    from nbformat.v4.rwbase import rejoin_lines

    static, counts = book_figures.static_notebook(nb)
    resources = {"metadata": {"name": name}, "book_plotly_js": book_figures.PLOTLY_JS if counts["plotly"] else ""}
    body, _ = exporter.from_notebook_node(rejoin_lines(nbformat.from_dict(static)), resources=resources)
    return body, counts


def build(executed: Path, out: Path, mathjax: Path) -> list[dict]:
    from nbconvert.filters import markdown2html

    nbs = sorted(executed.glob("*.ipynb"))
    if not nbs:
        raise FileNotFoundError(f"no executed notebooks (*.ipynb) in {executed}; run python ci/run_notebooks.py first")
    raws = {}
    for p in nbs:                                   # every notebook readable before anything is written
        try:
            raws[p] = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not a readable notebook ({e}); run python ci/run_notebooks.py again") from e
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(mathjax, out / "mathjax")
    exporter = make_exporter()
    pages, plotly_copied = [], False
    for p, raw in raws.items():
        body, counts = page_html(exporter, raw, p.stem)
        if counts["plotly"] and not plotly_copied:
            book_figures.copy_plotly_js(out)
            plotly_copied = True
        (out / f"{p.stem}.html").write_text(body, encoding="utf-8")
        s = nbcheck.summarize(raw)
        pages.append({"page": f"{p.stem}.html", "notebook": p.name, "png": s["png"], "errors": len(s["errors"]),
                      **counts})
    table = notebook_table((ROOT / "README.md").read_text())
    index = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>flare_nb notebooks</title>\n"
             f"<script src=\"mathjax/MathJax.js?config={MATHJAX_CONFIG}\"></script>\n"
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}</style>\n"
             "</head><body>\n<h1>flare_nb: the notebooks, executed</h1>\n"
             "<p>Each page is a notebook run with the quick parameters CI uses (<code>QUICK=True</code>).</p>\n"
             f"{markdown2html(table)}\n</body></html>\n")
    (out / "index.html").write_text(index, encoding="utf-8")
    (out / "pages.json").write_text(json.dumps(pages, indent=1))
    return pages


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--executed", default="artifacts/notebooks", help="folder of executed notebooks")
    ap.add_argument("--out", default="artifacts/book", help="folder the book is written to")
    ap.add_argument("--mathjax", default=str(MATHJAX_DEFAULT), help="a MathJax 2 folder (npm package mathjax@2)")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (out / "pages.json").is_file():
        print(f"--out {out} is a folder with other content; give an empty or new folder", file=sys.stderr)
        return 2
    try:
        pages = build(Path(args.executed), out, Path(args.mathjax))
    except (FileNotFoundError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    for pg in pages:
        print(f"{pg['page']:55s} figures={pg['png']} plotly={pg['plotly']} "
              f"widgets={pg['widgets']} (figures in widgets={pg['widget_png']})")
    print(f"book: {len(pages)} pages and index.html in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
