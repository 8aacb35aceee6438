"""Numbers a notebook records, so CI can check them against ``ci/expected/<notebook>.json``.

A notebook does ``rec = Recorder("00_conventions_and_data")`` then ``rec.log("name", value)``;
each call rewrites ``$FLARE_NB_RECORD_DIR/<notebook>.json`` (default ``artifacts/records``)
so a notebook that fails half-way still leaves what it measured.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def record_dir() -> Path:
    """``$FLARE_NB_RECORD_DIR``, else ``artifacts/records`` at the repository root."""
    env = os.environ.get("FLARE_NB_RECORD_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "artifacts" / "records"


class Recorder:
    def __init__(self, notebook: str, directory: str | os.PathLike | None = None):
        self.notebook = notebook
        self.path = Path(directory) if directory is not None else record_dir()
        self.values: dict[str, float | int | str | bool] = {}

    def log(self, name: str, value) -> None:
        """Record one scalar (number, bool or short string). Returns nothing, so a cell that ends
        with ``rec.log(...)`` shows no ``Out[]`` line; print the value where the reader should see it."""
        v = value.item() if hasattr(value, "item") else value
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{self.notebook}: recorded value {name!r} is not finite ({v})")
        if not isinstance(v, (int, float, str, bool)):
            raise TypeError(f"{self.notebook}: {name!r} must be a scalar, got {type(value).__name__}")
        self.values[name] = v
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{self.notebook}.json.tmp"
        tmp.write_text(json.dumps(self.values, indent=1, sort_keys=True))
        os.replace(tmp, self.path / f"{self.notebook}.json")
