"""Compare the numbers notebooks recorded (records/<nb>.json) with ci/expected/<nb>.json.

Expected entries: {"name": {"value": v, "rtol": r, "atol": a}} (|x - v| <= atol + rtol*|v|),
{"name": {"min": lo, "max": hi}} (either bound optional) or {"name": {"equals": v}}.
Every expected name must have been recorded; a notebook with records but no expected file fails.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def check_one(name: str, got, spec: dict) -> str | None:
    if "equals" in spec:
        return None if got == spec["equals"] else f"{name} = {got!r}, expected {spec['equals']!r}"
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        return f"{name} = {got!r} is not a number"
    if "value" in spec:
        v = spec["value"]
        tol = spec.get("atol", 0.0) + spec.get("rtol", 0.0) * abs(v)
        if abs(got - v) > tol:
            return f"{name} = {got:.6g}, expected {v:.6g} +- {tol:.3g}"
    if "min" in spec and got < spec["min"]:
        return f"{name} = {got:.6g} below the minimum {spec['min']}"
    if "max" in spec and got > spec["max"]:
        return f"{name} = {got:.6g} above the maximum {spec['max']}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", required=True)
    ap.add_argument("--expected", required=True)
    args = ap.parse_args()
    rec_dir, exp_dir = Path(args.records), Path(args.expected)
    errors, n_checked = [], 0
    recorded = {p.stem: json.loads(p.read_text()) for p in sorted(rec_dir.glob("*.json"))}
    expected = {p.stem: json.loads(p.read_text()) for p in sorted(exp_dir.glob("*.json"))}
    for nb in sorted(set(recorded) - set(expected)):
        errors.append(f"{nb}: recorded numbers but ci/expected/{nb}.json is missing")
    for nb, specs in expected.items():
        got = recorded.get(nb)
        if got is None:
            errors.append(f"{nb}: no records (did the notebook run and create a Recorder?)")
            continue
        for name, spec in specs.items():
            if name not in got:
                errors.append(f"{nb}: {name!r} was not recorded")
                continue
            n_checked += 1
            msg = check_one(name, got[name], spec)
            if msg:
                errors.append(f"{nb}: {msg}")
            else:
                print(f"ok  {nb}: {name} = {got[name]!r}")
    for e in errors:
        print("FAIL", e, file=sys.stderr)
    print(f"{n_checked} recorded numbers checked, {len(errors)} failed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
