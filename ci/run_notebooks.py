"""Execute every notebook in notebooks/ with papermill and the quick parameters in
ci/notebook_params.json; write executed copies to --out; exit non-zero on any cell error."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import papermill as pm

ROOT = Path(__file__).resolve().parents[1]


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
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(p) for p in args.only)]
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 1
    failed = []
    for nb in notebooks:
        p = {"QUICK": True, **params.get(nb.stem, {})}
        if args.solutions:
            p["SOLUTIONS"] = True
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out / nb.name), parameters=p, cwd=str(ROOT / "notebooks"),
                                kernel_name="python3", language="python", progress_bar=False,
                                execution_timeout=300)  # a per-cell limit also avoids an nbclient hang on widget cells
            print(f"ok    {nb.name}  {time.perf_counter() - t0:6.1f} s  params={p}")
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            failed.append(nb.name)
            print(f"FAIL  {nb.name}  {time.perf_counter() - t0:6.1f} s\n{e}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
