"""Execute every notebook in notebooks/ the way a user's papermill does -- the kernel named in the
notebook's own metadata, matplotlib's inline backend (MPLBACKEND is removed from the kernel's
environment), figures stored as PNG -- with the quick parameters in ci/notebook_params.json.
Executed copies go to --out. Exits non-zero on a cell error, an error output, fewer figures than
ci/expected/figures/png.json (and widget_png.json, in widget panels) asks for, or a cell whose Figure would be shown twice."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import papermill as pm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbcheck  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT_S = 600  # a user's papermill has no limit; CI stops a stuck cell instead of waiting forever


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="artifacts/notebooks")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes to run (default: all)")
    ap.add_argument("--solutions", action="store_true",
                    help="run with SOLUTIONS=True: the exercises use the worked solutions (flare_nb.nb.solutions)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = json.loads((ROOT / "ci" / "notebook_params.json").read_text())
    expected = nbcheck.load_expected()
    expected_widgets = nbcheck.load_expected(nbcheck.WIDGET_FIGURES_EXPECTED)
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(p) for p in args.only)]
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 1
    os.environ.pop("MPLBACKEND", None)  # the kernel inherits this environment: inline backend, as in Jupyter
    failed, t_all = [], time.perf_counter()
    for nb in notebooks:
        p = {"QUICK": True, **params.get(nb.stem, {})}
        if args.solutions:
            p["SOLUTIONS"] = True
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out / nb.name), parameters=p, cwd=str(ROOT / "notebooks"),
                                progress_bar=False, execution_timeout=CELL_TIMEOUT_S)
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            failed.append(nb.name)
            print(f"FAIL  {nb.name}  {time.perf_counter() - t0:6.1f} s\n{e}", file=sys.stderr)
            continue
        summary = nbcheck.summarize(json.loads((out / nb.name).read_text()))
        msgs = nbcheck.problems(nb.stem, summary, expected, expected_widgets)
        status = "FAIL" if msgs else "ok  "
        print(f"{status}  {nb.name}  {time.perf_counter() - t0:6.1f} s  figures={summary['png']}"
              f" (+{summary['widget_png']} in widgets)  params={p}", flush=True)
        for m in msgs:
            print(f"      {m}", file=sys.stderr)
        if nb.stem not in expected:
            print(f"      note: {nb.stem} has no figure count in ci/expected/figures/png.json yet; after looking at "
                  f"its {summary['png']} figures, add \"{nb.stem}\": {summary['png']}", file=sys.stderr)
        if msgs:
            failed.append(nb.name)
    print(f"{len(notebooks)} notebook(s) in {time.perf_counter() - t_all:.1f} s")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
