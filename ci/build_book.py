"""Render executed notebooks into a small static book: one HTML page per notebook (nbconvert's
lab template, figures embedded) and index.html with the README's notebook table, its links
pointing at the pages. MathJax 2 is copied next to the pages, so the book needs no network.

    python ci/build_book.py --executed artifacts/notebooks --out artifacts/book
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbcheck  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MATHJAX_DEFAULT = ROOT / "ci" / "vendor" / "node_modules" / "mathjax"
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


def build(executed: Path, out: Path, mathjax: Path) -> list[dict]:
    from nbconvert import HTMLExporter
    import nbformat
    from nbconvert.filters import markdown2html

    nbs = sorted(executed.glob("*.ipynb"))
    if not nbs:
        raise FileNotFoundError(f"no executed notebooks (*.ipynb) in {executed}; run python ci/run_notebooks.py first")
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(mathjax, out / "mathjax")
    exporter = HTMLExporter(template_name="lab")
    exporter.mathjax_url = f"mathjax/MathJax.js?config={MATHJAX_CONFIG}"
    pages = []
    for p in nbs:
        nb = nbformat.read(p, as_version=4)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": p.stem}})
        (out / f"{p.stem}.html").write_text(body, encoding="utf-8")
        s = nbcheck.summarize(json.loads(p.read_text()))
        pages.append({"page": f"{p.stem}.html", "notebook": p.name, "png": s["png"], "errors": len(s["errors"])})
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
        print(f"{pg['page']:55s} figures={pg['png']}")
    print(f"book: {len(pages)} pages and index.html in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
